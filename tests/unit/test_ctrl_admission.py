"""Admission: defaulting, simulated vs run pods, status writes, allocation through admit()."""

import ipaddress

import pytest

from kubelab.controller.admission import SIMULATED_ANNOTATION, Admission, Invalid
from kubelab.controller.config import LabConfig
from kubelab.controller.defaults import default_object


class FakeSnapshot:
    """The store's Snapshot interface over a dict (unit tests need no store)."""

    def __init__(self, objs=(), resource_version=1):
        self.resource_version = resource_version
        self._by = {}
        for o in objs:
            self.put(o)

    def put(self, o):
        m = o.get("metadata") or {}
        self._by[(o["kind"], m.get("namespace") or "", m["name"])] = o

    def remove(self, kind, ns, name):
        self._by.pop((kind, ns, name), None)

    def get(self, kind, namespace, name):
        return self._by.get((kind, namespace or "", name))

    def list(self, kind, namespace=None):
        return [o for (k, ns, n), o in sorted(self._by.items(), key=lambda kv: kv[0])
                if k == kind and (namespace is None or ns == namespace)]


def svc(name="web", ns="default", **spec):
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


# --------------------------------------------------------------------------- defaults

DEFAULT_CASES = [
    ("service port protocol and targetPort", svc(ports=[{"port": 80}]),
     lambda o: o["spec"]["ports"][0] == {"port": 80, "protocol": "TCP", "targetPort": 80}),
    ("service type and affinity", svc(),
     lambda o: (o["spec"]["type"], o["spec"]["sessionAffinity"], o["spec"]["internalTrafficPolicy"])
     == ("ClusterIP", "None", "Cluster") and "externalTrafficPolicy" not in o["spec"]),
    ("ClientIP timeout", svc(sessionAffinity="ClientIP"),
     lambda o: o["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}),
    ("NodePort externalTrafficPolicy", svc(type="NodePort"), lambda o: o["spec"]["externalTrafficPolicy"] == "Cluster"),
    ("LB externalTrafficPolicy", svc(type="LoadBalancer"),
     lambda o: o["spec"]["externalTrafficPolicy"] == "Cluster" and o["spec"]["allocateLoadBalancerNodePorts"] is True),
    ("named targetPort kept", svc(ports=[{"port": 80, "targetPort": "http"}]), lambda o: o["spec"]["ports"][0]["targetPort"] == "http"),
    ("pod defaults",
     {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]}},
     lambda o: (o["spec"]["restartPolicy"], o["spec"]["dnsPolicy"], o["spec"]["terminationGracePeriodSeconds"],
                o["spec"]["containers"][0]["ports"][0]["protocol"], o["spec"]["containers"][0]["imagePullPolicy"],
                o["metadata"]["namespace"], o["apiVersion"])
     == ("Always", "ClusterFirst", 30, "TCP", "Always", "default", "v1")),
    ("image with tag pulls IfNotPresent",
     {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "reg:5000/nginx:1.25"}]}},
     lambda o: o["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"),
    ("deployment defaults",
     {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}},
     lambda o: (o["spec"]["replicas"], o["spec"]["strategy"], o["spec"]["revisionHistoryLimit"],
                o["spec"]["progressDeadlineSeconds"], o["spec"]["template"]["spec"]["restartPolicy"], o["apiVersion"])
     == (1, {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}, 10, 600, "Always", "apps/v1")),
    ("namespace label and phase", {"kind": "Namespace", "metadata": {"name": "lab", "labels": {"kubernetes.io/metadata.name": "x"}}},
     lambda o: o["metadata"]["labels"]["kubernetes.io/metadata.name"] == "lab" and o["status"]["phase"] == "Active"
     and o["spec"]["finalizers"] == ["kubernetes"] and "namespace" not in o["metadata"]),
    ("netpol ingress only", {"kind": "NetworkPolicy", "metadata": {"name": "n"}, "spec": {"podSelector": {}}},
     lambda o: o["spec"]["policyTypes"] == ["Ingress"]),
    ("netpol with egress", {"kind": "NetworkPolicy", "metadata": {"name": "n"}, "spec": {"egress": [{"ports": [{"port": 53}]}]}},
     lambda o: o["spec"]["policyTypes"] == ["Ingress", "Egress"] and o["spec"]["podSelector"] == {}
     and o["spec"]["egress"][0]["ports"][0]["protocol"] == "TCP"),
    ("netpol empty egress list", {"kind": "NetworkPolicy", "metadata": {"name": "n"}, "spec": {"egress": []}},
     lambda o: o["spec"]["policyTypes"] == ["Ingress"]),
    ("netpol explicit policyTypes kept", {"kind": "NetworkPolicy", "metadata": {"name": "n"}, "spec": {"policyTypes": ["Egress"]}},
     lambda o: o["spec"]["policyTypes"] == ["Egress"]),
]


