"""Per-query decisions: from query bytes and the current record table to answer bytes.

Two paths share the same rules:

* ``Answerer.answer`` (the closure built by :func:`_hot_path`) is the hot path. It recognises the two common query shapes
  (no additional record, or one trailing OPT without options), looks the lowercased
  ``qname+qtype`` up in the table, and splices ID, RD and the client's question bytes
  (0x20 case echo) around the pre-packed body. A hit proves the question well-formed,
  because the key is a name we built.
* :func:`resolve` is the slow path for everything else: a full total parse
  (:func:`kubelab.dns.wire.parse_query`), then the decisions below. It never builds
  DNS objects either, so names never seen before (search-path junk, random names) are
  cheap: a zone-suffix check and a packed NXDOMAIN with the SOA.

Decisions (dns-spec.md item in brackets): drop responses and runts; NOTIMP for opcodes
other than QUERY, FORMERR for QDCOUNT != 1 / broken records [A18]; BADVERS for EDNS
version != 0 [A17]; REFUSED for classes other than IN [A13] and for AXFR/IXFR [A14];
out-of-zone -> forward if allowed, else REFUSED without AA [A12]; SERVFAIL before the
first zone [A15]; NODATA vs NXDOMAIN with the zone SOA (owner = the query's spelling of
the zone) [A5, A6]; CNAME chase inside our zones [E2]; RFC 8482 ANY: one RRset;
TC=1 when a UDP answer does not fit, after first dropping the optional additional
section [A16]; the OPT record echoed with our size and the DO bit [A17].
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kubelab.dns import wire
from kubelab.dns.config import DnsConfig
from kubelab.dns.names import label_to_ip, parse
from kubelab.dns.records import FLAG_AA, FLAG_QR, FLAG_RD, FLAG_TC, RecordTable, ZoneInfo, template_rcode
from kubelab.dns.wire import Malformed, Query

_STD0 = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # QD=1 AN=0 NS=0 AR=0
_STD1 = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # ... AR=1 (an OPT)
_OPT_TAIL = b"\x00\x00\x29"  # root owner + TYPE 41 at the start of the last 11 bytes
_IN = b"\x00\x01"
_CNAME = wire.CNAME.to_bytes(2, "big")
_join = b"".join
_NEG_STATS = {r: tuple((0, t, r) for t in range(256)) for r in (0, 3)}  # no tuple per query
_AR1 = tuple((i + 1).to_bytes(2, "big") for i in range(256))  # ARCOUNT + our OPT

FORWARD_ZONE = -1  # stat "zone" index for forwarded / out-of-zone queries
NO_ZONE = -2  # for errors before the zone is known

# RFC 8482: answer ANY with one RRset; the first of these the name owns.
_ANY_ORDER = (wire.A, wire.AAAA, wire.CNAME, wire.SRV, wire.PTR, wire.TXT, wire.SOA, wire.NS)


@dataclass(frozen=True, slots=True)
class Forward:
    """The slow path's verdict for an out-of-zone query from an allowed client."""

    query: Query
    limit: int  # the client's UDP size (65535 over TCP)
    opt: bytes  # the OPT record to append for this client (b"" without EDNS)


def _header(qid: bytes, flags: int, qd: int, an: int, ns: int, ar: int) -> bytes:
    return qid + struct.pack(">HHHHH", flags, qd, an, ns, ar)


def error_response(m: Malformed) -> bytes | None:
    """FORMERR/NOTIMP reply for a message we could not take (None = drop it)."""
    if m.rcode is None:
        return None
    flags = FLAG_QR | (m.flags & (0x7800 | FLAG_RD)) | m.rcode
    qd = 1 if m.question else 0
    return _header(m.id, flags, qd, 0, 0, 0) + m.question


def udp_limit(q: Query, config: DnsConfig) -> int:
    """The largest UDP answer this client takes: 512, or its EDNS size capped by ours."""
    if not q.edns:
        return 512
    return max(512, min(q.edns_size, config.edns_udp_size))


def _opt(q: Query, config: DnsConfig, ext_rcode: int = 0) -> bytes:
    return wire.opt_rr(config.edns_udp_size, q.edns_do, ext_rcode) if q.edns else b""


def simple_response(q: Query, config: DnsConfig, rcode: int, aa: bool = False,
                    authority: bytes = b"", nscount: int = 0) -> bytes:
    """A reply with no answers: REFUSED, SERVFAIL, BADVERS, NXDOMAIN/NODATA bodies."""
    ext = 0
    if rcode > 15:
        ext, rcode = rcode >> 4, rcode & 0xF
    flags = FLAG_QR | (FLAG_AA if aa else 0) | (q.flags & FLAG_RD) | rcode
    opt = _opt(q, config, ext)
    return (_header(q.id, flags, 1, 0, nscount, 1 if opt else 0) + q.question + authority + opt)


