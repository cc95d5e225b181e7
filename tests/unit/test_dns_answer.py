"""Per-query decisions, without sockets: the hot path and the slow path agree, and the
DNS rules (NXDOMAIN vs NODATA, AA, case echo, EDNS, truncation, error codes) hold."""

import random

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from kubelab.dns import wire
from kubelab.dns.answer import Answerer, Forward
from kubelab.dns.config import DnsConfig
from kubelab.dns.server import _Holder
from kubelab.dns.records import build
from kubelab.dns.zone import Endpoint, Pod, Service, ServicePort, ZoneData

CFG = DnsConfig(upstreams=(), reverse_zones=("10.in-addr.arpa.",), dns_service_ip="10.96.0.10")
HTTP = ServicePort("http", 80)


def big_headless(n: int) -> Service:
    return Service("prod", "big", headless=True, ports=(HTTP,), endpoints=tuple(
        Endpoint(f"10.244.{i // 250}.{i % 250 + 1}", True, None, (HTTP,)) for i in range(n)))


ZONE = ZoneData(1, {s.key: s for s in [
    Service("prod", "web", ("10.96.10.10",), ports=(HTTP,), endpoints=(Endpoint("10.244.1.5", True, None, (HTTP,)),)),
    Service("prod", "alias", external_name="web.prod.svc.cluster.local"),
    Service("prod", "alias2", external_name="alias.prod.svc.cluster.local"),
    Service("prod", "dangling", external_name="nosuch.prod.svc.cluster.local"),
    Service("prod", "ext", external_name="db.example.com"),
    big_headless(500),
]}, (Pod("prod", "p", "10.244.1.5"),), ("prod", "staging"))


def answerer(udp=True, zone=ZONE, config=CFG, forward=False) -> Answerer:
    holder = _Holder(config)
    if zone is not None:
        holder.table = build(config, zone, 7)
    return Answerer(holder, udp, lambda client: forward)


def ask(a: Answerer, name: str, rtype="A", **kw) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, **kw)
    reply = a.answer(q.to_wire(), "127.0.0.1")
    assert isinstance(reply, bytes)
    r = dns.message.from_wire(reply)
    assert r.id == q.id and r.question == q.question
    return r


def rows(section):
    return sorted(f"{rr.name} {dns.rdatatype.to_text(rr.rdtype)} {rd}" for rr in section for rd in rr)


def test_hit_is_authoritative_and_echoes_case():
    r = ask(answerer(), "WeB.PROD.svc.Cluster.LOCAL.")
    assert r.rcode() == 0 and r.flags & dns.flags.AA and r.flags & dns.flags.RD and not r.flags & dns.flags.RA
    assert [rr.name.to_text() for rr in r.answer] == ["WeB.PROD.svc.Cluster.LOCAL."]
    assert rows(r.answer) == ["WeB.PROD.svc.Cluster.LOCAL. A 10.96.10.10"]


def test_rd_is_copied():
    q = dns.message.make_query("web.prod.svc.cluster.local.", "A")
    q.flags &= ~dns.flags.RD
    r = dns.message.from_wire(answerer().answer(q.to_wire(), "x"))
    assert not r.flags & dns.flags.RD


@pytest.mark.parametrize("name, rtype, rcode, owner", [
    ("web.prod.svc.cluster.local.", "AAAA", "NOERROR", "cluster.local."),
    ("prod.svc.cluster.local.", "A", "NOERROR", "cluster.local."),
    ("staging.svc.cluster.local.", "A", "NOERROR", "cluster.local."),
    ("_tcp.web.prod.svc.cluster.local.", "SRV", "NOERROR", "cluster.local."),
    ("nosuch.prod.svc.cluster.local.", "A", "NXDOMAIN", "cluster.local."),
    ("Www.Example.Com.prod.svc.CLUSTER.local.", "A", "NXDOMAIN", "CLUSTER.local."),
    ("nosuch.svc.cluster.local.", "AAAA", "NXDOMAIN", "cluster.local."),
    ("10-244-1-5.prod.pod.cluster.local.", "AAAA", "NOERROR", "cluster.local."),
    ("10-244-1-6.prod.pod.cluster.local.", "A", "NXDOMAIN", "cluster.local."),
    ("9.9.9.10.in-addr.arpa.", "PTR", "NXDOMAIN", "10.in-addr.arpa."),
    ("96.10.in-addr.arpa.", "PTR", "NOERROR", "10.in-addr.arpa."),
])
def test_negative_answers_carry_the_zone_soa(name, rtype, rcode, owner):
    for edns in (False, 0):
        r = ask(answerer(), name, rtype, use_edns=edns)
        assert dns.rcode.to_text(r.rcode()) == rcode and r.flags & dns.flags.AA and not r.answer
        assert len(r.authority) == 1 and r.authority[0].rdtype == dns.rdatatype.SOA
        assert r.authority[0].name.to_text() == owner  # the query's spelling of the zone
        assert r.authority[0][0].serial == 7 and r.authority[0].ttl == 5


