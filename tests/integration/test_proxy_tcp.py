"""TCP through the proxy: real loopback sockets, real backends, real clients."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from kubelab.proxy.table import Frontend
from test_proxy_support import Lab, fresh_ip, route, tcp_frontend, until


async def test_round_robin_spreads_evenly_over_three_backends() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        bs = [await lab.echo(n) for n in ("a", "b", "c")]
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(*bs)}))
        names = Counter([await lab.hello(f.ip, f.port) for _ in range(30)])
        assert names == {"a": 10, "b": 10, "c": 10}
        stats = p.metrics.service("default/web", "http")
        assert sum(e.total for e in stats.endpoints.values()) == 30


async def test_client_ip_affinity_pins_each_client() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        bs = [await lab.echo(n) for n in ("a", "b", "c")]
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(*bs, affinity_timeout=60)}))
        clients = [fresh_ip() for _ in range(3)]
        seen = {}
        for c in clients:
            names = {await lab.hello(f.ip, f.port, local_ip=c) for _ in range(5)}
            assert len(names) == 1, names
            seen[c] = names.pop()
        assert len(set(seen.values())) == 3  # round-robin still spreads new clients


async def test_no_endpoints_refuses_at_once_then_serves_then_refuses() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        f = Frontend(fresh_ip(), 8080)
        await p.apply(lab.table({f: route()}))
        assert p.routes()["frontends"][0]["state"] == "refusing"
        t0 = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            await lab.connect(f.ip, f.port)
        assert time.monotonic() - t0 < 0.5
        b = await lab.echo("a")
        await p.apply(lab.table({f: route(b)}))
        r, w = await lab.connect(f.ip, f.port)
        assert await r.readline() == b"a\n"
        # endpoints gone again: new clients refused, the established one keeps working
        await p.apply(lab.table({f: route()}))
        with pytest.raises(ConnectionRefusedError):
            await lab.connect(f.ip, f.port)
        w.write(b"still here\n")
        assert await r.readline() == b"still here\n"


async def test_not_ready_endpoints_are_not_used_and_terminating_is_fallback() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        ready = await lab.echo("ready")
        term = await lab.echo("term", ready=False, serving=True, terminating=True)
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(ready, term)}))
        assert {await lab.hello(f.ip, f.port) for _ in range(4)} == {"ready"}
        await p.apply(lab.table({f: route(term)}))
        assert {await lab.hello(f.ip, f.port) for _ in range(2)} == {"term"}


async def test_retry_past_dead_endpoints() -> None:
    async with Lab() as lab:
        p = await lab.proxy(connect_schedule=(0.2, 0.2, 0.2, 0.2))
        live = await lab.echo("live")
        dead = lab.dead()
        hole = await lab.blackhole()
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(dead, hole, live)}))
        names = [await lab.hello(f.ip, f.port) for _ in range(6)]
        assert names == ["live"] * 6
        s = p.metrics.service("default/web", "http")
        assert s.retries >= 6 and s.refused == 0
        assert s.endpoint(dead.ip, dead.port).connect_failures >= 2
        assert s.endpoint(hole.ip, hole.port).connect_failures >= 2


async def test_all_endpoints_dead_resets_client_after_schedule() -> None:
    async with Lab() as lab:
        p = await lab.proxy(connect_schedule=(0.1, 0.1, 0.1))
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(lab.dead(), lab.dead())}))
        r, w = await lab.connect(f.ip, f.port)  # the kernel accepts: the proxy is listening
        try:
            data = await asyncio.wait_for(r.read(), 5)
            assert data == b""
        except ConnectionResetError:
            pass
        s = p.metrics.service("default/web", "http")
        assert s.refused == 1 and s.retries == 2


async def test_endpoint_removed_during_long_transfer_completes() -> None:
    size = 24 * 1024 * 1024
    async with Lab() as lab:
        p = await lab.proxy()
        big = await lab.bulk(size)
        other = await lab.echo("other")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(big)}))
        r, w = await lab.connect(f.ip, f.port)
        got = len(await r.readexactly(1024 * 1024))
        await p.apply(lab.table({f: route(other)}))  # the endpoint leaves the service
        assert await lab.hello(f.ip, f.port) == "other"
        while chunk := await r.read(1 << 20):
            got += len(chunk)
        assert got == size


async def test_removed_frontend_stops_accepting_and_drains() -> None:
    async with Lab() as lab:
        p = await lab.proxy(drain_timeout=0.5)
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        r1, w1 = await lab.connect(f.ip, f.port)
        r2, w2 = await lab.connect(f.ip, f.port)
        assert await r1.readline() == b"a\n" and await r2.readline() == b"a\n"
        await p.apply(lab.table({}))
        with pytest.raises(ConnectionRefusedError):
            await lab.connect(f.ip, f.port)
        states = [fe["state"] for fe in p.routes()["frontends"]]
        assert states == ["draining"]
        # live connections keep working while draining
        w1.write(b"x\n")
        assert await r1.readline() == b"x\n"
        # one finishes by itself ...
        w2.write_eof()
        assert await r2.read() == b"a bye\n"
        # ... the other is aborted at the drain timeout
        t0 = time.monotonic()
        try:
            rest = await asyncio.wait_for(r1.read(), 5)
            assert rest == b""
        except ConnectionResetError:
            pass
        assert 0.2 < time.monotonic() - t0 < 3
        await until(lambda: p.routes()["frontends"] == [], what="drained frontend gone")


async def test_half_close_propagates_both_ways() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        r, w = await lab.connect(f.ip, f.port)
        assert await r.readline() == b"a\n"
        w.write(b"one\n")
        w.write_eof()  # shutdown(SHUT_WR): the backend must see EOF and still be able to answer
        assert await r.read() == b"one\na bye\n"

        # endpoint half-closes first: the client sees EOF and can still send
        got: list[bytes] = []

        async def speaks_first(rr: asyncio.StreamReader, ww: asyncio.StreamWriter) -> None:
            ww.write(b"hello\n")
            ww.write_eof()
            got.append(await rr.read())

        b2 = await lab.serve(speaks_first)
        f2 = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b), f2: route(b2, service="default/two")}))
        r, w = await lab.connect(f2.ip, f2.port)
        assert await r.read() == b"hello\n"  # EOF arrived
        w.write(b"after eof")
        w.write_eof()
        await until(lambda: got, what="backend got the client's bytes")
        assert got == [b"after eof"]


async def test_slow_reader_keeps_proxy_buffers_bounded() -> None:
    size = 32 * 1024 * 1024
    high = 128 * 1024
    async with Lab() as lab:
        p = await lab.proxy(high_water=high, low_water=32 * 1024, pipe_size=high)
        b = await lab.bulk(size)
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        r, w = await lab.connect(f.ip, f.port)
        # The client reads nothing: its socket fills up, then the proxy's write buffer.
        fe = tcp_frontend(p, f)
        conn = await until(lambda: next(iter(fe.connections), None), what="connection")
        await until(lambda: conn.backend is not None and not conn.reading_backend(), what="upstream reading paused")
        for _ in range(20):
            await asyncio.sleep(0.01)  # let more data try to arrive; buffers must not grow
            assert conn.buffered() <= high + 256 * 1024
            assert not conn.reading_backend()
        # now read everything: flow resumes and nothing is lost
        got = 0
        while chunk := await r.read(1 << 20):
            got += len(chunk)
        assert got == size


async def test_connection_limit_resets_extra_clients() -> None:
    async with Lab() as lab:
        p = await lab.proxy(max_connections=2)
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        held = [await lab.connect(f.ip, f.port) for _ in range(2)]
        for r, _ in held:
            assert await r.readline() == b"a\n"
        try:  # the reset may come before the client's connect() has even returned
            r, w = await lab.connect(f.ip, f.port)
            assert await asyncio.wait_for(r.read(), 5) == b""
        except ConnectionResetError:
            pass
        assert p.metrics.service("default/web", "http").limit_rejected == 1
        _, w0 = held[0]
        w0.close()
        await until(lambda: p.routes()["activeConnections"] == 1, what="slot freed")
        assert await lab.hello(f.ip, f.port) == "a"


async def test_local_traffic_policy_without_local_endpoint_drops() -> None:
    async with Lab() as lab:
        p = await lab.proxy(node_name="n1")
        remote = await lab.echo("remote", node="n2")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(remote, kind="NodePort", traffic_policy="Local")}))
        assert p.routes()["frontends"][0]["state"] == "dropping"
        r, w = await lab.connect(f.ip, f.port)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read(1), 0.3)  # held silently: the client would time out
        assert p.metrics.service("default/web", "http").dropped == 1
        local = await lab.echo("local", node="n1")
        await p.apply(lab.table({f: route(remote, local, kind="NodePort", traffic_policy="Local")}))
        assert {await lab.hello(f.ip, f.port) for _ in range(4)} == {"local"}


async def test_unbindable_vip_is_reported_not_fatal() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        b = await lab.echo("a")
        bad = Frontend("192.0.2.10", 80)  # TEST-NET-1: not a local address, bind fails
        good = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({bad: route(b), good: route(b)}))
        ok, detail = p.healthy()
        assert ok
        assert "192.0.2.10:80/TCP" in detail["failedFrontends"]
        states = {fe["frontend"]["ip"]: fe["state"] for fe in p.routes()["frontends"]}
        assert states == {"192.0.2.10": "failed", good.ip: "listening"}
        assert await lab.hello(good.ip, good.port) == "a"


async def test_changed_port_moves_to_new_listener() -> None:
    async with Lab() as lab:
        p = await lab.proxy(drain_timeout=2)
        b = await lab.echo("a")
        ip = fresh_ip()
        old, new = Frontend(ip, 80), Frontend(ip, 8080)
        await p.apply(lab.table({old: route(b)}))
        r, w = await lab.connect(ip, 80)
        assert await r.readline() == b"a\n"
        await p.apply(lab.table({new: route(b)}))
        assert await lab.hello(ip, 8080) == "a"
        with pytest.raises(ConnectionRefusedError):
            await lab.connect(ip, 80)
        w.write(b"z\n")
        assert await r.readline() == b"z\n"


async def test_close_drains_then_aborts() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        r, w = await lab.connect(f.ip, f.port)
        assert await r.readline() == b"a\n"
        t0 = time.monotonic()
        await p.close(drain_timeout=0.2)
        assert time.monotonic() - t0 < 2
        try:
            assert await asyncio.wait_for(r.read(), 5) == b""
        except ConnectionResetError:
            pass
        with pytest.raises(ConnectionRefusedError):
            await lab.connect(f.ip, f.port)


async def test_client_speaks_first_and_half_closes_before_endpoint_is_connected() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        for _ in range(5):
            r, w = await lab.connect(f.ip, f.port)
            w.write(b"request")
            w.write_eof()
            assert await r.read() == b"a\nrequesta bye\n"


async def test_affinity_and_round_robin_are_per_service_port_across_frontends() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        bs = [await lab.echo(n) for n in ("a", "b", "c")]
        cluster, node = Frontend(fresh_ip(), 80), Frontend(fresh_ip(), 30080)
        await p.apply(lab.table({
            cluster: route(*bs, affinity_timeout=60),
            node: route(*bs, kind="NodePort", affinity_timeout=60),
        }))
        client = fresh_ip()
        first = await lab.hello(cluster.ip, cluster.port, local_ip=client)
        for _ in range(3):  # the same client through the NodePort sticks to the same pod
            assert await lab.hello(node.ip, node.port, local_ip=client) == first
        assert p.manager.frontends[cluster].balancer is p.manager.frontends[node].balancer


async def test_shutdown_bounds_frontends_already_draining() -> None:
    async with Lab() as lab:
        p = await lab.proxy(drain_timeout=30)
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        r, w = await lab.connect(f.ip, f.port)
        assert await r.readline() == b"a\n"
        await p.apply(lab.table({}))  # draining, with a 30 s budget
        t0 = time.monotonic()
        await p.close(drain_timeout=0.2)  # shutdown's own, shorter bound wins
        assert time.monotonic() - t0 < 3
        try:
            assert await asyncio.wait_for(r.read(), 5) == b""
        except ConnectionResetError:
            pass


async def test_idle_connections_are_closed_busy_ones_kept() -> None:
    async with Lab() as lab:
        p = await lab.proxy(idle_timeout=0.2)
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        ri, wi = await lab.connect(f.ip, f.port)
        rb, wb = await lab.connect(f.ip, f.port)
        assert await ri.readline() == b"a\n" and await rb.readline() == b"a\n"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        idle_closed = asyncio.ensure_future(ri.read())
        while not idle_closed.done():  # keep the other connection busy meanwhile
            wb.write(b"ping\n")
            assert await rb.readline() == b"ping\n"
            assert loop.time() - t0 < 5, "idle connection not closed"
            await asyncio.sleep(0.02)
        assert idle_closed.result() == b"a bye\n" or idle_closed.result() == b""
        assert 0.15 < loop.time() - t0
        wb.write(b"still\n")
        assert await rb.readline() == b"still\n"
