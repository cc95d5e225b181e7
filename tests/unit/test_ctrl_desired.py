"""desired_zone / desired_routes from a snapshot, and the incremental cache agreeing with them."""

import ipaddress
import json
import pathlib
import random

import pytest

from kubelab.controller.config import LabConfig
from kubelab.controller.desired import DesiredCache, desired_routes, desired_zone, service_routes, zone_pods
from kubelab.controller.endpointslices import slices_for_service
from kubelab.dns.zone import ZoneData
from kubelab.proxy.table import Frontend, RouteTable

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "dns-cases.json"
CLUSTER = json.loads(DATA.read_text())["cluster"]
CFG = LabConfig(service_cidrs=(ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00:10:96::/112")))


class FakeSnapshot:
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


def cluster_snapshot():
    objs = ([dict(o, kind=o.get("kind", "Service")) for o in CLUSTER["services"]] + CLUSTER["pods"]
            + CLUSTER["endpointSlices"] + CLUSTER["namespaces"])
    return FakeSnapshot(objs)


def test_zone_from_conformance_cluster():
    zone = desired_zone(cluster_snapshot(), CFG, 7)
    assert zone.generation == 7
    web = zone.services["prod/web"]
    assert web.cluster_ips == ("10.96.10.10",) and not web.headless
    assert [(e.address, e.ready) for e in web.endpoints] == [
        ("10.244.1.5", True), ("10.244.2.5", True), ("10.244.2.6", False), ("10.244.3.5", False)]
    assert [p.port for p in web.endpoints[0].ports] == [8080, 8443]
    mysql = zone.services["db/mysql"]
    assert mysql.headless and mysql.cluster_ips == ()
    assert {e.hostname for e in mysql.endpoints} == {"mysql-0", "mysql-1", "mysql-2"}
    assert zone.services["prod/ext-db"].external_name == "db.example.com"
    assert zone.services["prod/dual"].cluster_ips == ("10.96.10.50", "fd00:10:96::50")
    assert zone.services["default/kubernetes"].endpoints == ()
    # 16 pods, one of them terminating (prod/web-...-zzzzz, deletionTimestamp set)
    assert len(zone.pods) == 15 and zone.pods == tuple(sorted(zone.pods, key=lambda p: (p.namespace, p.name, p.ip)))
    assert "10.244.2.6" not in {p.ip for p in zone.pods}
    assert zone.namespaces == ("db", "default", "kube-system", "prod", "staging")
    # and it survives the contract's JSON round trip
    assert ZoneData.from_json(json.loads(json.dumps(zone.to_json()))) == zone


def test_routes_from_conformance_cluster():
    table = desired_routes(cluster_snapshot(), CFG, 3)
    r = table.routes
    dns_udp = r[Frontend("10.96.0.10", 53, "UDP")]
    assert dns_udp.service == "kube-system/kube-dns" and dns_udp.port_name == "dns" and dns_udp.kind == "ClusterIP"
    assert [(b.ip, b.port, b.node) for b in dns_udp.backends] == [("10.244.0.2", 53, "node-0"), ("10.244.1.2", 53, "node-1")]
    web_np = r[Frontend("127.0.0.1", 30443, "TCP")]
    assert web_np.kind == "NodePort" and {b.port for b in web_np.backends} == {8443}
    term = [b for b in web_np.backends if b.terminating]
    assert [(b.ip, b.ready, b.serving) for b in term] == [("10.244.2.6", False, True)]
    assert Frontend("fd00:10:96::50", 80, "TCP") in r
    assert not any(rt.service.startswith("db/") for rt in r.values())  # headless: no VIP
    assert not any(rt.service == "prod/ext-db" for rt in r.values())
    assert list(r) == sorted(r)
    assert RouteTable.from_json(json.loads(json.dumps(table.to_json()))).routes == table.routes


def test_service_routes_kinds_and_policies():
    svc = {"kind": "Service", "metadata": {"name": "lb", "namespace": "ns"},
           "spec": {"type": "LoadBalancer", "clusterIP": "127.96.1.1", "clusterIPs": ["127.96.1.1"],
                    "externalIPs": ["127.0.0.50"], "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                    "internalTrafficPolicy": "Local", "externalTrafficPolicy": "Local",
                    "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"},
                              {"name": "sctp", "port": 90, "protocol": "SCTP"}]},
           "status": {"loadBalancer": {"ingress": [{"ip": "127.240.0.1"}]}}}
    es = {"kind": "EndpointSlice", "metadata": {"name": "lb-ipv4", "namespace": "ns", "labels": {"kubernetes.io/service-name": "lb"}},
          "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
          "endpoints": [{"addresses": ["127.244.0.5"], "conditions": {"ready": True}, "nodeName": "n1",
                         "targetRef": {"kind": "Pod", "namespace": "ns", "name": "p"}}]}
    routes = service_routes(svc, [es], ["127.0.0.1", "127.0.0.2"])
    kinds = {(f.ip, f.port): (r.kind, r.traffic_policy, r.affinity_timeout) for f, r in routes.items()}
    assert kinds == {
        ("127.96.1.1", 80): ("ClusterIP", "Local", 60),
        ("127.0.0.1", 30080): ("NodePort", "Local", 60),
        ("127.0.0.2", 30080): ("NodePort", "Local", 60),
        ("127.240.0.1", 80): ("LoadBalancer", "Local", 60),
        ("127.0.0.50", 80): ("ExternalIP", "Local", 60),
    }
    (b,) = routes[Frontend("127.96.1.1", 80, "TCP")].backends
    assert (b.ip, b.port, b.pod, b.node, b.ready, b.serving, b.terminating) == ("127.244.0.5", 8080, "ns/p", "n1", True, True, False)


