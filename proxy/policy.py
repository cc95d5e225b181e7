"""The controller -> proxy contract for NetworkPolicy: compiled per-pod allow sets.

The controller evaluates policies (``kubelab.controller.netpol``); the proxy only asks
``allows`` on each new connection or UDP flow (DESIGN: "the controller decides, data
planes look up"). An empty table allows everything (no pod is isolated).

Shape of the compiled data:

* ``PolicyTable.pods`` maps a pod IP to its ``PodRules``: the pod's name, its node
  (traffic between a pod and its own node is always allowed, R23) and one ``Acl`` per
  direction, or ``None`` when no policy isolates the pod in that direction (R5).
* An ``Acl`` lists the policies that isolate the pod and the *grants* (policy, rule)
  in evaluation order (policies sorted by namespace/name, rules and peers in order).
  Its ``entries`` say which remote addresses on which ports each grant lets through.
  Selectors are already resolved to pod IP sets and named ports to numbers on the
  destination pod, so no label or policy is looked at on the hot path.
* Each ``Acl`` indexes its entries by (protocol, port). ``allows`` folds the buckets
  that apply to one (protocol, port) into a single entry on first use — any-peer flag,
  one set of allowed IPs, the ipBlocks, and the known addresses outside them — and
  caches it on the ACL, so a connection costs two such look-ups (source egress,
  destination ingress): a few dict probes, no policy evaluation. Only an address the
  table has never seen (outside the cluster) is compared against CIDRs.

``explain``/``check`` walk the same index to find the first matching grant (lowest
index): the same policy and rule the controller's reference engine reports.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

INGRESS = "Ingress"
EGRESS = "Egress"
MAX_PORT = 65535

PortRange = tuple[str, int, int]  # (protocol, first, last), inclusive
IPKey = tuple[int, int]  # (IP version, integer address)
_Block = tuple[int, int, int, tuple[tuple[int, int, int], ...]]  # version, network, mask, excepts
_Merged = tuple[bool, frozenset[str], tuple[_Block, ...], frozenset[str]]


# ---------------------------------------------------------------------------
# Verdict wording, shared with the controller's engine so both say the same thing.


def describe_loopback(pod: str) -> str:
    return f"loopback: {pod} may always reach itself"


def describe_node(pod: str, node: str) -> str:
    return f"node: traffic between {pod} and its own node {node} is always allowed"


def describe_not_pods() -> str:
    return "neither end is a pod: no NetworkPolicy applies"


def describe_side(
    pod: str,
    direction: str,
    isolated_by: tuple[str, ...],
    allowed_by: tuple[str, str] | None,
    remote: str,
    port: int,
    protocol: str,
) -> str:
    """One end's half of a verdict: not isolated, allowed by (policy, rule), or denied."""
    word = direction.lower()
    if not isolated_by:
        return f"{pod} {word}: not isolated"
    if allowed_by is not None:
        return f"{pod} {word}: allowed by {allowed_by[0]} {allowed_by[1]}"
    prep = "from" if direction == INGRESS else "to"
    return (
        f"{pod} {word}: denied, isolated by {', '.join(isolated_by)} and no rule allows "
        f"{protocol}/{port} {prep} {remote}"
    )


# ---------------------------------------------------------------------------
# Addresses


