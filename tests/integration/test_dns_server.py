"""The DNS server on real sockets: UDP, TCP (pipelining, framing, idle timeout), EDNS0,
truncation with a 500-endpoint headless service, SERVFAIL before the first zone, and
error codes for bad input. Clients are dnspython and raw sockets."""

from __future__ import annotations

import asyncio
import struct

import dns.asyncquery
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from kubelab.dns.config import DnsConfig
from kubelab.dns.server import DnsServer, StaleGeneration
from kubelab.dns.zone import Endpoint, Service, ServicePort, ZoneData
from tests.helpers import wait_until

HOST = "127.53.2.1"
HTTP = ServicePort("http", 80)


def big(n: int) -> Service:
    return Service("prod", "big", headless=True, ports=(HTTP,), endpoints=tuple(
        Endpoint(f"10.244.{i // 250}.{i % 250 + 1}", True, None, (HTTP,)) for i in range(n)))


def make_zone(gen: int = 1, web_ip: str = "10.96.10.10") -> ZoneData:
    services = [Service("prod", "web", (web_ip,), ports=(HTTP,)), big(500),
                Service("prod", "sixty", headless=True, ports=(HTTP,), endpoints=big(60).endpoints)]
    return ZoneData(gen, {s.key: s for s in services}, (), ("prod",))


def config(**kw) -> DnsConfig:
    return DnsConfig(upstreams=(), addr=(HOST, 0), reverse_zones=("10.in-addr.arpa.",), **kw)


@pytest.fixture
async def server():
    srv = DnsServer(config(tcp_idle_timeout=0.3))
    await srv.start()
    srv.set_zone(make_zone())
    try:
        yield srv
    finally:
        await srv.close()


def query(name="web.prod.svc.cluster.local.", rtype="A", **kw) -> dns.message.Message:
    return dns.message.make_query(name, rtype, **kw)


async def udp(srv, q, timeout=2.0):
    host, port = srv.address
    return await dns.asyncquery.udp(q, host, port=port, timeout=timeout)


async def tcp(srv, q, timeout=2.0):
    host, port = srv.address
    return await dns.asyncquery.tcp(q, host, port=port, timeout=timeout)


def a_records(r: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in r.answer for rd in rrset)


async def test_udp_and_tcp_answer(server):
    for send in (udp, tcp):
        r = await send(server, query())
        assert r.rcode() == 0 and r.flags & dns.flags.AA and a_records(r) == ["10.96.10.10"]
    assert server.address[0] == HOST and server.address[1] > 0


async def test_tcp_pipelined_queries_on_one_connection(server):
    host, port = server.address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        queries = {}
        blob = b""
        for i in range(100):
            name = "web.prod.svc.cluster.local." if i % 2 else f"nx{i}.prod.svc.cluster.local."
            q = query(name)
            queries[q.id] = name
            w = q.to_wire()
            blob += struct.pack(">H", len(w)) + w
        # Split the stream at awkward places: mid length prefix, mid message.
        for i in range(0, len(blob), 37):
            writer.write(blob[i:i + 37])
        await writer.drain()
        seen = {}
        async with asyncio.timeout(5):
            while len(seen) < len(queries):
                n = struct.unpack(">H", await reader.readexactly(2))[0]
                r = dns.message.from_wire(await reader.readexactly(n))
                seen[r.id] = r
        assert set(seen) == set(queries)
        for qid, r in seen.items():
            if queries[qid].startswith("nx"):
                assert r.rcode() == dns.rcode.NXDOMAIN
            else:
                assert a_records(r) == ["10.96.10.10"]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_edns_opt_echoed_and_buffer_honoured(server):
    r = await udp(server, query("sixty.prod.svc.cluster.local.", use_edns=0, payload=1232))
    assert r.edns == 0 and r.payload == 1232 and not r.flags & dns.flags.TC and len(a_records(r)) == 60
    r = await udp(server, query("sixty.prod.svc.cluster.local."))  # no EDNS: 512 bytes
    assert r.flags & dns.flags.TC and not r.answer and r.edns == -1
    r = await udp(server, query("sixty.prod.svc.cluster.local.", use_edns=0, payload=700))
    assert r.flags & dns.flags.TC and r.edns == 0


async def test_500_endpoint_headless_truncates_on_udp_and_is_complete_on_tcp(server):
    r = await udp(server, query("big.prod.svc.cluster.local.", use_edns=0, payload=4096))
    assert r.flags & dns.flags.TC and not r.answer
    r = await tcp(server, query("big.prod.svc.cluster.local."))
    assert not r.flags & dns.flags.TC and len(a_records(r)) == 500
    # dnspython's resolver-style fallback: UDP first, TCP after TC
    host, port = server.address
    r, used_tcp = await dns.asyncquery.udp_with_fallback(query("big.prod.svc.cluster.local."), host, port=port, timeout=2)
    assert used_tcp and len(a_records(r)) == 500


