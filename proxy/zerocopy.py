"""TCP relay on raw sockets: batched accept, non-blocking connect, splice(2) between sockets.

The transport relay (``kubelab.proxy.splice``) pays, per proxied connection, for two
transports (getsockname/getpeername each), a Task and ``create_connection``; per
chunk, two copies between kernel and user space. This relay does neither:

* **Accept** -- the listening socket is a plain non-blocking socket watched with
  ``loop.add_reader``; one wakeup accepts until ``EAGAIN`` (at most ``ACCEPT_BATCH``).
  The client address comes from ``accept`` itself.
* **Connect** -- a non-blocking ``connect`` to the picked backend, completion seen as
  ``EPOLLOUT`` + ``SO_ERROR``; the attempt timeout is a plain ``call_later``.
  The client is not read while connecting: what it sends waits in its socket's kernel
  buffer (no early-data copy), and so does its EOF.
* **Bytes** -- per direction, ``splice(src -> pipe)`` then ``splice(pipe -> dst)``;
  data never enters user space. Pipes come from a per-proxy pool (``PipePool``), so a
  short connection costs no ``pipe2``/``close`` pair per direction.
* **Events** -- the relay's sockets live in its own epoll set (``Poller``), which the
  event loop watches as a single fd: one ``epoll_ctl`` to register a socket, more only
  when a direction blocks or ends, none on close.
* **Flow control** -- a direction's pipe holds at most ``capacity`` bytes (its size,
  asked to be ``pipe_size`` and read back: the kernel may refuse); when ``dst`` does
  not take them, ``src`` is not read again until ``dst`` signals writable and the pipe
  drains. Memory per connection is bounded by the two pipes, and the kernel's socket
  buffers.
* **Half-close** -- EOF on ``src`` (splice returns 0), once the pipe is drained,
  becomes ``shutdown(dst, SHUT_WR)``; when both directions are done both sockets
  close. A reset or an error on either side aborts both (``SO_LINGER`` 0: RST), and
  so does a close while a pipe still holds bytes (idle sweep, drain): a truncated
  stream must not look complete.
* **Metrics** -- bytes are counted from splice's return values as they reach ``dst``.
* **Failures** -- a connection that can not get its pipes (EMFILE/ENFILE: six fds per
  connection, see ``raise_nofile``) is reset; an unexpected exception in a handler is
  logged once and aborts that connection only (``Poller.dispatch``). Sockets have
  ``TCP_NODELAY``, like asyncio's transports (accepted ones inherit it from the
  listener on Linux).

Idle timeouts (the ``active`` flag + the frontend's sweep), the connection limit,
NetworkPolicy (checked on the picked backend before each connect attempt) and the
connect schedule behave exactly as in the transport relay; the same integration
tests run against both.

Linux only (``os.splice``, Python >= 3.10); ``available()`` says whether it can be used.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import select
import socket
import struct
from _socket import socket as _rawsocket  # the C type: no Python-level __init__/close wrappers
from typing import TYPE_CHECKING, Any

from kubelab.proxy.config import privileged
from kubelab.proxy.splice import DENY, REFUSE, attempt_failed, pick_endpoint, refuse, release

if TYPE_CHECKING:  # pragma: no cover
    from kubelab.proxy.listener import TcpFrontend
    from kubelab.proxy.metrics import EndpointStats
    from kubelab.proxy.table import Backend

log = logging.getLogger(__name__)

ACCEPT_BATCH = 64  # accepts per wakeup of a listening socket (then back to the loop)
READ_ROUNDS = 4  # full-pipe reads of one direction per readable event
_LINGER0 = struct.pack("ii", 1, 0)
_SPLICE = getattr(os, "splice", None)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None)
_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_PIPE_DEFAULT = 65536  # a new pipe's size (16 pages)
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_ACCEPT_PAUSE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def available() -> bool:
    """True when this platform can splice between sockets (Linux, Python >= 3.10).

    Having ``os.splice`` is not enough: a kernel or sandbox (gVisor, seccomp) may refuse
    splice on sockets, so the first call probes it once (``probe_splice``).
    """
    if _SPLICE is None or _NONBLOCK == 0 or not hasattr(os, "pipe2") or not hasattr(select, "epoll"):
        return False
    return _splice_works()


@functools.cache
def _splice_works() -> bool:
    return probe_splice(_SPLICE)


def probe_splice(splice: Any) -> bool:
    """Splice one byte from a loopback TCP connection into a pipe with ``splice``.

    False when the kernel refuses (EINVAL, ENOSYS, EPERM...): the transport relay is used.
    """
    try:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return False
    with lsock:
        try:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1)
            with socket.create_connection(lsock.getsockname(), timeout=2) as a:
                b, _ = lsock.accept()
                with b:
                    a.sendall(b"x")
                    r, w = os.pipe2(os.O_CLOEXEC)
                    try:
                        return splice(b.fileno(), w, 1) == 1
                    finally:
                        os.close(r)
                        os.close(w)
        except OSError as exc:
            log.warning("splice(2) between sockets is unavailable (%s); using the transport relay", exc)
            return False


def raise_nofile(resource_mod: Any = None) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit.

    A spliced connection holds six fds (two sockets, two pipes), so the proxy relays at
    most about ``nofile / 6`` connections at once; the common soft default of 1024 would
    allow ~170. Returns -1 where the limit can not be read.
    """
    if resource_mod is None:
        try:
            import resource as resource_mod
        except ImportError:  # pragma: no cover - not POSIX
            return -1
    soft, hard = resource_mod.getrlimit(resource_mod.RLIMIT_NOFILE)
    if hard != resource_mod.RLIM_INFINITY and soft != resource_mod.RLIM_INFINITY and soft < hard:
        try:
            resource_mod.setrlimit(resource_mod.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)
    log.debug("RLIMIT_NOFILE %d: up to ~%d spliced connections", soft, soft // 6)
    return soft


Pipe = tuple[int, int, int]  # (read fd, write fd, capacity in bytes)


class PipePool:
    """Empty pipes kept for reuse: a connection takes two and gives them back on close.

    Only a pipe known to be empty is kept (bytes left in it would leak into the next
    connection); at most ``limit`` are kept, the rest are closed (an idle pool of big
    pipes pins kernel memory and counts against the user's pipe pages).

    A pipe's real size is read back (``F_GETPIPE_SZ``), never assumed: without
    CAP_SYS_RESOURCE, once the user has used ``/proc/sys/fs/pipe-user-pages-soft``
    the kernel hands out 2-slot pipes and ``F_SETPIPE_SZ`` fails with EPERM. Each
    pipe carries its capacity, which its ``Flow`` uses for flow control.
    """

    __slots__ = ("size", "limit", "free", "created", "warned")

    def __init__(self, size: int, limit: int | None = None) -> None:
        self.size = size
        # enough for 128 connections at once with root; without it idle pipes count against
        # the user's pipe pages (see ProxyConfig.pipe_size), so fewer are kept
        self.limit = limit if limit is not None else (256 if privileged() else 64)
        self.free: list[Pipe] = []
        self.created = 0
        self.warned = False

    def get(self) -> Pipe:
        """A pipe from the pool or a new one (OSError: EMFILE/ENFILE, out of fds)."""
        free = self.free
        if free:
            return free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.created += 1
        try:
            if _SETPIPE_SZ is not None and self.size != _PIPE_DEFAULT:
                try:
                    fcntl.fcntl(w, _SETPIPE_SZ, self.size)
                except OSError as exc:  # above pipe-max-size, or the user's pipe pages are used up
                    if not self.warned:
                        self.warned = True
                        log.warning("cannot size relay pipes to %d bytes (%s); using the kernel's size",
                                    self.size, exc)
            cap = fcntl.fcntl(w, _GETPIPE_SZ)
        except OSError:
            cap = _PIPE_DEFAULT if self.size >= _PIPE_DEFAULT else self.size
        return r, w, cap

    def put(self, pipe: Pipe, empty: bool) -> None:
        if empty and len(self.free) < self.limit:
            self.free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        for r, w, _ in self.free:
            os.close(r)
            os.close(w)
        self.free.clear()


_EPOLLIN = getattr(select, "EPOLLIN", 1)
_EPOLLOUT = getattr(select, "EPOLLOUT", 4)
_ERRHUP = getattr(select, "EPOLLERR", 8) | getattr(select, "EPOLLHUP", 0x10)
_RDHUP = getattr(select, "EPOLLRDHUP", 0x2000)
_IN = _EPOLLIN | _ERRHUP  # events that mean "try reading"
_OUT = _EPOLLOUT | _ERRHUP  # events that mean "try writing"


def masks(c2b: "Flow", b2c: "Flow") -> tuple[int, int]:
    """The epoll interest of the client and the backend socket for two directions.

    A socket is read while its direction's pipe has room, and watched for writable
    while the other direction's pipe holds bytes for it.
    """
    cm = (_EPOLLIN if c2b.wants_read() else 0) | (_EPOLLOUT if b2c.inpipe else 0)
    bm = (_EPOLLIN if b2c.wants_read() else 0) | (_EPOLLOUT if c2b.inpipe else 0)
    return cm, bm


class Poller:
    """The relay's own (level-triggered) epoll set, watched by the event loop as one fd.

    Registering a socket here costs one ``epoll_ctl``; with ``loop.add_reader`` uvloop
    would create a poll handle per fd (an ``ioctl`` and three or four ``epoll_ctl``), and
    asyncio a Handle per registration. Interest changes only when a direction blocks
    (flow control) or ends, so a request/response exchange changes nothing. A socket
    with nothing left to wait for is unregistered (an empty mask would still report
    ``EPOLLHUP`` level-triggered); a closed socket leaves the set by itself.

    Sockets closed while a batch of events is dispatched are closed at the end of the
    batch, so an fd number can not be reused (by a retry's ``socket()``) while stale
    events for it are still being handed out.
    """

    __slots__ = ("loop", "ep", "handlers", "batch", "deferred")

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.ep = select.epoll()
        self.handlers: dict[int, Any] = {}
        self.batch = False
        self.deferred: list[Any] = []
        loop.add_reader(self.ep.fileno(), self.dispatch)

    def forget(self, fd: int) -> None:
        self.handlers.pop(fd, None)

    def close_socket(self, sock: Any) -> None:
        if self.batch:
            self.deferred.append(sock)
        else:
            sock.close()

    def dispatch(self) -> None:
        handlers = self.handlers
        self.batch = True
        try:
            for fd, ev in self.ep.poll(0):
                h = handlers.get(fd)
                if h is not None:
                    try:
                        h(ev)
                    except Exception:
                        self._handler_failed(fd, h)
        finally:
            self.batch = False
            if self.deferred:
                for sock in self.deferred:
                    sock.close()
                self.deferred.clear()

    def _handler_failed(self, fd: int, h: Any) -> None:
        """A bug or an unexpected error in a connection's handler: log it once and abort
        that connection. Left registered, a level-triggered event would call the broken
        handler again on every loop turn (100% CPU) until the idle sweep."""
        log.exception("relay handler for fd %d failed; aborting its connection", fd)
        conn = getattr(h, "__self__", None)
        if conn is not None:
            try:
                conn.abort()
            except Exception:
                log.exception("aborting the connection of fd %d failed", fd)
        if self.handlers.get(fd) is h:
            del self.handlers[fd]
            try:
                self.ep.unregister(fd)
            except OSError:
                pass

    def close(self) -> None:
        if not self.ep.closed:
            self.loop.remove_reader(self.ep.fileno())
            self.ep.close()
        for sock in self.deferred:
            sock.close()
        self.deferred.clear()
        self.handlers.clear()


class Flow:
    """One direction of a connection: ``src`` socket -> pipe -> ``dst`` socket.

    One ``splice(src -> pipe)`` per readable event, then ``splice(pipe -> dst)`` at
    once; what ``dst`` does not take waits in the pipe for an ``EPOLLOUT``. ``src`` is
    not read while the pipe is full (``inpipe >= capacity``, or splice said ``EAGAIN``
    with bytes in the pipe: its slots are used up) -- that is the flow control.
    """

    __slots__ = ("conn", "src", "dst", "dsock", "pipe", "pr", "pw", "capacity", "inpipe", "eof", "shut",
                 "blocked", "to_backend")

    def __init__(self, conn: "Conn", src: int, dst: int, dsock: Any, pipe: Pipe, to_backend: bool) -> None:
        self.conn = conn
        self.src = src
        self.dst = dst
        self.dsock = dsock
        self.pipe = pipe
        self.pr, self.pw, self.capacity = pipe
        self.inpipe = 0  # bytes read from src, not yet taken by dst
        self.eof = False  # src said EOF
        self.shut = False  # EOF passed on to dst (shutdown SHUT_WR)
        self.blocked = False  # the pipe's slots are full: don't read src until dst takes some
        self.to_backend = to_backend

    def wants_read(self) -> bool:
        return not (self.eof or self.blocked or self.inpipe >= self.capacity)

    def read(self) -> None:
        for _ in range(READ_ROUNDS):
            want = self.capacity - self.inpipe
            if want <= 0:  # splice(len=0) returns 0, which would read as EOF
                self.blocked = True
                return
            try:
                n = _SPLICE(self.src, self.pw, want, flags=_FLAGS)  # type: ignore[misc]
            except BlockingIOError:
                if self.inpipe:
                    self.blocked = True
                return
            except OSError as exc:
                self.conn.abort(exc)
                return
            if not n:
                self.eof = True
                if not self.inpipe:
                    self.finish()
                return
            self.inpipe += n
            self.conn.active = True
            self.write()
            # A full pipe's worth that dst took at once: a bulk transfer between two fast
            # ends; read on without a loop turn (bounded, so other connections get theirs).
            if n < want or self.inpipe:
                return

    def write(self) -> None:
        try:
            m = _SPLICE(self.pr, self.dst, self.inpipe, flags=_FLAGS)  # type: ignore[misc]
        except BlockingIOError:
            return
        except OSError as exc:
            self.conn.abort(exc)
            return
        self.inpipe -= m
        self.blocked = False
        ep = self.conn.ep
        if self.to_backend:
            ep.bytes_in += m  # type: ignore[union-attr]
        else:
            ep.bytes_out += m  # type: ignore[union-attr]
        if self.eof and not self.inpipe:
            self.finish()

    def finish(self) -> None:
        """src ended and everything reached dst: pass the EOF on (half-close)."""
        if self.shut:
            return
        self.shut = True
        conn = self.conn
        other = conn.b2c if self.to_backend else conn.c2b
        if other is not None and other.shut:
            conn.close()  # both directions done
            return
        try:
            self.dsock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Conn:
    """One proxied connection: accept -> pick + policy -> connect (with retries) -> relay."""

    __slots__ = (
        "fe", "loop", "poller", "csock", "client_ip", "bsock", "backend", "pending", "ep", "attempt", "reset",
        "timer", "active", "closed", "counted", "c2b", "b2c", "cfd", "bfd", "cmask", "bmask",
    )

    def __init__(self, fe: "TcpFrontend", csock: Any, client_ip: str) -> None:
        self.fe = fe
        sh = fe.shared
        self.loop = sh.loop
        self.poller: Poller = sh.poller
        self.csock = csock
        self.cfd = csock.fileno()
        self.client_ip = client_ip
        self.bsock: Any = None
        self.bfd = -1
        self.cmask = 0  # registered epoll interest of the client / backend socket (0: not registered)
        self.bmask = 0
        self.backend: Backend | None = None  # set once connected
        self.pending: Backend | None = None  # being connected to
        self.ep: EndpointStats | None = None
        self.attempt = 0
        self.reset = False
        self.timer: Any = None
        self.active = True  # a new connection gets a full idle period, however soon the sweep runs
        self.closed = False
        self.counted = True
        self.c2b: Flow | None = None
        self.b2c: Flow | None = None

    # -- epoll interest ---------------------------------------------------------
    def _set(self, fd: int, old: int, new: int, handler: Any) -> None:
        ep = self.poller.ep
        if not new:
            ep.unregister(fd)
            self.poller.forget(fd)
        elif not old:
            self.poller.handlers[fd] = handler
            ep.register(fd, new)
        else:
            ep.modify(fd, new)

    def sync(self) -> None:
        """Make both sockets' epoll interest match what the two directions wait for."""
        if self.closed:
            return
        cm, bm = masks(self.c2b, self.b2c)  # type: ignore[arg-type]
        if cm != self.cmask:
            self._set(self.cfd, self.cmask, cm, self.on_client_event)
            self.cmask = cm
        if bm != self.bmask:
            self._set(self.bfd, self.bmask, bm, self.on_backend_event)
            self.bmask = bm

    # -- connect --------------------------------------------------------------
    def connect_next(self, attempt: int) -> None:
        fe = self.fe
        schedule = fe.shared.config.connect_schedule
        while attempt < len(schedule):
            picked = pick_endpoint(fe, self.client_ip, attempt, self.reset)
            if picked is REFUSE:
                break
            if picked is DENY:
                self.abort()
                return
            backend, ep = picked  # type: ignore[misc]
            self.ep = ep
            try:
                s = _rawsocket(socket.AF_INET6 if ":" in backend.ip else socket.AF_INET,
                               socket.SOCK_STREAM | _NONBLOCK)
            except OSError as exc:
                log.warning("cannot open a socket to %s:%d: %s", backend.ip, backend.port, exc)
                break
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                err = s.connect_ex((backend.ip, backend.port))
            except Exception as exc:  # a bad address (port > 65535, a name that does not resolve)
                s.close()
                log.warning("connect %s:%d for %s: %r", backend.ip, backend.port, fe.route.service, exc)
                attempt_failed(fe, ep, backend, repr(exc))
                self.reset = True
                attempt += 1
                continue
            if err == 0 or err == errno.EINPROGRESS:
                self.bsock = s
                self.bfd = s.fileno()
                self.pending = backend
                self.attempt = attempt
                # Completion (or failure) shows as EPOLLOUT (or EPOLLERR).
                self._set(self.bfd, 0, _EPOLLOUT, self.on_backend_event)
                self.bmask = _EPOLLOUT
                self.timer = self.loop.call_later(schedule[attempt], self.on_connect_timeout)
                return
            s.close()
            attempt_failed(fe, ep, backend, os.strerror(err))
            self.reset = True
            attempt += 1
        refuse(fe, self.client_ip)
        self.abort()

    def on_backend_event(self, ev: int) -> None:
        if self.pending is not None:
            err = self.bsock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._failed(os.strerror(err))
                return
            self.timer.cancel()
            self.timer = None
            backend, self.pending = self.pending, None
            self.connected(backend)  # type: ignore[arg-type]
            return
        if ev & _IN and self.bmask & _EPOLLIN:
            self.b2c.read()  # type: ignore[union-attr]
        if ev & _OUT and not self.closed and self.c2b.inpipe:  # type: ignore[union-attr]
            self.c2b.write()  # type: ignore[union-attr]
        self.sync()

    def on_client_event(self, ev: int) -> None:
        if ev & _IN and self.cmask & _EPOLLIN:
            self.c2b.read()  # type: ignore[union-attr]
        if ev & _OUT and not self.closed and self.b2c.inpipe:  # type: ignore[union-attr]
            self.b2c.write()  # type: ignore[union-attr]
        self.sync()

    def on_connect_timeout(self) -> None:
        self.timer = None
        self._failed("timed out")

    def _failed(self, why: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        s, self.bsock = self.bsock, None
        backend, self.pending = self.pending, None
        if s is not None:
            self.poller.ep.unregister(self.bfd)
            self.poller.forget(self.bfd)
            self.bmask = 0
            self.bfd = -1
            self.poller.close_socket(s)
        attempt_failed(self.fe, self.ep, backend, why)  # type: ignore[arg-type]
        self.reset = True
        self.connect_next(self.attempt + 1)

    def connected(self, backend: "Backend") -> None:
        self.backend = backend
        ep = self.ep
        ep.active += 1  # type: ignore[union-attr]
        ep.total += 1  # type: ignore[union-attr]
        pool = self.fe.shared.pipes
        cs, bs = self.csock, self.bsock
        cfd, bfd = self.cfd, self.bfd
        try:
            p1 = pool.get()
        except OSError as exc:  # EMFILE/ENFILE: a connection needs six fds
            log.warning("no pipe for %s -> %s: %s; resetting", self.client_ip, self.fe.route.service, exc)
            self.abort(exc)
            return
        try:
            p2 = pool.get()
        except OSError as exc:
            pool.put(p1, True)
            log.warning("no pipe for %s -> %s: %s; resetting", self.client_ip, self.fe.route.service, exc)
            self.abort(exc)
            return
        self.c2b = c2b = Flow(self, cfd, bfd, bs, p1, True)
        self.b2c = Flow(self, bfd, cfd, cs, p2, False)
        # The client was not read while connecting; an HTTP client has usually sent its
        # request by now: read it without waiting for a loop turn.
        c2b.read()
        self.sync()

    # -- lifecycle ------------------------------------------------------------
    def _teardown(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pool = self.fe.shared.pipes
        for flow in (self.c2b, self.b2c):
            if flow is not None:
                pool.put(flow.pipe, flow.inpipe == 0)
                flow.conn = None  # type: ignore[assignment]  # no cycle: freed by refcount
        self.c2b = self.b2c = None
        poller = self.poller
        # Closing the sockets takes them out of the epoll set; just stop dispatching to us.
        if self.cmask:
            poller.forget(self.cfd)
        if self.bmask:
            poller.forget(self.bfd)
        release(self)

    def close(self) -> None:
        """Graceful: FIN to both sides (what the kernel holds is still delivered).

        Bytes still in a pipe can not be delivered after the close: then it is an abort,
        so the peer sees a reset and not a clean EOF on a truncated stream."""
        if self.closed:
            return
        c2b, b2c = self.c2b, self.b2c
        if (c2b is not None and c2b.inpipe) or (b2c is not None and b2c.inpipe):  # buffered(), inlined
            self.abort()
            return
        self._teardown()
        poller = self.poller
        poller.close_socket(self.csock)
        if self.bsock is not None:
            poller.close_socket(self.bsock)

    def abort(self, exc: BaseException | None = None) -> None:
        """RST to both sides (a reset, an error, a policy denial, the drain timeout)."""
        if self.closed:
            return
        if exc is not None:
            log.debug("connection %s -> %s: %r", self.client_ip, self.fe.route.service, exc)
        self._teardown()
        for s in (self.csock, self.bsock):
            if s is None:
                continue
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            except OSError:
                pass
            self.poller.close_socket(s)

    def watch_drop(self) -> None:
        """A DROPped connection is held, not read; watch only for the client going away
        (EPOLLRDHUP, or ERR/HUP) so its slot is freed at once, not at the idle sweep."""
        self.poller.handlers[self.cfd] = self.on_drop_event
        self.poller.ep.register(self.cfd, _RDHUP)
        self.cmask = _RDHUP

    def on_drop_event(self, ev: int) -> None:
        self.abort()

    # -- introspection (tests, /routes) -------------------------------------
    def buffered(self) -> int:
        """Bytes the proxy holds for this connection (in its pipes)."""
        return sum(f.inpipe for f in (self.c2b, self.b2c) if f is not None)

    def reading_backend(self) -> bool:
        """False while the backend -> client pipe is full (the backend is not read)."""
        return bool(self.bmask & _EPOLLIN)


def accept_ready(fe: "TcpFrontend", lsock: socket.socket) -> None:
    """The listening socket is readable: accept up to ``ACCEPT_BATCH`` clients."""
    sh = fe.shared
    limit = sh.config.max_connections
    family = socket.AF_INET6 if ":" in fe.frontend.ip else socket.AF_INET
    stream = socket.SOCK_STREAM
    for _ in range(ACCEPT_BATCH):
        try:
            fd, addr = lsock._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in _ACCEPT_PAUSE_ERRNOS:
                log.error("accept on %s:%d: %s; pausing accepts for 1 s", fe.frontend.ip, fe.frontend.port, exc)
                fe.pause_accepting(1.0)
                return
            continue  # ECONNABORTED and friends: that client is gone, take the next
        csock = _rawsocket(family, stream, 0, fd)
        if sh.active >= limit:
            fe.stats.limit_rejected += 1
            csock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            csock.close()
            continue
        csock.setblocking(False)
        sh.active += 1
        conn = Conn(fe, csock, addr[0])
        fe.connections.add(conn)  # type: ignore[arg-type]
        if fe.action != "serve":
            # Local traffic policy with no local endpoint: kube-proxy DROPs. The handshake is
            # done already, so hold the connection silently until the idle sweep closes it,
            # or the client gives up (watched, so a port scan can not keep the slots).
            fe.stats.dropped += 1
            conn.watch_drop()
            continue
        conn.connect_next(0)