def ip_key(ip: str) -> IPKey | None:
    """(version, integer) for an address; None when it is not an IP address."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return addr.version, int(addr)


@dataclass(frozen=True, slots=True)
class IPBlock:
    """``cidr`` minus every ``except`` (R15). Host bits are masked, as ParseCIDRSloppy does."""

    cidr: str
    excepts: tuple[str, ...] = ()

    def compiled(self) -> tuple[int, int, int, tuple[tuple[int, int, int], ...]]:
        net = ipaddress.ip_network(self.cidr, strict=False)
        exc = tuple(
            (n.version, int(n.network_address), int(n.netmask))
            for n in (ipaddress.ip_network(e, strict=False) for e in self.excepts)
        )
        return net.version, int(net.network_address), int(net.netmask), exc

    def contains(self, key: IPKey | None) -> bool:
        if key is None:
            return False
        version, net, mask, exc = self.compiled()
        return _block_contains(version, net, mask, exc, key)


def _block_contains(
    version: int, net: int, mask: int, exc: tuple[tuple[int, int, int], ...], key: IPKey
) -> bool:
    v, a = key
    if v != version or a & mask != net:
        return False
    return not any(v == ev and a & em == en for ev, en, em in exc)


@dataclass(frozen=True, slots=True)
class AclEntry:
    """Grant ``grant`` lets ``peer`` through on ``ports``.

    ``peer`` is None for any address, a frozenset of pod IPs (resolved selectors), or an
    ``IPBlock``. ``ports`` is None for any port and protocol, else (protocol, first, last)
    ranges; a named port is already resolved to its number on the destination pod.
    """

    grant: int
    peer: frozenset[str] | IPBlock | None
    ports: tuple[PortRange, ...] | None


class _Bucket:
    """Remote-address matcher for one port key: first grant per IP, any-peer, ipBlocks."""

    __slots__ = ("ips", "any", "blocks")

    def __init__(self) -> None:
        self.ips: dict[str, int] = {}
        self.any: int | None = None
        self.blocks: list[tuple[int, int, int, int, tuple[tuple[int, int, int], ...]]] = []

    def add(self, grant: int, peer: frozenset[str] | IPBlock | None) -> None:
        if peer is None:
            if self.any is None or grant < self.any:
                self.any = grant
        elif isinstance(peer, IPBlock):
            self.blocks.append((grant, *peer.compiled()))
            self.blocks.sort(key=lambda b: b[0])
        else:
            ips = self.ips
            for ip in peer:
                old = ips.get(ip)
                if old is None or grant < old:
                    ips[ip] = grant

    def match(self, remote: str, key_of: Callable[[str], IPKey | None]) -> int | None:
        best = self.ips.get(remote)
        a = self.any
        if a is not None and (best is None or a < best):
            best = a
        if self.blocks:
            key = key_of(remote)
            if key is not None:
                for grant, version, net, mask, exc in self.blocks:
                    if best is not None and grant >= best:
                        break
                    if _block_contains(version, net, mask, exc, key):
                        best = grant
                        break
        return best


class _AclIndex:
    """Entries re-keyed by port: any port, all ports of a protocol, one port, a range."""

    __slots__ = ("anyport", "proto_all", "exact", "ranges")

    def __init__(self, entries: Iterable[AclEntry]) -> None:
        self.anyport: _Bucket | None = None
        self.proto_all: dict[str, _Bucket] = {}
        self.exact: dict[tuple[str, int], _Bucket] = {}
        ranges: dict[PortRange, _Bucket] = {}
        for e in entries:
            if e.ports is None:
                if self.anyport is None:
                    self.anyport = _Bucket()
                self.anyport.add(e.grant, e.peer)
                continue
            for proto, lo, hi in e.ports:
                if lo <= 1 and hi >= MAX_PORT:
                    bucket = self.proto_all.setdefault(proto, _Bucket())
                elif lo == hi:
                    bucket = self.exact.setdefault((proto, lo), _Bucket())
                else:
                    bucket = ranges.setdefault((proto, lo, hi), _Bucket())
                bucket.add(e.grant, e.peer)
        self.ranges = tuple((p, lo, hi, b) for (p, lo, hi), b in sorted(ranges.items()))

    def first_match(
        self, remote: str, port: int, protocol: str, key_of: Callable[[str], IPKey | None]
    ) -> int | None:
        best: int | None = None
        for bucket in (self.anyport, self.proto_all.get(protocol), self.exact.get((protocol, port))):
            if bucket is not None:
                m = bucket.match(remote, key_of)
                if m is not None and (best is None or m < best):
                    best = m
        for proto, lo, hi, bucket in self.ranges:
            if proto == protocol and lo <= port <= hi:
                m = bucket.match(remote, key_of)
                if m is not None and (best is None or m < best):
                    best = m
        return best


@dataclass(frozen=True)
class Acl:
    """One pod's compiled rules for one direction (present only when the pod is isolated)."""

    isolated_by: tuple[str, ...]  # "ns/name" of every policy selecting the pod for this direction
    grants: tuple[tuple[str, str], ...] = ()  # (policy "ns/name", rule path such as "ingress[0].from[1]")
    entries: tuple[AclEntry, ...] = ()
    _index: _AclIndex = field(init=False, compare=False, repr=False)
    # (protocol, port) -> (any peer?, allowed IPs, ipBlocks, known IPs outside the ipBlocks)
    _merged: dict[tuple[str, int], _Merged] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _AclIndex(self.entries))
        object.__setattr__(self, "_merged", {})

    def merged(self, protocol: str, port: int, known: Mapping[str, IPKey | None]) -> _Merged:
        """Every bucket that applies to (protocol, port) folded into one look-up.

        ipBlocks are evaluated once against the ``known`` addresses (pods and nodes):
        matches join the allowed set, misses the negative set, so a pod address never
        costs a CIDR comparison on the hot path. Membership of an address in a CIDR does
        not depend on the table, so the result is cached on the ACL.
        """
        hit = self._merged.get((protocol, port))
        if hit is not None:
            return hit
        idx = self._index
        buckets = [b for b in (idx.anyport, idx.proto_all.get(protocol), idx.exact.get((protocol, port))) if b]
        buckets += [b for p, lo, hi, b in idx.ranges if p == protocol and lo <= port <= hi]
        any_peer = any(b.any is not None for b in buckets)
        ips: set[str] = set()
        blocks: list[tuple[int, int, int, tuple[tuple[int, int, int], ...]]] = []
        for b in buckets:
            ips.update(b.ips)
            blocks.extend(blk[1:] for blk in b.blocks)
        outside: set[str] = set()
        if blocks and not any_peer:
            for ip, key in known.items():
                if ip in ips or key is None:
                    continue
                if any(_block_contains(v, n, m, e, key) for v, n, m, e in blocks):
                    ips.add(ip)
                else:
                    outside.add(ip)
        hit = (any_peer, frozenset(ips), tuple(blocks), frozenset(outside))
        if len(self._merged) < 4096:  # bounded: one entry per (protocol, port) seen
            self._merged[(protocol, port)] = hit
        return hit

    def first_match(
        self, remote: str, port: int, protocol: str, key_of: Callable[[str], IPKey | None] = ip_key
    ) -> int | None:
        """Index into ``grants`` of the first grant allowing ``remote`` on port/protocol."""
        return self._index.first_match(remote, port, protocol, key_of)