def _soa_owner(q: Query, zone: ZoneInfo) -> bytes:
    """Pointer to the zone's apex inside the question: negative owners echo its case."""
    return wire.ptr(12 + len(q.qname) - len(zone.wire))


def negative(q: Query, config: DnsConfig, zone: ZoneInfo, rcode: int) -> bytes:
    return simple_response(q, config, rcode, True, zone.soa_with_owner(_soa_owner(q, zone)), 1)


def _assemble(q: Query, config: DnsConfig, tpl, limit: int) -> bytes:
    """Template -> message for this query, truncating for UDP when it does not fit."""
    opt = _opt(q, config)
    variants = (tpl,) if tpl.__class__ is bytes else tpl  # full first, then without additional
    rd = 1 if q.flags & FLAG_RD else 0
    for t in variants:
        if 12 + len(q.question) + len(t) - 13 + len(opt) <= limit:
            ar = ((t[11] << 8) | t[12]) + (1 if opt else 0)
            return (q.id + bytes(((t[3] & 0xFE) | rd,)) + t[4:11] + ar.to_bytes(2, "big")
                    + q.question + t[13:] + opt)
    t = variants[0]
    flags = ((t[3] << 8) | t[4]) & ~FLAG_RD | FLAG_TC | (q.flags & FLAG_RD)
    return _header(q.id, flags, 1, 0, 0, 1 if opt else 0) + q.question + opt


def _chase(q: Query, config: DnsConfig, table: RecordTable, target: bytes, limit: int) -> bytes:
    """CNAME at the qname, target inside our zones: CNAME first, then the target's RRs."""
    answers = []
    rcode = wire.NOERROR
    authority = b""
    nscount = 0
    owner = wire.QUESTION_PTR
    pos = 12 + len(q.question)  # where the next RR starts
    seen = set()
    ttl = config.ttl
    for _depth in range(8):
        cname_rr = wire.rr(owner, wire.CNAME, ttl, target)
        answers.append(cname_rr)
        target_off = pos + len(cname_rr) - len(target)
        pos += len(cname_rr)
        owner = wire.ptr(target_off)
        seen.add(target)
        zone = table.zone_for(target)
        if zone is None:
            break  # target outside our zones: the CNAME alone (no upstream chase)
        tpl = table.lookup(target, q.qtype)
        if tpl is not None:
            t = tpl if tpl.__class__ is bytes else tpl[1]
            body = t[13:]
            an = (t[7] << 8) | t[8]
            i = 0
            for _ in range(an):  # our templates: every answer owner is the 2-byte 0xC00C
                rdlen = int.from_bytes(body[i + 10 : i + 12], "big")
                answers.append(owner + body[i + 2 : i + 12 + rdlen])
                i += 12 + rdlen
            break
        nxt = table.cnames.get(target)
        if nxt is not None and nxt not in seen and q.qtype != wire.CNAME:
            target = nxt
            continue
        if not table.exists(target):
            rcode = wire.NXDOMAIN  # RFC 6604: rcode of the last name in the chain
        authority = zone.soa_with_owner(zone.wire)
        nscount = 1
        break
    opt = _opt(q, config)
    flags = FLAG_QR | FLAG_AA | (q.flags & FLAG_RD) | rcode
    msg = (_header(q.id, flags, 1, len(answers), nscount, 1 if opt else 0) + q.question
           + b"".join(answers) + authority + opt)
    if len(msg) > limit:
        return _header(q.id, flags | FLAG_TC, 1, 0, 0, 1 if opt else 0) + q.question + opt
    return msg


def _synth_pod(q: Query, config: DnsConfig, table: RecordTable, qname: bytes, zone: ZoneInfo) -> bytes | None:
    """Pod A/AAAA from the label: any IP-shaped label (``insecure``), or one of the pods
    the controller listed (``verified``, kept as a set of names, see records.py)."""
    if zone.index != 0 or not (config.pods_mode == "insecure" or qname in table.pods):
        return None
    try:
        text = wire.wire_to_name(qname)
    except (IndexError, UnicodeDecodeError):
        return None
    req = parse(text, config.zone)
    if req is None or req.kind != "pod" or not req.endpoint:
        return None
    ip = label_to_ip(req.endpoint)
    if ip is None:
        return None
    want = wire.A if ip.version == 4 else wire.AAAA
    if q.qtype != want and q.qtype != wire.ANY:
        return negative(q, config, zone, wire.NOERROR)
    opt = _opt(q, config)
    flags = FLAG_QR | FLAG_AA | (q.flags & FLAG_RD)
    return (_header(q.id, flags, 1, 1, 0, 1 if opt else 0) + q.question
            + wire.rr(wire.QUESTION_PTR, want, config.ttl, ip.packed) + opt)


