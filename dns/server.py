"""The authoritative DNS data plane: UDP and TCP transports around :mod:`answer`.

Protocol classes only frame bytes, call :meth:`Answerer.answer` and handle flow
control; every decision is in ``answer.py``/``records.py``. One :class:`DnsServer`
binds UDP and TCP on the same address, serves SERVFAIL until the first zone, then the
last zone it was given for as long as it runs (a controller that goes away does not
take DNS with it). ``set_zone`` is synchronous: the table is planned (everything that
can fail) and then committed with plain dict operations, so queries on the loop see
the old or the new zone, never a mix.

TCP follows RFC 7766: 2-byte length framing, any number of pipelined queries per
connection (answered in order unless a query is forwarded), an idle timeout, reading
paused while the socket's write buffer is above its high-water mark.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import logging
import socket
import sys
import time
from typing import Callable, Iterator

from kubelab.dns import udpbatch, wire
from kubelab.dns.answer import FORWARD_ZONE, Answerer, Forward
from kubelab.dns.config import DnsConfig
from kubelab.dns.forward import Forwarder
from kubelab.dns.metrics import DnsMetrics, Latency
from kubelab.dns.records import RecordTable
from kubelab.dns.zone import ZoneData

logger = logging.getLogger(__name__)

_perf = time.perf_counter


FULL_GC_INTERVAL = 60.0  # seconds between full collections with gc_freeze (see set_zone)


class StaleGeneration(Exception):
    """``set_zone`` got a generation older than the one being served (HTTP 409)."""

    def __init__(self, offered: int, current: int) -> None:
        super().__init__(f"zone generation {offered} is older than the served {current}")
        self.offered = offered
        self.current = current


class _Holder:
    """What every transport reads per query; ``table`` is swapped by ``set_zone``."""

    __slots__ = ("config", "table", "empty", "opt_plain", "opt_do")

    def __init__(self, config: DnsConfig) -> None:
        self.config = config
        self.table: RecordTable | None = None
        self.empty = RecordTable(config)
        self.opt_plain = wire.opt_rr(config.edns_udp_size, False)
        self.opt_do = wire.opt_rr(config.edns_udp_size, True)


class UdpListener:
    """UDP without a transport: a non-blocking socket drained in one reader callback.

    Measured against a ``DatagramProtocol`` on uvloop this serves 20-35% more queries
    per second: up to :attr:`BATCH` datagrams are answered per wake-up with bound
    ``recvfrom``/``sendto``, and no per-datagram callback machinery runs. On Linux the
    wake-up instead uses :class:`kubelab.dns.udpbatch.BatchedUdp` (``recvmmsg`` /
    ``sendmmsg``: two system calls per batch, no address tuples), unless
    ``config.udp_mmsg`` is off. Flow control for UDP is dropping: if the kernel's send
    buffer is full the answer is dropped (the client retries), and reading stops after a
    batch so TCP and timers get a turn.
    """

    BATCH = 128

    def __init__(self, server: "DnsServer", answerer: Answerer, sock: socket.socket,
                 batched: bool = False) -> None:
        self.server = server
        self.answerer = answerer
        self.sock = sock
        self.latency = Latency()
        self._dropped = 0
        self.family = "2" if sock.family == socket.AF_INET6 else "1"
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batch: udpbatch.BatchedUdp | None = None
        if batched:
            self.batch = udpbatch.BatchedUdp(sock)
            # In batched mode the "client" the Answerer sees is the slot number; the
            # address is decoded only when a forwarding decision needs it.
            batch = self.batch
            check = answerer.forward_check
            answerer.forward_check = lambda slot: check(batch.address(slot)[0])

    @property
    def dropped(self) -> int:
        return self._dropped + (self.batch.dropped if self.batch is not None else 0)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable if self.batch is None else self._readable_batch)

    def _readable_batch(self) -> None:
        self.batch.serve(self.answerer.answer, self._failed, self._defer, self._observe, _perf)  # type: ignore[union-attr]

    def _failed(self, data: bytes, slot: int) -> bytes | None:
        return self.server.failed_reply(data, lambda: self.batch.address(slot))  # type: ignore[union-attr]

    def _defer(self, fwd, addr) -> None:
        self.server.spawn(self._forward(fwd, addr, _perf()))

    def _observe(self, n: int, seconds: float) -> None:
        self.latency.observe_many(seconds, n)

    def _readable(self) -> None:
        recv = self.sock.recvfrom
        send = self.sock.sendto
        answer = self.answerer.answer
        lat = self.latency
        first = lat.first
        counts = lat.counts
        for _ in range(self.BATCH):
            try:
                data, addr = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                logger.debug("udp recv: %r", exc)
                continue
            t0 = _perf()
            try:
                reply = answer(data, addr[0])
            except Exception:  # a bug must cost one answer, never the server
                reply = self.server.failed_reply(data, lambda: addr)
            if reply is None:
                continue
            if reply.__class__ is bytes:
                try:
                    send(reply, addr)
                except (BlockingIOError, InterruptedError):
                    self._dropped += 1
                    continue
                except OSError as exc:
                    logger.debug("udp send to %s: %r", addr, exc)
                    continue
                dt = _perf() - t0
                lat.sum += dt
                if dt <= first:
                    counts[0] += 1
                else:
                    lat.observe_count(dt)
            elif reply.__class__ is Forward:
                self.server.spawn(self._forward(reply, addr, t0))  # type: ignore[arg-type]
            else:
                logger.error("udp: answer returned %s; datagram dropped", type(reply).__name__)

    async def _forward(self, fwd: Forward, addr, t0: float) -> None:
        reply = await self.server.forward(fwd)
        self.answerer.count(FORWARD_ZONE, fwd.query.qtype, reply[3] & 0xF)
        if self.sock.fileno() != -1:
            try:
                self.sock.sendto(reply, addr)
            except OSError:
                self._dropped += 1
        self.latency.observe(_perf() - t0)

    def close(self) -> None:
        if self._loop is not None and self.sock.fileno() != -1:
            self._loop.remove_reader(self.sock.fileno())
        if self.batch is not None:
            self.batch.close()
        self.sock.close()


class TcpDnsProtocol(asyncio.Protocol):
    """RFC 7766 DNS over TCP: framing, pipelining, idle timeout, flow control both ways.

    Answers can be much larger than queries (a 100-byte query for a 500-endpoint
    headless service returns 8 KB), so backpressure is per *message*: once the
    transport's write buffer is above its high-water mark (``pause_writing``) the
    remaining queries stay unparsed in ``buf`` and reading pauses; ``resume_writing``
    continues where it stopped. Output is flushed every :attr:`FLUSH` bytes so that
    ``pause_writing`` can fire in the middle of a burst.
    """

    __slots__ = ("server", "answerer", "latency", "transport", "buf", "client", "last",
                 "timer", "closing", "tasks", "write_paused")

    FLUSH = 65536

    def __init__(self, server: "DnsServer", answerer: Answerer, latency: Latency) -> None:
        self.server = server
        self.answerer = answerer
        self.latency = latency
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.client = ""
        self.last = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.tasks: set[asyncio.Task] = set()
        self.write_paused = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        if len(self.server._connections) >= self.server.config.tcp_max_connections:
            transport.abort()
            return
        self.server._connections.add(self)
        loop = asyncio.get_running_loop()
        self.last = loop.time()
        self.timer = loop.call_later(self.server.config.tcp_idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self.last
        timeout = self.server.config.tcp_idle_timeout
        if idle >= timeout and not self.tasks and not self.write_paused:
            self.transport.close()
        else:
            self.timer = loop.call_later(max(0.01, timeout - idle), self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.last = asyncio.get_running_loop().time()
        self.buf += data
        self._process()

    def _process(self) -> None:
        transport = self.transport
        if transport is None:
            return
        t0 = _perf()
        buf = self.buf
        out: list[bytes] = []
        size = 0
        answer = self.answerer.answer
        while len(buf) >= 2 and not self.write_paused:
            n = (buf[0] << 8) | buf[1]
            if len(buf) < n + 2:
                break
            msg = bytes(buf[2 : n + 2])
            del buf[: n + 2]
            try:
                reply = answer(msg, self.client)
            except Exception:
                reply = self.server.failed_reply(msg, lambda: self.client)
            if reply is None:
                # RFC 7766 §6.2.3 lets a server close on a message it cannot parse.
                if out:
                    transport.write(b"".join(out))
                transport.close()
                self.closing = True
                buf.clear()
                return
            if reply.__class__ is bytes:
                out.append(len(reply).to_bytes(2, "big") + reply)  # type: ignore[arg-type]
                size += len(reply) + 2
                if size >= self.FLUSH:
                    transport.write(b"".join(out))  # may call pause_writing right here
                    out = []
                    size = 0
            else:
                task = self.server.spawn(self._forward(reply))  # type: ignore[arg-type]
                self.tasks.add(task)
                task.add_done_callback(self._task_done)
        if out:
            transport.write(b"".join(out))
            self.latency.observe(_perf() - t0)
        if self.closing and not self.tasks and not self.write_paused and len(buf) < 2:
            transport.close()

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if self.closing and not self.tasks and self.transport is not None and not self.buf:
            self.transport.close()

    async def _forward(self, fwd: Forward) -> None:
        t0 = _perf()
        reply = await self.server.forward(fwd)
        self.answerer.count(FORWARD_ZONE, fwd.query.qtype, reply[3] & 0xF)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(len(reply).to_bytes(2, "big") + reply)
        self.latency.observe(_perf() - t0)

    def eof_received(self) -> bool:
        # Half-close: answer what is buffered and in flight, then close.
        self.closing = True
        return bool(self.tasks or self.write_paused)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.transport.is_closing():
            if not self.closing:
                self.transport.resume_reading()
            self._process()

    def shutdown(self) -> None:
        """Server closing: idle connections close now, busy ones after their answers."""
        self.closing = True
        if self.transport is not None and not self.tasks:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None
        self.server._connections.discard(self)
        for t in self.tasks:
            t.cancel()


class DnsServer:
    """Authoritative cluster DNS with optional forwarding; see the module docstring.

    Public API: ``await start()``, ``set_zone(ZoneData)``, ``addresses``, ``ready``,
    ``generation``, ``zone``, ``metrics.registry``, ``await close()``.
    """

    def __init__(self, config: DnsConfig, *, forwarder: Forwarder | None = None) -> None:
        self.config = config
        self._holder = _Holder(config)
        if forwarder is None:
            upstreams = config.effective_upstreams
            forwarder = Forwarder(upstreams, timeout=config.forward_timeout,
                                  cache_size=config.forward_cache_size, max_ttl=config.forward_max_ttl,
                                  max_inflight=config.forward_max_inflight) if upstreams else None
        self.forwarder = forwarder if forwarder is not None and forwarder.enabled else None
        self._clients = tuple(config.recursion_clients)
        self._client_cache: dict[str, bool] = {}
        self._udp: list[UdpListener] = []
        self._tcp_servers: list[asyncio.AbstractServer] = []
        self._tcp_answerers: list[tuple[str, Answerer, Latency]] = []
        self._connections: set[TcpDnsProtocol] = set()
        self._tasks: set[asyncio.Task] = set()
        self._addresses: list[tuple[str, int]] = []
        self.zone: ZoneData | None = None
        self.serial = 0
        self.updates = 0
        self.last_update_seconds = 0.0
        self.zone_names = tuple(z.name for z in self._holder.empty.zones)
        self.server_label = "dns://%s:%d" % config.addr
        self.metrics = DnsMetrics(self)
        self.query_failures: dict[str, int] = {}  # exception type -> queries whose answer raised
        self._failure_logged: dict[str, float] = {}  # exception type -> when it was last logged
        self._failure_clock = time.monotonic
        self._closed = False
        self._last_full_gc = time.monotonic()
        self._admin_runner = None
        self.admin_address: tuple[str, int] | None = None

    # ------------------------------------------------------------------ state
    @property
    def ready(self) -> bool:
        """True once a zone has been applied (``/readyz``)."""
        return self._holder.table is not None

    @property
    def generation(self) -> int:
        return self.zone.generation if self.zone is not None else -1

    @property
    def record_count(self) -> int:
        t = self._holder.table
        return len(t.answers) if t is not None else 0

    @property
    def table(self) -> RecordTable | None:
        return self._holder.table

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Bound (host, port) pairs; each serves both UDP and TCP."""
        return tuple(self._addresses)

    @property
    def address(self) -> tuple[str, int]:
        return self._addresses[0]

    @property
    def admin_url(self) -> str | None:
        """``http://host:port`` of the admin app when ``config.admin_addr`` is set."""
        if self.admin_address is None:
            return None
        host, port = self.admin_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def set_zone(self, zone: ZoneData) -> bool:
        """Serve ``zone`` from now on. False if it is the zone already served (no-op).

        Raises :class:`StaleGeneration` for a generation older than the current one, so
        a late retry can never roll DNS back.
        """
        current = self.zone
        if current is not None:
            if zone.generation < current.generation:
                raise StaleGeneration(zone.generation, current.generation)
            if zone is current:
                return False
        t0 = _perf()
        table = self._holder.table
        if table is None:
            # First zone: build a fresh table off to the side, then publish it.
            table = RecordTable(self.config)
            table.load(zone, max(self.serial + 1, int(time.time())))
            changed = True
        else:
            plan = table.plan(zone, table.serial)
            changed = not plan.empty or plan.namespaces != table._explicit_ns
            if changed:
                # SOA serial = time of the last change (CoreDNS Serial()), strictly increasing.
                plan.serial = max(self.serial + 1, int(time.time()))
            table.commit(plan)
        self.serial = table.serial  # type: ignore[union-attr]
        self._holder.table = table
        if self.config.gc_freeze and changed:
            # The table is long-lived and acyclic: keep it out of the cyclic GC's full
            # collections, which otherwise walk ~500k objects and stall queries for tens of
            # ms (p99). Refcounting still frees replaced entries; the young generations
            # are collected first so that cyclic garbage alive right now is not frozen.
            # A frozen object that later dies in a cycle is only freed once unfrozen, so
            # at most once per FULL_GC_INTERVAL everything is unfrozen and collected: the
            # leak is bounded by time, and the full pass never runs on every change.
            now = time.monotonic()
            if now - self._last_full_gc >= FULL_GC_INTERVAL:
                self._last_full_gc = now
                gc.unfreeze()
                gc.collect()
            else:
                gc.collect(1)
            gc.freeze()
        self.zone = zone
        self.updates += 1
        self.last_update_seconds = _perf() - t0
        logger.debug("zone generation %d applied in %.1f ms (%d answers)", zone.generation,
                     self.last_update_seconds * 1000, len(table.answers))  # type: ignore[union-attr]
        return changed

    # ------------------------------------------------------------------ helpers
    def _forward_ok(self, client: str) -> bool:
        if self.forwarder is None:
            return False
        ok = self._client_cache.get(client)
        if ok is None:
            try:
                ip = ipaddress.ip_address(client.split("%")[0])
                if ip.version == 6 and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                ok = any(ip in net for net in self._clients)
            except ValueError:
                ok = False
            if len(self._client_cache) > 4096:
                self._client_cache.clear()
            self._client_cache[client] = ok
        return ok

    async def forward(self, fwd: Forward) -> bytes:
        assert self.forwarder is not None
        return await self.forwarder.forward(fwd.query, fwd.limit, fwd.opt)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("forwarding task failed", exc_info=task.exception())

    FAILURE_LOG_INTERVAL = 60.0

    def failed_reply(self, data: bytes, client: Callable[[], object]) -> bytes | None:
        """The reply to a query whose answer raised; call it from the ``except`` block.

        Every transport (UDP plain and batched, TCP) goes through here. Never raises:
        SERVFAIL if the query parses, else None (drop). Input can trigger a bug at line
        rate, so the traceback is logged once per exception type per
        :attr:`FAILURE_LOG_INTERVAL` seconds; every failure is counted in
        ``query_failures`` (``kubelab_dns_query_failures_total``). ``client`` is called
        only when logging (decoding a batched sender costs a little).
        """
        exc = sys.exc_info()[1]
        kind = type(exc).__name__ if exc is not None else "unknown"
        self.query_failures[kind] = self.query_failures.get(kind, 0) + 1
        now = self._failure_clock()
        last = self._failure_logged.get(kind)
        if last is None or now - last >= self.FAILURE_LOG_INTERVAL:
            self._failure_logged[kind] = now
            try:
                who = client()
            except Exception:
                who = "?"
            logger.error("query from %s failed (%d %s so far; logged at most once a minute per type)",
                         who, self.query_failures[kind], kind, exc_info=exc)
        try:
            return self.servfail_for(data)
        except Exception:
            return None

    def udp_stats(self) -> dict[str, int]:
        """UDP socket counters summed over the listeners (batched ones count wake-ups too)."""
        out = {"wakeups": 0, "batches": 0, "received": 0, "errors": 0, "dropped": 0}
        for listener in self._udp:
            out["dropped"] += listener.dropped
            b = listener.batch
            if b is not None:
                out["wakeups"] += b.wakeups
                out["batches"] += b.batches
                out["received"] += b.received
                out["errors"] += b.errors
        return out

    def servfail_for(self, data: bytes) -> bytes | None:
        q = wire.parse_query(data)
        if isinstance(q, wire.Malformed):
            return None
        flags = 0x8000 | (q.flags & 0x0100) | wire.SERVFAIL
        return q.id + flags.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x00\x00\x00" + q.question

    def stat_sources(self) -> Iterator[tuple[str, str, Answerer, Latency]]:
        for listener in self._udp:
            yield "udp", listener.family, listener.answerer, listener.latency
        for family, answerer, latency in self._tcp_answerers:
            yield "tcp", family, answerer, latency

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.config.addr
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        fam_label = "2" if family == socket.AF_INET6 else "1"
        last_exc: OSError | None = None
        for _attempt in range(20):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                except OSError:
                    pass
                sock.bind((host, port))
                bound_port = sock.getsockname()[1]
                tcp_answerer = Answerer(self._holder, False, self._forward_ok)
                tcp_latency = Latency()
                tcp_server = await loop.create_server(
                    lambda: TcpDnsProtocol(self, tcp_answerer, tcp_latency), host, bound_port,
                    family=family, reuse_address=True, backlog=1024)
            except OSError as exc:
                sock.close()
                last_exc = exc
                if port == 0 and exc.errno == errno.EADDRINUSE:
                    continue  # the ephemeral UDP port was taken for TCP: pick another
                raise
            listener = UdpListener(self, Answerer(self._holder, True, self._forward_ok), sock,
                                   batched=self.config.udp_mmsg and udpbatch.available())
            listener.start()
            self._udp.append(listener)
            self._tcp_servers.append(tcp_server)
            self._tcp_answerers.append((fam_label, tcp_answerer, tcp_latency))
            self._addresses.append((host, bound_port))
            self.server_label = "dns://%s:%d" % (host, bound_port)
            if self.forwarder is not None and (host, bound_port) in self.forwarder.upstreams:
                # resolv.conf pointing at ourselves (a container) would loop forever.
                logger.warning("not forwarding to %s:%d: that is this server", host, bound_port)
                self.forwarder.upstreams = tuple(u for u in self.forwarder.upstreams if u != (host, bound_port))
                if not self.forwarder.upstreams:
                    self.forwarder = None
            logger.info("dns listening on %s:%d (udp+tcp), zone %s", host, bound_port, self.config.zone)
            if self.config.admin_addr is not None:
                from kubelab.dns.admin import start_admin  # admin imports this module

                try:
                    self._admin_runner, self.admin_address = await start_admin(self, *self.config.admin_addr)
                except BaseException:
                    await self.close()
                    raise
            return
        raise last_exc  # type: ignore[misc]

    async def close(self) -> None:
        """Stop accepting, let in-flight answers finish (drain_timeout), then cancel."""
        if self._closed:
            return
        self._closed = True
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        for srv in self._tcp_servers:
            srv.close()
        for listener in self._udp:
            listener.close()
        for conn in list(self._connections):
            conn.shutdown()
        pending = set(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=self.config.drain_timeout)
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        for srv in self._tcp_servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), self.config.drain_timeout)
            except asyncio.TimeoutError:
                pass
        # Let transports run their connection_lost callbacks before the loop moves on.
        await asyncio.sleep(0)

    async def __aenter__(self) -> "DnsServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
