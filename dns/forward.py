"""Forwarding for names outside our zones (pod ``ClusterFirst`` semantics), with a TTL cache.

CoreDNS's addon Corefile does ``forward . /etc/resolv.conf`` plus ``cache 30``; this is
the same idea, kept small: try each upstream in order (UDP, then TCP when the answer
is truncated), give up after ``timeout`` per upstream and answer SERVFAIL. Positive
answers are cached for their smallest TTL, negative ones for the SOA minimum
(RFC 2308), capped at ``max_ttl``; a hit is served with TTLs aged by the time spent
in the cache. Identical in-flight questions share one upstream exchange.

We ask upstreams without EDNS and with RD=1, and put the client's own question bytes
back into the reply, so owners compressed against the question echo the client's case.
Who may use this at all is the caller's decision (``DnsConfig.recursion_clients``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

from kubelab.dns import wire
from kubelab.dns.wire import Query

logger = logging.getLogger(__name__)

_HDR = struct.Struct(">HHHHH")


@dataclass(slots=True)
class _Entry:
    stored: float
    expires: float
    reply: bytes  # ID zeroed, no OPT
    ttl_offsets: tuple[int, ...]
    question_len: int


class _UdpExchange(asyncio.DatagramProtocol):
    def __init__(self, qid: bytes, question: bytes, fut: asyncio.Future[bytes]) -> None:
        self.qid = qid
        self.question = question.lower()
        self.fut = fut

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        # Only a reply to *our* ID and question counts (spoofing / stray packets).
        if data[:2] == self.qid and data[12 : 12 + len(self.question)].lower() == self.question:
            if not self.fut.done():
                self.fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc or ConnectionError("closed"))


class Forwarder:
    """Forward a parsed query to upstreams; always returns reply bytes for the client."""

    def __init__(self, upstreams: tuple[tuple[str, int], ...], *, timeout: float = 2.0,
                 cache_size: int = 10000, max_ttl: int = 3600, max_inflight: int = 1024,
                 clock=time.monotonic) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self.cache_size = cache_size
        self.max_ttl = max_ttl
        self.max_inflight = max_inflight
        self.clock = clock
        self._cache: OrderedDict[tuple[bytes, int, int], _Entry] = OrderedDict()
        self._inflight: dict[tuple[bytes, int, int], asyncio.Future[bytes | None]] = {}
        self.cache_hits = {"success": 0, "denial": 0}
        self.cache_misses = 0
        self.requests: dict[str, int] = {}
        self.responses: dict[tuple[str, int], int] = {}
        self.failures = 0

    @property
    def enabled(self) -> bool:
        return bool(self.upstreams)

    def cache_entries(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    async def forward(self, q: Query, client_limit: int, opt: bytes) -> bytes:
        """Reply for ``q``: cached, fresh from an upstream, or SERVFAIL."""
        key = (q.qname.lower(), q.qtype, q.qclass)
        reply = self._cached(key)
        if reply is None:
            self.cache_misses += 1
            fut = self._inflight.get(key)
            if fut is None:
                if len(self._inflight) >= self.max_inflight:
                    return self._servfail(q, opt)
                fut = asyncio.get_running_loop().create_future()
                self._inflight[key] = fut
                try:
                    upstream = await self._exchange(q)
                    fut.set_result(upstream)
                except BaseException as exc:  # the waiters must never hang
                    fut.set_result(None)
                    if not isinstance(exc, Exception):
                        raise
                    upstream = None
                finally:
                    self._inflight.pop(key, None)
                if upstream is not None:
                    self._store(key, upstream)
            else:
                upstream = await asyncio.shield(fut)
            if upstream is None:
                return self._servfail(q, opt)
            reply = upstream
        return self._for_client(q, reply, client_limit, opt)

    # ------------------------------------------------------------------ cache
    def _cached(self, key) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        now = self.clock()
        if now >= entry.expires:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        age = int(now - entry.stored)
        rcode = entry.reply[3] & 0xF
        an = int.from_bytes(entry.reply[6:8], "big")
        self.cache_hits["success" if rcode == 0 and an else "denial"] += 1
        if age <= 0:
            return entry.reply
        buf = bytearray(entry.reply)
        for off in entry.ttl_offsets:
            ttl = int.from_bytes(buf[off : off + 4], "big")
            buf[off : off + 4] = max(0, ttl - age).to_bytes(4, "big")
        return bytes(buf)

    def _store(self, key, reply: bytes) -> None:
        parsed = wire.parse_response(reply)
        if parsed is None or parsed.rcode not in (wire.NOERROR, wire.NXDOMAIN) or parsed.truncated:
            return
        ttl = parsed.min_ttl
        if not ttl or ttl <= 0:
            return
        ttl = min(ttl, self.max_ttl)
        now = self.clock()
        self._cache[key] = _Entry(now, now + ttl, b"\x00\x00" + reply[2:], parsed.ttl_offsets,
                                  len(parsed.question))
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # ------------------------------------------------------------------ wire
    def _servfail(self, q: Query, opt: bytes) -> bytes:
        self.failures += 1
        flags = 0x8000 | 0x0080 | (q.flags & 0x0100) | wire.SERVFAIL
        return q.id + _HDR.pack(flags, 1, 0, 0, 1 if opt else 0) + q.question + opt

    def _for_client(self, q: Query, reply: bytes, limit: int, opt: bytes) -> bytes:
        """Upstream reply -> client reply: its ID, its question bytes, its OPT, its size."""
        qd, an, ns, ar = struct.unpack_from(">HHHH", reply, 4)
        flags = (reply[2] << 8 | reply[3]) & ~0x0100 | (q.flags & 0x0100)
        rest = reply[12 + len(q.question):]
        msg = q.id + _HDR.pack(flags, qd, an, ns, ar + (1 if opt else 0)) + q.question + rest + opt
        if len(msg) > limit:
            return q.id + _HDR.pack(flags | 0x0200, 1, 0, 0, 1 if opt else 0) + q.question + opt
        return msg

    async def _exchange(self, q: Query) -> bytes | None:
        for host, port in self.upstreams:
            label = f"{host}:{port}"
            self.requests[label] = self.requests.get(label, 0) + 1
            try:
                reply = await asyncio.wait_for(self._udp(host, port, q), self.timeout)
                if reply[2] & 0x02:  # TC: ask again over TCP
                    reply = await asyncio.wait_for(self._tcp(host, port, q), self.timeout)
            except (OSError, asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
                logger.debug("upstream %s failed for %r: %r", label, q.qname, exc)
                self.responses[(label, wire.SERVFAIL)] = self.responses.get((label, wire.SERVFAIL), 0) + 1
                continue
            rcode = reply[3] & 0xF
            self.responses[(label, rcode)] = self.responses.get((label, rcode), 0) + 1
            if rcode in (wire.SERVFAIL, wire.REFUSED):
                continue  # try the next upstream, like CoreDNS forward's health handling
            return reply
        return None

    def _upstream_query(self, q: Query) -> tuple[bytes, bytes]:
        qid = os.urandom(2)
        return qid, qid + _HDR.pack(0x0100, 1, 0, 0, 0) + q.question

    async def _udp(self, host: str, port: int, q: Query) -> bytes:
        loop = asyncio.get_running_loop()
        qid, msg = self._upstream_query(q)
        fut: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpExchange(qid, q.question, fut), remote_addr=(host, port))
        try:
            transport.sendto(msg)
            return await fut
        finally:
            transport.close()

    async def _tcp(self, host: str, port: int, q: Query) -> bytes:
        qid, msg = self._upstream_query(q)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(len(msg).to_bytes(2, "big") + msg)
            await writer.drain()
            while True:
                n = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(n)
                if data[:2] == qid:
                    return data
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass
