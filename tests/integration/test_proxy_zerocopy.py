"""The splice relay (``kubelab.proxy.zerocopy``) specifically: it is the default on Linux,
moves bytes intact both ways, counts them from splice's return values and reuses pipes."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from kubelab.proxy import zerocopy
from kubelab.proxy.table import Frontend
from test_proxy_support import Lab, fresh_ip, route, tcp_frontend, until

pytestmark = pytest.mark.skipif(not zerocopy.available(), reason="splice(2) relay is Linux-only")


async def test_default_relay_is_splice_and_bytes_are_intact_and_counted() -> None:
    size = 8 * 1024 * 1024 + 123
    payload = os.urandom(size)
    async with Lab() as lab:
        p = await lab.proxy()

        async def sink_then_echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            data = await r.read(-1)  # until the client's EOF (half-close)
            w.write(hashlib.sha256(data).hexdigest().encode() + b"\n")
            w.write(data)
            await w.drain()

        b = await lab.serve(sink_then_echo)
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        r, w = await lab.connect(f.ip, f.port)
        conn = await until(lambda: next(iter(tcp_frontend(p, f).connections), None), what="connection")
        assert isinstance(conn, zerocopy.Conn)
        w.write(payload)
        w.write_eof()
        digest = (await r.readline()).strip().decode()
        back = await r.readexactly(size)
        assert await r.read() == b""
        assert digest == hashlib.sha256(payload).hexdigest() and back == payload
        ep = p.metrics.service("default/web", "http").endpoint(b.ip, b.port)
        await until(lambda: ep.active == 0, what="connection closed")
        assert ep.bytes_in == size and ep.bytes_out == size + 65


async def test_pipes_are_reused_across_connections() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        for _ in range(30):
            assert await lab.hello(f.ip, f.port) == "a"
            await until(lambda: p.routes()["activeConnections"] == 0, what="closed")
        pool = p.manager.shared.pipes
        assert pool.created <= 4  # two per live connection, then from the pool
        assert len(pool.free) == pool.created


async def test_many_concurrent_short_connections() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        bs = [await lab.http(n) for n in ("a", "b")]
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(*bs)}))

        async def get() -> bytes:
            r, w = await lab.connect(f.ip, f.port)
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await r.read()
            w.close()
            lab.writers.discard(w)
            await w.wait_closed()
            return data

        results = await asyncio.gather(*(get() for _ in range(200)))
        bodies = [r.rsplit(b"\r\n\r\n", 1)[1] for r in results]
        assert sorted(set(bodies)) == [b"a\n", b"b\n"] and len(bodies) == 200
        await until(lambda: p.routes()["activeConnections"] == 0, what="all closed")
        stats = p.metrics.service("default/web", "http")
        assert sum(e.total for e in stats.endpoints.values()) == 200
        assert all(e.active == 0 for e in stats.endpoints.values())