@pytest.mark.parametrize("obj,check", [c[1:] for c in DEFAULT_CASES], ids=[c[0] for c in DEFAULT_CASES])
def test_defaults(obj, check):
    before = repr(obj)
    assert check(default_object(obj))
    assert repr(obj) == before  # the input is never changed


# --------------------------------------------------------------------------- pods


def pod(name="p", status=None, **spec):
    spec.setdefault("containers", [{"name": "main", "image": "img:1"}])
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.fixture
def adm():
    return Admission(LabConfig())


def test_simulated_pod_keeps_status(adm):
    status = {"phase": "Running", "podIP": "127.244.0.9", "conditions": [{"type": "Ready", "status": "False"}]}
    out = adm.admit("create", pod(status=status), None, FakeSnapshot())
    assert out["metadata"]["annotations"][SIMULATED_ANNOTATION] == "true"
    assert out["status"]["podIP"] == "127.244.0.9"
    assert out["status"]["podIPs"] == [{"ip": "127.244.0.9"}]
    assert out["status"]["conditions"] == [{"type": "Ready", "status": "False"}]
    assert "nodeName" not in out["spec"]


def test_simulated_pod_minimal_status_is_running_and_ready(adm):
    out = adm.admit("create", pod(status={"podIP": "127.244.0.9"}), None, FakeSnapshot())
    assert out["status"]["phase"] == "Running"
    assert {"type": "Ready", "status": "True"} in out["status"]["conditions"]


def test_simulated_pod_update_takes_new_status_and_keeps_annotation(adm):
    first = adm.admit("create", pod(status={"podIP": "127.244.0.9"}), None, FakeSnapshot())
    flipped = pod(status={"podIP": "127.244.0.9", "conditions": [{"type": "Ready", "status": "False"}]})
    out = adm.admit("update", flipped, first, FakeSnapshot([first]))
    assert out["status"]["conditions"] == [{"type": "Ready", "status": "False"}]
    assert out["metadata"]["annotations"][SIMULATED_ANNOTATION] == "true"
    again = adm.admit("update", pod(), out, FakeSnapshot([out]))  # no status in the manifest: keep it
    assert again["status"]["conditions"] == [{"type": "Ready", "status": "False"}]


def test_run_pod_is_pending_and_owned_by_runtime(adm):
    out = adm.admit("create", pod(), None, FakeSnapshot())
    assert out["status"] == {"phase": "Pending"}
    assert SIMULATED_ANNOTATION not in (out["metadata"].get("annotations") or {})
    assert out["spec"]["nodeName"] == "lab-node"
    # a user update cannot set the status of a run pod ...
    upd = adm.admit("update", pod(nodeName="lab-node", status={"phase": "Running", "podIP": "1.2.3.4"}), out, FakeSnapshot([out]))
    assert upd["status"] == {"phase": "Pending"}
    # ... the runtime's status write can
    st = adm.admit("update_status", {**out, "status": {"phase": "Running", "podIP": "127.244.0.5"}}, out, FakeSnapshot([out]))
    assert st["status"]["podIP"] == "127.244.0.5"
    assert st["spec"] == out["spec"]


def test_status_write_ignores_spec(adm):
    d = adm.admit("create", {"kind": "Deployment", "metadata": {"name": "d", "namespace": "default"},
                             "spec": {"selector": {"matchLabels": {"a": "b"}},
                                      "template": {"metadata": {"labels": {"a": "b"}},
                                                   "spec": {"containers": [{"name": "c", "image": "i"}]}}}},
                  None, FakeSnapshot())
    changed = {**d, "spec": {**d["spec"], "replicas": 9}, "status": {"replicas": 1}}
    out = adm.admit("update_status", changed, d, FakeSnapshot([d]))
    assert out["spec"]["replicas"] == 1 and out["status"] == {"replicas": 1}
    # and a user update keeps the controller's status
    user = adm.admit("update", {**d, "status": {}}, out, FakeSnapshot([out]))
    assert user["status"] == {"replicas": 1}