def test_node_addresses_from_nodes():
    snap = cluster_snapshot()
    snap.put({"kind": "Node", "metadata": {"name": "n"}, "status": {"addresses": [
        {"type": "InternalIP", "address": "127.0.0.9"}, {"type": "Hostname", "address": "n"}]}})
    table = desired_routes(snap, CFG, 1)
    assert Frontend("127.0.0.9", 30080, "TCP") in table.routes
    assert Frontend("127.0.0.1", 30080, "TCP") not in table.routes


def _rv_counter():
    n = [100]

    def bump(obj):
        n[0] += 1
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(n[0])}}
    return bump


def test_cache_matches_full_computation_under_random_changes():
    rnd = random.Random(1234)
    bump = _rv_counter()
    snap = FakeSnapshot()
    for o in [dict(s, kind="Service") for s in CLUSTER["services"]] + CLUSTER["pods"] + CLUSTER["endpointSlices"]:
        snap.put(bump(o))
    cache = DesiredCache(CFG)
    cache.update(snap)
    assert cache.zone(1) == desired_zone(snap, CFG, 1)
    assert cache.routes(1, desired_routes(snap, CFG, 1).policy) == desired_routes(snap, CFG, 1)
    services = [s for s in snap.list("Service") if (s["spec"].get("selector"))]
    for step in range(60):
        action = rnd.choice(["flip", "delete_pod", "terminate_pod", "add_svc", "del_svc", "node", "namespace"])
        if action == "flip":
            pod = rnd.choice(snap.list("Pod"))
            cond = pod["status"]["conditions"][0]["status"]
            new = {**pod, "status": {**pod["status"], "conditions": [{"type": "Ready", "status": "False" if cond == "True" else "True"}]}}
            snap.put(bump(new))
            cache.mark_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
        elif action == "delete_pod" and snap.list("Pod"):
            pod = rnd.choice(snap.list("Pod"))
            snap.remove("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])
            cache.mark_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
        elif action == "terminate_pod" and snap.list("Pod"):
            pod = rnd.choice(snap.list("Pod"))
            snap.put(bump({**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}))
            cache.mark_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
        elif action == "namespace":  # the manager names no namespace as changed
            name = f"ns-{rnd.randint(0, 3)}"
            if snap.get("Namespace", "", name) is None:
                snap.put(bump({"kind": "Namespace", "metadata": {"name": name}}))
            else:
                snap.remove("Namespace", "", name)
        elif action == "add_svc":
            name = f"extra-{step}"
            s = {"kind": "Service", "metadata": {"name": name, "namespace": "prod"},
                 "spec": {"type": "ClusterIP", "clusterIP": f"10.96.20.{step}", "clusterIPs": [f"10.96.20.{step}"],
                          "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}}
            snap.put(bump(s))
            cache.mark_service("prod", name)
        elif action == "del_svc":
            s = rnd.choice(snap.list("Service"))
            snap.remove("Service", s["metadata"]["namespace"], s["metadata"]["name"])
            cache.mark_service(s["metadata"]["namespace"], s["metadata"]["name"])
        else:
            snap.put(bump({"kind": "Node", "metadata": {"name": "n"}, "status": {"addresses": [
                {"type": "InternalIP", "address": f"127.0.0.{rnd.randint(1, 3)}"}]}}))
            cache.mark_nodes()
        # the endpoint-slice controller's job: rewrite every service's slices
        for es in snap.list("EndpointSlice"):
            snap.remove("EndpointSlice", es["metadata"]["namespace"], es["metadata"]["name"])
            cache.mark_slice(es["metadata"]["namespace"], es["metadata"]["name"])
        for s in snap.list("Service"):
            for es in slices_for_service(s, snap.list("Pod", s["metadata"]["namespace"])):
                old = snap.get("EndpointSlice", es["metadata"]["namespace"], es["metadata"]["name"])
                snap.put(bump(es))
                cache.mark_slice(es["metadata"]["namespace"], es["metadata"]["name"])
        cache.update(snap)
        full_zone = desired_zone(snap, CFG, step)
        full_routes = desired_routes(snap, CFG, step)
        assert cache.zone(step) == full_zone, action
        assert cache.routes(step, full_routes.policy) == full_routes, action


def test_cache_reports_changes_only_when_there_are_some():
    snap = cluster_snapshot()
    cache = DesiredCache(CFG)
    assert cache.update(snap) == (True, True)
    assert cache.update(snap) == (False, False)
    cache.mark_service("prod", "web")
    assert cache.update(snap) == (False, False)  # same objects: memo hit, nothing changed


def test_cache_bulk_pod_changes_match_full_computation():
    snap = cluster_snapshot()
    cache = DesiredCache(CFG)
    cache.update(snap)
    for i in range(300):  # more than the incremental path's bulk threshold
        p = {"kind": "Pod", "metadata": {"name": f"bulk-{i:03d}", "namespace": "prod", "resourceVersion": str(i)},
             "spec": {}, "status": {"phase": "Running", "podIP": f"10.250.{i // 200}.{i % 200 + 1}"}}
        snap.put(p)
        cache.mark_pod("prod", p["metadata"]["name"])
    snap.remove("Pod", "prod", "debug-shell")
    cache.mark_pod("prod", "debug-shell")
    zone_changed, _ = cache.update(snap)
    assert zone_changed
    assert cache.zone(2) == desired_zone(snap, CFG, 2)
    for i in range(0, 300, 2):
        snap.remove("Pod", "prod", f"bulk-{i:03d}")
        cache.mark_pod("prod", f"bulk-{i:03d}")
    cache.update(snap)
    assert cache.zone(3) == desired_zone(snap, CFG, 3)
    snap.remove("Pod", "prod", "bulk-001")  # and a small change afterwards (insertion path)
    cache.mark_pod("prod", "bulk-001")
    cache.update(snap)
    assert cache.zone(4) == desired_zone(snap, CFG, 4)


def _pod(name, ns="prod", **status):
    return {"kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": {},
            "status": {"phase": "Running", **status}}


# (status, what the pod's DNS records publish)
PRIMARY_IP_CASES = [
    ({"podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}]}, ("10.1.0.5",)),
    ({"podIP": "10.1.0.5"}, ("10.1.0.5",)),  # podIPs absent (simulated pods)
    ({"podIPs": [{"ip": "10.1.0.5"}]}, ("10.1.0.5",)),  # podIP absent
    ({"podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}]}, ("10.1.0.5", "fd00::5")),  # dual stack
    ({"podIP": "fd00::5", "podIPs": [{"ip": "fd00::5"}, {"ip": "10.1.0.5"}]}, ("10.1.0.5", "fd00::5")),
    # only the primary of a family: a second IPv4 (or a stale podIPs entry) publishes nothing
    ({"podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "10.1.0.6"}]}, ("10.1.0.5",)),
    ({"podIP": "10.1.0.7", "podIPs": [{"ip": "10.1.0.6"}]}, ("10.1.0.7",)),
    ({"podIPs": ["10.1.0.5", "10.1.0.9"]}, ("10.1.0.5",)),  # plain strings tolerated
    ({}, ()),  # no address yet (pending)
    ({"podIP": "not-an-ip"}, ()),
]


@pytest.mark.parametrize("status,ips", PRIMARY_IP_CASES)
def test_pod_records_publish_the_primary_ip_per_family(status, ips):
    assert tuple(p.ip for p in zone_pods(_pod("a", **status))) == ips


@pytest.mark.parametrize("change", [
    {"metadata": {"name": "a", "namespace": "prod", "deletionTimestamp": "2026-01-01T00:00:00Z"}},
    {"status": {"phase": "Succeeded", "podIP": "10.1.0.5"}},
    {"status": {"phase": "Failed", "podIP": "10.1.0.5"}},
])
def test_terminating_and_terminal_pods_have_no_pod_records(change):
    assert zone_pods(_pod("a", podIP="10.1.0.5"))  # the baseline publishes
    assert zone_pods({**_pod("a", podIP="10.1.0.5"), **change}) == ()


def test_zone_namespaces_from_namespace_objects():
    snap = FakeSnapshot([{"kind": "Namespace", "metadata": {"name": n}} for n in ("b", "a", "empty")])
    zone = desired_zone(snap, CFG, 1)
    assert zone.namespaces == ("a", "b", "empty") and not zone.services and not zone.pods
    assert desired_zone(FakeSnapshot(), CFG, 1).namespaces == ()


def test_cache_publishes_namespace_and_terminating_changes():
    snap = cluster_snapshot()
    cache = DesiredCache(CFG)
    cache.update(snap)
    assert "staging" in cache.zone(1).namespaces
    snap.put({"kind": "Namespace", "metadata": {"name": "empty", "resourceVersion": "9"}})
    assert cache.update(snap) == (True, False)  # no mark_*: namespaces are re-read every update
    assert cache.zone(2).namespaces == desired_zone(snap, CFG, 2).namespaces
    assert "empty" in cache.zone(2).namespaces
    snap.remove("Namespace", "", "empty")
    assert cache.update(snap)[0] and "empty" not in cache.zone(3).namespaces
    pod = snap.get("Pod", "prod", "debug-shell")
    assert "10.244.1.99" in {p.ip for p in cache.zone(3).pods}
    snap.put({**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "10"}})
    cache.mark_pod("prod", "debug-shell")
    assert cache.update(snap)[0]
    assert "10.244.1.99" not in {p.ip for p in cache.zone(4).pods}
    assert cache.zone(4) == desired_zone(snap, CFG, 4)
