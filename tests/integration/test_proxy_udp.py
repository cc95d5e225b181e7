"""UDP through the proxy: per-client sessions, replies from the frontend, idle expiry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubelab.proxy.table import Frontend
from kubelab.proxy.udp import UdpFrontend
from test_proxy_support import Lab, fresh_ip, route, until


class Echo(asyncio.DatagramProtocol):
    def __init__(self, name: bytes) -> None:
        self.name = name
        self.transport: Any = None
        self.peers: set[Any] = set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.peers.add(addr)
        self.transport.sendto(self.name + b":" + data, addr)


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.queue.put_nowait(exc)


async def udp_echo(lab: Lab, name: str) -> Any:
    from kubelab.proxy.table import Backend

    loop = asyncio.get_running_loop()
    ip = fresh_ip()
    t, proto = await loop.create_datagram_endpoint(lambda: Echo(name.encode()), local_addr=(ip, 0))
    lab.transports.append(t)
    return Backend(ip, t.get_extra_info("sockname")[1]), proto


async def udp_client(lab: Lab, f: Frontend) -> tuple[Any, Client]:
    loop = asyncio.get_running_loop()
    t, c = await loop.create_datagram_endpoint(Client, remote_addr=(f.ip, f.port), local_addr=(fresh_ip(), 0))
    lab.transports.append(t)
    return t, c


async def ask(t: Any, c: Client, msg: bytes) -> bytes | Exception:
    t.sendto(msg)
    return await asyncio.wait_for(c.queue.get(), 5)


async def test_udp_echo_sessions_and_idle_expiry() -> None:
    async with Lab() as lab:
        p = await lab.proxy(udp_idle_timeout=0.2)
        (b1, e1), (b2, e2) = await udp_echo(lab, "a"), await udp_echo(lab, "b")
        f = Frontend(fresh_ip(), 53, "UDP")
        await p.apply(lab.table({f: route(b1, b2, service="kube-system/dns")}))
        fe = p.manager.frontends[f]
        assert isinstance(fe, UdpFrontend)
        t1, c1 = await udp_client(lab, f)
        t2, c2 = await udp_client(lab, f)
        r1 = await ask(t1, c1, b"q1")
        r2 = await ask(t2, c2, b"q2")
        assert {r1, r2} == {b"a:q1", b"b:q2"} or {r1, r2} == {b"b:q1", b"a:q2"}
        # a session sticks to its endpoint while it is alive
        first = r1[:2]  # type: ignore[index]
        for i in range(3):
            assert await ask(t1, c1, b"again%d" % i) == first + b"again%d" % i
        assert len(fe.sessions) == 2
        # each session has its own upstream socket: the backends saw two distinct peers
        assert len(e1.peers) == 1 and len(e2.peers) == 1
        await until(lambda: not fe.sessions, timeout=5, what="idle sessions to expire")
        assert p.metrics.service("kube-system/dns", "http").udp_sessions == 0
        # a new datagram opens a new session
        assert (await ask(t1, c1, b"back"))[2:] == b"back"  # type: ignore[index]
        assert len(fe.sessions) == 1


async def test_udp_no_endpoints_is_port_unreachable() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        f = Frontend(fresh_ip(), 53, "UDP")
        await p.apply(lab.table({f: route()}))
        assert p.routes()["frontends"][0]["state"] == "refusing"
        t, c = await udp_client(lab, f)
        got = await ask(t, c, b"anyone?")
        assert isinstance(got, ConnectionRefusedError)


async def test_udp_sessions_to_removed_endpoint_are_flushed() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        (b1, _), (b2, _) = await udp_echo(lab, "a"), await udp_echo(lab, "b")
        f = Frontend(fresh_ip(), 5353, "UDP")
        await p.apply(lab.table({f: route(b1)}))
        t, c = await udp_client(lab, f)
        assert await ask(t, c, b"x") == b"a:x"
        await p.apply(lab.table({f: route(b2)}))
        assert await ask(t, c, b"y") == b"b:y"


@pytest.mark.parametrize("local", [True, False])
async def test_udp_policy_denied_flow_is_dropped(local: bool) -> None:
    from dataclasses import dataclass

    from kubelab.proxy.policy import PolicyTable

    @dataclass(frozen=True)
    class DenyAll(PolicyTable):
        def allows(self, src_ip: str, dst_ip: str, port: int, protocol: str) -> bool:
            return not local

    async with Lab() as lab:
        p = await lab.proxy()
        (b1, e1) = await udp_echo(lab, "a")
        f = Frontend(fresh_ip(), 53, "UDP")
        await p.apply(lab.table({f: route(b1)}, DenyAll()))
        t, c = await udp_client(lab, f)
        if local:
            t.sendto(b"1")
            t.sendto(b"2")
            await until(lambda: p.metrics.service("default/web", "http").policy_denied == 1, what="denial")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(c.queue.get(), 0.2)
            assert not e1.peers
        else:
            assert await ask(t, c, b"ok") == b"a:ok"
