"""Forwarding out-of-zone names: a stub upstream on another loopback address, caching by
TTL (with aged TTLs), TC -> TCP, timeouts -> SERVFAIL, client ACL -> REFUSED, none -> REFUSED."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset
import pytest

from kubelab.dns.config import DnsConfig
from kubelab.dns.forward import Forwarder
from kubelab.dns.server import DnsServer
from kubelab.dns.zone import Service, ZoneData

DNS_HOST = "127.53.3.1"
UPSTREAM_HOST = "127.53.3.2"
ALLOWED = "127.53.3.10"
DENIED = "127.53.3.11"


class Upstream:
    """A tiny authoritative peer for example.com (dnspython codec), UDP and TCP."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, str, str]] = []  # (proto, qname, qtype)

    def reply(self, wire: bytes, proto: str) -> bytes | None:
        q = dns.message.from_wire(wire)
        name = q.question[0].name.to_text().lower()
        rtype = dns.rdatatype.to_text(q.question[0].rdtype)
        self.queries.append((proto, name, rtype))
        r = dns.message.make_response(q)
        if name.startswith("slow."):
            return None  # never answers: the forwarder must time out
        if name.startswith("nx."):
            r.set_rcode(dns.rcode.NXDOMAIN)
            r.authority.append(dns.rrset.from_text("example.com.", 600, "IN", "SOA", "ns. h. 1 2 3 4 30"))
        elif name.startswith("big."):
            for i in range(60):
                r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", f"10.1.0.{i + 1}")) if i == 0 else \
                    r.answer[0].add(dns.rdata.from_text("IN", "A", f"10.1.0.{i + 1}"))
            if proto == "udp":
                r.answer = []
                r.flags |= dns.flags.TC
        elif name.startswith("fail."):
            r.set_rcode(dns.rcode.SERVFAIL)
        else:
            r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1"))
        return r.to_wire()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        outer = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                out = outer.reply(data, "udp")
                if out is not None:
                    self.transport.sendto(out, addr)

        self.udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(UPSTREAM_HOST, 0))
        self.port = self.udp.get_extra_info("sockname")[1]

        async def handle(reader, writer):
            try:
                while True:
                    n = struct.unpack(">H", await reader.readexactly(2))[0]
                    out = outer.reply(await reader.readexactly(n), "tcp")
                    if out is not None:
                        writer.write(struct.pack(">H", len(out)) + out)
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.tcp = await asyncio.start_server(handle, UPSTREAM_HOST, self.port)

    async def close(self) -> None:
        self.udp.close()
        self.tcp.close()
        await self.tcp.wait_closed()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def upstream():
    up = Upstream()
    await up.start()
    try:
        yield up
    finally:
        await up.close()


@pytest.fixture
async def setup(upstream):
    clock = Clock()
    cfg = DnsConfig(addr=(DNS_HOST, 0), upstreams=((UPSTREAM_HOST, upstream.port),), forward_timeout=0.3,
                    recursion_clients=(ipaddress.ip_network(f"{ALLOWED}/32"),), reverse_zones=("10.in-addr.arpa.",))
    fwd = Forwarder(cfg.upstreams, timeout=cfg.forward_timeout, clock=clock)
    srv = DnsServer(cfg, forwarder=fwd)
    await srv.start()
    srv.set_zone(ZoneData(1, {"prod/ext": Service("prod", "ext", external_name="www.example.com")}))
    try:
        yield srv, upstream, clock
    finally:
        await srv.close()


async def ask(srv, name, rtype="A", source=ALLOWED, tcp=False):
    host, port = srv.address
    q = dns.message.make_query(name, rtype)
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    return await send(q, host, port=port, source=source, timeout=3)


def addrs(r):
    return sorted(rd.to_text() for rrset in r.answer for rd in rrset)


async def test_forward_and_cache_by_ttl(setup):
    srv, up, clock = setup
    r = await ask(srv, "www.example.com.")
    assert r.rcode() == 0 and addrs(r) == ["192.0.2.1"] and not r.flags & dns.flags.AA
    assert r.answer[0].ttl == 60
    clock.now += 25
    r = await ask(srv, "WWW.example.com.", tcp=True)  # cache is case-insensitive, TCP too
    assert addrs(r) == ["192.0.2.1"] and r.answer[0].ttl == 35 and r.answer[0].name.to_text() == "WWW.example.com."
    assert len(up.queries) == 1
    clock.now += 40  # past the 60 s TTL
    await ask(srv, "www.example.com.")
    assert len(up.queries) == 2
    hits = srv.forwarder.cache_hits["success"]
    assert hits == 1


async def test_negative_answers_cached_by_soa_minimum(setup):
    srv, up, clock = setup
    for _ in range(2):
        r = await ask(srv, "nx.example.com.")
        assert r.rcode() == dns.rcode.NXDOMAIN
    assert len(up.queries) == 1
    clock.now += 31
    await ask(srv, "nx.example.com.")
    assert len(up.queries) == 2


async def test_truncated_upstream_answer_is_retried_over_tcp(setup):
    srv, up, _ = setup
    r = await ask(srv, "big.example.com.", tcp=True)
    assert len(addrs(r)) == 60
    assert [p for p, *_ in up.queries] == ["udp", "tcp"]
    r = await ask(srv, "big.example.com.")  # from cache, but too big for a 512-byte UDP client
    assert r.flags & dns.flags.TC


async def test_timeout_and_upstream_failure_give_servfail(setup):
    srv, up, _ = setup
    r = await ask(srv, "slow.example.com.")
    assert r.rcode() == dns.rcode.SERVFAIL
    r = await ask(srv, "fail.example.com.")
    assert r.rcode() == dns.rcode.SERVFAIL
    r = await ask(srv, "www.example.com.")  # and the next good name still works
    assert addrs(r) == ["192.0.2.1"]


async def test_client_outside_allowed_ranges_is_refused(setup):
    srv, up, _ = setup
    r = await ask(srv, "www.example.com.", source=DENIED)
    assert r.rcode() == dns.rcode.REFUSED and not up.queries
    r = await ask(srv, "ext.prod.svc.cluster.local.", source=DENIED)  # in-zone still answers
    assert r.rcode() == 0 and r.answer[0].rdtype == dns.rdatatype.CNAME


async def test_identical_inflight_queries_share_one_upstream_exchange(setup):
    srv, up, _ = setup
    results = await asyncio.gather(*(ask(srv, "same.example.com.") for _ in range(10)))
    assert all(addrs(r) == ["192.0.2.1"] for r in results)
    assert len(up.queries) == 1


async def test_upstream_none_is_refused():
    srv = DnsServer(DnsConfig(addr=(DNS_HOST, 0), upstreams=()))
    await srv.start()
    try:
        srv.set_zone(ZoneData(1))
        assert srv.forwarder is None
        r = await ask(srv, "www.example.com.")
        assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA
    finally:
        await srv.close()