def resolve(table: RecordTable | None, zones: RecordTable, config: DnsConfig, q: Query,
            limit: int) -> tuple[bytes | Forward, int, int]:
    """The slow path for a parsed query: (reply or Forward, stat zone index, rcode).

    ``table`` is None before the first zone; ``zones`` (an empty table) still knows the
    zones and their SOA then. A :class:`Forward` verdict means "out of zone": the caller
    forwards it or, for clients outside the allowed ranges, answers REFUSED.
    """
    if q.edns and q.edns_version != 0:
        return simple_response(q, config, wire.BADVERS), NO_ZONE, wire.BADVERS
    qname = q.qname.lower()
    zone = (table or zones).zone_for(qname)
    if q.qclass != wire.CLASS_IN:
        return simple_response(q, config, wire.REFUSED), NO_ZONE, wire.REFUSED
    if zone is None:
        if q.qtype not in (wire.AXFR, wire.IXFR):
            return Forward(q, limit, _opt(q, config)), FORWARD_ZONE, wire.NOERROR
        return simple_response(q, config, wire.REFUSED), FORWARD_ZONE, wire.REFUSED
    if q.qtype in (wire.AXFR, wire.IXFR):
        return simple_response(q, config, wire.REFUSED), zone.index, wire.REFUSED
    if table is None:
        return (simple_response(q, config, wire.SERVFAIL, False,
                                zone.soa_with_owner(_soa_owner(q, zone)), 1), zone.index, wire.SERVFAIL)
    tpl = table.lookup(qname, q.qtype)
    if tpl is not None:
        return _assemble(q, config, tpl, limit), zone.index, template_rcode(tpl)
    if qname in table.answers:
        target = table.cnames.get(qname)
        if target is not None:
            return _chase(q, config, table, target, limit), zone.index, wire.NOERROR
        if q.qtype == wire.ANY:
            for t in _ANY_ORDER:
                tpl = table.lookup(qname, t)
                if tpl is not None:
                    return _assemble(q, config, tpl, limit), zone.index, wire.NOERROR
        return negative(q, config, zone, wire.NOERROR), zone.index, wire.NOERROR
    synth = _synth_pod(q, config, table, qname, zone)
    if synth is not None:
        return synth, zone.index, wire.NOERROR
    return negative(q, config, zone, wire.NXDOMAIN), zone.index, wire.NXDOMAIN


class Answerer:
    """One per transport (UDP/TCP x family): the hot path plus this transport's counters.

    ``counts`` maps ``(zone index, qtype, rcode)`` to a request count; the metrics
    collector reads it at scrape time, so the hot path pays one dict increment.
    """

    __slots__ = ("holder", "config", "udp", "counts", "forward_check", "answer")

    def __init__(self, holder, udp: bool, forward_check) -> None:
        self.holder = holder  # .table (None before the first zone), .empty, .opt_plain, .opt_do
        self.config: DnsConfig = holder.config
        self.udp = udp
        self.counts: dict[tuple[int, int, int], int] = {}
        self.forward_check = forward_check  # callable(client) -> bool; client is what the transport passes
        # answer(data, client) -> reply bytes, a Forward verdict, or None (drop): the
        # closure from _hot_path, with the slow path below for everything unusual.
        self.answer = _hot_path(self)

    def count(self, zone: int, qtype: int, rcode: int) -> None:
        stat = (zone, qtype, rcode)
        self.counts[stat] = self.counts.get(stat, 0) + 1

    def slow(self, data: bytes, client: str) -> bytes | Forward | None:
        q = wire.parse_query(data)
        counts = self.counts
        if isinstance(q, Malformed):
            reply = error_response(q)
            if reply is not None:
                stat = (NO_ZONE, 0, q.rcode)
                counts[stat] = counts.get(stat, 0) + 1  # type: ignore[index]
            return reply
        limit = udp_limit(q, self.config) if self.udp else 65535
        reply, zone, rcode = resolve(self.holder.table, self.holder.empty, self.config, q, limit)
        if isinstance(reply, Forward):
            if self.forward_check(client):
                return reply  # counted by the transport when the upstream answers
            reply, rcode = simple_response(q, self.config, wire.REFUSED), wire.REFUSED
        stat = (zone, q.qtype, rcode)
        counts[stat] = counts.get(stat, 0) + 1
        return reply


