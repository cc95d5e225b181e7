"""EndpointSlices: the conformance cluster's expected slices, plus the rules one by one."""

import json
import pathlib

import pytest

from kubelab.controller.endpointslices import find_port, slice_content, slices_for_service

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "dns-cases.json"
CLUSTER = json.loads(DATA.read_text())["cluster"]


def _canon(es):
    return json.dumps(
        {
            "namespace": es["metadata"]["namespace"],
            "labels": es["metadata"]["labels"],
            "addressType": es["addressType"],
            "ports": es["ports"],
            "endpoints": sorted(es["endpoints"], key=lambda e: e["addresses"]),
        },
        sort_keys=True,
    )


def test_conformance_cluster_slices():
    got = [es for svc in CLUSTER["services"] for es in slices_for_service(svc, CLUSTER["pods"])]
    assert sorted(map(_canon, got)) == sorted(map(_canon, CLUSTER["endpointSlices"]))
    # names too (the lab's names are deterministic and match the suite's)
    assert sorted((e["metadata"]["namespace"], e["metadata"]["name"]) for e in got) == sorted(
        (e["metadata"]["namespace"], e["metadata"]["name"]) for e in CLUSTER["endpointSlices"]
    )


def svc(name="web", selector=None, ports=None, **spec):
    spec["selector"] = {"app": "web"} if selector is None else selector
    spec["ports"] = ports or [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]
    return {"kind": "Service", "metadata": {"name": name, "namespace": "ns", "uid": "u-1"}, "spec": spec}


