"""The public DNS conformance cases (tests/data/dns-cases.json) against the real server.

Each case is sent over real sockets twice: with dnspython and with ``dig``
(bind9-dnsutils). The zone comes from the ``cluster_zone`` fixture; today that is
:func:`cluster_to_zone`, which does by hand what the lab controller does (the suite's
``endpointSlices`` are the controller's expected output). The lead can add a second
parametrisation that loads the same manifests through the registry and controller.
``meta.comparison`` in the JSON defines every rule :func:`check` applies.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
from dataclasses import dataclass

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from kubelab.dns.config import DnsConfig
from kubelab.dns.server import DnsServer
from kubelab.dns.zone import Endpoint, Pod, Service, ServicePort, ZoneData
from tests.helpers import DATA_DIR, run_command, wait_until

DATA = json.loads((DATA_DIR / "dns-cases.json").read_text())
CLUSTER = DATA["cluster"]
DNS_CONFIG = CLUSTER["dnsConfig"]
ADDR = "127.53.1.1"


# --------------------------------------------------------------------------- zone source
def cluster_to_zone(cluster: dict, generation: int = 1) -> ZoneData:
    """The suite's cluster as the controller would publish it (ready, hostnames, ports
    already resolved in ``endpointSlices``; terminating and finished pods dropped)."""
    slices: dict[tuple[str, str], list[dict]] = {}
    for es in cluster["endpointSlices"]:
        key = (es["metadata"]["namespace"], es["metadata"]["labels"]["kubernetes.io/service-name"])
        slices.setdefault(key, []).append(es)

    def ports(items) -> tuple[ServicePort, ...]:
        return tuple(ServicePort(p.get("name") or "", p["port"], p.get("protocol", "TCP")) for p in items)

    services = {}
    for s in cluster["services"]:
        md, spec = s["metadata"], s["spec"]
        ns, name = md["namespace"], md["name"]
        if spec.get("type") == "ExternalName":
            services[f"{ns}/{name}"] = Service(ns, name, external_name=spec["externalName"])
            continue
        headless = spec.get("clusterIP") == "None"
        eps = []
        for es in slices.get((ns, name), ()):
            eports = ports(es.get("ports", ()))
            for e in es["endpoints"]:
                ready = e.get("conditions", {}).get("ready")
                ref = e.get("targetRef") or {}
                for a in e["addresses"]:
                    eps.append(Endpoint(a, ready is not False, e.get("hostname"), eports,
                                        f"{ref.get('namespace')}/{ref.get('name')}" if ref else None))
        cips = () if headless else tuple(spec.get("clusterIPs") or [spec["clusterIP"]])
        services[f"{ns}/{name}"] = Service(ns, name, cips, headless, None, ports(spec.get("ports", ())), tuple(eps))
    pods = []
    for p in cluster["pods"]:
        md, status = p["metadata"], p.get("status", {})
        if md.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        if status.get("podIP"):
            pods.append(Pod(md["namespace"], md["name"], status["podIP"]))
    pods.sort(key=lambda p: (p.namespace, p.name))
    namespaces = tuple(sorted(n["metadata"]["name"] for n in cluster["namespaces"]))
    return ZoneData(generation, services, tuple(pods), namespaces)


def suite_config(**kw) -> DnsConfig:
    soa = DNS_CONFIG["soa"]
    return DnsConfig(
        zone=DNS_CONFIG["zone"], ttl=DNS_CONFIG["ttl"], pods_mode=DNS_CONFIG["podsMode"],
        upstreams=(), reverse_zones=tuple(DNS_CONFIG["reverseZones"]),
        dns_service_ip=DNS_CONFIG["dnsServiceIP"], soa_mname=soa["mname"], soa_rname=soa["rname"],
        soa_refresh=soa["refresh"], soa_retry=soa["retry"], soa_expire=soa["expire"],
        dns_version=DNS_CONFIG["dnsVersion"], dns_version_ttl=DNS_CONFIG["dnsVersionTTL"],
        addr=kw.pop("addr", (ADDR, 0)), **kw)


async def _zone_by_hand() -> ZoneData:
    return cluster_to_zone(CLUSTER)


def _expected_endpoints() -> int:
    return sum(len(e["addresses"]) for es in CLUSTER["endpointSlices"] for e in es["endpoints"])


async def _zone_via_controller() -> ZoneData:
    """The suite's Namespaces, Services and Pods applied through the registry (admission
    included); the controller manager derives the EndpointSlices and publishes the zone
    to an in-process sink, exactly as ``kubelab up`` feeds its DNS server."""
    ctl = pytest.importorskip("kubelab.controller.manager")
    from kubelab.controller.admission import Admission
    from kubelab.controller.config import LabConfig
    from kubelab.controller.registry import Registry
    from kubelab.controller.sinks import InProcessSink
    from kubelab.controller.store import MemoryStore

    cfg = LabConfig(service_cidrs=tuple(ipaddress.ip_network(c) for c in DNS_CONFIG["serviceCIDRs"]),
                    pod_cidr=ipaddress.ip_network(DNS_CONFIG["podCIDR"]), state_dir=None)
    store = MemoryStore()
    zones: list[ZoneData] = []
    manager = ctl.ControllerManager(Registry(store, Admission(cfg)), cfg, [InProcessSink("dns", zones.append)])
    await manager.start()
    try:
        objs = [*CLUSTER["namespaces"], *CLUSTER["services"], *CLUSTER["pods"]]
        await manager.registry.apply(json.loads(json.dumps(objs)))
        want = _expected_endpoints()

        def settled() -> bool:
            z = zones[-1] if zones else None
            return bool(z and len(z.services) == len(CLUSTER["services"])
                        and sum(len(s.endpoints) for s in z.services.values()) == want)

        await wait_until(settled, 10, "the controller's zone to hold every service and endpoint")
        return zones[-1]
    finally:
        await manager.close()
        await store.close()


# Zone sources the cases run against: name -> async () -> ZoneData.
ZONE_SOURCES = {"by-hand": _zone_by_hand, "registry+controller": _zone_via_controller}


@pytest.fixture(params=sorted(ZONE_SOURCES))
async def cluster_zone(request) -> ZoneData:
    return await ZONE_SOURCES[request.param]()


@pytest.fixture
async def conformance_server(cluster_zone):
    server = DnsServer(suite_config())
    await server.start()
    server.set_zone(cluster_zone)
    try:
        yield server
    finally:
        await server.close()


# --------------------------------------------------------------------------- comparison
@dataclass
class Reply:
    rcode: str
    aa: bool
    answer: list[tuple[str, int, str, str]]  # owner (as received), ttl, type, rdata text
    authority: list[tuple[str, int, str, str]]
    additional: list[tuple[str, int, str, str]]


def _zones() -> list[str]:
    return [DNS_CONFIG["zone"], *DNS_CONFIG["reverseZones"]]


def _in_our_zones(name: str) -> bool:
    n = name.lower().rstrip(".") + "."
    return any(n == z or n.endswith("." + z) for z in _zones())


def _norm_name(text: str) -> str:
    return text.lower().rstrip(".") + "."


def _norm_rdata(rtype: str, rdata: str, srv_strict: bool) -> tuple:
    if rtype in ("A", "AAAA"):
        return (ipaddress.ip_address(rdata),)
    if rtype in ("PTR", "CNAME", "NS"):
        return (_norm_name(rdata),)
    if rtype == "SRV":
        prio, weight, port, target = rdata.split()
        base = (int(port), _norm_name(target))
        return base + ((int(prio), int(weight)) if srv_strict else ())
    if rtype == "TXT":
        return (rdata,)
    if rtype == "SOA":
        parts = rdata.split()
        return (_norm_name(parts[0]), _norm_name(parts[1]), *parts[3:])
    return (rdata,)


def check(case: dict, reply: Reply) -> None:
    exp = case["expect"]
    cid = case["id"]
    assert reply.rcode == exp["rcode"], f"{cid}: rcode {reply.rcode} != {exp['rcode']}"
    assert reply.aa == exp["aa"], f"{cid}: aa {reply.aa}"
    srv_strict = bool(exp.get("srv_strict"))
    got = [(_norm_name(n), t, _norm_rdata(t, r, srv_strict)) for n, _ttl, t, r in reply.answer]
    want = [(_norm_name(n), t, _norm_rdata(t, r, srv_strict)) for n, t, r in exp["answers"]]
    if exp.get("exact", True):
        assert sorted(map(repr, got)) == sorted(map(repr, want)), f"{cid}: answers {reply.answer}"
    else:
        for w in want:
            assert w in got, f"{cid}: {w} missing from {reply.answer}"
        assert len(got) >= exp.get("min_answers", 0), f"{cid}: too few answers"
    if exp.get("owner_case_exact"):
        qname = case["qname"] if case["qname"].endswith(".") else case["qname"] + "."
        for owner, *_ in reply.answer:
            assert owner == qname, f"{cid}: owner {owner!r} does not echo {qname!r}"
    for owner, ttl, rtype, _ in reply.answer:
        if _in_our_zones(owner):
            assert ttl == exp.get("ttl", DNS_CONFIG["ttl"]), f"{cid}: ttl {ttl} on {owner} {rtype}"
    # A CNAME precedes the records of its target.
    types = [t for _, _, t, _ in reply.answer]
    if "CNAME" in types:
        assert types[0] == "CNAME", f"{cid}: CNAME not first: {reply.answer}"
    soas = [r for r in reply.authority if r[2] == "SOA"]
    if exp.get("authority_soa") is True:
        assert len(soas) == 1, f"{cid}: authority {reply.authority}"
        owner, ttl, _, rdata = soas[0]
        soa = DNS_CONFIG["soa"]
        if exp.get("soa_owner"):
            assert _norm_name(owner) == _norm_name(exp["soa_owner"]), f"{cid}: SOA owner {owner}"
        assert ttl == soa["soaTTL"], f"{cid}: SOA ttl {ttl}"
        mname, rname, _serial, refresh, retry, expire, minimum = rdata.split()
        assert (_norm_name(mname), _norm_name(rname)) == (soa["mname"], soa["rname"])
        assert [int(refresh), int(retry), int(expire), int(minimum)] == [
            soa["refresh"], soa["retry"], soa["expire"], soa["minimum"]]
    elif exp.get("authority_soa") is False:
        assert not soas, f"{cid}: unexpected SOA {soas}"


def _runnable(case: dict) -> bool:
    for req in case.get("requires", ()):
        if req == "ipv6":
            if not any(":" in ip for s in CLUSTER["services"] for ip in s["spec"].get("clusterIPs", ())):
                return False
        elif req.startswith("pods:") and req.split(":", 1)[1] != DNS_CONFIG["podsMode"]:
            return False
    return True


CASES = [pytest.param(c, id=c["id"], marks=() if _runnable(c) else pytest.mark.skip(reason=f"requires {c['requires']}"))
         for c in DATA["cases"]]


def _fqdn(qname: str) -> str:
    return qname if qname.endswith(".") else qname + "."


# --------------------------------------------------------------------------- clients
async def ask_dnspython(case: dict, host: str, port: int) -> Reply:
    q = dns.message.make_query(_fqdn(case["qname"]), case["qtype"], case.get("qclass", "IN"),
                               use_edns=0 if case.get("edns0") else False)
    if not case.get("rd", True):
        q.flags &= ~dns.flags.RD
    if case.get("transport", "udp") == "tcp":
        r = await dns.asyncquery.tcp(q, host, port=port, timeout=3)
    else:
        r = await dns.asyncquery.udp(q, host, port=port, timeout=3)
    assert r.id == q.id and r.question == q.question

    def rows(section):
        return [(rrset.name.to_text(), rrset.ttl, dns.rdatatype.to_text(rrset.rdtype), rd.to_text())
                for rrset in section for rd in rrset]

    return Reply(dns.rcode.to_text(r.rcode()), bool(r.flags & dns.flags.AA), rows(r.answer),
                 rows(r.authority), rows(r.additional))


_STATUS = re.compile(r"status: (\w+)")
_FLAGS = re.compile(r";; flags: ([a-z ]*);")


async def ask_dig(case: dict, host: str, port: int) -> Reply:
    args = ["dig", f"@{host}", "-p", str(port), "-c", case.get("qclass", "IN"), "-t", case["qtype"],
            "-q", _fqdn(case["qname"]), "+noall", "+comments", "+answer", "+authority", "+additional",
            "+time=3", "+tries=1", "+nocookie"]
    args.append("+edns=0" if case.get("edns0") else "+noedns")
    args.append("+recurse" if case.get("rd", True) else "+norecurse")
    if case.get("transport", "udp") == "tcp":
        args.append("+tcp")
    code, text, err = await run_command(*args, timeout=10)
    assert code == 0, f"dig failed: {text} {err}"
    status = _STATUS.search(text)
    flags = _FLAGS.search(text)
    assert status and flags, text
    sections: dict[str, list] = {"ANSWER": [], "AUTHORITY": [], "ADDITIONAL": []}
    current = None
    for line in text.splitlines():
        m = re.match(r";; (\w+) SECTION:", line)
        if m:
            current = m.group(1)
            continue
        if not line.strip() or line.startswith(";"):
            continue
        if current in sections:
            name, ttl, _cls, rtype, rdata = line.split(None, 4)
            sections[current].append((name, int(ttl), rtype, rdata.strip()))
    return Reply(status.group(1), "aa" in flags.group(1).split(), sections["ANSWER"],
                 sections["AUTHORITY"], sections["ADDITIONAL"])


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", CASES)
async def test_case_dnspython(conformance_server, case):
    host, port = conformance_server.address
    check(case, await ask_dnspython(case, host, port))


requires_dig = pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed (apt bind9-dnsutils)")


@requires_dig
@pytest.mark.parametrize("case", CASES)
async def test_case_dig(conformance_server, case):
    host, port = conformance_server.address
    check(case, await ask_dig(case, host, port))


def test_every_case_is_collected():
    # A guard against the file shrinking silently (the copy holds 52 cases).
    assert len(DATA["cases"]) >= 50
    assert len({c["id"] for c in DATA["cases"]}) == len(DATA["cases"])


def test_check_rejects_a_wrong_answer():
    case = next(c for c in DATA["cases"] if c["id"] == "clusterip-a-kubernetes")
    bad = Reply("NOERROR", True, [("kubernetes.default.svc.cluster.local.", 5, "A", "10.96.0.2")], [], [])
    with pytest.raises(AssertionError):
        check(case, bad)
    nx = next(c for c in DATA["cases"] if c["id"] == "nonexistent-service-nxdomain")
    with pytest.raises(AssertionError):
        check(nx, Reply("NXDOMAIN", True, [], [], []))  # SOA missing
