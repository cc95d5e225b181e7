"""DNS wire format: the few encoders the record builder needs and the query parser.

Why not dnslib here: dnslib parses a query in ~12 us and packs an answer in ~13 us
(see reference/style.md §4); the server answers from pre-packed bytes, so all it
needs per query is the header, the one question and the EDNS OPT record. That parser
lives here, is total (any byte string in, a decision out) and never raises.

Encoders write names *uncompressed* (RDATA targets, SOA names) so that a packed
answer body is position-independent except for owner pointers, which always point
into the question (offset 12) and are therefore valid whatever the query's case.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# Types and classes we name (numbers from the IANA registry).
A, NS, CNAME, SOA, PTR, HINFO, MX, TXT, AAAA, SRV, OPT = 1, 2, 5, 6, 12, 13, 15, 16, 28, 33, 41
IXFR, AXFR, ANY = 251, 252, 255
CLASS_IN, CLASS_CH, CLASS_ANY = 1, 3, 255

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended rcode, upper 8 bits go in the OPT TTL

TYPE_NAMES = {
    A: "A", NS: "NS", CNAME: "CNAME", SOA: "SOA", PTR: "PTR", HINFO: "HINFO", MX: "MX",
    TXT: "TXT", AAAA: "AAAA", SRV: "SRV", OPT: "OPT", IXFR: "IXFR", AXFR: "AXFR", ANY: "ANY",
    # CoreDNS's metric type list also has these.
    99: "SPF", 35: "NAPTR", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3",
    52: "TLSA", 64: "SVCB", 65: "HTTPS", 257: "CAA",
}
RCODE_NAMES = {
    NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL", NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP", REFUSED: "REFUSED", BADVERS: "BADVERS",
}

_H = struct.Struct(">H")
_HH = struct.Struct(">HH")
_RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength


class NameError_(ValueError):
    """A name that cannot be encoded (label > 63 octets, name > 255 octets, empty label)."""


def name_to_wire(name: str) -> bytes:
    """``web.prod.svc.cluster.local.`` -> length-prefixed labels + root (case kept)."""
    name = name.rstrip(".")
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise NameError_(f"bad label {label!r} in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise NameError_(f"name too long: {name!r}")
    return bytes(out)


def wire_to_name(wire: bytes) -> str:
    """Inverse of :func:`name_to_wire` for uncompressed names (diagnostics, tests)."""
    labels = []
    i = 0
    while wire[i]:
        n = wire[i]
        labels.append(wire[i + 1 : i + 1 + n].decode("ascii", "backslashreplace"))
        i += n + 1
    return ".".join(labels) + "."


def wire_labels(wire: bytes) -> list[bytes]:
    """Labels of an uncompressed wire name, leftmost first, without the root."""
    labels = []
    i = 0
    while wire[i]:
        n = wire[i]
        labels.append(wire[i + 1 : i + 1 + n])
        i += n + 1
    return labels


def label_offsets(wire: bytes) -> list[int]:
    """Offsets of every label start (and of the root), for suffix checks."""
    offs = []
    i = 0
    while True:
        offs.append(i)
        n = wire[i]
        if n == 0:
            return offs
        i += n + 1


def ptr(offset: int) -> bytes:
    """A compression pointer to ``offset`` (< 16384)."""
    return _H.pack(0xC000 | offset)


QUESTION_PTR = b"\xc0\x0c"  # the question name always starts at offset 12


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = CLASS_IN) -> bytes:
    """One resource record; ``owner`` is wire bytes or a pointer."""
    return owner + _RR_FIXED.pack(rtype, rclass, ttl, len(rdata)) + rdata


def rdata_a(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def rdata_aaaa(ip: str) -> bytes:
    return ipaddress.IPv6Address(ip).packed


def rdata_srv(priority: int, weight: int, port: int, target: bytes) -> bytes:
    # RFC 2782: the target is never compressed.
    return struct.pack(">HHH", priority, weight, port) + target


def rdata_txt(*strings: str) -> bytes:
    out = bytearray()
    for s in strings:
        raw = s.encode()
        out.append(len(raw))
        out += raw
    return bytes(out)


def rdata_soa(mname: bytes, rname: bytes, serial: int, refresh: int, retry: int,
              expire: int, minimum: int) -> bytes:
    return mname + rname + struct.pack(">IIIII", serial & 0xFFFFFFFF, refresh, retry, expire, minimum)


def opt_rr(udp_size: int, do: bool = False, ext_rcode: int = 0) -> bytes:
    """Our OPT record: root owner, our UDP size in CLASS, version 0, DO echoed."""
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + _RR_FIXED.pack(OPT, udp_size, ttl, 0)


@dataclass(frozen=True, slots=True)
class Query:
    """What the slow path needs from a query. ``qname`` keeps the client's case."""

    id: bytes  # 2 bytes
    flags: int  # 16-bit header flags word
    qname: bytes  # wire name, client case
    qtype: int
    qclass: int
    question: bytes  # qname + qtype + qclass, verbatim
    edns: bool = False
    edns_size: int = 512
    edns_version: int = 0
    edns_do: bool = False

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


@dataclass(frozen=True, slots=True)
class Malformed:
    """A query we answer with ``rcode`` (FORMERR/NOTIMP), or drop when ``rcode`` is None.

    ``id``/``flags``/``question`` are whatever could be salvaged for the error reply.
    """

    rcode: int | None
    id: bytes = b"\x00\x00"
    flags: int = 0
    question: bytes = b""
    reason: str = ""


