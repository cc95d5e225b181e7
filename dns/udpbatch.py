"""Batched UDP system calls (Linux ``recvmmsg``/``sendmmsg``) for the DNS hot path.

Why: after pre-packed answers, a UDP query costs the server ~1.5 us of Python to
answer and 6-8 us around it: one ``recvfrom`` and one ``sendto`` per datagram, each a
system call plus the socket module's address conversions (an ``(ip, port)`` tuple
built per datagram and parsed back per reply). Knot DNS amortises this with
``recvmmsg``/``sendmmsg``; Python's socket module does not offer them, so this module
calls them through :mod:`ctypes` on buffers allocated once:

* one receive call fills up to :data:`SLOTS` datagrams into fixed slots (an anonymous
  ``mmap``: untouched pages cost no memory, so a slot can hold a 64 KB datagram);
* replies are sent in one call; each reply's ``iovec`` points straight at the
  ``bytes`` object's buffer, and its destination is the sender's ``sockaddr`` exactly
  as the kernel wrote it (no conversion either way);
* the client address is decoded to text only on the rare path that needs it
  (forwarding checks, forwarded replies, logging).

Everything here is guarded: :func:`available` checks the libc symbols, the struct
layout and the ``bytes`` buffer offset once, and the server falls back to plain
``recvfrom``/``sendto`` when anything is off (other OS, other interpreter).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import socket
import struct
import sys
import time
from typing import Any, Callable

from kubelab.dns.answer import Forward

logger = logging.getLogger(__name__)

SLOTS = 64  # datagrams per system call
SLOT_SIZE = 65536  # the largest UDP payload fits: no truncated queries
NAME_SIZE = 128  # sizeof(struct sockaddr_storage)
ROUNDS = 4  # receive calls per reader wake-up before yielding to the loop
BUG_LOG_INTERVAL = 60.0  # a callback bug is logged at most this often (per kind): input can repeat it

MSG_TRUNC = 0x20
_EAGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


IOV = ctypes.sizeof(_IoVec)
HDR = ctypes.sizeof(_MMsgHdr)
_FLAGS_OFF = _MsgHdr.msg_flags.offset  # msg_flags then msg_len: read with one unpack
_LEN_OFF = _MMsgHdr.msg_len.offset  # checked by available(): _FLAGS_LEN assumes LP64
_FLAGS_LEN = struct.Struct("i4xI")
_P = "P"  # a native pointer / size_t
_PTR = struct.Struct(_P)
_IOV = struct.Struct(_P + _P)
# Where a bytes object's characters start relative to id() (CPython: the object header).
BYTES_OFFSET = sys.getsizeof(b"") - 1


def _load() -> Any:
    """The C library with typed ``recvmmsg``/``sendmmsg`` (a handle per caller: cheap)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for fn in (libc.recvmmsg, libc.sendmmsg):
        fn.restype = ctypes.c_int
    libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    return libc


def available() -> bool:
    """True when batched UDP works here (Linux glibc/musl, CPython's bytes layout)."""
    if not sys.platform.startswith("linux") or sys.implementation.name != "cpython":
        return False
    if _LEN_OFF != _FLAGS_OFF + 8 or _FLAGS_LEN.size != 12 or _IOV.size != IOV:
        return False  # not the LP64 layout the packed offsets assume (e.g. 32-bit)
    try:
        _load()
    except (OSError, AttributeError):
        return False
    probe = b"kubelab-dns probe \x00\xff"
    try:
        return ctypes.string_at(id(probe) + BYTES_OFFSET, len(probe)) == probe
    except (OSError, ValueError):  # pragma: no cover - defensive
        return False