def test_delete_returns_old(adm):
    old = pod()
    assert adm.admit("delete", None, old, FakeSnapshot()) is old


def test_invalid_raises_with_kubectl_message(adm):
    with pytest.raises(Invalid) as info:
        adm.admit("create", svc(name="bad", ports=[{"port": 70000, "targetPort": 80}]), None, FakeSnapshot())
    assert str(info.value) == 'Service "bad" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive'


def test_netpol_validation_is_called(adm):
    bad = {"kind": "NetworkPolicy", "metadata": {"name": "n", "namespace": "default"},
           "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}}
    with pytest.raises(Invalid) as info:
        adm.admit("create", bad, None, FakeSnapshot())
    assert "spec.ingress[0].ports[0].port" in str(info.value)


# --------------------------------------------------------------------------- allocation


def admit_all(adm, objs, snap=None):
    snap = snap or FakeSnapshot()
    out = []
    for o in objs:
        got = adm.admit("create", o, None, snap)
        snap.put(got)
        out.append(got)
    return out, snap


def test_cluster_ip_dynamic_band_and_requested_static(adm):
    (a, b), snap = admit_all(adm, [svc("a"), svc("b")])
    # /16 -> static band of 256 at the low end: dynamic picks start above it
    # (offsets count from the first usable address, as the apiserver's bitmap does)
    assert a["spec"]["clusterIP"] == "127.96.1.1"
    assert b["spec"]["clusterIP"] == "127.96.1.2"
    assert a["spec"]["clusterIPs"] == ["127.96.1.1"]
    assert a["spec"]["ipFamilies"] == ["IPv4"] and a["spec"]["ipFamilyPolicy"] == "SingleStack"
    (c,), snap = admit_all(adm, [svc("c", clusterIP="127.96.0.10")], snap)
    assert c["spec"]["clusterIPs"] == ["127.96.0.10"]


def test_cluster_ip_conflicts_and_range(adm):
    (a,), snap = admit_all(adm, [svc("a", clusterIP="127.96.0.10")])
    with pytest.raises(Invalid) as info:
        adm.admit("create", svc("b", clusterIP="127.96.0.10"), None, snap)
    assert str(info.value) == ('Service "b" is invalid: spec.clusterIPs: Invalid value: ["127.96.0.10"]: '
                               "failed to allocate IP 127.96.0.10: provided IP is already allocated")
    with pytest.raises(Invalid) as info:
        adm.admit("create", svc("b", clusterIP="10.0.0.1"), None, snap)
    assert str(info.value).endswith("failed to allocate IP 10.0.0.1: provided IP is not in the valid range. "
                                    "The range of valid IPs is 127.96.0.0/16")
    for edge in ("127.96.0.0", "127.96.255.255"):  # network and broadcast are never valid
        with pytest.raises(Invalid):
            adm.admit("create", svc("b", clusterIP=edge), None, snap)
    # deleting frees the address (allocation is derived from the snapshot)
    snap.remove("Service", "default", "a")
    snap.resource_version += 1
    assert adm.admit("create", svc("b", clusterIP="127.96.0.10"), None, snap)["spec"]["clusterIP"] == "127.96.0.10"


def test_update_keeps_cluster_ip_and_refuses_change(adm):
    (a,), snap = admit_all(adm, [svc("a")])
    again = adm.admit("update", svc("a", ports=[{"port": 81}]), a, snap)
    assert again["spec"]["clusterIPs"] == a["spec"]["clusterIPs"]
    with pytest.raises(Invalid) as info:
        adm.admit("update", svc("a", clusterIP="127.96.0.99"), a, snap)
    assert "field is immutable" in str(info.value)


def test_small_range_fills_up_and_never_uses_network_or_broadcast():
    adm = Admission(LabConfig(service_cidrs=(ipaddress.ip_network("10.0.0.0/29"),)))
    got, snap = admit_all(adm, [svc(f"s{i}") for i in range(6)])
    ips = sorted(g["spec"]["clusterIP"] for g in got)
    assert ips == [f"10.0.0.{i}" for i in range(1, 7)]
    with pytest.raises(Invalid) as info:
        adm.admit("create", svc("s6"), None, snap)
    assert "range is full" in str(info.value)


def test_dual_stack():
    cfg = LabConfig(service_cidrs=(ipaddress.ip_network("127.96.0.0/16"), ipaddress.ip_network("fd00:10:96::/112")))
    adm = Admission(cfg)
    (pref, req, single, v6), snap = admit_all(adm, [
        svc("pref", ipFamilyPolicy="PreferDualStack"),
        svc("req", ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"]),
        svc("single"),
        svc("v6", ipFamilies=["IPv6"]),
    ])
    assert pref["spec"]["ipFamilies"] == ["IPv4", "IPv6"] and len(pref["spec"]["clusterIPs"]) == 2
    assert ipaddress.ip_address(pref["spec"]["clusterIPs"][1]).version == 6
    assert req["spec"]["ipFamilies"] == ["IPv6", "IPv4"] and req["spec"]["clusterIP"].startswith("fd00:10:96::")
    assert single["spec"]["ipFamilies"] == ["IPv4"] and len(single["spec"]["clusterIPs"]) == 1
    assert v6["spec"]["clusterIPs"][0].startswith("fd00:10:96::")


def test_require_dual_stack_on_single_stack_cluster(adm):
    with pytest.raises(Invalid) as info:
        adm.admit("create", svc(ipFamilyPolicy="RequireDualStack"), None, FakeSnapshot())
    assert str(info.value).endswith('spec.ipFamilyPolicy: Invalid value: "RequireDualStack": '
                                    "this cluster is not configured for dual-stack services")


def test_headless_and_external_name(adm):
    (h, e), _ = admit_all(adm, [svc("h", clusterIP="None", ports=[]),
                                svc("e", type="ExternalName", externalName="db.example.com", ports=[])])
    assert h["spec"]["clusterIP"] == "None" and h["spec"]["clusterIPs"] == ["None"]
    assert "clusterIP" not in e["spec"] and "ipFamilies" not in e["spec"]


def test_node_ports(adm):
    (a,), snap = admit_all(adm, [svc("a", type="NodePort", ports=[
        {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53}, {"name": "web", "port": 80}])])
    ports = [p["nodePort"] for p in a["spec"]["ports"]]
    assert ports[0] == ports[1] == 30086  # static band of 86 at the low end; same number shares
    assert ports[2] == 30087
    (b,), snap = admit_all(adm, [svc("b", type="NodePort", ports=[{"port": 80, "nodePort": 30000}])], snap)
    assert b["spec"]["ports"][0]["nodePort"] == 30000
    with pytest.raises(Invalid) as info:
        adm.admit("create", svc("c", type="NodePort", ports=[{"port": 80, "nodePort": 30000}]), None, snap)
    assert str(info.value).endswith("spec.ports[0].nodePort: Invalid value: 30000: provided port is already allocated")
    with pytest.raises(Invalid) as info:
        adm.admit("create", svc("c", type="NodePort", ports=[{"port": 80, "nodePort": 20000}]), None, snap)
    assert str(info.value).endswith("spec.ports[0].nodePort: Invalid value: 20000: provided port is not in the valid range. "
                                    "The range of valid ports is 30000-32767")
    # update keeps node ports; switching to ClusterIP drops them
    again = adm.admit("update", svc("b", type="NodePort", ports=[{"port": 80}]), b, snap)
    assert again["spec"]["ports"][0]["nodePort"] == 30000
    plain = adm.admit("update", svc("b", ports=[{"port": 80}]), b, snap)
    assert "nodePort" not in plain["spec"]["ports"][0]


def test_node_port_range_full():
    adm = Admission(LabConfig(node_port_range=(30000, 30001)))
    (a,), snap = admit_all(adm, [svc("a", type="NodePort", ports=[{"name": "a", "port": 1}, {"name": "b", "port": 2}])])
    assert sorted(p["nodePort"] for p in a["spec"]["ports"]) == [30000, 30001]
    with pytest.raises(Invalid) as info:
        adm.admit("create", svc("b", type="NodePort"), None, snap)
    assert "range is full" in str(info.value)


def test_load_balancer():
    adm = Admission(LabConfig(lb_pool=ipaddress.ip_network("127.240.0.0/30")))
    (a, b), snap = admit_all(adm, [svc("a", type="LoadBalancer"), svc("b", type="LoadBalancer")])
    assert a["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.240.0.1"
    assert b["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.240.0.2"
    assert a["spec"]["ports"][0]["nodePort"]
    # pool exhausted: pending, not refused (MetalLB)
    (c,), snap = admit_all(adm, [svc("c", type="LoadBalancer")], snap)
    assert c["status"]["loadBalancer"] == {}
    # the address survives updates, and a user cannot overwrite status
    again = adm.admit("update", {**svc("a", type="LoadBalancer"), "status": {"loadBalancer": {"ingress": [{"ip": "9.9.9.9"}]}}}, a, snap)
    assert again["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.240.0.1"
    # deleting b frees its address for c
    snap.remove("Service", "default", "b")
    snap.resource_version += 1
    c2 = adm.admit("update", svc("c", type="LoadBalancer"), c, snap)
    assert c2["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.240.0.2"


def test_load_balancer_requested_ip():
    adm = Admission(LabConfig())
    (a,), snap = admit_all(adm, [svc("a", type="LoadBalancer", loadBalancerIP="127.240.0.77")])
    assert a["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.240.0.77"
    ann = svc("b", type="LoadBalancer")
    ann["metadata"]["annotations"] = {"metallb.universe.tf/loadBalancerIPs": "127.240.0.77"}
    (b,), snap = admit_all(adm, [ann], snap)
    assert b["status"]["loadBalancer"] == {}  # taken: pending
    ann["metadata"]["annotations"] = {"metallb.universe.tf/loadBalancerIPs": "127.240.0.78"}
    (c,), snap = admit_all(adm, [{**ann, "metadata": {**ann["metadata"], "name": "c"}}], snap)
    assert c["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.240.0.78"


def test_batch_allocation_is_unique_even_when_snapshot_lags():
    """Objects admitted earlier in a batch hold their addresses even before they are visible."""
    adm = Admission(LabConfig())
    snap = FakeSnapshot(resource_version=5)
    a = adm.admit("create", svc("a"), None, snap)
    b = adm.admit("create", svc("b"), None, snap)  # snap does not contain a
    assert a["spec"]["clusterIP"] != b["spec"]["clusterIP"]


def test_index_rebuilt_from_existing_services():
    """A fresh Admission (controller restart) sees what the stored services hold."""
    first = Admission(LabConfig())
    got, snap = admit_all(first, [svc("a", clusterIP="127.96.1.1")])
    second = Admission(LabConfig())
    b = second.admit("create", svc("b"), None, snap)
    assert b["spec"]["clusterIP"] == "127.96.1.2"


def test_dual_stack_update_without_allocated_fields_keeps_them():
    cfg = LabConfig(service_cidrs=(ipaddress.ip_network("127.96.0.0/16"), ipaddress.ip_network("fd00:10:96::/112")))
    adm = Admission(cfg)
    (a,), snap = admit_all(adm, [svc("a", ipFamilyPolicy="PreferDualStack")])
    for manifest in (svc("a"), svc("a", clusterIP=a["spec"]["clusterIP"])):
        again = adm.admit("update", manifest, a, snap)
        assert again["spec"]["clusterIPs"] == a["spec"]["clusterIPs"]
        assert again["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
        assert again["spec"]["ipFamilyPolicy"] == "PreferDualStack"


def test_type_changes():
    adm = Admission(LabConfig())
    (a,), snap = admit_all(adm, [svc("a", type="LoadBalancer")])
    ip = a["spec"]["clusterIP"]
    to_ext = adm.admit("update", svc("a", type="ExternalName", externalName="x.example", ports=[]), a, snap)
    assert "clusterIP" not in to_ext["spec"] and to_ext["status"]["loadBalancer"] == {}
    back = adm.admit("update", svc("a"), to_ext, snap)
    assert back["spec"]["clusterIP"] and back["spec"]["clusterIP"] != "None"
    to_cip = adm.admit("update", svc("a"), a, snap)
    assert to_cip["spec"]["clusterIP"] == ip and "nodePort" not in to_cip["spec"]["ports"][0]
    assert to_cip["status"]["loadBalancer"] == {}


def test_reapplying_a_run_pod_manifest_is_accepted(adm):
    first = adm.admit("create", pod(), None, FakeSnapshot())
    again = adm.admit("update", pod(), first, FakeSnapshot([first]))
    assert again["spec"] == first["spec"] and again["status"] == first["status"]