def skip_name(data: bytes, i: int, n: int) -> int:
    """Offset after the (uncompressed) name at ``i``, or -1 if malformed/compressed."""
    total = 0
    while i < n:
        ln = data[i]
        if ln == 0:
            return i + 1 if total + 1 <= 255 else -1
        if ln & 0xC0:
            return -1
        total += ln + 1
        i += ln + 1
    return -1


def _skip_any_name(data: bytes, i: int, n: int) -> int:
    """Like :func:`skip_name` but allows a terminating compression pointer (answer sections)."""
    while i < n:
        ln = data[i]
        if ln == 0:
            return i + 1
        if ln & 0xC0 == 0xC0:
            return i + 2 if i + 2 <= n else -1
        if ln & 0xC0:
            return -1
        i += ln + 1
    return -1


def parse_query(data: bytes) -> Query | Malformed:
    """Total parser for one DNS query message. Never raises.

    Rules (RFC 1035 §4.1, RFC 6891, CoreDNS server.go): under 12 bytes or QR=1 -> drop
    (never answer a response: reflection loops); opcode != QUERY -> NOTIMP; QDCOUNT != 1,
    a truncated question, or a bad OPT -> FORMERR; EDNS version != 0 -> BADVERS (the
    caller answers it, we report it through ``edns_version``).
    """
    n = len(data)
    if n < 12:
        return Malformed(None, reason="short header")
    qid = data[0:2]
    flags = (data[2] << 8) | data[3]
    if flags & 0x8000:
        return Malformed(None, qid, flags, reason="QR set")
    qdcount, ancount, nscount, arcount = struct.unpack_from(">HHHH", data, 4)
    question = b""
    qname = b""
    qtype = qclass = 0
    end = 12
    if qdcount >= 1:
        qend = skip_name(data, 12, n)
        if qend != -1 and qend + 4 <= n:
            qname = data[12:qend]
            question = data[12 : qend + 4]
            qtype, qclass = _HH.unpack_from(data, qend)
            end = qend + 4
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        return Malformed(NOTIMP, qid, flags, question if qdcount == 1 else b"", "opcode")
    if qdcount != 1:
        return Malformed(FORMERR, qid, flags, b"", "qdcount")
    if not question:
        return Malformed(FORMERR, qid, flags, b"", "truncated question")
    edns = False
    edns_size = 512
    edns_version = 0
    edns_do = False
    # Skip answer/authority records (a query should have none, but they are legal).
    i = end
    for _ in range(ancount + nscount):
        i = _skip_any_name(data, i, n)
        if i == -1 or i + 10 > n:
            return Malformed(FORMERR, qid, flags, question, "truncated record")
        rdlen = _H.unpack_from(data, i + 8)[0]
        i += 10 + rdlen
        if i > n:
            return Malformed(FORMERR, qid, flags, question, "truncated rdata")
    for _ in range(arcount):
        j = _skip_any_name(data, i, n)
        if j == -1 or j + 10 > n:
            return Malformed(FORMERR, qid, flags, question, "truncated additional")
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, j)
        if j + 10 + rdlen > n:
            return Malformed(FORMERR, qid, flags, question, "truncated additional rdata")
        if rtype == OPT:
            if edns or data[i] != 0:  # two OPTs, or an OPT not owned by the root
                return Malformed(FORMERR, qid, flags, question, "bad OPT")
            edns = True
            edns_size = max(512, rclass)
            edns_version = (ttl >> 16) & 0xFF
            edns_do = bool(ttl & 0x8000)
        i = j + 10 + rdlen
    return Query(qid, flags, qname, qtype, qclass, question, edns, edns_size, edns_version, edns_do)


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    """Just enough of an upstream answer to cache it: rcode, TTLs and where they are."""

    id: bytes
    flags: int
    rcode: int
    question: bytes
    ttl_offsets: tuple[int, ...]  # offsets of every non-OPT RR's TTL field
    min_ttl: int | None  # smallest TTL among answer RRs, or negative TTL from the SOA
    truncated: bool


def parse_response(data: bytes) -> ParsedResponse | None:
    """Parse an upstream response well enough to validate, cache and age it; None if junk."""
    n = len(data)
    if n < 12:
        return None
    flags = (data[2] << 8) | data[3]
    if not flags & 0x8000:
        return None
    qdcount, ancount, nscount, arcount = struct.unpack_from(">HHHH", data, 4)
    if qdcount != 1:
        return None
    qend = skip_name(data, 12, n)
    if qend == -1 or qend + 4 > n:
        return None
    question = data[12 : qend + 4]
    i = qend + 4
    offsets = []
    answer_ttls = []
    soa_min = None
    for section, count in enumerate((ancount, nscount, arcount)):
        for _ in range(count):
            j = _skip_any_name(data, i, n)
            if j == -1 or j + 10 > n:
                return None
            rtype, _rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, j)
            if j + 10 + rdlen > n:
                return None
            if rtype != OPT:
                offsets.append(j + 4)
                if section == 0:
                    answer_ttls.append(ttl)
                elif section == 1 and rtype == SOA and rdlen >= 20:
                    minimum = struct.unpack_from(">I", data, j + 10 + rdlen - 4)[0]
                    soa_min = min(ttl, minimum)
            i = j + 10 + rdlen
    rcode = flags & 0xF
    if answer_ttls:
        min_ttl = min(answer_ttls)
    else:
        min_ttl = soa_min
    return ParsedResponse(data[0:2], flags, rcode, question, tuple(offsets), min_ttl,
                          bool(flags & 0x0200))