def pod(name, ip="10.0.0.1", ready=True, ports=(("http", 8080, "TCP"),), labels=None, phase="Running", **extra):
    spec = {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [
        {"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]}]}
    spec.update(extra.pop("spec", {}))
    meta = {"name": name, "namespace": extra.pop("namespace", "ns"), "labels": {"app": "web"} if labels is None else labels}
    meta.update(extra)
    return {"kind": "Pod", "metadata": meta, "spec": spec,
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}] if ip else [],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def endpoints(slices):
    return {e["targetRef"]["name"]: e for s in slices for e in s["endpoints"]}


def test_no_selector_no_slices():
    assert slices_for_service(svc(selector={}), [pod("a")]) == []
    s = svc()
    del s["spec"]["selector"]
    assert slices_for_service(s, [pod("a")]) == []


def test_external_name_gets_no_slices():
    assert slices_for_service(svc(type="ExternalName", externalName="x.example"), [pod("a")]) == []


def test_selector_and_namespace():
    pods = [pod("a"), pod("b", labels={"app": "other"}), pod("c", namespace="elsewhere")]
    assert set(endpoints(slices_for_service(svc(), pods))) == {"a"}


def test_empty_selector_match_gives_placeholder():
    (es,) = slices_for_service(svc(), [])
    assert es["ports"] == [] and es["endpoints"] == [] and es["metadata"]["name"] == "web-ipv4"


@pytest.mark.parametrize(
    "ready,terminating,pna,expect",
    [
        (True, False, False, (True, True, False)),
        (False, False, False, (False, False, False)),
        (True, True, False, (False, True, True)),
        (False, True, False, (False, False, True)),
        (False, False, True, (True, False, False)),
        (True, True, True, (True, True, True)),
    ],
)
def test_conditions(ready, terminating, pna, expect):
    extra = {"deletionTimestamp": "2026-01-01T00:00:00Z"} if terminating else {}
    s = svc(publishNotReadyAddresses=pna)
    (ep,) = endpoints(slices_for_service(s, [pod("a", ready=ready, **extra)])).values()
    c = ep["conditions"]
    assert (c["ready"], c["serving"], c["terminating"]) == expect


def test_hostname_only_with_matching_subdomain():
    pods = [
        pod("a", spec={"hostname": "a", "subdomain": "web"}),
        pod("b", ip="10.0.0.2", spec={"hostname": "b"}),
        pod("c", ip="10.0.0.3", spec={"hostname": "c", "subdomain": "other"}),
    ]
    eps = endpoints(slices_for_service(svc(), pods))
    assert eps["a"]["hostname"] == "a"
    assert "hostname" not in eps["b"] and "hostname" not in eps["c"]


def test_named_ports_resolved_per_pod_one_slice_per_port_set():
    pods = [
        pod("a", ip="10.0.0.1", ports=[("http", 8080, "TCP")]),
        pod("b", ip="10.0.0.2", ports=[("http", 9090, "TCP")]),
        pod("c", ip="10.0.0.3", ports=[("http", 8080, "UDP")]),  # wrong protocol: no port
    ]
    slices = slices_for_service(svc(), pods)
    by_ports = {tuple((p["name"], p["port"]) for p in s["ports"]): [e["targetRef"]["name"] for e in s["endpoints"]] for s in slices}
    assert by_ports == {(("http", 8080),): ["a"], (("http", 9090),): ["b"], (): ["c"]}
    names = sorted(s["metadata"]["name"] for s in slices)
    assert len(set(names)) == 3 and all(n.startswith("web-ipv4") for n in names)


def test_pod_without_matching_named_port_left_out_of_that_port():
    s = svc(ports=[{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                   {"name": "metrics", "port": 9100, "targetPort": 9100, "protocol": "TCP"}])
    slices = slices_for_service(s, [pod("a", ports=[("web", 8080, "TCP")])])
    (only,) = slices
    assert only["ports"] == [{"name": "metrics", "port": 9100, "protocol": "TCP"}]


def test_terminal_and_ipless_pods_left_out():
    pods = [pod("a"), pod("b", ip="10.0.0.2", phase="Succeeded"), pod("c", ip=None)]
    assert set(endpoints(slices_for_service(svc(), pods))) == {"a"}


def test_dual_stack_families():
    s = svc(ipFamilies=["IPv4", "IPv6"])
    p = pod("a")
    p["status"]["podIPs"] = [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]
    slices = slices_for_service(s, [p])
    assert [(x["addressType"], x["endpoints"][0]["addresses"]) for x in slices] == [
        ("IPv4", ["10.0.0.1"]), ("IPv6", ["fd00::1"])]


def test_metadata_labels_and_owner():
    (es,) = slices_for_service(svc(), [pod("a")])
    assert es["metadata"]["labels"] == {"kubernetes.io/service-name": "web",
                                        "endpointslice.kubernetes.io/managed-by": "lab-controller"}
    assert es["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert es["endpoints"][0]["nodeName"] == "n1"
    assert es["endpoints"][0]["targetRef"] == {"kind": "Pod", "namespace": "ns", "name": "a"}


def test_slice_content_ignores_bookkeeping():
    (es,) = slices_for_service(svc(), [pod("a")])
    stored = {**es, "metadata": {**es["metadata"], "resourceVersion": "7", "uid": "x", "creationTimestamp": "t"}}
    assert slice_content(stored) == slice_content(es)
    flipped = slices_for_service(svc(), [pod("a", ready=False)])[0]
    assert slice_content(flipped) != slice_content(es)


@pytest.mark.parametrize("target,proto,expect", [(8080, "TCP", 8080), ("http", "TCP", 8080), ("http", "UDP", None),
                                                 ("nope", "TCP", None), ("81", "TCP", 81)])
def test_find_port(target, proto, expect):
    assert find_port(pod("a"), target, proto) == expect


def test_large_services_are_split_at_100_endpoints():
    pods = [pod(f"p{i:03d}", ip=f"10.0.{i // 250}.{i % 250 + 1}") for i in range(250)]
    slices = slices_for_service(svc(), pods)
    assert [(s["metadata"]["name"], len(s["endpoints"])) for s in slices] == [
        ("web-ipv4", 100), ("web-ipv4-2", 100), ("web-ipv4-3", 50)]
    assert slices[1]["endpoints"][0]["targetRef"]["name"] == "p100"
    # a readiness flip changes one slice only
    flipped = slices_for_service(svc(), pods[:150] + [pod("p150", ip=pods[150]["status"]["podIP"], ready=False)] + pods[151:])
    changed = [a["metadata"]["name"] for a, b in zip(slices, flipped) if slice_content(a) != slice_content(b)]
    assert changed == ["web-ipv4-2"]
    assert len(slices_for_service(svc(), pods, max_endpoints=1000)) == 1


@pytest.mark.parametrize(
    "selector, labels, selected",
    [
        ({"app": "web"}, {"app": "web"}, True),
        ({"app": "web"}, {"app": "web", "tier": "fe"}, True),  # extra pod labels are fine
        ({"app": "web", "tier": "fe"}, {"app": "web", "tier": "fe"}, True),
        ({"app": "web", "tier": "fe"}, {"app": "web"}, False),  # every key must match
        ({"app": "web"}, {"app": "api"}, False),
        ({"app": "web"}, {}, False),
        ({"app": ""}, {"app": ""}, True),  # empty values compare as values
        ({"app": ""}, {}, False),  # ... and a missing key is not an empty value
    ],
)
def test_service_selector_is_equality_on_every_key(selector, labels, selected):
    """Service selectors go through validation.selector_matches as matchLabels: same semantics."""
    got = endpoints(slices_for_service(svc(selector=selector), [pod("a", labels=labels)]))
    assert ("a" in got) is selected


def test_selector_matches_is_the_validation_one():
    from kubelab.controller import endpointslices, validation

    assert endpointslices.selector_matches is validation.selector_matches
