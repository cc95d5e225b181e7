"""UDP with recvmmsg/sendmmsg (dns/udpbatch.py) and without: bursts larger than one
batch, many clients, IPv6, latency accounting. Both paths must answer identically."""

from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.rcode
import pytest

from kubelab.dns import udpbatch
from kubelab.dns.config import DnsConfig
from kubelab.dns.server import DnsServer
from kubelab.dns.zone import Service, ServicePort, ZoneData

HOST = "127.53.7.1"
HTTP = ServicePort("http", 80)
N_SERVICES = 50


def zone() -> ZoneData:
    services = [Service("prod", f"web{i}", (f"10.96.10.{i + 1}",), ports=(HTTP,)) for i in range(N_SERVICES)]
    return ZoneData(1, {s.key: s for s in services}, (), ("prod",))


async def start(host: str, batched: bool) -> DnsServer:
    srv = DnsServer(DnsConfig(upstreams=(), addr=(host, 0), udp_mmsg=batched))
    await srv.start()
    srv.set_zone(zone())
    return srv


def _name(i: int) -> str:
    # 0x20 mixed case: the echo must be byte-exact, per datagram, inside one batch
    name = f"web{i % N_SERVICES}.prod.svc.cluster.local."
    return "".join(c.upper() if (i >> k) & 1 else c for k, c in enumerate(name))


async def burst(srv: DnsServer, n: int, clients: int = 3, family=socket.AF_INET) -> list[tuple[int, dns.message.Message, dns.message.Message]]:
    """``n`` queries sent back to back from ``clients`` sockets before reading anything."""
    loop = asyncio.get_running_loop()
    socks = []
    try:
        for _ in range(clients):
            s = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.setblocking(False)
            s.connect(srv.address)
        sent = {}
        for i in range(n):
            q = dns.message.make_query(_name(i), "A", use_edns=0 if i % 2 else False)
            q.id = i
            sent[(i % clients, i)] = q
            socks[i % clients].send(q.to_wire())
        out = []
        async with asyncio.timeout(5):
            while len(out) < n:
                for c, s in enumerate(socks):
                    try:
                        data = s.recv(4096)
                    except BlockingIOError:
                        continue
                    r = dns.message.from_wire(data)
                    out.append((c, sent.pop((c, r.id)), r))  # KeyError: wrong client or duplicate
                await asyncio.sleep(0.001)
        return out
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("batched", [True, False], ids=["mmsg", "recvfrom"])
async def test_burst_larger_than_a_batch_is_answered_to_each_client(batched):
    if batched and not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    srv = await start(HOST, batched)
    try:
        assert (srv._udp[0].batch is not None) == batched
        n = udpbatch.SLOTS * 3 + 7
        replies = await burst(srv, n)
        for _c, q, r in replies:
            assert r.id == q.id and dns.rcode.to_text(r.rcode()) == "NOERROR"
            assert r.question[0].name.to_text() == q.question[0].name.to_text()  # case kept
            assert bytes(r.to_wire()[12:12 + len(q.question[0].name.to_wire())]) == q.question[0].name.to_wire()
            assert [rd.address for rd in r.answer[0]] == [f"10.96.10.{q.id % N_SERVICES + 1}"]
            assert (r.edns >= 0) == (q.edns >= 0)
        lat = srv._udp[0].latency
        assert sum(lat.counts) == n and lat.sum > 0
        assert srv._udp[0].dropped == 0
    finally:
        await srv.close()


async def test_batched_ipv6():
    if not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    srv = await start("::1", True)
    try:
        assert srv._udp[0].batch is not None
        replies = await burst(srv, 100, family=socket.AF_INET6)
        assert len(replies) == 100 and all(r.answer for _c, _q, r in replies)
    finally:
        await srv.close()


async def test_batched_drops_garbage_and_keeps_serving():
    if not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    srv = await start(HOST, True)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(srv.address)
            for junk in (b"", b"\x00", b"\xff" * 11, b"\x12\x34\x81\x80" + b"\x00" * 8, b"x" * 9000):
                s.send(junk)  # runts/responses: dropped; the big one: FORMERR (no question)
        replies = await burst(srv, 10)
        assert len(replies) == 10
    finally:
        await srv.close()