def test_pod_verified_and_insecure():
    r = ask(answerer(), "10-244-1-5.prod.pod.cluster.local.")
    assert rows(r.answer) == ["10-244-1-5.prod.pod.cluster.local. A 10.244.1.5"]
    insecure = answerer(config=DnsConfig(upstreams=(), pods_mode="insecure"))
    r = ask(insecure, "1-2-3-4.any.pod.cluster.local.")
    assert rows(r.answer) == ["1-2-3-4.any.pod.cluster.local. A 1.2.3.4"]
    r = ask(insecure, "web-abc.any.pod.cluster.local.")
    assert r.rcode() == dns.rcode.NXDOMAIN
    disabled = answerer(config=DnsConfig(upstreams=(), pods_mode="disabled"))
    assert ask(disabled, "10-244-1-5.prod.pod.cluster.local.").rcode() == dns.rcode.NXDOMAIN


def test_cname_chase_and_chains():
    r = ask(answerer(), "alias2.prod.svc.cluster.local.")
    names = [(rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype)) for rr in r.answer]
    assert names == [("alias2.prod.svc.cluster.local.", "CNAME"), ("alias.prod.svc.cluster.local.", "CNAME"),
                     ("web.prod.svc.cluster.local.", "A")]
    assert r.answer[-1][0].to_text() == "10.96.10.10"
    r = ask(answerer(), "alias.prod.svc.cluster.local.", "AAAA")  # target has no AAAA: CNAME + SOA
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME] and r.authority
    r = ask(answerer(), "dangling.prod.svc.cluster.local.")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.answer[0].rdtype == dns.rdatatype.CNAME
    r = ask(answerer(), "ext.prod.svc.cluster.local.", "A")
    assert rows(r.answer) == ["ext.prod.svc.cluster.local. CNAME db.example.com."] and not r.authority


def test_truncation_and_edns_buffer():
    a = answerer()
    r = ask(a, "big.prod.svc.cluster.local.")
    assert r.flags & dns.flags.TC and not r.answer
    r = ask(a, "big.prod.svc.cluster.local.", use_edns=0, payload=1232)
    assert r.flags & dns.flags.TC and r.edns == 0 and r.payload == CFG.edns_udp_size
    tcp = answerer(udp=False)
    r = ask(tcp, "big.prod.svc.cluster.local.")
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 500
    # 60 endpoints: 60*16 bytes fits 1232 but not 512
    a60 = answerer(zone=ZoneData(1, {"prod/big": big_headless(60)}))
    assert ask(a60, "big.prod.svc.cluster.local.").flags & dns.flags.TC
    r = ask(a60, "big.prod.svc.cluster.local.", use_edns=0, payload=1232)
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 60
    r = ask(a60, "big.prod.svc.cluster.local.", use_edns=0, payload=600)
    assert r.flags & dns.flags.TC


def test_additional_dropped_before_truncating():
    a = answerer(zone=ZoneData(1, {"prod/big": big_headless(15)}))
    r = ask(a, "big.prod.svc.cluster.local.", "SRV", use_edns=0, payload=1232)
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 15 and not r.additional
    r = ask(answerer(udp=False, zone=ZoneData(1, {"prod/big": big_headless(15)})),
            "big.prod.svc.cluster.local.", "SRV")
    assert len(r.additional) == 15


def test_opt_echo_and_do_bit():
    r = ask(answerer(), "web.prod.svc.cluster.local.", use_edns=0, want_dnssec=True)
    assert r.edns == 0 and r.ednsflags & dns.flags.DO
    r = ask(answerer(), "web.prod.svc.cluster.local.", use_edns=0, options=[dns.edns.GenericOption(10, b"12345678")])
    assert r.edns == 0 and rows(r.answer)


def test_badvers():
    r = ask(answerer(), "web.prod.svc.cluster.local.", use_edns=1)
    assert r.rcode() == dns.rcode.BADVERS


