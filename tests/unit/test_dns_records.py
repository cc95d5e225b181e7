"""Record building: what each service publishes, and incremental == full rebuild."""

import dataclasses
import random

import dns.message
import dns.rdatatype
import dns.reversename

from kubelab.dns import wire
from kubelab.dns.config import DnsConfig
from kubelab.dns.records import EMPTY, RecordTable, build, service_records, template_message
from kubelab.dns.zone import Endpoint, Pod, Service, ServicePort, ZoneData

CFG = DnsConfig(upstreams=(), reverse_zones=("10.in-addr.arpa.", "6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."),
                dns_service_ip="10.96.0.10")
Z = CFG.zone
HTTP = ServicePort("http", 80)
HTTPS = ServicePort("https", 443)


def W(name: str) -> bytes:
    return wire.name_to_wire(name)


def decode(table: RecordTable, name: str, rtype: str) -> list[str]:
    """Render the template for (name, type) as dnspython sees it on the wire."""
    qt = dns.rdatatype.from_text(rtype)
    tpl = table.lookup(W(name.lower()), qt)
    if tpl is None:
        return []
    q = dns.message.make_query(name, rtype)
    data = q.to_wire()
    r = dns.message.from_wire(template_message(tpl, data[:2], data[12:]))
    return sorted(f"{rr.name} {dns.rdatatype.to_text(rr.rdtype)} {rd}" for rr in r.answer for rd in rr)


def svc(name="web", ns="prod", **kw) -> Service:
    return Service(ns, name, **kw)


def zone(*services, pods=(), gen=1, namespaces=()) -> ZoneData:
    return ZoneData(gen, {s.key: s for s in services}, tuple(pods), tuple(namespaces))


WEB = svc(cluster_ips=("10.96.10.10",), ports=(HTTP, HTTPS),
          endpoints=(Endpoint("10.244.1.5", True, None, (ServicePort("http", 8080),)),
                     Endpoint("10.244.3.5", False)))
MYSQL = svc("mysql", "db", headless=True, ports=(ServicePort("mysql", 3306),), endpoints=(
    Endpoint("10.244.1.10", True, "mysql-0", (ServicePort("mysql", 3306),)),
    Endpoint("10.244.2.11", True, "mysql-1", (ServicePort("mysql", 3306),)),
    Endpoint("10.244.3.12", False, "mysql-2", (ServicePort("mysql", 3306),))))


def test_clusterip_records():
    t = build(CFG, zone(WEB), 1)
    assert decode(t, "web.prod.svc.cluster.local.", "A") == ["web.prod.svc.cluster.local. A 10.96.10.10"]
    assert decode(t, "_http._tcp.web.prod.svc.cluster.local.", "SRV") == [
        "_http._tcp.web.prod.svc.cluster.local. SRV 0 100 80 web.prod.svc.cluster.local."]
    assert decode(t, "web.prod.svc.cluster.local.", "SRV") == [
        "web.prod.svc.cluster.local. SRV 0 50 443 web.prod.svc.cluster.local.",
        "web.prod.svc.cluster.local. SRV 0 50 80 web.prod.svc.cluster.local."]
    # ready endpoint name + PTRs (ClusterIP and endpoint), not-ready endpoint absent
    assert decode(t, "10-244-1-5.web.prod.svc.cluster.local.", "A") == [
        "10-244-1-5.web.prod.svc.cluster.local. A 10.244.1.5"]
    assert t.lookup(W("10-244-3-5.web.prod.svc.cluster.local."), wire.A) is None
    assert decode(t, "10.10.96.10.in-addr.arpa.", "PTR") == [
        "10.10.96.10.in-addr.arpa. PTR web.prod.svc.cluster.local."]
    assert decode(t, "5.1.244.10.in-addr.arpa.", "PTR") == [
        "5.1.244.10.in-addr.arpa. PTR 10-244-1-5.web.prod.svc.cluster.local."]
    # empty non-terminals exist
    for ent in ("_tcp.web.prod.svc.cluster.local.", "prod.svc.cluster.local.", "96.10.in-addr.arpa."):
        assert t.answers.get(W(ent)) is EMPTY, ent