def _hot_path(a: "Answerer"):
    """The per-query fast path for one :class:`Answerer`, as a closure.

    Everything constant for the transport (holder, counters, EDNS size, OPT records,
    UDP or not) is a closure variable, so a query pays local loads instead of
    attribute lookups (~10% of the Python time per query here). The common shapes:
    no additional record, or one trailing OPT without options; the lowercased qname
    is looked up in the table and the ID, RD and the client's question bytes (0x20
    case echo) are spliced around the pre-packed body. A hit proves the question
    well-formed, because the key is a name we built.
    """
    holder = a.holder
    counts = a.counts
    slow = a.slow
    udp = a.udp
    edns_max = a.config.edns_udp_size
    opt_plain, opt_do = holder.opt_plain, holder.opt_do
    join = _join
    std0, std1, opt_tail, cname, ar1, neg_stats = _STD0, _STD1, _OPT_TAIL, _CNAME, _AR1, _NEG_STATS

    def answer(data: bytes, client) -> bytes | Forward | None:
        table = holder.table
        n = len(data)
        if table is None or n < 17 or data[2] & 0xF8:
            return slow(data, client)
        # Comparisons on short slices and single bytes: cheaper than startswith with
        # offsets (argument parsing dominates for 2-8 byte needles).
        hdr = data[4:12]
        if hdr == std0:
            qend = n - 4  # the question name ends here, qtype follows
            edns = 0
            limit = 512
            opt = b""
        elif (hdr == std1 and data[n - 11 : n - 8] == opt_tail and not data[n - 2] and not data[n - 1]
              and not data[n - 5]):
            qend = n - 15
            edns = 2
            limit = (data[n - 8] << 8) | data[n - 7]
            limit = 512 if limit < 512 else (edns_max if limit > edns_max else limit)
            opt = opt_do if data[n - 4] & 0x80 else opt_plain
        else:
            return slow(data, client)
        if data[qend + 2] or data[qend + 3] != 1:
            return slow(data, client)  # class other than IN
        name = data[12:qend].lower()
        qt = data[qend : qend + 2]
        v = table.answers.get(name)
        if v is not None:
            if v.__class__ is dict:
                t = v.get(qt)  # keyed by qtype: no need to compare it again
                if t is not None and t.__class__ is not bytes:
                    t = t[0]  # (full, without additional): UDP may need the slow path
            else:
                t = v if v.__class__ is bytes else v[0]
                tq = t[1:3]
                if tq != qt:
                    if tq == cname:
                        return slow(data, client)  # ExternalName: CNAME processing
                    t = None
            if t is not None:
                if not data[2] & 1 or (udp and n + len(t) - 13 > limit) or t[11] or t[12] == 255:
                    return slow(data, client)  # RD=0 (rare), or drop additional / truncate
                stat = t[:5]  # zone, qtype, flags (rcode): decoded by metrics.py
                counts[stat] = counts.get(stat, 0) + 1
                if edns:
                    return join((data[:2], t[3:11], ar1[t[12]], data[12 : qend + 4], t[13:], opt))
                return join((data[:2], t[3:13], data[12:], t[13:]))
            headers = table.nodata_headers
            rcode = 0
        else:
            # Unknown name: NXDOMAIN if it is a well-formed name inside the cluster zone
            # (search-path junk, random names) - no parse, no object per query.
            if table.insecure_pods or (name.endswith(table.pod_suffix) and name in table.pods):
                return slow(data, client)
            headers = table.nxdomain_headers
            rcode = 3
        zone = table.zones[0]
        zw = zone.wire
        if qt[0] or qt[1] >= 251 or not name.endswith(zw):
            return slow(data, client)  # reverse zones, ANY/AXFR/IXFR, out of zone
        off = qend - len(zw)
        if v is None:
            if qend - 12 > 255:
                return slow(data, client)  # over-long name: FORMERR there
            i = 12
            hit = False
            while i < qend:
                if i == off:
                    hit = True
                ln = data[i]
                if ln > 63:
                    return slow(data, client)
                i += ln + 1
                if ln == 0:
                    break
            if i != qend or not hit:
                return slow(data, client)
        stat = neg_stats[rcode][qt[1]]
        counts[stat] = counts.get(stat, 0) + 1
        return join((data[:2], headers[edns | (data[2] & 1)], data[12 : qend + 4],
                     (0xC000 | off).to_bytes(2, "big"), zone.soa_tail, opt))

    return answer
