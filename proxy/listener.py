"""Frontends: one socket per (ip, port, protocol), opened, swapped and drained by diff.

``ListenerManager.apply(table)`` turns the route-table diff into socket changes:

* **added** frontends: claim the VIP (``kubelab.proxy.vip``), then open a socket;
  a bind that fails marks that frontend ``failed`` (reported in /routes and
  /healthz, retried on the next apply) instead of failing the whole table;
* **removed** frontends: stop accepting at once; their live connections drain
  for ``drain_timeout`` and are then aborted (a background task the manager owns);
* **changed** frontends: the balancer adopts the new endpoints in place. Live
  connections are never touched by an endpoint change.

Accepted TCP clients are relayed by ``kubelab.proxy.zerocopy`` (raw sockets, splice(2))
or, where that is unavailable or ``tcp_relay="transport"``, by ``kubelab.proxy.splice``
(asyncio transports); both keep the same rules and metrics.

How "no endpoints" is refused (kube-proxy's REJECT): a TCP frontend whose service
has no usable endpoint keeps a socket that is **bound but not listening**. The
address and port stay reserved (kube-proxy's ``claimNodePort`` idea), and the
kernel answers a SYN with RST, so clients see ``ECONNREFUSED`` ("Connection
refused" in curl) without a round trip through the proxy: that is what REJECT
with ``tcp-reset``/ICMP port-unreachable produces. Accept-then-reset would show as
"connection reset by peer" after a successful connect, and userspace kube-proxy's
accept-then-close as an empty reply. When endpoints appear the same socket starts
listening; when they go away the listener closes (established connections keep
running) and a fresh bound socket takes its place.
UDP frontends without endpoints are not bound at all, so the kernel answers with
ICMP port-unreachable (``ECONNREFUSED`` on a connected UDP socket).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import weakref
from typing import Any

from kubelab.proxy.balancer import DROP, REJECT, SERVE, Balancer, select_endpoints
from kubelab.proxy.config import ProxyConfig
from kubelab.proxy.metrics import ProxyMetrics
from kubelab.proxy.policy import PolicyTable
from kubelab.proxy.splice import Downstream, ReadBuffer, sweep_idle
from kubelab.proxy.table import Frontend, Route, RouteTable, diff
from kubelab.proxy.vip import VipClaimer, VipError
from kubelab.proxy import zerocopy

log = logging.getLogger(__name__)

# Listener states shown in /routes.
LISTENING = "listening"  # accepting and relaying
REFUSING = "refusing"  # no usable endpoint: bound, not listening (kernel refuses)
DROPPING = "dropping"  # Local policy, no local endpoint: accept and hold / discard
FAILED = "failed"  # could not claim or bind the address
DRAINING = "draining"
CLOSED = "closed"


class Shared:
    """State every frontend of one proxy reads on its hot path."""

    __slots__ = ("config", "loop", "policy", "active", "metrics", "balancers", "rbuf", "pipes", "zerocopy", "poller")

    def __init__(self, config: ProxyConfig, loop: asyncio.AbstractEventLoop, metrics: ProxyMetrics) -> None:
        self.config = config
        self.loop = loop
        self.policy = PolicyTable()
        self.active = 0  # open TCP client connections, all frontends
        self.metrics = metrics
        self.rbuf = ReadBuffer()
        # Which TCP relay: raw sockets + splice(2) (kubelab.proxy.zerocopy) where the platform
        # has it, else asyncio transports (kubelab.proxy.splice). See ProxyConfig.tcp_relay.
        mode = config.tcp_relay
        if mode == "splice" and not zerocopy.available():
            raise ValueError("tcp_relay=splice needs Linux and Python >= 3.10 (os.splice)")
        self.zerocopy = mode == "splice" or (mode == "auto" and zerocopy.available())
        self.pipes = zerocopy.PipePool(config.pipe_size) if self.zerocopy else None
        self.poller: zerocopy.Poller | None = None  # created with the first splice listener
        # One balancer per service port (and protocol and traffic policy), shared by all of its
        # frontends (ClusterIP, NodePort, LoadBalancer, externalIPs): kube-proxy keeps
        # round-robin and ClientIP affinity per service port, not per address. Weak values:
        # a balancer lives as long as a frontend uses it.
        self.balancers: weakref.WeakValueDictionary[tuple[str, ...], Balancer] = weakref.WeakValueDictionary()

    def balancer_for(self, route: Route, protocol: str) -> Balancer:
        key = (route.service, route.port_name, protocol, route.traffic_policy)
        bal = self.balancers.get(key)
        if bal is None:
            bal = Balancer(mode=self.config.balancer)
            self.balancers[key] = bal
        return bal


def bound_socket(ip: str, port: int, kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind((ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


class BaseFrontend:
    """What the manager needs from a TCP or UDP frontend."""

    def __init__(self, frontend: Frontend, route: Route, shared: Shared) -> None:
        self.frontend = frontend
        self.shared = shared
        self.route = route
        self.stats = shared.metrics.service(route.service, route.port_name)
        self.balancer = shared.balancer_for(route, frontend.protocol)
        self.action = REJECT
        self.reason = ""
        self.state = CLOSED
        self.error: str | None = None
        self._set_route(route)

    def fail(self, error: str) -> None:
        """Mark the frontend failed. Failed frontends are retried on every route table, so
        only a new error is a warning: the same one again (a port below 1024 without root,
        say) would otherwise repeat for as long as the lab runs."""
        f = self.frontend
        level = logging.DEBUG if error == self.error else logging.WARNING
        log.log(level, "frontend %s:%d/%s (%s): %s", f.ip, f.port, f.protocol, self.route.service, error)
        self.state = FAILED
        self.error = error

    def _set_route(self, route: Route) -> bool:
        """Adopt the route; True when the endpoint set changed."""
        self.route = route
        self.stats = self.shared.metrics.service(route.service, route.port_name)
        self.balancer = self.shared.balancer_for(route, self.frontend.protocol)
        sel = select_endpoints(route, self.shared.config.node_name)
        self.action = sel.action
        self.reason = sel.reason
        return self.balancer.update(sel.backends, route.affinity_timeout)

    async def open(self) -> None:
        raise NotImplementedError

    async def update(self, route: Route) -> None:
        raise NotImplementedError

    def stop_accepting(self) -> None:
        """Synchronously stop taking new clients (called before the drain task starts)."""
        raise NotImplementedError

    async def close(self, drain_timeout: float) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        r = self.route
        return {
            "frontend": {"ip": self.frontend.ip, "port": self.frontend.port, "protocol": self.frontend.protocol},
            "service": r.service,
            "portName": r.port_name,
            "kind": r.kind,
            "trafficPolicy": r.traffic_policy,
            "affinityTimeout": r.affinity_timeout,
            "state": self.state,
            "action": self.action,
            "reason": self.reason,
            "error": self.error,
            "backends": [
                {"ip": b.ip, "port": b.port, "pod": b.pod, "node": b.node, "ready": b.ready,
                 "serving": b.serving, "terminating": b.terminating,
                 "inRotation": b in self.balancer.backends}
                for b in r.backends
            ],
        }


class TcpFrontend(BaseFrontend):
    def __init__(self, frontend: Frontend, route: Route, shared: Shared) -> None:
        super().__init__(frontend, route, shared)
        self.server: asyncio.AbstractServer | None = None  # transport relay
        self.lsock: socket.socket | None = None  # zerocopy relay: listening, watched by add_reader
        self.reserve: socket.socket | None = None
        self.connections: set[Any] = set()  # Downstream (transport relay) or zerocopy.Conn
        self._drained: asyncio.Event | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._resume: asyncio.TimerHandle | None = None

    def _sweep(self) -> None:
        sweep_idle(self.connections)
        self._sweeper = self.shared.loop.call_later(self.shared.config.idle_timeout, self._sweep)

    def _factory(self) -> Downstream:
        return Downstream(self)

    def _accept_ready(self) -> None:
        zerocopy.accept_ready(self, self.lsock)  # type: ignore[arg-type]

    def pause_accepting(self, seconds: float) -> None:
        """Out of fds or memory: stop watching the listening socket for a while."""
        lsock = self.lsock
        if lsock is None or self._resume is not None:
            return
        self.shared.loop.remove_reader(lsock.fileno())

        def resume() -> None:
            self._resume = None
            if self.lsock is lsock:
                self.shared.loop.add_reader(lsock.fileno(), self._accept_ready)

        self._resume = self.shared.loop.call_later(seconds, resume)

    def _listening(self) -> bool:
        return self.server is not None or self.lsock is not None

    def _stop_listening(self) -> None:
        if self.server is not None:
            self.server.close()  # stops accepting; live connections continue
            self.server = None
        if self.lsock is not None:
            if self._resume is not None:
                self._resume.cancel()
                self._resume = None
            else:
                self.shared.loop.remove_reader(self.lsock.fileno())
            self.lsock.close()
            self.lsock = None

    def connection_done(self, conn: Any) -> None:
        self.connections.discard(conn)
        if self._drained is not None and not self.connections:
            self._drained.set()

    async def open(self) -> None:
        if self._sweeper is None:  # open() is retried for failed frontends
            self._sweeper = self.shared.loop.call_later(self.shared.config.idle_timeout, self._sweep)
        await self._sync_socket()

    async def update(self, route: Route) -> None:
        self._set_route(route)
        await self._sync_socket()

    async def _sync_socket(self) -> None:
        f = self.frontend
        want_listen = self.action in (SERVE, DROP)
        try:
            if want_listen and not self._listening():
                sock = self.reserve or bound_socket(f.ip, f.port, socket.SOCK_STREAM)
                self.reserve = None
                try:
                    if self.shared.zerocopy:
                        if self.shared.poller is None:
                            self.shared.poller = zerocopy.Poller(self.shared.loop)
                        # Accepted sockets inherit TCP_NODELAY from the listener (Linux; see
                        # test_proxy_zerocopy_fixes); asyncio transports set it themselves.
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        sock.listen(self.shared.config.backlog)
                        self.shared.loop.add_reader(sock.fileno(), self._accept_ready)
                        self.lsock = sock
                    else:
                        self.server = await self.shared.loop.create_server(
                            self._factory, sock=sock, backlog=self.shared.config.backlog
                        )
                except BaseException:
                    sock.close()
                    raise
            elif not want_listen:
                self._stop_listening()
                if self.reserve is None:
                    self.reserve = bound_socket(f.ip, f.port, socket.SOCK_STREAM)
        except OSError as exc:
            self.fail(f"cannot bind {f.ip}:{f.port}/TCP: {exc.strerror or exc}")
            return
        self.error = None
        self.state = {SERVE: LISTENING, DROP: DROPPING}.get(self.action, REFUSING)

    def stop_accepting(self) -> None:
        self._stop_listening()
        if self.reserve is not None:
            self.reserve.close()
            self.reserve = None
        self.state = DRAINING

    async def close(self, drain_timeout: float) -> None:
        self.stop_accepting()
        if self.connections:
            if self._drained is None:  # close() may run twice (drain task, then shutdown)
                self._drained = asyncio.Event()
            try:
                async with asyncio.timeout(drain_timeout):
                    await self._drained.wait()
            except TimeoutError:
                log.info(
                    "%s:%d/TCP: aborting %d connection(s) still open after %.1fs drain",
                    self.frontend.ip, self.frontend.port, len(self.connections), drain_timeout,
                )
                for conn in list(self.connections):
                    conn.abort()
        self._stop_sweeping()
        self.state = CLOSED

    def _stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def abort_all(self) -> None:
        """Abort every live connection now (a cancelled shutdown)."""
        for conn in list(self.connections):
            conn.abort()
        self._stop_sweeping()
        self.state = CLOSED

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["connections"] = len(self.connections)
        return d


class ListenerManager:
    def __init__(self, shared: Shared, vip: VipClaimer) -> None:
        self.shared = shared
        self.vip = vip
        self.table: RouteTable | None = None
        self.frontends: dict[Frontend, BaseFrontend] = {}
        self.draining: set[BaseFrontend] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._claimed: set[str] = set()

    def _make(self, f: Frontend, route: Route) -> BaseFrontend:
        if f.protocol == "UDP":
            from kubelab.proxy.udp import UdpFrontend

            return UdpFrontend(f, route, self.shared)
        if f.protocol != "TCP":
            raise ValueError(f"unsupported protocol {f.protocol!r}")
        return TcpFrontend(f, route, self.shared)

    async def apply(self, table: RouteTable) -> None:
        d = diff(self.table, table)
        self.shared.policy = table.policy
        for f in d.removed:
            fe = self.frontends.pop(f)
            self._drain(fe)
        for f in d.changed:
            await self.frontends[f].update(table.routes[f])
        for f in d.added:
            route = table.routes[f]
            try:
                fe = self._make(f, route)
            except ValueError as exc:
                log.warning("frontend %s:%d: %s", f.ip, f.port, exc)
                continue
            self.frontends[f] = fe
            await self._open(fe)
        for f, fe in self.frontends.items():
            if fe.state == FAILED and f not in d.added:
                await self._open(fe)
        self.table = table
        await self._release_unused()

    async def _open(self, fe: BaseFrontend) -> None:
        ip = fe.frontend.ip
        if ip not in self._claimed and ip not in self.shared.config.node_ips:
            try:
                await self.vip.claim(ip)
                self._claimed.add(ip)
            except VipError as exc:
                fe.fail(f"cannot claim VIP {ip}: {exc}")
                return
        await fe.open()

    async def _release_unused(self) -> None:
        # Draining frontends keep their address until they are gone (compose mode would
        # otherwise cut their live connections by removing the interface address).
        used = {f.ip for f in self.frontends} | {fe.frontend.ip for fe in self.draining}
        for ip in sorted(self._claimed - used):
            self._claimed.discard(ip)
            try:
                await self.vip.release(ip)
            except VipError as exc:
                log.warning("cannot release VIP %s: %s", ip, exc)

    def _drain(self, fe: BaseFrontend) -> None:
        fe.stop_accepting()
        self.draining.add(fe)
        task = self.shared.loop.create_task(fe.close(self.shared.config.drain_timeout))
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self.draining.discard(fe)
            if fe.frontend not in self.frontends:
                self._release_soon()
            if not t.cancelled() and t.exception() is not None:
                log.error("draining %s failed", fe.frontend, exc_info=t.exception())

        task.add_done_callback(done)

    def _release_soon(self) -> None:
        if self._claimed - {f.ip for f in self.frontends} - {fe.frontend.ip for fe in self.draining}:
            task = self.shared.loop.create_task(self._release_unused())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self, drain_timeout: float | None = None) -> None:
        """Stop accepting everywhere, drain with a timeout, abort the rest."""
        timeout = self.shared.config.drain_timeout if drain_timeout is None else drain_timeout
        fes = list(self.frontends.values()) + list(self.draining)
        self.frontends.clear()
        try:
            for fe in fes:
                fe.stop_accepting()
            await asyncio.gather(*(fe.close(timeout) for fe in fes), return_exceptions=True)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            # Also when cancelled: no connection, poller or pipe may outlive the manager.
            self.table = None
            for fe in fes:
                if isinstance(fe, TcpFrontend):
                    fe.abort_all()
            if self.shared.poller is not None:
                self.shared.poller.close()
                self.shared.poller = None
            if self.shared.pipes is not None:
                self.shared.pipes.close()
        await self._release_unused()

    def describe(self) -> list[dict[str, Any]]:
        out = [fe.describe() for _, fe in sorted(self.frontends.items())]
        out += [fe.describe() for fe in self.draining]
        return out

    def state_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for fe in list(self.frontends.values()) + list(self.draining):
            counts[fe.state] = counts.get(fe.state, 0) + 1
        return counts

    def failed(self) -> dict[str, str]:
        return {
            f"{f.ip}:{f.port}/{f.protocol}": fe.error or ""
            for f, fe in sorted(self.frontends.items())
            if fe.state == FAILED
        }
