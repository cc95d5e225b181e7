"""TCP relay on asyncio transports: a downstream (client) / upstream (endpoint) Protocol pair.

The fallback relay (``ProxyConfig.tcp_relay="transport"``, or ``auto`` where splice(2) and
epoll are missing); on Linux ``kubelab.proxy.zerocopy`` relays with raw sockets and splice.

Why plain Protocols and not streams: every chunk goes straight from
``data_received`` into the peer's ``transport.write`` (no queue, no task, no
await), which is the shortest copy loop asyncio and uvloop can do.

* **Connect.** Bytes the client sends before the endpoint is connected are kept
  (reading pauses above the high water mark). One task per connection
  (``Downstream._connect``) walks the connect schedule (kube-proxy userspace: 250 ms, 500 ms, 1 s, 2 s), each attempt on the next endpoint with
  the ClientIP affinity reset. When all attempts fail the client is reset.
  NetworkPolicy is checked on the picked endpoint before connecting; a denial
  resets the client and is counted and logged with the policy's explanation.
* **Flow control both ways.** ``pause_writing`` on one side means its peer is
  reading too slowly, so the *other* transport stops reading; ``resume_writing``
  undoes it. Memory per connection is bounded by the two write buffers' high
  water marks (plus one socket read).
* **Half-close.** ``eof_received`` on one side becomes ``write_eof`` (a FIN,
  ``shutdown(SHUT_WR)``) on the other and keeps the transport open; once both
  directions have seen EOF both transports close.
* **Close.** A side that goes away closes its peer: gracefully (flushing) after a
  clean close, with an abort (RST) when it was reset.
* **Idle timeout.** The data path only sets an ``active`` flag; one sweep timer per
  frontend (``sweep_idle``) closes connections whose flag stayed down for a whole
  period, so an idle connection goes after between one and two idle timeouts. No
  timer is created, re-armed or cancelled per connection or per chunk.
* **Connect timeout.** A plain ``call_later`` that cancels the connect task (not
  ``asyncio.timeout``, which costs a context object and two running-loop lookups
  per attempt on the accept path).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from kubelab.proxy.listener import TcpFrontend
    from kubelab.proxy.metrics import EndpointStats
    from kubelab.proxy.table import Backend

log = logging.getLogger(__name__)

_FLOW_ERRORS = (AttributeError, NotImplementedError, RuntimeError)


class ReadBuffer:
    """One receive buffer shared by every connection of a loop (reads never interleave).

    ``get_buffer`` hands out ``view``; ``buffer_updated`` writes ``view[:n]`` to the peer
    transport at once. When that transport could not send it all, it keeps a reference
    to our memory (uvloop queues the memoryview itself), so ``renew`` gives later reads a
    fresh buffer. This saves the copy into a new ``bytes`` object per read that
    ``data_received`` implies: one of three copies per chunk on the bulk path.
    """

    __slots__ = ("size", "view")

    def __init__(self, size: int = 256 * 1024) -> None:
        self.size = size
        self.view = memoryview(bytearray(size))

    def renew(self) -> None:
        self.view = memoryview(bytearray(self.size))


BIG_READ = 64 * 1024

# What ``pick_endpoint`` returns when there is nothing to connect to.
REFUSE = "refuse"  # no endpoint (left): reset the client, ``refused`` (see ``refuse``)
DENY = "deny"  # NetworkPolicy denies the picked endpoint: reset the client (already counted)


# -- connect bookkeeping shared by both TCP relays ------------------------------
def pick_endpoint(fe: "TcpFrontend", client_ip: str, attempt: int,
                  reset: bool) -> "tuple[Backend, EndpointStats] | str":
    """The endpoint for connect attempt ``attempt`` (0-based) and its stats, NetworkPolicy
    checked; else ``REFUSE`` or ``DENY`` (the denial counted and logged with the
    policy's explanation). ``reset`` drops the client's ClientIP affinity (after a
    failed attempt)."""
    backend = fe.balancer.pick(client_ip, reset)
    if backend is None:
        return REFUSE
    policy = fe.shared.policy
    stats = fe.stats
    proto = fe.frontend.protocol
    if not policy.allows(client_ip, backend.ip, backend.port, proto):
        stats.policy_denied += 1
        log.info(
            "denied %s -> %s (%s:%d): %s", client_ip, fe.route.service, backend.ip, backend.port,
            policy.explain(client_ip, backend.ip, backend.port, proto),
        )
        return DENY
    if attempt:
        stats.retries += 1
    return backend, stats.endpoint(backend.ip, backend.port)


def attempt_failed(fe: "TcpFrontend", ep: "EndpointStats", backend: "Backend", why: object) -> None:
    ep.connect_failures += 1
    log.debug("connect %s:%d for %s failed: %s", backend.ip, backend.port, fe.route.service, why)


def refuse(fe: "TcpFrontend", client_ip: str) -> None:
    """Every attempt failed (or no endpoint): count it; the caller resets the client."""
    fe.stats.refused += 1
    log.info("no endpoint of %s accepted a connection from %s; resetting", fe.route.service, client_ip)


def release(conn: Any) -> bool:
    """A connection ended: free its slot and its endpoint's ``active`` count, once.
    False when that was done already (or never counted)."""
    if not conn.counted:
        return False
    conn.counted = False
    fe = conn.fe
    fe.shared.active -= 1
    fe.connection_done(conn)
    if conn.backend is not None:
        conn.ep.active -= 1
    return True


def relay(t: Any, rbuf: ReadBuffer, nbytes: int) -> None:
    """Write what was just read into ``rbuf`` to transport ``t``.

    Large reads go out as a view of the shared buffer (no copy) when ``t`` has nothing
    queued, so the kernel most likely takes it all at once; if it did not, ``t`` now holds
    our memory and the buffer is renewed. Small reads (requests, responses) and writes
    behind a queue are copied into ``bytes``: cheap for small sizes, and it avoids
    renewing (allocating and zeroing) the big buffer on every partial write.
    """
    if nbytes >= BIG_READ and not t.get_write_buffer_size():
        t.write(rbuf.view[:nbytes])
        if t.get_write_buffer_size():
            rbuf.renew()
    else:
        t.write(rbuf.view[:nbytes].tobytes())


class Upstream(asyncio.BufferedProtocol):
    __slots__ = ("down", "transport", "eof")

    def __init__(self, down: "Downstream") -> None:
        self.down = down
        self.transport: Any = None
        self.eof = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        d = self.down
        if d.closed:
            transport.abort()
            return
        cfg = d.fe.shared.config
        transport.set_write_buffer_limits(cfg.high_water, cfg.low_water)
        d.up = self  # d.upt is set by _connect once the client's early bytes are flushed

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.down.rbuf.view

    def buffer_updated(self, nbytes: int) -> None:
        d = self.down
        relay(d.transport, d.rbuf, nbytes)
        d.ep.bytes_out += nbytes
        d.active = True

    def eof_received(self) -> bool:
        self.eof = True
        d = self.down
        if d.up is not self:
            return False
        if d.eof:
            d.close()
        else:
            t = d.transport
            if not t.is_closing():
                t.write_eof()
        return True

    def pause_writing(self) -> None:
        try:
            self.down.transport.pause_reading()
        except _FLOW_ERRORS:
            pass

    def resume_writing(self) -> None:
        try:
            self.down.transport.resume_reading()
        except _FLOW_ERRORS:
            pass

    def connection_lost(self, exc: Exception | None) -> None:
        d = self.down
        # The last callback: drop the back reference so the Downstream/Upstream pair is freed
        # by reference counting instead of waiting for the cyclic GC (one cycle per connection
        # showed up as gc_collect_main in profiles of the accept path).
        self.down = None  # type: ignore[assignment]
        if d.up is not self:
            return  # an attempt that was abandoned (timeout) or a late connect
        t = d.transport
        if exc is None:
            t.close()
        else:
            t.abort()


class Downstream(asyncio.BufferedProtocol):
    """The client side of one proxied connection; owns the pair's lifecycle."""

    __slots__ = (
        "fe", "transport", "up", "upt", "ep", "eof", "active", "task", "timed_out",
        "closed", "counted", "client_ip", "backend", "early", "rbuf", "dropping",
    )

    def __init__(self, fe: "TcpFrontend") -> None:
        self.fe = fe
        self.transport: Any = None
        self.up: Upstream | None = None
        self.upt: Any = None
        self.ep: EndpointStats | None = None
        self.eof = False
        self.active = True  # a new connection gets a full idle period, however soon the sweep runs
        self.dropping = False
        self.task: asyncio.Task[None] | None = None
        self.timed_out = False
        self.closed = False
        self.counted = False
        self.client_ip = ""
        self.backend: Any = None
        self.early: list[bytes] | None = None
        self.rbuf: ReadBuffer = fe.shared.rbuf

    # -- accept -------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        fe = self.fe
        sh = fe.shared
        if sh.active >= sh.config.max_connections:
            fe.stats.limit_rejected += 1
            transport.abort()
            return
        sh.active += 1
        self.counted = True
        fe.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        if fe.action != "serve":
            # Local traffic policy with no local endpoint: kube-proxy DROPs. The kernel has
            # already completed the handshake, so the closest userspace analogue is to hold the
            # connection silently (the client times out) until the idle timer closes it.
            # What it sends is read and discarded, so its close (EOF) frees the slot at once.
            fe.stats.dropped += 1
            self.dropping = True
            return
        transport.set_write_buffer_limits(sh.config.high_water, sh.config.low_water)
        self.task = sh.loop.create_task(self._connect())

    def _make_upstream(self) -> Upstream:
        return Upstream(self)

    def _connect_timeout(self) -> None:
        task = self.task
        if task is not None and not task.done():
            self.timed_out = True
            task.cancel()

    async def _connect(self) -> None:
        fe = self.fe
        sh = fe.shared
        loop = sh.loop
        reset = False
        try:
            for attempt, timeout in enumerate(sh.config.connect_schedule):
                picked = pick_endpoint(fe, self.client_ip, attempt, reset)
                if picked is REFUSE:
                    break
                if picked is DENY:
                    self.transport.abort()
                    return
                backend, ep = picked  # type: ignore[misc]
                self.ep = ep
                timer = loop.call_later(timeout, self._connect_timeout)
                try:
                    await loop.create_connection(self._make_upstream, backend.ip, backend.port)
                except asyncio.CancelledError:
                    timer.cancel()
                    if not self.timed_out or self.closed:
                        raise  # the client went away (connection_lost) or shutdown
                    self.timed_out = False
                    self.task.uncancel()  # type: ignore[union-attr]
                    self.up = self.upt = None
                    attempt_failed(fe, ep, backend, "timed out")
                    reset = True
                    continue
                except OSError as exc:
                    timer.cancel()
                    self.up = self.upt = None
                    attempt_failed(fe, ep, backend, repr(exc))
                    reset = True
                    continue
                timer.cancel()
                up = self.up
                if self.closed or up is None:
                    # The client went away while we were connecting.
                    if up is not None:
                        up.transport.close()
                    return
                upt = up.transport
                self.backend = backend
                ep.active += 1
                ep.total += 1
                early = self.early
                if early is not None:
                    self.early = None
                    for data in early:
                        upt.write(data)
                        ep.bytes_in += len(data)
                self.upt = upt  # from here on data_received writes straight through
                if self.eof:
                    if up.eof:
                        self.close()
                    else:
                        upt.write_eof()
                elif early is not None:
                    self.transport.resume_reading()  # no-op unless _early_data paused it
                return
            refuse(fe, self.client_ip)
            self.transport.abort()
        finally:
            self.task = None

    # -- data ---------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.rbuf.view

    def buffer_updated(self, nbytes: int) -> None:
        upt = self.upt
        rbuf = self.rbuf
        if upt is None:
            if not self.dropping:
                self._early_data(bytes(rbuf.view[:nbytes]))
            return
        relay(upt, rbuf, nbytes)
        self.ep.bytes_in += nbytes
        self.active = True

    def data_received(self, data: bytes) -> None:
        """Not used by asyncio for a BufferedProtocol; kept for direct calls (tests)."""
        upt = self.upt
        if upt is None:
            if not self.dropping:
                self._early_data(data)
            return
        upt.write(data)
        self.ep.bytes_in += len(data)
        self.active = True

    def _early_data(self, data: bytes) -> None:
        # Bytes that arrive while the endpoint is still being connected (a client that speaks
        # first, like every HTTP client) are kept, up to the high water mark; then reading
        # pauses until the connect is done. Not pausing for the common small request saves
        # two epoll_ctl calls per connection on the accept path.
        early = self.early
        if early is None:
            early = self.early = []
        early.append(data)
        if sum(map(len, early)) > self.fe.shared.config.high_water:
            try:
                self.transport.pause_reading()
            except _FLOW_ERRORS:
                pass

    def eof_received(self) -> bool:
        self.eof = True
        t = self.upt
        if t is None:
            if self.dropping:
                return False  # a dropped client went away: close, free its slot
            return True  # still connecting: _connect sends the EOF on after the early data
        if self.up.eof:  # type: ignore[union-attr]
            self.close()
        elif not t.is_closing():
            t.write_eof()
        return True

    def pause_writing(self) -> None:
        try:
            self.up.transport.pause_reading()  # type: ignore[union-attr]
        except _FLOW_ERRORS:
            pass

    def resume_writing(self) -> None:
        try:
            self.up.transport.resume_reading()  # type: ignore[union-attr]
        except _FLOW_ERRORS:
            pass

    # -- introspection (tests, /routes) -------------------------------------
    def buffered(self) -> int:
        """Bytes the proxy holds for this connection (both write buffers)."""
        n = self.transport.get_write_buffer_size() if self.transport is not None else 0
        if self.upt is not None:
            n += self.upt.get_write_buffer_size()
        return n

    def reading_backend(self) -> bool:
        return self.upt is not None and self.upt.is_reading()

    # -- lifecycle ----------------------------------------------------------
    def close(self) -> None:
        """Graceful: flush both write buffers, then close."""
        self.transport.close()
        if self.up is not None:
            self.up.transport.close()

    def abort(self) -> None:
        self.transport.abort()
        if self.up is not None:
            self.up.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()
        if not release(self):
            return
        up = self.up
        if up is not None:
            if exc is None:
                up.transport.close()
            else:
                up.transport.abort()


def sweep_idle(connections: "set[Downstream]") -> int:
    """One idle-timeout period passed: close connections without traffic in it.

    Returns how many were closed. Called by the frontend's sweep timer.
    """
    closed = 0
    for conn in list(connections):
        if conn.active:
            conn.active = False
        else:
            log.debug("closing idle connection from %s to %s", conn.client_ip, conn.fe.route.service)
            conn.close()
            closed += 1
    return closed
