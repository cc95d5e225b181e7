"""Pure name helpers: the CoreDNS ``parse.go`` shapes, dashed-IP labels, reverse names.

The server does not parse names per query (answers are looked up by the lowercased
wire name); these functions decide what the *record builder* publishes and what the
miss path synthesises (``pods insecure``), and they are table-tested on their own.

Shapes under ``<zone>`` (CoreDNS parse.go, made strict about underscores, see
dns-spec.md "Over-broad name parsing"):

    svc | pod                                  -> structural node (NODATA)
    <ns>.svc|pod                               -> namespace node
    <svc>.<ns>.svc                             -> service
    <endpoint>.<svc>.<ns>.svc                  -> endpoint (hostname or dashed IP)
    _<port>._<proto>.<svc>.<ns>.svc            -> named-port SRV owner
    _<proto>.<svc>.<ns>.svc                    -> empty non-terminal
    <dashed-ip>.<ns>.pod                       -> pod
    dns-version                                -> the schema TXT
anything else (more labels, other kinds)       -> invalid -> NXDOMAIN
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed in-zone name, like CoreDNS's recordRequest (lowercased labels)."""

    kind: str  # "apex" | "dns-version" | "svc" | "pod" | "nameserver"
    namespace: str = ""
    service: str = ""
    endpoint: str = ""
    port: str = ""
    protocol: str = ""

    def __str__(self) -> str:
        return ".".join(
            [self.port, self.protocol, self.endpoint, self.service, self.namespace, self.kind]
        )


INVALID = None


def split_zone(qname: str, zone: str) -> list[str] | None:
    """Labels of ``qname`` below ``zone`` (lowercase), or None if not in the zone."""
    q = qname.lower().rstrip(".")
    z = zone.lower().rstrip(".")
    if q == z:
        return []
    if not q.endswith("." + z):
        return None
    rest = q[: -len(z) - 1]
    return rest.split(".")


def parse(qname: str, zone: str) -> Request | None:
    """Classify an in-zone name; None for names outside every schema form (NXDOMAIN)."""
    labels = split_zone(qname, zone)
    if labels is None:
        return INVALID
    if not labels:
        return Request("apex")
    if any(not lb for lb in labels):
        return INVALID
    kind = labels[-1]
    rest = labels[:-1]
    if kind == "dns-version" and not rest:
        return Request("dns-version")
    if kind not in ("svc", "pod"):
        return INVALID
    n = len(rest)
    if n == 0:
        return Request(kind)
    if kind == "pod":
        if n == 1:
            return Request("pod", namespace=rest[0])
        if n == 2:
            return Request("pod", namespace=rest[1], endpoint=rest[0])
        return INVALID
    # svc
    if n == 1:
        return Request("svc", namespace=rest[0])
    if n == 2:
        return Request("svc", namespace=rest[1], service=rest[0])
    if n == 3:
        first = rest[0]
        if first.startswith("_"):
            if len(first) < 2:
                return INVALID
            return Request("svc", namespace=rest[2], service=rest[1], protocol=first[1:])
        return Request("svc", namespace=rest[2], service=rest[1], endpoint=first)
    if n == 4:
        port, proto = rest[0], rest[1]
        if not (port.startswith("_") and proto.startswith("_") and len(port) > 1 and len(proto) > 1):
            return INVALID
        return Request("svc", namespace=rest[3], service=rest[2], port=port[1:], protocol=proto[1:])
    return INVALID


def ip_to_label(ip: str) -> str:
    """CoreDNS endpoint/pod label: dots (or colons) to dashes; IPv6 ``::`` edge gets a 0.

    ``10.244.2.20`` -> ``10-244-2-20``; ``2001:db8::`` -> ``2001-db8--0``;
    ``::1`` -> ``0--1`` (a label may not start or end with ``-``).
    """
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return str(addr).replace(".", "-")
    text = str(addr).replace(":", "-")
    if text.startswith("-"):
        text = "0" + text
    if text.endswith("-"):
        text = text + "0"
    return text


def label_to_ip(label: str) -> IPAddress | None:
    """Inverse of :func:`ip_to_label`; None if the label is not an IP (F5 rules)."""
    if label.count("-") == 3 and "--" not in label:
        try:
            return ipaddress.IPv4Address(label.replace("-", "."))
        except ValueError:
            return None
    if "-" not in label:
        return None
    try:
        return ipaddress.IPv6Address(label.replace("-", ":"))
    except ValueError:
        return None


def reverse_name(ip: str) -> str:
    """``10.96.10.10`` -> ``10.10.96.10.in-addr.arpa.`` (32 nibbles for IPv6)."""
    return ipaddress.ip_address(ip).reverse_pointer + "."


def reverse_to_ip(qname: str) -> IPAddress | None:
    """A full reverse name back to its address; partial names (ENTs) give None."""
    q = qname.lower().rstrip(".")
    if q.endswith(".in-addr.arpa"):
        parts = q[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
            return None
        try:
            return ipaddress.IPv4Address(".".join(reversed(parts)))
        except ValueError:
            return None
    if q.endswith(".ip6.arpa"):
        parts = q[: -len(".ip6.arpa")].split(".")
        if len(parts) != 32 or not all(len(p) == 1 and p in "0123456789abcdef" for p in parts):
            return None
        return ipaddress.IPv6Address(int("".join(reversed(parts)), 16))
    return None


def in_zone(qname: str, zone: str) -> bool:
    return split_zone(qname, zone) is not None