async def test_servfail_before_first_zone_then_answers():
    srv = DnsServer(config())
    await srv.start()
    try:
        assert not srv.ready
        r = await udp(srv, query())
        assert r.rcode() == dns.rcode.SERVFAIL
        r = await tcp(srv, query("nosuch.prod.svc.cluster.local."))
        assert r.rcode() == dns.rcode.SERVFAIL
        srv.set_zone(make_zone())
        assert srv.ready
        r = await udp(srv, query())
        assert a_records(r) == ["10.96.10.10"]
    finally:
        await srv.close()


async def test_zone_swap_and_stale_generation(server):
    server.set_zone(make_zone(2, web_ip="10.96.10.11"))
    assert a_records(await udp(server, query())) == ["10.96.10.11"]
    with pytest.raises(StaleGeneration):
        server.set_zone(make_zone(1))
    assert a_records(await udp(server, query())) == ["10.96.10.11"]
    serial_before = server.serial
    assert server.set_zone(make_zone(3, web_ip="10.96.10.11")) is False  # same content
    assert server.serial == serial_before


async def test_notimp_formerr_and_drop_over_udp(server):
    host, port = server.address
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            replies.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(host, port))
    try:
        notify = query()
        notify.set_opcode(dns.opcode.NOTIFY)
        transport.sendto(notify.to_wire())
        r = dns.message.from_wire(await asyncio.wait_for(replies.get(), 2))
        assert r.rcode() == dns.rcode.NOTIMP and r.id == notify.id

        w = query().to_wire()
        transport.sendto(w[:4] + b"\x00\x02" + w[6:])  # QDCOUNT 2
        data = await asyncio.wait_for(replies.get(), 2)
        assert data[:2] == w[:2] and data[3] & 0xF == dns.rcode.FORMERR

        # Garbage (too short, or a response) is dropped: the next reply is for the next query.
        transport.sendto(b"\x01\x02\x03")
        resp = bytearray(query().to_wire())
        resp[2] |= 0x80
        transport.sendto(bytes(resp))
        ok = query()
        transport.sendto(ok.to_wire())
        r = dns.message.from_wire(await asyncio.wait_for(replies.get(), 2))
        assert r.id == ok.id and a_records(r) == ["10.96.10.10"]
    finally:
        transport.close()


async def test_tcp_idle_timeout_and_close_on_garbage(server):
    host, port = server.address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(3):
            assert await reader.read() == b""  # closed by the server after 0.3 s idle
    finally:
        writer.close()
        await writer.wait_closed()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"\x00\x03abc")  # a message we cannot even parse: connection closed
        async with asyncio.timeout(3):
            assert await reader.read() == b""
    finally:
        writer.close()
        await writer.wait_closed()


async def test_close_with_open_connections_is_clean():
    srv = DnsServer(config(tcp_idle_timeout=30))
    await srv.start()
    srv.set_zone(make_zone())
    host, port = srv.address
    reader, writer = await asyncio.open_connection(host, port)
    w = query().to_wire()
    writer.write(struct.pack(">H", len(w)) + w)
    await writer.drain()
    await reader.readexactly(2)
    await srv.close()
    async with asyncio.timeout(3):
        while await reader.read(65536):
            pass
    writer.close()
    await writer.wait_closed()
    await srv.close()  # idempotent


async def test_tcp_backpressure_pauses_reading_until_the_client_reads(server):
    """A client that pipelines many big answers without reading: the server stops reading
    (bounded buffers) instead of queueing megabytes, and resumes once the client drains."""
    host, port = server.address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        w = query("big.prod.svc.cluster.local.").to_wire()
        frame = struct.pack(">H", len(w)) + w
        n = 3000  # 3000 x 8 KB answers: far more than the socket buffers hold
        writer.write(frame * n)

        def paused():
            conn = next(iter(server._connections), None)
            return conn if conn is not None and conn.transport is not None and not conn.transport.is_reading() else None

        conn = await wait_until(paused, 5, "the server to pause reading the connection")
        assert conn.transport.get_write_buffer_size() < 4 * 1024 * 1024
        got = 0
        async with asyncio.timeout(20):
            while got < n:
                size = struct.unpack(">H", await reader.readexactly(2))[0]
                await reader.readexactly(size)
                got += 1
        assert got == n
    finally:
        writer.close()
        await writer.wait_closed()
