"""ZoneData -> a table of pre-packed answers, rebuilt incrementally per service.

The table is what the hot path reads (see ``answer.py``):

``answers``  lowercase wire qname -> a :data:`Template` (the name owns one RRset), a
             dict ``{qtype (2 bytes): Template}`` (several), or the shared empty dict
             :data:`EMPTY` (an empty non-terminal). A template is a packed answer
             without ID and question; every answer RR's owner is the pointer ``0xC00C``
             (the question name), so splicing in the client's question echoes its case
             byte-for-byte (0x20-safe, dns-spec A3) for free. A name that is a key
             exists: a type miss there is NODATA, a name miss inside one of our zones
             is NXDOMAIN (RFC 2308, dns-spec A5/A8).
``pods``     ``verified`` pod names (``<dashed-ip>.<ns>.pod.<zone>``) -> refcount; their
             A/AAAA is synthesised from the label on the (rare) query, which keeps
             50,000 pods at ~130 bytes each instead of a packed answer each.
``cnames``   ExternalName owner -> target. The miss path answers the CNAME and, when
             the target is inside a zone we serve, chases it (RFC 1034 §4.3.2) from the
             live table, so a change to the target never needs to rebuild the alias.

Records come from one function per object (:func:`service_records`), so an update
recomputes only the services whose stripped value changed and the pods that changed
(kube-proxy's change-tracker idea). Names shared by several sources (a namespace
node, a PTR for an IP two services select) are reference counted. ``plan`` computes
everything that can fail; ``commit`` only does dict operations, so a bad zone never
leaves the table half-applied, and because ``commit`` runs synchronously on the
event loop a query sees either the old or the new zone.

Record rules follow dns-spec.md (CoreDNS behaviour unless the checklist recommends
otherwise): ClusterIP A/AAAA whatever the endpoints; headless A/AAAA = ready endpoint
IPs, no ready endpoints = no records (NXDOMAIN); endpoint names (hostname or dashed
IP) for ready endpoints of every service; ``_port._proto`` SRV for named ports only
(service port for ClusterIP, endpoint port for headless), bare-name SRV for every
port; SRV priority 0, weight max(1, 100 // N); PTR for ClusterIPs (they win) and
ready endpoint IPs (one per service, deduplicated); ExternalName CNAME (IP literals
publish nothing); pod A/AAAA in ``verified`` mode.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Mapping

from kubelab.dns.config import DnsConfig
from kubelab.dns.names import ip_to_label
from kubelab.dns import wire
from kubelab.dns.wire import QUESTION_PTR, rr
from kubelab.dns.zone import Pod, Service, ZoneData

logger = logging.getLogger(__name__)

# A packed answer is one bytes object (no tuple, no separate body: ~90 bytes less per
# name, which is what keeps 50,000 pods under CoreDNS's memory formula):
#   [0] zone index | [1:3] qtype | [3:13] header after the ID with RD=1 (flags, counts)
#   | [13:] answer + authority + additional records.
# A template with an additional section is a pair (full, without additional) so UDP can
# drop the optional glue before it has to set TC.
Template = "bytes | tuple[bytes, bytes]"
T_ZONE, T_QTYPE, T_HDR, T_BODY = 0, slice(1, 3), slice(3, 13), 13

EMPTY: dict = {}  # value of empty non-terminals; never mutated

FLAG_QR, FLAG_AA, FLAG_TC, FLAG_RD = 0x8000, 0x0400, 0x0200, 0x0100

MAX_MESSAGE = 65535
# Room left for the question (<= 259 bytes) and an OPT record when sizing TCP answers.
_HEADROOM = 12 + 259 + 11


_QTYPE_BYTES = tuple(i.to_bytes(2, "big") for i in range(256))


def qtype_bytes(qtype: int) -> bytes:
    """Shared 2-byte objects for common types (100k keys would each hold a copy)."""
    if qtype < 256:
        return _QTYPE_BYTES[qtype]
    return qtype.to_bytes(2, "big")


def full(tpl) -> bytes:
    """The complete variant of a template (with its additional section)."""
    return tpl if tpl.__class__ is bytes else tpl[0]


def template_qtype(tpl) -> bytes:
    return full(tpl)[1:3]


def template_rcode(tpl) -> int:
    return full(tpl)[4] & 0xF


def template_message(tpl, qid: bytes, question: bytes, rd: bool = True) -> bytes:
    """A whole DNS message from a template (tests, zone-file export, slow path)."""
    t = full(tpl)
    flags = (t[3] & ~0x01) | (1 if rd else 0)
    return qid + bytes((flags,)) + t[4:13] + question + t[13:]


def negative_headers(rcode: int) -> tuple[bytes, bytes, bytes, bytes]:
    """Header variants after the ID for NODATA/NXDOMAIN with one SOA, indexed rd | edns<<1."""
    flags = FLAG_QR | FLAG_AA | rcode
    return tuple(  # type: ignore[return-value]
        ((flags | (FLAG_RD if v & 1 else 0)).to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x01"
         + (v >> 1).to_bytes(2, "big"))
        for v in range(4)
    )


@dataclass(frozen=True, slots=True)
class ZoneInfo:
    """One zone we are authoritative for (the cluster zone or a reverse zone)."""

    index: int
    name: str
    wire: bytes
    soa_tail: bytes  # SOA RR after its owner: type, class, ttl, rdlength, rdata

    def soa_with_owner(self, owner: bytes) -> bytes:
        return owner + self.soa_tail


@dataclass(slots=True)
class Contribution:
    """What one service publishes; pure output of :func:`service_records`."""

    rrsets: dict[tuple[bytes, int], tuple[list[bytes], list[bytes]]] = field(default_factory=dict)
    ptrs: list[tuple[bytes, bytes, bool]] = field(default_factory=list)  # reverse owner, target, is ClusterIP
    cname: tuple[bytes, bytes] | None = None
    namespace: str = ""


def _pack(zone: int, qtype: int, flags: int, an: int, ns: int, ar: int, body: bytes) -> bytes:
    return (bytes((zone,)) + qtype_bytes(qtype) + (flags | FLAG_RD).to_bytes(2, "big") + b"\x00\x01"
            + an.to_bytes(2, "big") + ns.to_bytes(2, "big") + ar.to_bytes(2, "big") + body)


def make_template(zone: int, qtype: int, rcode: int, answers: list[bytes],
                  authority: list[bytes] = (), additional: list[bytes] = (),  # type: ignore[assignment]
                  aa: bool = True):
    flags = FLAG_QR | (FLAG_AA if aa else 0) | rcode
    answers = list(answers)
    additional = list(additional)
    size = sum(map(len, answers)) + sum(map(len, authority)) + sum(map(len, additional))
    if size + _HEADROOM > MAX_MESSAGE:
        additional = []
        size = sum(map(len, answers)) + sum(map(len, authority))
        while answers and size + _HEADROOM > MAX_MESSAGE:
            size -= len(answers.pop())
            flags |= FLAG_TC
    body = b"".join(answers) + b"".join(authority)
    if additional:
        return (_pack(zone, qtype, flags, len(answers), len(authority), len(additional),
                      body + b"".join(additional)),
                _pack(zone, qtype, flags, len(answers), len(authority), 0, body))
    return _pack(zone, qtype, flags, len(answers), len(authority), 0, body)


def _fqdn(*labels: str) -> str:
    return ".".join(lb.strip(".") for lb in labels if lb) + "."


def _wire(name: str) -> bytes | None:
    try:
        return wire.name_to_wire(name.lower())
    except (wire.NameError_, UnicodeEncodeError):
        return None


def _pack_ip(text: str) -> tuple[int, bytes] | None:
    """(4|6, packed) without ipaddress objects (zone builds pack ~100k addresses)."""
    try:
        if ":" in text:
            return 6, socket.inet_pton(socket.AF_INET6, text)
        return 4, socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError, TypeError):
        return None


def _addr_rr(owner: bytes, ip: tuple[int, bytes], ttl: int) -> bytes:
    return rr(owner, wire.A if ip[0] == 4 else wire.AAAA, ttl, ip[1])


def _label_for(ip: tuple[int, bytes], text: str) -> str:
    return text.replace(".", "-") if ip[0] == 4 else ip_to_label(text)


def _reverse_wire(ip: tuple[int, bytes]) -> bytes:
    if ip[0] == 4:
        labels = [str(b).encode() for b in reversed(ip[1])] + [b"in-addr", b"arpa"]
    else:
        hx = ip[1].hex()
        labels = [c.encode() for c in reversed(hx)] + [b"ip6", b"arpa"]
    return b"".join(bytes((len(lb),)) + lb for lb in labels) + b"\x00"


def service_records(svc: Service, zone: str, ttl: int) -> Contribution:
    """Pure: every RRset one Service publishes (owner of answer RRs = question pointer)."""
    c = Contribution(namespace=svc.namespace)
    base = _fqdn(svc.name, svc.namespace, "svc", zone)
    base_w = _wire(base)
    if base_w is None:
        logger.warning("service %s: name %s is not a valid DNS name; skipped", svc.key, base)
        return c
    rrsets = c.rrsets

    def add(owner: bytes, qtype: int, answers: list[bytes], additional: list[bytes] = ()) -> None:  # type: ignore[assignment]
        if answers:
            rrsets[(owner, qtype)] = (answers, list(additional))

    if svc.external_name is not None:
        target = svc.external_name.strip().rstrip(".").lower()
        if not target or _pack_ip(target) is not None:
            return c  # E5: an IP literal publishes nothing (CoreDNS)
        target_w = _wire(target + ".")
        if target_w is None:
            return c
        add(base_w, wire.CNAME, [rr(QUESTION_PTR, wire.CNAME, ttl, target_w)])
        c.cname = (base_w, target_w)
        return c

    ready = [e for e in svc.endpoints if e.ready]
    sources = [e.address for e in ready] if svc.headless else list(svc.cluster_ips)
    addrs = [a for a in dict.fromkeys(_pack_ip(t) for t in dict.fromkeys(sources)) if a is not None]
    add(base_w, wire.A, [_addr_rr(QUESTION_PTR, a, ttl) for a in addrs if a[0] == 4])
    add(base_w, wire.AAAA, [_addr_rr(QUESTION_PTR, a, ttl) for a in addrs if a[0] == 6])
    # ClusterIP SRV targets the service name itself, which the client just looked up:
    # no additional section there (it is optional, C9), glue only for headless targets.
    service_glue: list[bytes] = []

    # Endpoint names (hostname, else dashed IP) for ready endpoints: D5/D6, C13.
    ep_labels = []
    by_owner: dict[bytes, list[tuple[int, bytes]]] = {}
    for e in ready:
        ip = _pack_ip(e.address)
        if ip is None:
            continue
        label = (e.hostname or _label_for(ip, e.address)).lower()
        owner = _wire(label + "." + base)
        if owner is None:
            continue
        ports = e.ports if (e.ports or not svc.headless) else svc.ports
        ep_labels.append((owner, ip, ports))
        by_owner.setdefault(owner, []).append(ip)
    for owner, ips in by_owner.items():
        ips = list(dict.fromkeys(ips))
        add(owner, wire.A, [_addr_rr(QUESTION_PTR, a, ttl) for a in ips if a[0] == 4])
        add(owner, wire.AAAA, [_addr_rr(QUESTION_PTR, a, ttl) for a in ips if a[0] == 6])

    # SRV: owner -> list of (port, target wire, glue RRs) before de-duplication.
    srv: dict[bytes, list[tuple[int, bytes, list[bytes]]]] = {}
    owners: dict[tuple[str, str], bytes | None] = {}

    def srv_add(named: tuple[str, str] | None, port: int, target: bytes, glue: list[bytes]) -> None:
        if named is None:
            owner = base_w
        else:
            owner = owners.get(named, b"")
            if owner == b"":
                owner = owners[named] = _wire(_fqdn("_" + named[0], "_" + named[1], base))
        if owner is not None:
            srv.setdefault(owner, []).append((port, target, glue))

    if svc.headless:
        for owner, ip, ports in ep_labels:
            glue = [_addr_rr(owner, ip, ttl)]
            for p in ports:
                if p.name:
                    srv_add((p.name.lower(), p.protocol.lower()), p.port, owner, glue)
                srv_add(None, p.port, owner, glue)
    else:
        for p in svc.ports:
            if p.name:
                srv_add((p.name.lower(), p.protocol.lower()), p.port, base_w, service_glue)
            srv_add(None, p.port, base_w, service_glue)
    for owner, entries in srv.items():
        weight = max(1, 100 // len(entries))
        seen: set[tuple[int, bytes]] = set()
        answers, glue_out, glue_seen = [], [], set()
        for port, target, glue in entries:
            if (port, target) in seen:
                continue
            seen.add((port, target))
            answers.append(rr(QUESTION_PTR, wire.SRV, ttl, wire.rdata_srv(0, weight, port, target)))
            for g in glue:
                if g not in glue_seen:
                    glue_seen.add(g)
                    glue_out.append(g)
        add(owner, wire.SRV, answers, glue_out)

    if not svc.headless:
        for a in addrs:
            c.ptrs.append((_reverse_wire(a), base_w, True))
    for owner, ip, _ports in ep_labels:
        c.ptrs.append((_reverse_wire(ip), owner, False))
    return c


def pod_name(pod: Pod, zone: str) -> bytes | None:
    """Wire owner of a pod's ``<dashed-ip>.<ns>.pod.<zone>`` record (primary IP only)."""
    ip = _pack_ip(pod.ip) if pod.ip else None
    if ip is None:
        return None
    return _wire(_label_for(ip, pod.ip) + "." + _fqdn(pod.namespace, "pod", zone))