@pytest.mark.parametrize("rtype", ["AXFR", "IXFR"])
def test_zone_transfer_refused(rtype):
    q = dns.message.make_query("cluster.local.", rtype)
    r = dns.message.from_wire(answerer(udp=False).answer(q.to_wire(), "x"))
    assert r.rcode() == dns.rcode.REFUSED


def test_any_returns_one_rrset():
    r = ask(answerer(), "web.prod.svc.cluster.local.", "ANY")
    assert rows(r.answer) == ["web.prod.svc.cluster.local. A 10.96.10.10"]


def test_servfail_before_first_zone():
    a = answerer(zone=None)
    for name in ("web.prod.svc.cluster.local.", "nosuch.cluster.local."):
        r = ask(a, name)
        assert r.rcode() == dns.rcode.SERVFAIL and not r.answer


def test_out_of_zone_refused_or_forwarded():
    r = ask(answerer(), "www.example.com.")
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA and not r.authority
    q = dns.message.make_query("www.example.com.", "A")
    verdict = answerer(forward=True).answer(q.to_wire(), "127.0.0.1")
    assert isinstance(verdict, Forward) and verdict.query.qtype == wire.A and verdict.limit == 512
    q = dns.message.make_query("web.prod.svc.cluster.local.", "A", rdclass="CH")
    r = dns.message.from_wire(answerer().answer(q.to_wire(), "x"))
    assert r.rcode() == dns.rcode.REFUSED


def test_notimp_and_formerr():
    q = dns.message.make_query("web.prod.svc.cluster.local.", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    r = dns.message.from_wire(answerer().answer(q.to_wire(), "x"))
    assert r.rcode() == dns.rcode.NOTIMP
    data = dns.message.make_query("web.prod.svc.cluster.local.", "A").to_wire()
    bad = data[:4] + b"\x00\x02" + data[6:]  # QDCOUNT=2, only one question
    reply = answerer().answer(bad, "x")
    assert reply[3] & 0xF == wire.FORMERR and reply[2] & 0x80
    assert answerer().answer(b"\x00" * 5, "x") is None


def test_over_long_name_is_formerr_on_both_paths():
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x07cluster\x05local\x00"  # 206 bytes
    labels = b"\x3f" + b"b" * 63 + labels  # 270 bytes: too long
    data = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x01\x00\x01"
    a = answerer()
    reply = a.answer(data, "x")
    assert reply == a.slow(data, "x") and reply[3] & 0xF == wire.FORMERR


def _queries(rng: random.Random):
    names = ["web.prod.svc.cluster.local.", "WEB.prod.SVC.cluster.local.", "nosuch.prod.svc.cluster.local.",
             "a.b.c.d.e.f.cluster.local.", "prod.svc.cluster.local.", "alias.prod.svc.cluster.local.",
             "10-244-1-5.prod.pod.cluster.local.", "10.10.96.10.in-addr.arpa.", "1.2.3.10.in-addr.arpa.",
             "cluster.local.", "dns-version.cluster.local.", "www.example.com.", "big.prod.svc.cluster.local.",
             "_http._tcp.web.prod.svc.cluster.local.", "10-244-1-5.web.prod.svc.cluster.local."]
    types = ["A", "AAAA", "SRV", "PTR", "TXT", "SOA", "NS", "CNAME", "MX", "ANY"]
    for _ in range(3000):
        kw = {}
        if rng.random() < 0.5:
            kw = {"use_edns": 0, "payload": rng.choice([512, 1232, 4096]), "want_dnssec": rng.random() < 0.3}
        q = dns.message.make_query(rng.choice(names), rng.choice(types), **kw)
        if rng.random() < 0.3:
            q.flags &= ~dns.flags.RD
        yield q.to_wire()


@pytest.mark.parametrize("udp", [True, False])
def test_fast_path_equals_slow_path(udp):
    """The hot path is an optimisation only: byte-identical to the general path."""
    a = answerer(udp=udp, forward=False)
    for data in _queries(random.Random(3)):
        assert a.answer(data, "127.0.0.1") == a.slow(data, "127.0.0.1"), dns.message.from_wire(data)


def test_counts_by_zone_type_rcode():
    a = answerer()
    ask(a, "web.prod.svc.cluster.local.")
    ask(a, "nosuch.prod.svc.cluster.local.")
    ask(a, "www.example.com.")
    assert sum(n for k, n in a.counts.items() if isinstance(k, bytes) and k[2] == wire.A and not k[4] & 0xF) == 1
    assert a.counts[(0, wire.A, wire.NXDOMAIN)] == 1
    assert a.counts[(-1, wire.A, wire.REFUSED)] == 1
