"""Shared helpers for the proxy integration tests (not a test module itself).

Real loopback sockets in 127.80.0.0/16 (the proxy engineer's range): every test
gets fresh random addresses, so fixed ports never collide with other tests or
TIME_WAIT leftovers.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import socket
from typing import Any, Awaitable, Callable

from kubelab.proxy.config import ProxyConfig
from kubelab.proxy.listener import TcpFrontend
from kubelab.proxy.service import ServiceProxy
from kubelab.proxy.table import Backend, Frontend, Route, RouteTable

_rng = random.SystemRandom()

# ProxyConfig.tcp_relay used by Lab.proxy() unless a test passes its own: the same scenarios
# run on both relays (test_proxy_transport_relay.py sets "transport").
TCP_RELAY: contextvars.ContextVar[str] = contextvars.ContextVar("TCP_RELAY", default="auto")


def fresh_ip() -> str:
    return f"127.80.{_rng.randrange(1, 255)}.{_rng.randrange(1, 255)}"


async def until(pred: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``pred`` until truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Lab:
    """Owns proxies, backend servers and client sockets of one test; closes them all."""

    def __init__(self) -> None:
        self.proxies: list[ServiceProxy] = []
        self.servers: list[asyncio.AbstractServer] = []
        self.writers: set[asyncio.StreamWriter] = set()
        self.transports: list[Any] = []
        self.socks: list[socket.socket] = []
        self.generation = 0

    async def __aenter__(self) -> "Lab":
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in self.proxies:
            await p.close(drain_timeout=0.5)
        for w in list(self.writers):
            w.close()
        for t in self.transports:
            t.close()
        for s in self.servers:
            s.close()
        for w in list(self.writers):
            try:
                await w.wait_closed()
            except (OSError, asyncio.CancelledError):
                pass
        for s in self.servers:
            await s.wait_closed()
        for s in self.socks:
            s.close()
        await asyncio.sleep(0)

    async def proxy(self, **kw: Any) -> ServiceProxy:
        kw.setdefault("tcp_relay", TCP_RELAY.get())
        p = ServiceProxy(ProxyConfig(**kw))
        await p.start()
        self.proxies.append(p)
        return p

    def _track(self, w: asyncio.StreamWriter) -> None:
        self.writers.add(w)

    async def serve(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                    ip: str | None = None, node: str | None = None, **bkw: Any) -> Backend:
        async def wrapped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self._track(w)
            try:
                await handler(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()
                self.writers.discard(w)

        ip = ip or fresh_ip()
        server = await asyncio.start_server(wrapped, ip, 0)
        self.servers.append(server)
        return Backend(ip, server.sockets[0].getsockname()[1], node=node, **bkw)

    async def echo(self, name: str, **kw: Any) -> Backend:
        """Greets with ``name``, echoes, and after the client's EOF says ``name bye``."""

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(name.encode() + b"\n")
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.write(name.encode() + b" bye\n")
            await w.drain()

        return await self.serve(handler, **kw)

    async def http(self, name: str, **kw: Any) -> Backend:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readuntil(b"\r\n\r\n")
            body = name.encode() + b"\n"
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            await w.drain()

        return await self.serve(handler, **kw)

    async def bulk(self, size: int, chunk: int = 65536, **kw: Any) -> Backend:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            block = b"x" * chunk
            left = size
            while left > 0:
                w.write(block[: min(chunk, left)])
                left -= chunk
                await w.drain()
            w.write_eof()
            await r.read()

        return await self.serve(handler, **kw)

    def dead(self, ip: str | None = None) -> Backend:
        """An address whose port is bound but not listening: connects get RST at once."""
        ip = ip or fresh_ip()
        s = socket.socket()
        s.bind((ip, 0))
        self.socks.append(s)
        return Backend(ip, s.getsockname()[1])

    async def blackhole(self) -> Backend:
        """A listener whose accept queue is full: SYNs are dropped, connects hang."""
        ip = fresh_ip()
        s = socket.socket()
        s.bind((ip, 0))
        s.listen(0)
        self.socks.append(s)
        filler = socket.socket()
        filler.setblocking(False)
        self.socks.append(filler)
        await asyncio.get_running_loop().sock_connect(filler, s.getsockname())
        return Backend(ip, s.getsockname()[1])

    async def connect(self, ip: str, port: int, local_ip: str | None = None
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await asyncio.open_connection(ip, port, local_addr=(local_ip, 0) if local_ip else None)
        self.writers.add(w)
        return r, w

    async def hello(self, ip: str, port: int, local_ip: str | None = None) -> str:
        r, w = await self.connect(ip, port, local_ip)
        try:
            return (await r.readline()).decode().strip()
        finally:
            w.close()
            self.writers.discard(w)
            await w.wait_closed()

    def table(self, routes: dict[Frontend, Route], policy: Any = None) -> RouteTable:
        self.generation += 1
        if policy is None:
            return RouteTable(self.generation, routes)
        return RouteTable(self.generation, routes, policy)


def route(*backends: Backend, service: str = "default/web", kind: str = "ClusterIP", **kw: Any) -> Route:
    return Route(service, "http", kind, tuple(backends), **kw)


def tcp_frontend(proxy: ServiceProxy, f: Frontend) -> TcpFrontend:
    fe = proxy.manager.frontends[f]
    assert isinstance(fe, TcpFrontend)
    return fe