def test_headless_records():
    t = build(CFG, zone(MYSQL), 1)
    assert decode(t, "mysql.db.svc.cluster.local.", "A") == [
        "mysql.db.svc.cluster.local. A 10.244.1.10", "mysql.db.svc.cluster.local. A 10.244.2.11"]
    assert decode(t, "_mysql._tcp.mysql.db.svc.cluster.local.", "SRV") == [
        "_mysql._tcp.mysql.db.svc.cluster.local. SRV 0 50 3306 mysql-0.mysql.db.svc.cluster.local.",
        "_mysql._tcp.mysql.db.svc.cluster.local. SRV 0 50 3306 mysql-1.mysql.db.svc.cluster.local."]
    tpl = t.lookup(W("_mysql._tcp.mysql.db.svc.cluster.local."), wire.SRV)
    assert isinstance(tpl, tuple) and len(tpl) == 2  # with glue, and a variant without it
    assert W("mysql-2.mysql.db.svc.cluster.local.") not in t.answers
    assert decode(t, "12.3.244.10.in-addr.arpa.", "PTR") == []


def test_headless_without_ready_endpoints_publishes_nothing():
    ghost = svc("ghost", "db", headless=True, ports=(HTTP,), endpoints=(Endpoint("10.244.3.40", False),))
    c = service_records(ghost, Z, 5)
    assert not c.rrsets and not c.ptrs


def test_headless_srv_uses_endpoint_port_and_dedups():
    cache = svc("cache", "db", headless=True, ports=(ServicePort("redis", 6379),), endpoints=(
        Endpoint("10.244.2.20", True, None, (ServicePort("redis", 6380),)),
        Endpoint("10.244.2.20", True, None, (ServicePort("redis", 6380),))))
    t = build(CFG, zone(cache), 1)
    assert decode(t, "_redis._tcp.cache.db.svc.cluster.local.", "SRV") == [
        "_redis._tcp.cache.db.svc.cluster.local. SRV 0 50 6380 10-244-2-20.cache.db.svc.cluster.local."]


def test_external_name():
    t = build(CFG, zone(svc("ext", external_name="DB.example.com"), svc("ip", external_name="1.2.3.4")), 1)
    assert decode(t, "ext.prod.svc.cluster.local.", "CNAME") == [
        "ext.prod.svc.cluster.local. CNAME db.example.com."]
    assert t.cnames[W("ext.prod.svc.cluster.local.")] == W("db.example.com.")
    assert W("ip.prod.svc.cluster.local.") not in t.answers  # E5: IP literal -> nothing


def test_dual_stack_and_ipv6_ptr():
    dual = svc("dual", cluster_ips=("10.96.10.50", "fd00:10:96::50"), ports=(HTTP,))
    t = build(CFG, zone(dual), 1)
    assert decode(t, "dual.prod.svc.cluster.local.", "AAAA") == ["dual.prod.svc.cluster.local. AAAA fd00:10:96::50"]
    rev = dns.reversename.from_address("fd00:10:96::50").to_text()
    assert decode(t, rev, "PTR") == [f"{rev} PTR dual.prod.svc.cluster.local."]


def test_clusterip_ptr_wins_over_endpoint_ptr_and_endpoint_ptrs_merge():
    a = svc("a", cluster_ips=("10.96.0.5",), endpoints=(Endpoint("10.244.0.9"),))
    b = svc("b", endpoints=(Endpoint("10.96.0.5"), Endpoint("10.244.0.9")), cluster_ips=("10.96.0.6",))
    t = build(CFG, zone(a, b), 1)
    assert decode(t, "5.0.96.10.in-addr.arpa.", "PTR") == ["5.0.96.10.in-addr.arpa. PTR a.prod.svc.cluster.local."]
    assert decode(t, "9.0.244.10.in-addr.arpa.", "PTR") == [
        "9.0.244.10.in-addr.arpa. PTR 10-244-0-9.a.prod.svc.cluster.local.",
        "9.0.244.10.in-addr.arpa. PTR 10-244-0-9.b.prod.svc.cluster.local."]