@dataclass(slots=True)
class _Owned:
    """What a service added: its names (all records there are its own) and PTR owners."""

    names: tuple[bytes, ...]
    ptrs: tuple[bytes, ...]
    cname: bytes | None
    namespace: str


@dataclass(slots=True)
class Plan:
    """Everything an update will do, computed before touching the table."""

    serial: int
    services_removed: list[str]
    services_added: dict[str, Contribution]
    pods_removed: list[Pod]
    pods_added: list[Pod]
    namespaces: frozenset[str]
    zone: ZoneData

    @property
    def empty(self) -> bool:
        return not (self.services_removed or self.services_added or self.pods_removed or self.pods_added)


class RecordTable:
    """The answer table for one server; see the module docstring for the layout."""

    def __init__(self, config: DnsConfig) -> None:
        self.config = config
        self.ttl = config.ttl
        self.answers: dict[bytes, bytes | tuple | dict] = {}
        self.cnames: dict[bytes, bytes] = {}
        self.pods: dict[bytes, int] = {}
        self.ent_refs: dict[bytes, int] = {}
        self.serial = 0
        self.generation = -1
        self.zone_data: ZoneData | None = None
        zones = [config.zone, *config.effective_reverse_zones]
        self.zone_wires = tuple(wire.name_to_wire(z) for z in zones)
        self.zones: tuple[ZoneInfo, ...] = ()
        self._owned: dict[str, _Owned] = {}
        # reverse owner -> (service key, target, is ClusterIP), or a tuple of those if several
        self._ptr_sources: dict[bytes, tuple] = {}
        self._ns_refs: dict[str, int] = {}
        self._explicit_ns: frozenset[str] = frozenset()
        self._static_keys: list[tuple[bytes, bytes]] = []
        # Negative answers for the hot path: header variants indexed rd | edns << 1.
        self.nodata_headers = negative_headers(wire.NOERROR)
        self.nxdomain_headers = negative_headers(wire.NXDOMAIN)
        self.insecure_pods = config.pods_mode == "insecure"
        # Every key of ``pods`` ends with this: the hot path checks the suffix before it
        # probes the 50,000-entry dict (a cache miss per NXDOMAIN otherwise).
        self.pod_suffix = wire.name_to_wire(_fqdn("pod", config.zone))
        for static in ("svc", "pod"):
            self._ent(wire.name_to_wire(_fqdn(static, config.zone)), +1, self_too=True)
        self._ent(wire.name_to_wire(config.mname), +1)  # dns.<zone> above ns.dns.<zone>
        self._set_serial(0)

    # ---------------------------------------------------------------- zones
    def zone_for(self, qname_lower: bytes) -> ZoneInfo | None:
        """The zone whose apex is a label-boundary suffix of the (lowercase) name."""
        best = None
        for z in self.zones:
            zw = z.wire
            if qname_lower.endswith(zw) and (best is None or len(zw) > len(best.wire)):
                off = len(qname_lower) - len(zw)
                if off == 0 or off in wire.label_offsets(qname_lower):
                    best = z
        return best

    def exists(self, name: bytes) -> bool:
        return name in self.answers or name in self.pods

    def lookup(self, name: bytes, qtype: int) -> Template | None:
        v = self.answers.get(name)
        if v is None:
            return None
        if v.__class__ is dict:
            return v.get(qtype_bytes(qtype))  # type: ignore[union-attr]
        return v if template_qtype(v) == qtype_bytes(qtype) else None

    def _set_serial(self, serial: int) -> None:
        cfg = self.config
        self.serial = serial
        mname, rname = wire.name_to_wire(cfg.mname), wire.name_to_wire(cfg.rname)
        soa_rdata = wire.rdata_soa(mname, rname, serial, cfg.soa_refresh, cfg.soa_retry,
                                   cfg.soa_expire, cfg.ttl)
        soa_tail = rr(b"", wire.SOA, cfg.soa_ttl, soa_rdata)
        self.zones = tuple(
            ZoneInfo(i, wire.wire_to_name(zw), zw, soa_tail) for i, zw in enumerate(self.zone_wires)
        )
        for name, qt in self._static_keys:
            self._unset(name, qt)
        self._static_keys = []
        ns_rr = rr(QUESTION_PTR, wire.NS, cfg.ttl, mname)
        glue: list[bytes] = []
        dns_ip = _pack_ip(cfg.dns_service_ip) if cfg.dns_service_ip else None
        if dns_ip is not None:
            glue = [_addr_rr(mname, dns_ip, cfg.ttl)]
        for z in self.zones:
            self._static(z.wire, make_template(z.index, wire.SOA, 0, [QUESTION_PTR + soa_tail]))
            self._static(z.wire, make_template(z.index, wire.NS, 0, [ns_rr], (), glue))
        ver = wire.name_to_wire(_fqdn("dns-version", cfg.zone))
        self._static(ver, make_template(
            0, wire.TXT, 0, [rr(QUESTION_PTR, wire.TXT, cfg.dns_version_ttl, wire.rdata_txt(cfg.dns_version))]))
        if dns_ip is not None:
            qt = wire.A if dns_ip[0] == 4 else wire.AAAA
            self._static(mname, make_template(0, qt, 0, [_addr_rr(QUESTION_PTR, dns_ip, cfg.ttl)]))

    def _static(self, name: bytes, tpl) -> None:
        qt = template_qtype(tpl)
        self._set(name, qt, tpl)
        self._static_keys.append((name, qt))

    # ---------------------------------------------------------------- primitives
    def _set(self, name: bytes, qt: bytes, tpl) -> None:
        answers = self.answers
        v = answers.get(name)
        if v is None or v is EMPTY:
            answers[name] = tpl
        elif v.__class__ is dict:
            v[qt] = tpl  # type: ignore[index]
        elif template_qtype(v) == qt:
            answers[name] = tpl
        else:
            answers[name] = {template_qtype(v): v, qt: tpl}

    def _unset(self, name: bytes, qt: bytes) -> None:
        answers = self.answers
        v = answers.get(name)
        if v is None or v is EMPTY:
            return
        if v.__class__ is dict:
            v.pop(qt, None)  # type: ignore[union-attr]
            if len(v) == 1:  # type: ignore[arg-type]
                answers[name] = next(iter(v.values()))  # type: ignore[union-attr]
                return
            if v:
                return
        elif template_qtype(v) != qt:
            return
        if name in self.ent_refs or name in self.zone_wires:
            answers[name] = EMPTY
        else:
            del answers[name]

    def _clear(self, name: bytes) -> None:
        """Drop every record at ``name`` (keep it as an empty non-terminal if referenced)."""
        answers = self.answers
        if name not in answers:
            return
        if name in self.ent_refs or name in self.zone_wires:
            answers[name] = EMPTY
        else:
            del answers[name]

    def _zone_len(self, name: bytes) -> int:
        zl = 0
        for zw in self.zone_wires:
            if len(zw) > zl and name.endswith(zw):
                zl = len(zw)
        return zl

    def _ent(self, name: bytes, delta: int, self_too: bool = False) -> None:
        """Reference the ancestors of ``name`` (and ``name`` if ``self_too``) below the apex."""
        zl = self._zone_len(name)
        if not zl:
            return
        refs = self.ent_refs
        answers = self.answers
        i = 0 if self_too else name[0] + 1
        n = len(name)
        while n - i > zl:
            a = name[i:] if i else name
            c = refs.get(a, 0) + delta
            if c > 0:
                refs[a] = c
                if a not in answers:
                    answers[a] = EMPTY
            else:
                refs.pop(a, None)
                if answers.get(a) is EMPTY:
                    del answers[a]
            i += name[i] + 1

    # ---------------------------------------------------------------- update
    def plan(self, zone: ZoneData, serial: int) -> Plan:
        """Pure with respect to the table: what changes between the applied zone and ``zone``."""
        cfg = self.config
        old = self.zone_data
        old_services: Mapping[str, Service] = old.services if old else {}
        new_services = zone.services
        removed = []
        added: dict[str, Contribution] = {}
        for key, svc in old_services.items():
            nsvc = new_services.get(key)
            if nsvc is None:
                removed.append(key)
            elif nsvc is not svc and nsvc != svc:
                removed.append(key)
                added[key] = service_records(nsvc, cfg.zone, cfg.ttl)
        for key, svc in new_services.items():
            if key not in old_services:
                added[key] = service_records(svc, cfg.zone, cfg.ttl)
        old_pods = old.pods if old else ()
        pods_removed: list[Pod] = []
        pods_added: list[Pod] = []
        if old_pods is not zone.pods and old_pods != zone.pods:
            a, b = old_pods, zone.pods
            lo = 0
            m = min(len(a), len(b))
            while lo < m and (a[lo] is b[lo] or a[lo] == b[lo]):
                lo += 1
            hi_a, hi_b = len(a), len(b)
            while hi_a > lo and hi_b > lo and (a[hi_a - 1] is b[hi_b - 1] or a[hi_a - 1] == b[hi_b - 1]):
                hi_a -= 1
                hi_b -= 1
            mid_a, mid_b = set(a[lo:hi_a]), set(b[lo:hi_b])
            pods_removed = [p for p in a[lo:hi_a] if p not in mid_b]
            pods_added = [p for p in b[lo:hi_b] if p not in mid_a]
        namespaces = frozenset(getattr(zone, "namespaces", ()) or ())
        return Plan(serial, removed, added, pods_removed, pods_added, namespaces, zone)

    def commit(self, plan: Plan) -> None:
        """Apply a plan: dict operations only (cannot fail half-way for a valid plan)."""
        touched_ptrs: set[bytes] = set()
        for key in plan.services_removed:
            self._remove_service(key, touched_ptrs)
        for key, contrib in plan.services_added.items():
            self._add_service(key, contrib, touched_ptrs)
        for owner in touched_ptrs:
            self._compile_ptr(owner)
        verified = self.config.pods_mode == "verified"
        for p in plan.pods_removed:
            self._pod(p, -1, verified)
        for p in plan.pods_added:
            self._pod(p, +1, verified)
        if plan.namespaces != self._explicit_ns:
            for ns in plan.namespaces - self._explicit_ns:
                self._ns(ns, +1)
            for ns in self._explicit_ns - plan.namespaces:
                self._ns(ns, -1)
            self._explicit_ns = plan.namespaces
        if plan.serial != self.serial:
            self._set_serial(plan.serial)
        self.zone_data = plan.zone
        self.generation = plan.zone.generation

    def apply(self, zone: ZoneData, serial: int) -> None:
        self.commit(self.plan(zone, serial))

    def load(self, zone: ZoneData, serial: int) -> None:
        """First zone into a fresh (not yet served) table, one service at a time.

        Nobody reads a fresh table yet, so there is no atomicity to keep, and streaming
        avoids holding every service's intermediate records at once (peak RSS).
        """
        if self.zone_data is not None:
            raise RuntimeError("load() is for a fresh table; use plan()/commit()")
        cfg = self.config
        touched: set[bytes] = set()
        for key, svc in zone.services.items():
            self._add_service(key, service_records(svc, cfg.zone, cfg.ttl), touched)
        for owner in touched:
            self._compile_ptr(owner)
        del touched
        plan = Plan(serial, [], {}, [], list(zone.pods),
                    frozenset(getattr(zone, "namespaces", ()) or ()), zone)
        self.commit(plan)

    def _ns(self, ns: str, delta: int) -> None:
        refs = self._ns_refs
        before = refs.get(ns, 0)
        after = before + delta
        if after > 0:
            refs[ns] = after
        else:
            refs.pop(ns, None)
        if (before > 0) != (after > 0):
            for kind in ("svc", "pod"):
                w = _wire(_fqdn(ns, kind, self.config.zone))
                if w is not None:
                    self._ent(w, 1 if after > 0 else -1, self_too=True)

    def _remove_service(self, key: str, touched: set[bytes]) -> None:
        owned = self._owned.pop(key, None)
        if owned is None:
            return
        for n in owned.names:
            self._clear(n)
        for n in owned.names:
            self._ent(n, -1)
        if owned.cname is not None:
            self.cnames.pop(owned.cname, None)
        sources = self._ptr_sources
        for owner in owned.ptrs:
            cur = sources.get(owner)
            if cur is None:
                continue
            if cur[0].__class__ is str:  # one source, stored unwrapped
                if cur[0] == key:
                    del sources[owner]
            else:
                rest = tuple(s for s in cur if s[0] != key)
                if len(rest) > 1:
                    sources[owner] = rest
                elif rest:
                    sources[owner] = rest[0]
                else:
                    del sources[owner]
            touched.add(owner)
        self._ns(owned.namespace, -1)

    def _add_service(self, key: str, c: Contribution, touched: set[bytes]) -> None:
        names = {}
        for (name, qtype), (answers, additional) in c.rrsets.items():
            self._set(name, qtype_bytes(qtype), make_template(0, qtype, 0, answers, (), additional))
            names[name] = None
        for n in names:
            self._ent(n, +1)
        if c.cname is not None:
            self.cnames[c.cname[0]] = c.cname[1]
        sources = self._ptr_sources
        owners = {}
        for owner, target, is_cip in dict.fromkeys(c.ptrs):
            src = (key, target, is_cip)
            cur = sources.get(owner)
            if cur is None:
                sources[owner] = src
            elif cur[0].__class__ is str:
                sources[owner] = (cur, src)
            else:
                sources[owner] = cur + (src,)
            owners[owner] = None
            touched.add(owner)
        self._owned[key] = _Owned(tuple(names), tuple(owners), c.cname[0] if c.cname else None,
                                  c.namespace)
        self._ns(c.namespace, +1)

    def _compile_ptr(self, owner: bytes) -> None:
        zone = None
        for z in self.zones[1:]:
            if owner.endswith(z.wire):
                zone = z
        if zone is None:
            return  # outside every reverse zone we serve
        sources = self._ptr_sources.get(owner, ())
        if sources and sources[0].__class__ is str:
            sources = (sources,)
        had = self.lookup(owner, wire.PTR) is not None
        pt = qtype_bytes(wire.PTR)
        if not sources:
            if had:
                self._unset(owner, pt)
                self._ent(owner, -1)
            return
        cips = sorted(s for s in sources if s[2])
        chosen = [cips[0]] if cips else sorted(sources)
        targets = list(dict.fromkeys(s[1] for s in chosen))
        answers = [rr(QUESTION_PTR, wire.PTR, self.ttl, t) for t in targets]
        self._set(owner, pt, make_template(zone.index, wire.PTR, 0, answers))
        if not had:
            self._ent(owner, +1)

    def _pod(self, pod: Pod, delta: int, verified: bool) -> None:
        self._ns(pod.namespace, delta)
        if not verified:
            return
        owner = pod_name(pod, self.config.zone)
        if owner is None:
            return
        refs = self.pods.get(owner, 0) + delta
        if refs > 0:
            self.pods[owner] = refs
        else:
            self.pods.pop(owner, None)


def build(config: DnsConfig, zone: ZoneData, serial: int) -> RecordTable:
    table = RecordTable(config)
    table.load(zone, serial)
    return table
