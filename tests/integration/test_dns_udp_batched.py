"""UDP with recvmmsg/sendmmsg (dns/udpbatch.py) and without: bursts larger than one
batch, many clients, IPv6, latency accounting. Both paths must answer identically."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import dns.message
import dns.rcode
import pytest

from kubelab.dns import udpbatch
from kubelab.dns.answer import Forward
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


# --------------------------------------------------------------- BatchedUdp.serve directly
# Real sockets, a fake ``answer``: every reply must reach the socket that sent the query,
# whatever happened to the previous batch (drops, forwards, callbacks raising).

SERVE_HOST = "127.53.7.2"
CLIENT_HOSTS = [f"127.53.7.{10 + c}" for c in range(6)]


def _serve_pair(family=socket.AF_INET, host=SERVE_HOST, client_hosts=CLIENT_HOSTS):
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    server.setblocking(False)
    clients = []
    for h in client_hosts:
        c = socket.socket(family, socket.SOCK_DGRAM)
        c.bind((h, 0))
        c.settimeout(2)
        clients.append(c)
    return server, clients


def _send_round(server, clients, tag: bytes) -> None:
    for c, s in enumerate(clients):
        s.sendto(tag + b"-%d" % c, server.getsockname())


def _pending(sock) -> list[bytes]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return out


def _client_of(data: bytes) -> int:
    return int(data.rsplit(b"-", 1)[1])


class Boom(Exception):
    pass


def _first_batch(mode: str):
    """(answer, failed, defer, on_batch) for batch 1: client 1 and 4 are answered, the
    others are dropped or forwarded, and ``mode`` says which callback raises."""
    deferred = []

    def answer(data, slot):
        c = _client_of(data)
        if c in (1, 4):
            return b"R" + data
        if mode in ("answer+failed raise", "answer raises") and c in (0, 2):
            raise Boom(c)
        if c in (2, 5):
            return Forward(None, 512, b"")  # type: ignore[arg-type]
        return None

    def failed(data, slot):
        if mode == "answer+failed raise":
            raise Boom("failed too")
        return None

    def defer(fwd, addr):
        deferred.append(addr)
        if mode == "defer raises":
            raise Boom("defer")

    def on_batch(n, dt):
        if mode == "on_batch raises":
            raise Boom("on_batch")

    return answer, failed, defer, on_batch, deferred


@pytest.mark.parametrize("mode", ["none", "answer raises", "answer+failed raise", "defer raises",
                                  "on_batch raises"])
def test_serve_replies_reach_their_own_sender_after_a_partial_batch(mode):
    if not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    server, clients = _serve_pair()
    b = udpbatch.BatchedUdp(server)
    try:
        answer, failed, defer, on_batch, deferred = _first_batch(mode)
        _send_round(server, clients, b"one")
        assert b.serve(answer, failed, defer, on_batch, time.perf_counter) == 2  # nothing escapes
        assert [c.recv(4096) for c in (clients[1], clients[4])] == [b"Rone-1", b"Rone-4"]
        forwarded = {2, 5} if mode not in ("answer raises", "answer+failed raise") else {5}
        assert sorted(deferred) == sorted(clients[c].getsockname() for c in forwarded)
        for c in clients:
            assert _pending(c) == []
        # Batch 2: every slot answered (the case that once reused batch 1's destinations).
        _send_round(server, clients, b"two")
        assert b.serve(lambda d, s: b"R" + d, failed, defer, on_batch, time.perf_counter) == len(clients)
        for k, c in enumerate(clients):
            assert c.recv(4096) == b"Rtwo-%d" % k
            assert _pending(c) == []
        assert b.received == 2 * len(clients) and b.dropped == 0
    finally:
        b.close()
        server.close()
        for c in clients:
            c.close()


def test_serve_forward_in_the_middle_of_an_ipv6_batch():
    if not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    try:
        server, clients = _serve_pair(socket.AF_INET6, "::1", ["::1"] * 5)
    except OSError:
        pytest.skip("no IPv6 loopback")
    b = udpbatch.BatchedUdp(server)
    try:
        deferred = []

        def answer(data, slot):
            return Forward(None, 512, b"") if _client_of(data) == 2 else b"R" + data  # type: ignore[arg-type]

        _send_round(server, clients, b"v6")
        assert b.serve(answer, lambda d, s: None, lambda f, a: deferred.append(a)) == 4
        assert deferred == [clients[2].getsockname()]  # the 4-tuple, as the socket module spells it
        assert len(deferred[0]) == 4
        server.sendto(b"forwarded", deferred[0])  # what UdpListener._forward does later
        for k, c in enumerate(clients):
            assert c.recv(4096) == (b"forwarded" if k == 2 else b"Rv6-%d" % k)
            assert _pending(c) == []
    finally:
        b.close()
        server.close()
        for c in clients:
            c.close()


def test_serve_after_close_does_nothing_and_close_is_idempotent():
    if not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    server, clients = _serve_pair(client_hosts=CLIENT_HOSTS[:1])
    b = udpbatch.BatchedUdp(server)
    try:
        b.close()
        b.close()
        _send_round(server, clients, b"late")
        assert b.serve(lambda d, s: b"R" + d, lambda d, s: None, lambda f, a: None) == 0
        assert b.fd == -1 and b.received == 0
        assert server.recv(4096) == b"late-0"  # not consumed
    finally:
        server.close()
        clients[0].close()


# --------------------------------------------------------------- failures through the server

@pytest.mark.parametrize("batched", [True, False], ids=["mmsg", "recvfrom"])
async def test_answer_bug_is_servfail_logged_once_and_counted(batched, caplog):
    if batched and not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    srv = await start(HOST, batched)
    try:
        def broken(data, client):
            raise Boom("parser bug")

        srv._udp[0].answerer.answer = broken
        with caplog.at_level(logging.ERROR, logger="kubelab.dns.server"):
            replies = await burst(srv, 20)
        assert len(replies) == 20
        assert all(dns.rcode.to_text(r.rcode()) == "SERVFAIL" for _c, _q, r in replies)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is not None
        reg = srv.metrics.registry
        assert reg.get_sample_value("kubelab_dns_query_failures_total", {"type": "Boom"}) == 20
    finally:
        await srv.close()


async def test_batch_counters_are_exported():
    if not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    srv = await start(HOST, True)
    try:
        await burst(srv, 30)
        reg = srv.metrics.registry
        assert reg.get_sample_value("kubelab_dns_udp_received_total") == 30
        assert reg.get_sample_value("kubelab_dns_udp_wakeups_total") >= 1
        assert 1 <= reg.get_sample_value("kubelab_dns_udp_batches_total") <= 30
        assert reg.get_sample_value("kubelab_dns_udp_errors_total") == 0
        assert reg.get_sample_value("kubelab_dns_udp_dropped_total") == 0
    finally:
        await srv.close()


def test_serve_callback_bugs_are_counted_and_logged_once(caplog):
    if not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    server, clients = _serve_pair()
    b = udpbatch.BatchedUdp(server)
    try:
        def defer(fwd, addr):
            raise Boom("defer")

        with caplog.at_level(logging.ERROR, logger="kubelab.dns.udpbatch"):
            for tag in (b"a", b"b", b"c"):
                _send_round(server, clients, tag)
                b.serve(lambda d, s: Forward(None, 512, b""), lambda d, s: None, defer)  # type: ignore[arg-type]
        assert b.errors == 3 * len(clients)
        assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None
    finally:
        b.close()
        server.close()
        for c in clients:
            c.close()


@pytest.mark.parametrize("where", ["answer", "on_batch"])
def test_close_from_a_serve_callback(where):
    if not udpbatch.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    server, clients = _serve_pair()
    b = udpbatch.BatchedUdp(server)
    try:
        def answer(data, slot):
            if where == "answer" and slot == 2:
                b.close()
            return b"R" + data

        def on_batch(n, dt):
            b.close()

        _send_round(server, clients, b"x")
        b.serve(answer, lambda d, s: None, lambda f, a: None,
                on_batch if where == "on_batch" else None, time.perf_counter)
        assert b.fd == -1
        with pytest.raises(ValueError):
            b.data_mv.tobytes()  # released once serve returned
        b.close()
        assert b.serve(answer, lambda d, s: None, lambda f, a: None) == 0
    finally:
        server.close()
        for c in clients:
            c.close()