def test_apex_and_static_records():
    t = build(CFG, zone(), 42)
    assert decode(t, "cluster.local.", "NS") == ["cluster.local. NS ns.dns.cluster.local."]
    assert decode(t, "cluster.local.", "SOA")[0].endswith("hostmaster.cluster.local. 42 7200 1800 86400 5")
    assert decode(t, "dns-version.cluster.local.", "TXT") == ['dns-version.cluster.local. TXT "1.1.0"']
    assert decode(t, "ns.dns.cluster.local.", "A") == ["ns.dns.cluster.local. A 10.96.0.10"]
    assert decode(t, "10.in-addr.arpa.", "SOA")
    for ent in ("svc.cluster.local.", "pod.cluster.local.", "dns.cluster.local."):
        assert W(ent) in t.answers


def test_namespaces_and_pods():
    t = build(CFG, zone(pods=[Pod("prod", "p", "10.244.1.5"), Pod("prod", "q", "fd00::5")],
                        namespaces=["staging"]), 1)
    assert W("staging.svc.cluster.local.") in t.answers and W("staging.pod.cluster.local.") in t.answers
    assert W("prod.pod.cluster.local.") in t.answers
    assert W("10-244-1-5.prod.pod.cluster.local.") in t.pods
    assert W("fd00--5.prod.pod.cluster.local.") in t.pods
    disabled = build(dataclasses.replace(CFG, pods_mode="disabled"), zone(pods=[Pod("prod", "p", "10.244.1.5")]), 1)
    assert not disabled.pods and W("prod.pod.cluster.local.") in disabled.answers


def test_invalid_names_are_skipped_not_fatal():
    bad = svc("x" * 70, cluster_ips=("10.96.0.9",))
    t = build(CFG, zone(bad, WEB), 1)
    assert t.lookup(W("web.prod.svc.cluster.local."), wire.A) is not None


def _state(t: RecordTable):
    return (dict(t.answers), dict(t.cnames), dict(t.pods), dict(t.ent_refs))


def _random_zone(rng: random.Random, gen: int) -> ZoneData:
    services = []
    for i in range(rng.randrange(0, 12)):
        ns = rng.choice(["a", "b", "c"])
        kind = rng.random()
        eps = tuple(Endpoint(f"10.244.{rng.randrange(3)}.{rng.randrange(1, 6)}", rng.random() < 0.7,
                             rng.choice([None, f"h{rng.randrange(3)}"]),
                             (ServicePort(rng.choice(["http", ""]), rng.choice([80, 8080])),))
                    for _ in range(rng.randrange(0, 5)))
        if kind < 0.15:
            s = Service(ns, f"s{i}", external_name=rng.choice(["x.example.com", f"s0.{ns}.svc.cluster.local"]))
        elif kind < 0.5:
            s = Service(ns, f"s{i}", headless=True, ports=(HTTP,), endpoints=eps)
        else:
            s = Service(ns, f"s{i}", cluster_ips=(f"10.96.0.{rng.randrange(1, 9)}",), ports=(HTTP, HTTPS), endpoints=eps)
        services.append(s)
    pods = sorted({Pod(rng.choice(["a", "b"]), f"p{j}", f"10.244.0.{rng.randrange(1, 6)}")
                   for j in range(rng.randrange(0, 8))}, key=lambda p: (p.namespace, p.name))
    return ZoneData(gen, {s.key: s for s in services}, tuple(pods), tuple(rng.sample(["a", "b", "c", "d"], 2)))


def test_incremental_updates_equal_a_full_rebuild():
    rng = random.Random(1)
    table = RecordTable(CFG)
    for gen in range(1, 150):
        z = _random_zone(rng, gen)
        table.commit(table.plan(z, 7))
        fresh = build(CFG, z, 7)
        assert _state(table) == _state(fresh), f"generation {gen}"
    # back to empty: only the static skeleton remains
    table.commit(table.plan(ZoneData(999), 7))
    assert _state(table) == _state(build(CFG, ZoneData(999), 7))


def test_plan_only_touches_changed_services():
    t = build(CFG, zone(WEB, MYSQL), 1)
    new_web = dataclasses.replace(WEB, endpoints=WEB.endpoints[:1])
    plan = t.plan(zone(new_web, MYSQL, gen=2), 1)
    assert plan.services_removed == ["prod/web"] and list(plan.services_added) == ["prod/web"]
    assert t.plan(zone(WEB, MYSQL, gen=3), 1).empty
