"""UDP frontends: one session per client address, each with its own upstream socket.

As in kube-proxy userspace's ``clientCache``: the first datagram from a client
address picks an endpoint (balancer + affinity + NetworkPolicy) and opens a
connected UDP socket to it; replies on that socket go back to the client from the
frontend address. Sessions idle for ``udp_idle_timeout`` are dropped by one sweep
timer per frontend (so expiry happens between one and two timeouts). An ICMP
error from the endpoint (nothing listening) ends the session and its affinity, so
the client's next datagram tries another endpoint. Sessions to endpoints that
leave the route are dropped at once (modern kube-proxy flushes their conntrack
entries). A denied flow is remembered as a session without upstream, so the
denial is counted and logged once per flow, not per datagram.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from kubelab.proxy.balancer import DROP, SERVE
from kubelab.proxy.listener import CLOSED, DROPPING, LISTENING, REFUSING, BaseFrontend, Shared, bound_socket
from kubelab.proxy.metrics import EndpointStats
from kubelab.proxy.table import Backend, Frontend, Route

log = logging.getLogger(__name__)


class Session:
    __slots__ = ("fe", "addr", "backend", "ep", "transport", "pending", "active", "task", "ended")

    def __init__(self, fe: "UdpFrontend", addr: Any, backend: Backend | None, ep: EndpointStats | None) -> None:
        self.fe = fe
        self.addr = addr
        self.backend = backend
        self.ep = ep
        self.transport: Any = None
        self.pending: list[bytes] | None = []
        self.active = True
        self.task: asyncio.Task[None] | None = None
        self.ended = False


class _Upstream(asyncio.DatagramProtocol):
    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: Any) -> None:
        s = self.session
        t = s.fe.transport
        if t is None or s.ended:
            return
        t.sendto(data, s.addr)
        s.ep.bytes_out += len(data)  # type: ignore[union-attr]
        s.active = True

    def error_received(self, exc: Exception) -> None:
        s = self.session
        if s.ep is not None:
            s.ep.connect_failures += 1
        log.debug("UDP endpoint %s for %s: %r", s.backend, s.addr, exc)
        s.fe.balancer.affinity.pop(s.addr[0], None)
        s.fe.end_session(s)


class _Listen(asyncio.DatagramProtocol):
    __slots__ = ("fe",)

    def __init__(self, fe: "UdpFrontend") -> None:
        self.fe = fe

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.fe.received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP frontend %s: %r", self.fe.frontend, exc)


class UdpFrontend(BaseFrontend):
    def __init__(self, frontend: Frontend, route: Route, shared: Shared) -> None:
        super().__init__(frontend, route, shared)
        self.transport: Any = None
        self.sessions: dict[Any, Session] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        await self._sync_socket()

    async def update(self, route: Route) -> None:
        self._set_route(route)
        live = {(b.ip, b.port) for b in self.balancer.backends}
        for s in list(self.sessions.values()):
            b = s.backend
            if b is not None and (b.ip, b.port) not in live:
                self.end_session(s)
        await self._sync_socket()

    async def _sync_socket(self) -> None:
        f = self.frontend
        want = self.action in (SERVE, DROP)
        if want and self.transport is None:
            try:
                sock = bound_socket(f.ip, f.port, socket.SOCK_DGRAM)
            except OSError as exc:
                self.fail(f"cannot bind {f.ip}:{f.port}/UDP: {exc.strerror or exc}")
                return
            self.transport, _ = await self.shared.loop.create_datagram_endpoint(lambda: _Listen(self), sock=sock)
            self._arm()
        elif not want and self.transport is not None:
            self._shutdown()
        self.error = None
        self.state = {SERVE: LISTENING, DROP: DROPPING}.get(self.action, REFUSING)

    def _arm(self) -> None:
        self._sweeper = self.shared.loop.call_later(self.shared.config.udp_idle_timeout, self._sweep)

    def _sweep(self) -> None:
        for s in list(self.sessions.values()):
            if s.active:
                s.active = False
            else:
                self.end_session(s)
        self._arm()

    def received(self, data: bytes, addr: Any) -> None:
        s = self.sessions.get(addr)
        if s is None:
            s = self._new_session(addr)
            if s is None:
                return
        s.active = True
        if s.ep is None:
            return  # denied flow
        s.ep.bytes_in += len(data)
        if s.transport is not None:
            s.transport.sendto(data)
        elif s.pending is not None and len(s.pending) < self.shared.config.udp_max_pending:
            s.pending.append(data)

    def _new_session(self, addr: Any) -> Session | None:
        stats = self.stats
        if self.action != SERVE or len(self.sessions) >= self.shared.config.udp_max_sessions:
            stats.dropped += 1
            return None
        backend = self.balancer.pick(addr[0])
        if backend is None:
            stats.dropped += 1
            return None
        policy = self.shared.policy
        if not policy.allows(addr[0], backend.ip, backend.port, "UDP"):
            stats.policy_denied += 1
            log.info(
                "denied UDP %s -> %s (%s:%d): %s", addr[0], self.route.service, backend.ip, backend.port,
                policy.explain(addr[0], backend.ip, backend.port, "UDP"),
            )
            s = Session(self, addr, backend, None)
        else:
            ep = stats.endpoint(backend.ip, backend.port)
            ep.total += 1
            ep.active += 1
            s = Session(self, addr, backend, ep)
            s.task = self.shared.loop.create_task(self._connect(s))
        self.sessions[addr] = s
        stats.udp_sessions += 1
        return s

    async def _connect(self, s: Session) -> None:
        b = s.backend
        assert b is not None
        try:
            transport, _ = await self.shared.loop.create_datagram_endpoint(
                lambda: _Upstream(s), remote_addr=(b.ip, b.port)
            )
        except OSError as exc:
            if s.ep is not None:
                s.ep.connect_failures += 1
            log.debug("UDP connect %s:%d failed: %r", b.ip, b.port, exc)
            self.end_session(s)
            return
        finally:
            s.task = None
        if s.ended:
            transport.close()
            return
        s.transport = transport
        pending, s.pending = s.pending, None
        for data in pending or ():
            transport.sendto(data)

    def end_session(self, s: Session) -> None:
        if s.ended:
            return
        s.ended = True
        if self.sessions.get(s.addr) is s:
            del self.sessions[s.addr]
        self.stats.udp_sessions -= 1
        if s.ep is not None:
            s.ep.active -= 1
        if s.task is not None:
            s.task.cancel()
        if s.transport is not None:
            s.transport.close()

    def _shutdown(self) -> None:
        for s in list(self.sessions.values()):
            self.end_session(s)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def stop_accepting(self) -> None:
        # UDP has nothing to drain: sessions end with the socket (conntrack flush).
        self._shutdown()
        self.state = CLOSED

    async def close(self, drain_timeout: float) -> None:
        self.stop_accepting()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["sessions"] = len(self.sessions)
        return d
