"""The query parser is total: any bytes in, a Query or a Malformed verdict out."""

import random
import struct

import dns.message
import dns.rdatatype
import pytest

from kubelab.dns import wire
from kubelab.dns.wire import Malformed, Query, name_to_wire, parse_query, parse_response


def q(name="web.prod.svc.cluster.local.", rtype="A", **kw) -> bytes:
    return dns.message.make_query(name, rtype, **kw).to_wire()


def test_plain_query():
    data = q()
    r = parse_query(data)
    assert isinstance(r, Query)
    assert r.qtype == wire.A and r.qclass == wire.CLASS_IN and r.rd and not r.edns
    assert r.qname == name_to_wire("web.prod.svc.cluster.local.")
    assert r.question == data[12:]


def test_edns_query():
    r = parse_query(q(use_edns=0, payload=4096, want_dnssec=True))
    assert isinstance(r, Query) and r.edns and r.edns_size == 4096 and r.edns_do and r.edns_version == 0
    r = parse_query(q(use_edns=0, payload=100))
    assert r.edns_size == 512  # below 512 counts as 512 (RFC 6891 §6.2.5)
    r = parse_query(q(use_edns=1))
    assert r.edns_version == 1


def test_case_kept():
    r = parse_query(q("WEB.Prod.svc.cluster.local."))
    assert r.qname == name_to_wire("WEB.Prod.svc.cluster.local.")


@pytest.mark.parametrize("data, rcode", [
    (b"", None),
    (b"\x12\x34", None),
    (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00", None),   # 9 bytes: short header
])
def test_runts_are_dropped(data, rcode):
    r = parse_query(data)
    assert isinstance(r, Malformed) and r.rcode is rcode


def test_responses_are_dropped():
    data = bytearray(q())
    data[2] |= 0x80
    r = parse_query(bytes(data))
    assert isinstance(r, Malformed) and r.rcode is None


def test_opcode_notimp_keeps_question():
    data = bytearray(q())
    data[2] = (data[2] & 0x87) | (4 << 3)  # NOTIFY
    r = parse_query(bytes(data))
    assert isinstance(r, Malformed) and r.rcode == wire.NOTIMP and r.question == bytes(data[12:])


@pytest.mark.parametrize("mutate", [
    lambda d: d[:4] + b"\x00\x02" + d[6:],            # QDCOUNT 2
    lambda d: d[:4] + b"\x00\x00" + d[6:],            # QDCOUNT 0
    lambda d: d[:-3],                                 # truncated question
    lambda d: d[:12] + b"\x3f" + d[13:],              # label length runs past the end
    lambda d: d[:12] + b"\xc0\x0c" + d[-4:],          # compression pointer in the question
    lambda d: d[:10] + b"\x00\x01" + d[12:],          # ARCOUNT 1 but nothing there
])
def test_formerr(mutate):
    r = parse_query(mutate(q()))
    assert isinstance(r, Malformed) and r.rcode == wire.FORMERR


def test_two_opts_are_formerr():
    data = q(use_edns=0)
    opt = data[-11:]
    data = data[:10] + b"\x00\x02" + data[12:] + opt
    r = parse_query(data)
    assert isinstance(r, Malformed) and r.rcode == wire.FORMERR


def test_name_too_long_is_formerr():
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 bytes
    data = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x01\x00\x01"
    r = parse_query(data)
    assert isinstance(r, Malformed) and r.rcode == wire.FORMERR


def test_parser_never_raises_on_garbage():
    rng = random.Random(7)
    base = q(use_edns=0)
    for _ in range(20000):
        if rng.random() < 0.5:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 60)))
        else:
            d = bytearray(base)
            for _ in range(rng.randrange(1, 6)):
                d[rng.randrange(len(d))] = rng.getrandbits(8)
            data = bytes(d[: rng.randrange(len(d) + 1)])
        assert isinstance(parse_query(data), (Query, Malformed))


def test_name_to_wire_limits():
    assert name_to_wire(".") == b"\x00"
    assert wire.wire_to_name(name_to_wire("A.b.")) == "A.b."
    with pytest.raises(wire.NameError_):
        name_to_wire("a" * 64 + ".com")
    with pytest.raises(wire.NameError_):
        name_to_wire("a..b")
    with pytest.raises(wire.NameError_):
        name_to_wire(".".join(["a" * 60] * 5))


def test_parse_response_ttls():
    m = dns.message.make_response(dns.message.make_query("example.com.", "A"))
    m.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "1.2.3.4"))
    m.answer.append(dns.rrset.from_text("example.com.", 60, "IN", "A", "1.2.3.5"))
    data = m.to_wire()
    r = parse_response(data)
    assert r.min_ttl == 60 and len(r.ttl_offsets) == 2 and r.rcode == 0
    for off in r.ttl_offsets:
        assert struct.unpack(">I", data[off:off + 4])[0] in (60, 300)
    assert parse_response(q()) is None  # a query is not a response
    assert parse_response(b"junk") is None


def test_parse_response_negative_ttl_from_soa():
    m = dns.message.make_response(dns.message.make_query("nx.example.com.", "A"))
    m.set_rcode(3)
    m.authority.append(dns.rrset.from_text("example.com.", 900, "IN", "SOA",
                                           "ns. host. 1 2 3 4 30"))
    r = parse_response(m.to_wire())
    assert r.rcode == 3 and r.min_ttl == 30