@dataclass(frozen=True, slots=True)
class PodRules:
    pod: str  # "namespace/name"
    node: str | None = None
    node_ips: tuple[str, ...] = ()
    ingress: Acl | None = None  # None: not isolated for ingress
    egress: Acl | None = None


@dataclass(frozen=True)
class PolicyTable:
    """Per-pod allow sets keyed by pod IP; ``nodes`` maps node IPs to node names."""

    pods: Mapping[str, PodRules] = field(default_factory=dict)
    nodes: Mapping[str, str] = field(default_factory=dict)
    _keys: dict[str, IPKey | None] = field(init=False, compare=False, repr=False)
    _keys_limit: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        keys: dict[str, IPKey | None] = {}
        for ip in (*self.pods, *self.nodes):
            keys[ip] = ip_key(ip)
        object.__setattr__(self, "_keys", keys)  # pods and nodes, plus outside addresses seen
        object.__setattr__(self, "_keys_limit", len(keys) + 65536)

    # -- the hot path ------------------------------------------------------

    def _in_blocks(self, blocks: tuple[_Block, ...], ip: str) -> bool:
        key = self._key_of(ip)
        return key is not None and any(_block_contains(v, n, m, e, key) for v, n, m, e in blocks)

    def _key_of(self, ip: str) -> IPKey | None:
        keys = self._keys
        if ip in keys:
            return keys[ip]
        if len(keys) > self._keys_limit:  # outside addresses are unbounded: start over
            keys.clear()
            keys.update((a, ip_key(a)) for a in (*self.pods, *self.nodes))
        key = keys[ip] = ip_key(ip)
        return key

    def allows(self, src_ip: str, dst_ip: str, port: int, protocol: str) -> bool:
        """True when the source's egress and the destination's ingress both allow it.

        ``port`` is the destination pod's port (after Service translation, R22) and
        ``protocol`` one of TCP, UDP, SCTP.
        """
        if src_ip == dst_ip:
            return True  # R24 loopback (and a non-pod talking to itself)
        pods = self.pods
        s = pods.get(src_ip)
        d = pods.get(dst_ip)
        if (d is not None and src_ip in d.node_ips) or (s is not None and dst_ip in s.node_ips):
            return True  # R23: a pod and its own node (lab: both directions)
        if s is not None:
            acl = s.egress
            if acl is not None:
                m = acl._merged.get((protocol, port)) or acl.merged(protocol, port, self._keys)
                if not (m[0] or dst_ip in m[1] or (m[2] and dst_ip not in m[3] and self._in_blocks(m[2], dst_ip))):
                    return False
        if d is not None:
            acl = d.ingress
            if acl is not None:
                m = acl._merged.get((protocol, port)) or acl.merged(protocol, port, self._keys)
                if not (m[0] or src_ip in m[1] or (m[2] and src_ip not in m[3] and self._in_blocks(m[2], src_ip))):
                    return False
        return True

    # -- explanations --------------------------------------------------------

    def name_of(self, ip: str) -> str:
        """``ns/name`` for a pod IP, ``ip:A.B.C.D`` for anything else (a node included)."""
        rules = self.pods.get(ip)
        return rules.pod if rules is not None else f"ip:{ip}"

    def check(self, src_ip: str, dst_ip: str, port: int, protocol: str) -> tuple[bool, str]:
        """(allowed, because): the verdict and the policy and rule behind it."""
        key_of = self._key_of

        def side(rules: PodRules, acl: Acl, direction: str, remote: str) -> tuple[bool, str]:
            g = acl._index.first_match(remote, port, protocol, key_of)
            grant = acl.grants[g] if g is not None else None
            return g is not None, describe_side(
                rules.pod, direction, acl.isolated_by, grant, self.name_of(remote), port, protocol
            )

        return self._verdict(src_ip, dst_ip, port, protocol, side)

    def check_many(
        self, sources: Iterable[str], destinations: Iterable[str], port: int, protocol: str
    ) -> Iterator[tuple[str, str, bool, str]]:
        """(src, dst, allowed, because) for every pair, as ``check`` would say it.

        For matrices: each ACL is resolved once against all the addresses involved and
        each end's wording is built once, so a pair costs two dict look-ups.
        """
        sources, destinations = list(sources), list(destinations)
        universe = list(dict.fromkeys((*sources, *destinations)))
        key_of = self._key_of
        pods = self.pods
        grant_maps: dict[int, dict[str, int]] = {}

        def end(rules: PodRules, acl: Acl | None, direction: str) -> tuple[dict[str, int] | None, str, list[str]]:
            """(remote -> first grant, or None when not isolated; not-isolated text; text per grant)."""
            if acl is None:
                return None, describe_side(rules.pod, direction, (), None, "", port, protocol), []
            m = grant_maps.get(id(acl))
            if m is None:
                m = grant_maps[id(acl)] = {}
                for ip in universe:
                    g = acl._index.first_match(ip, port, protocol, key_of)
                    if g is not None:
                        m[ip] = g
            texts = [describe_side(rules.pod, direction, acl.isolated_by, g, "", port, protocol) for g in acl.grants]
            return m, "", texts

        cols = []
        for dst in destinations:
            d = pods.get(dst)
            if d is None:
                cols.append((dst, None, None, "", [], f"ip:{dst}"))
            else:
                cols.append((dst, d, *end(d, d.ingress, INGRESS), d.pod))
        for src in sources:
            s = pods.get(src)
            if s is not None:
                egm, efree, etexts = end(s, s.egress, EGRESS)
                src_name = s.pod
            else:
                egm, efree, etexts, src_name = None, "", [], f"ip:{src}"
            for dst, d, igm, ifree, itexts, dst_name in cols:
                if src == dst and (s is not None or d is not None):
                    yield src, dst, True, describe_loopback(src_name if s is not None else dst_name)
                    continue
                if d is not None and src in d.node_ips:
                    yield src, dst, True, describe_node(d.pod, d.node or src)
                    continue
                if s is not None and dst in s.node_ips:
                    yield src, dst, True, describe_node(s.pod, s.node or dst)
                    continue
                if s is None and d is None:
                    yield src, dst, True, describe_not_pods()
                    continue
                ok = True
                e = i = ""
                if s is not None:
                    if egm is None:
                        e = efree
                    else:
                        g = egm.get(dst)
                        if g is None:
                            ok = False
                            e = describe_side(s.pod, EGRESS, s.egress.isolated_by, None, dst_name, port, protocol)  # type: ignore[union-attr]
                        else:
                            e = etexts[g]
                if d is not None:
                    if igm is None:
                        i = ifree
                    else:
                        g = igm.get(src)
                        if g is None:
                            ok = False
                            i = describe_side(d.pod, INGRESS, d.ingress.isolated_by, None, src_name, port, protocol)  # type: ignore[union-attr]
                        else:
                            i = itexts[g]
                yield src, dst, ok, (e if d is None else i if s is None else f"{e}; {i}")

    def _verdict(
        self,
        src_ip: str,
        dst_ip: str,
        port: int,
        protocol: str,
        side: Callable[[PodRules, Acl, str, str], tuple[bool, str]],
    ) -> tuple[bool, str]:
        """R30's order: loopback, a pod and its node, then both pod ends' sides."""
        s = self.pods.get(src_ip)
        d = self.pods.get(dst_ip)
        if src_ip == dst_ip and (s is not None or d is not None):
            return True, describe_loopback((s or d).pod)  # type: ignore[union-attr]
        if d is not None and src_ip in d.node_ips:
            return True, describe_node(d.pod, d.node or src_ip)
        if s is not None and dst_ip in s.node_ips:
            return True, describe_node(s.pod, s.node or dst_ip)
        if s is None and d is None:
            return True, describe_not_pods()
        allowed = True
        if s is not None:
            if s.egress is None:
                e_text = f"{s.pod} egress: not isolated"
            else:
                ok, e_text = side(s, s.egress, EGRESS, dst_ip)
                allowed = ok
            if d is None:
                return allowed, e_text
        if d is not None:
            if d.ingress is None:
                i_text = f"{d.pod} ingress: not isolated"
            else:
                ok, i_text = side(d, d.ingress, INGRESS, src_ip)
                allowed = allowed and ok
            if s is None:
                return allowed, i_text
        return allowed, f"{e_text}; {i_text}"

    def explain(self, src_ip: str, dst_ip: str, port: int, protocol: str) -> str:
        """Why ``allows`` says what it says, for logs and /routes."""
        allowed, because = self.check(src_ip, dst_ip, port, protocol)
        return f"{'allowed' if allowed else 'denied'}: {because}"

    def isolated(self) -> dict[str, tuple[bool, bool]]:
        """pod -> (isolated for ingress, isolated for egress), for status pages."""
        return {r.pod: (r.ingress is not None, r.egress is not None) for r in self.pods.values()}

    # -- wire format -------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Compact JSON: IP sets and ACLs are shared, pods refer to them by index."""
        if not self.pods and not self.nodes:
            return {}
        sets: dict[frozenset[str], int] = {}
        acls: dict[int, int] = {}  # id(Acl) -> index
        acl_list: list[dict[str, Any]] = []

        def set_ref(s: frozenset[str]) -> int:
            if s not in sets:
                sets[s] = len(sets)
            return sets[s]

        def acl_ref(acl: Acl | None) -> int | None:
            if acl is None:
                return None
            if id(acl) not in acls:
                entries = []
                for e in acl.entries:
                    if e.peer is None:
                        peer: Any = None
                    elif isinstance(e.peer, IPBlock):
                        peer = {"cidr": e.peer.cidr, "except": list(e.peer.excepts)}
                    else:
                        peer = set_ref(e.peer)
                    ports = None if e.ports is None else [list(p) for p in e.ports]
                    entries.append([e.grant, peer, ports])
                acls[id(acl)] = len(acl_list)
                acl_list.append(
                    {
                        "isolatedBy": list(acl.isolated_by),
                        "grants": [list(g) for g in acl.grants],
                        "entries": entries,
                    }
                )
            return acls[id(acl)]

        pods = {
            ip: [r.pod, r.node, list(r.node_ips), acl_ref(r.ingress), acl_ref(r.egress)]
            for ip, r in sorted(self.pods.items())
        }
        return {
            "version": 1,
            "nodes": dict(sorted(self.nodes.items())),
            "pods": pods,
            "ipSets": [sorted(s) for s, _ in sorted(sets.items(), key=lambda kv: kv[1])],
            "acls": acl_list,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PolicyTable":
        if not data:
            return cls()
        ip_sets = [frozenset(s) for s in data.get("ipSets", ())]
        acls: list[Acl] = []
        for a in data.get("acls", ()):
            entries = []
            for grant, peer, ports in a.get("entries", ()):
                if peer is None:
                    p: frozenset[str] | IPBlock | None = None
                elif isinstance(peer, Mapping):
                    p = IPBlock(peer["cidr"], tuple(peer.get("except") or ()))
                else:
                    p = ip_sets[int(peer)]
                rng = None if ports is None else tuple((str(x[0]), int(x[1]), int(x[2])) for x in ports)
                entries.append(AclEntry(int(grant), p, rng))
            acls.append(
                Acl(
                    isolated_by=tuple(a.get("isolatedBy", ())),
                    grants=tuple((str(g[0]), str(g[1])) for g in a.get("grants", ())),
                    entries=tuple(entries),
                )
            )

        def acl(ref: Any) -> Acl | None:
            return None if ref is None else acls[int(ref)]

        pods = {
            ip: PodRules(pod=v[0], node=v[1], node_ips=tuple(v[2]), ingress=acl(v[3]), egress=acl(v[4]))
            for ip, v in data.get("pods", {}).items()
        }
        return cls(pods=pods, nodes=dict(data.get("nodes", {})))