def sockaddr_to_address(raw: bytes | memoryview) -> tuple:
    """A kernel ``sockaddr_in``/``sockaddr_in6`` as the socket module's address tuple."""
    family = int.from_bytes(raw[0:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6:
        host = socket.inet_ntop(socket.AF_INET6, bytes(raw[8:24]))
        return (host, port, int.from_bytes(raw[4:8], "big"), int.from_bytes(raw[24:28], sys.byteorder))
    return (socket.inet_ntop(socket.AF_INET, bytes(raw[4:8])), port)


class BatchedUdp:
    """The buffers and calls for one non-blocking UDP socket; see the module docstring.

    :meth:`serve` runs one reader wake-up: receive up to ``SLOTS`` datagrams per call,
    answer each with ``answer(data, slot)``, send the replies in one call, and repeat
    while the socket had a full batch (up to :data:`ROUNDS` times). ``answer`` returns
    reply bytes, None (drop) or a :class:`~kubelab.dns.answer.Forward` (handed to
    ``defer(forward, address)``, answered later with ``sendto``); anything else is a bug
    and drops the datagram. Counters (exported as metrics): ``wakeups`` (serve calls),
    ``batches`` (receive calls that returned datagrams), ``received``, ``dropped``
    (replies not sent: send buffer full), ``errors`` (socket errors and callback bugs).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.libc = _load()
        self.fd = sock.fileno()
        self.dropped = 0
        self.errors = 0
        self.wakeups = 0  # serve() calls
        self.batches = 0  # receive calls that returned datagrams
        self.received = 0
        self._bug_logged: dict[str, float] = {}
        self._serving = False
        self.namelen = 28 if sock.family == socket.AF_INET6 else 16
        self._data = mmap.mmap(-1, SLOTS * SLOT_SIZE)  # lazily backed: touched pages only
        self._data_c = ctypes.c_char.from_buffer(self._data)
        self._small = bytearray(SLOTS * (NAME_SIZE + IOV + HDR + IOV + HDR))
        small = (ctypes.c_char * len(self._small)).from_buffer(self._small)
        self._small_c = small
        base = ctypes.addressof(small)
        data = ctypes.addressof(self._data_c)
        self.names = base
        self.riov = base + SLOTS * NAME_SIZE
        self.rhdr = self.riov + SLOTS * IOV
        self.siov = self.rhdr + SLOTS * HDR
        self.shdr = self.siov + SLOTS * IOV
        mv = memoryview(self._small)
        o = SLOTS * NAME_SIZE
        self.names_mv = mv[:o]
        self.riov_mv = mv[o : o + SLOTS * IOV]
        o += SLOTS * IOV
        self.rhdr_mv = mv[o : o + SLOTS * HDR]
        o += SLOTS * HDR
        self.siov_mv = mv[o : o + SLOTS * IOV]
        o += SLOTS * IOV
        self.shdr_mv = mv[o : o + SLOTS * HDR]
        self.data_mv = memoryview(self._data)
        for i in range(SLOTS):
            _IOV.pack_into(self.riov_mv, i * IOV, data + i * SLOT_SIZE, SLOT_SIZE)
            self._hdr(self.rhdr_mv, i, self.names + i * NAME_SIZE, NAME_SIZE, self.riov + i * IOV)
            self._hdr(self.shdr_mv, i, self.names + i * NAME_SIZE, self.namelen, self.siov + i * IOV)
        # recvmmsg overwrites msg_namelen/msg_flags/msg_len: restored from this per call.
        self.rhdr_template = bytes(self.rhdr_mv)

    @staticmethod
    def _hdr(mv: memoryview, i: int, name: int, namelen: int, iov: int) -> None:
        h = _MMsgHdr()
        h.msg_hdr.msg_name = name
        h.msg_hdr.msg_namelen = namelen
        h.msg_hdr.msg_iov = iov
        h.msg_hdr.msg_iovlen = 1
        mv[i * HDR : (i + 1) * HDR] = bytes(h)

    def address(self, slot: int) -> tuple:
        """The sender of the datagram in ``slot`` (until the next receive call)."""
        o = slot * NAME_SIZE
        return sockaddr_to_address(self.names_mv[o : o + self.namelen])

    def serve(self, answer: Callable[[bytes, int], Any], failed: Callable[[bytes, int], Any],
              defer: Callable[[Any, tuple], None], on_batch: Callable[[int, float], None] | None = None,
              clock: Callable[[], float] | None = None) -> int:
        """One wake-up; returns how many datagrams were answered. Never raises.

        ``failed(data, slot)`` replaces ``answer`` for a datagram whose answer raised
        (if it raises too, the datagram is dropped). No state is carried from one batch
        to the next: every reply's destination is written for that reply.
        """
        if self.fd < 0:
            return 0  # closed: the buffers are gone
        self._serving = True
        try:
            return self._serve(answer, failed, defer, on_batch, clock)
        finally:
            self._serving = False
            if self.fd < 0:
                self._release()  # close() was called from a callback

    def _serve(self, answer, failed, defer, on_batch, clock) -> int:
        libc = self.libc
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
        fd = self.fd
        rhdr_mv, template, rhdr = self.rhdr_mv, self.rhdr_template, self.rhdr
        data_mv = self.data_mv
        flags_len = _FLAGS_LEN.unpack_from
        iov_into = _IOV.pack_into
        ptr_into = _PTR.pack_into
        siov_mv, shdr_mv, names = self.siov_mv, self.shdr_mv, self.names
        off = BYTES_OFFSET
        total = 0
        self.wakeups += 1
        for _round in range(ROUNDS):
            if self.fd < 0:
                return total
            rhdr_mv[:] = template
            n = recvmmsg(fd, rhdr, SLOTS, 0, None)
            if n <= 0:
                if n < 0:
                    err = ctypes.get_errno()
                    if err == errno.EINTR:
                        continue
                    if err not in _EAGAIN:
                        self.errors += 1  # e.g. ICMP errors reported on the socket
                        logger.debug("udp recvmmsg: %s", errno.errorcode.get(err, err))
                        continue
                return total
            self.batches += 1
            self.received += n
            t0 = clock() if clock is not None else 0.0
            keep = []  # the replies must outlive sendmmsg: their buffers are sent in place
            j = 0
            for i in range(n):
                flags, ln = flags_len(rhdr_mv, i * HDR + _FLAGS_OFF)
                if flags & MSG_TRUNC:
                    continue  # cannot happen with 64 KB slots; never answer a partial query
                s = i * SLOT_SIZE
                data = data_mv[s : s + ln].tobytes()
                try:
                    reply = answer(data, i)
                except Exception:  # a bug must cost one answer, never the server
                    reply = self._failed(failed, data, i)
                if reply.__class__ is bytes:
                    iov_into(siov_mv, j * IOV, id(reply) + off, len(reply))
                    ptr_into(shdr_mv, j * HDR, names + i * NAME_SIZE)
                    keep.append(reply)
                    j += 1
                elif reply is not None:
                    self._defer(defer, reply, i)
            if j and self.fd >= 0:
                self._send(sendmmsg, j)
            del keep
            total += j
            if on_batch is not None and j:
                try:
                    on_batch(j, clock() - t0)  # type: ignore[misc]
                except Exception:
                    self._bug("batch accounting failed")
            if n < SLOTS:
                return total  # drained: skip the call that would say EAGAIN
        return total

    def _failed(self, failed: Callable[[bytes, int], Any], data: bytes, slot: int) -> Any:
        try:
            return failed(data, slot)
        except Exception:
            self._bug("failure handler raised; datagram dropped")
            return None

    def _defer(self, defer: Callable[[Any, tuple], None], reply: Any, slot: int) -> None:
        if reply.__class__ is not Forward:
            self._bug(f"answer returned {type(reply).__name__}; datagram dropped")
            return
        try:
            defer(reply, self.address(slot))
        except Exception:
            self._bug("forwarding a query failed")

    def _bug(self, what: str) -> None:
        """Count a callback bug; log it (with the traceback, if any) once per interval."""
        self.errors += 1
        now = time.monotonic()
        last = self._bug_logged.get(what)
        if last is None or now - last >= BUG_LOG_INTERVAL:
            self._bug_logged[what] = now
            logger.error("udp: %s (%d errors so far; logged at most once a minute)", what, self.errors,
                         exc_info=sys.exc_info()[0] is not None)

    def _send(self, sendmmsg, count: int) -> None:
        done = 0
        while done < count:
            r = sendmmsg(self.fd, self.shdr + done * HDR, count - done, 0)
            if r < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue  # a signal before anything was sent: try again
                if err in _EAGAIN:
                    self.dropped += count - done  # send buffer full: the clients retry
                    return
                self.errors += 1
                logger.debug("udp sendmmsg: %s", errno.errorcode.get(err, err))
                done += 1  # that message failed; the rest may not
            else:
                done += r

    def close(self) -> None:
        """Release the buffers (the socket itself belongs to the caller). Idempotent;
        :meth:`serve` does nothing afterwards."""
        if self.fd < 0:
            return
        self.fd = -1
        if not self._serving:
            self._release()

    def _release(self) -> None:
        self.names_mv.release()
        self.riov_mv.release()
        self.rhdr_mv.release()
        self.siov_mv.release()
        self.shdr_mv.release()
        self.data_mv.release()
        del self._data_c, self._small_c
        self._data.close()
