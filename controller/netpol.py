"""NetworkPolicy (networking.k8s.io/v1): the reference engine and the compiler to allow sets.

Two implementations of one semantics, kept apart on purpose so each checks the other
(tests/unit/test_netpol_table.py):

* ``evaluate(cluster, src, dst, port, protocol) -> Verdict`` is R30 of
  reference/netpol-spec.md written out literally: exemptions (loopback, a pod and its
  own node), then each pod end's side (isolated by which policies, allowed by which
  policy and rule). It reads like the spec and is used for explanations and tests.
* ``compile_policy_table(snap) -> PolicyTable`` resolves every selector to pod IP sets
  and every named port to its number on the destination pod, once per snapshot, so the
  proxy (and ``kubelab netpol matrix``) only look up sets (DESIGN: the controller
  decides, data planes look up).

Decisions the spec leaves to the lab (each is the **Lab:** line of its rule):

* policyTypes are defaulted here as the API server does (R3), whether or not the
  stored object was defaulted; port protocols default to TCP (R18).
* Every namespace carries ``kubernetes.io/metadata.name`` even if the object (or the
  namespace object itself) is missing (R14).
* Traffic between a pod and its own node is allowed in both directions (R23); a pod
  may always reach itself (R24). ``Verdict.rules_allowed`` is the answer without them.
  A pod without ``spec.nodeName`` in a one-node cluster (a simulated pod in the lab)
  is on that node. A node is known by the addresses of its Node object.
* ipBlocks match pod IPs too (R16). A hostNetwork pod is its node's address and is
  never selected (R28). Pods in phase Succeeded/Failed are ignored (they hold no IP).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol

from kubelab.controller.netpol_validation import validate_network_policy
from kubelab.controller.defaults import default_network_policy as _default_in_place
from kubelab.controller.validation import selector_matches as _label_selector_matches
from kubelab.proxy.policy import (
    EGRESS,
    INGRESS,
    Acl,
    AclEntry,
    IPBlock,
    PodRules,
    PolicyTable,
    describe_loopback,
    describe_node,
    describe_not_pods,
    describe_side,
    ip_key,
)

__all__ = [
    "EGRESS",
    "INGRESS",
    "Cluster",
    "ContainerPort",
    "Peer",
    "PodInfo",
    "Policy",
    "PortSpec",
    "Rule",
    "SideVerdict",
    "Verdict",
    "build_policy_table",
    "compile_policy_table",
    "default_network_policy",
    "evaluate",
    "selector_matches",
    "validate_network_policy",
]

log = logging.getLogger(__name__)

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
ALL_PORTS = (1, 65535)


# ---------------------------------------------------------------------------
# Label selectors (R13)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """``metav1.LabelSelector`` semantics; here ``None`` and ``{}`` both match everything
    (an absent podSelector/namespaceSelector in a peer selects all). NotIn and
    DoesNotExist match a missing key; the matching itself is the registry's."""
    return _label_selector_matches(selector or {}, labels)


# ---------------------------------------------------------------------------
# Defaulting (R3, R18)


def default_network_policy(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with the API server's defaults: podSelector ``{}``, policyTypes, port protocols.

    policyTypes is set only when absent or empty: ``[Ingress]``, plus ``Egress`` iff
    ``len(spec.egress) != 0`` (so ``egress: []`` adds nothing, ``egress: [{}]`` does).
    """
    out = copy.deepcopy(dict(obj))
    _default_in_place(out)  # the registry's defaulting, on a copy: files given offline are not admitted
    return out


# ---------------------------------------------------------------------------
# The model: plain Kubernetes dicts reduced to what policy needs


@dataclass(frozen=True, slots=True)
class ContainerPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    ip: str | None
    labels: Mapping[str, str]
    node: str | None = None
    ports: tuple[ContainerPort, ...] = ()
    host_network: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> "PodInfo":
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        ip = status.get("podIP") or next((p.get("ip") for p in status.get("podIPs") or () if p.get("ip")), None)
        ports: list[ContainerPort] = []
        for c in spec.get("containers") or ():
            for p in c.get("ports") or ():
                if p.get("name") and isinstance(p.get("containerPort"), int):
                    ports.append(ContainerPort(p["name"], p["containerPort"], p.get("protocol") or "TCP"))
        return cls(
            namespace=meta.get("namespace") or "default",
            name=meta.get("name", ""),
            ip=ip,
            labels=dict(meta.get("labels") or {}),
            node=spec.get("nodeName"),
            ports=tuple(ports),
            host_network=bool(spec.get("hostNetwork")),
        )


@dataclass(frozen=True, slots=True)
class PortSpec:
    protocol: str
    port: int | str | None  # None: every port of the protocol (R19); str: a named port (R21)
    end_port: int | None = None


@dataclass(frozen=True)
class Peer:
    pod_selector: Mapping[str, Any] | None
    namespace_selector: Mapping[str, Any] | None
    ip_block: IPBlock | None


@dataclass(frozen=True)
class Rule:
    ports: tuple[PortSpec, ...]
    peers: tuple[Peer, ...]


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    pod_selector: Mapping[str, Any]
    policy_types: frozenset[str]
    ingress: tuple[Rule, ...]
    egress: tuple[Rule, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> "Policy":
        """Parse after defaulting (R3, R18). Malformed pieces match nothing rather than everything."""
        obj = default_network_policy(obj)
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        return cls(
            namespace=meta.get("namespace") or "default",
            name=meta.get("name", ""),
            pod_selector=spec.get("podSelector") or {},
            policy_types=frozenset(spec.get("policyTypes") or ()),
            ingress=tuple(_rule(r, "from") for r in spec.get("ingress") or ()),
            egress=tuple(_rule(r, "to") for r in spec.get("egress") or ()),
        )


_NEVER = IPBlock("0.0.0.0/32", ("0.0.0.0/32",))  # a peer that can match nothing


def _rule(rule: Mapping[str, Any] | None, peers_key: str) -> Rule:
    rule = rule or {}
    ports = []
    for p in rule.get("ports") or ():
        number = p.get("port")
        if isinstance(number, bool):
            number = None
        ports.append(PortSpec(p.get("protocol") or "TCP", number, p.get("endPort")))
    peers = []
    for peer in rule.get(peers_key) or ():
        block = peer.get("ipBlock")
        ip_block = None
        if block is not None:
            try:
                for text in (block.get("cidr"), *(block.get("except") or ())):
                    ipaddress.ip_network(text, strict=False)
                ip_block = IPBlock(block["cidr"], tuple(block.get("except") or ()))
            except (TypeError, ValueError, KeyError):
                ip_block = _NEVER
        peers.append(Peer(peer.get("podSelector"), peer.get("namespaceSelector"), ip_block))
    return Rule(tuple(ports), tuple(peers))


def _node_addresses(obj: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for a in (obj.get("status") or {}).get("addresses") or ():
        addr = a.get("address")
        if addr and ip_key(addr) is not None and addr not in out:
            out.append(addr)
    return tuple(out)


class Cluster:
    """Namespaces, nodes, pods and (defaulted) policies, indexed for policy questions.

    Built from plain lists of Kubernetes dicts so it needs no store; ``from_snapshot``
    reads a registry ``Snapshot``.
    """

    def __init__(
        self,
        namespaces: Iterable[Mapping[str, Any]] = (),
        nodes: Iterable[Mapping[str, Any]] = (),
        pods: Iterable[Mapping[str, Any]] = (),
        policies: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        self.namespace_labels: dict[str, dict[str, str]] = {}
        for ns in namespaces:
            meta = ns.get("metadata") or {}
            name = meta.get("name", "")
            labels = dict(meta.get("labels") or {})
            labels[NAMESPACE_NAME_LABEL] = name  # R14
            self.namespace_labels[name] = labels
        self.node_ips: dict[str, tuple[str, ...]] = {}
        self.node_by_ip: dict[str, str] = {}
        for node in nodes:
            name = (node.get("metadata") or {}).get("name", "")
            self.node_ips[name] = _node_addresses(node)
            for ip in self.node_ips[name]:
                self.node_by_ip.setdefault(ip, name)
        all_pods = []
        for obj in pods:
            if ((obj.get("status") or {}).get("phase")) in ("Succeeded", "Failed"):
                continue
            all_pods.append(PodInfo.from_object(obj))
        all_pods.sort(key=lambda p: (p.namespace, p.name))
        # R28: a hostNetwork pod is its node; it is never selected and has no side.
        self.pods: tuple[PodInfo, ...] = tuple(p for p in all_pods if not p.host_network)
        self.pod_by_key = {p.key: p for p in self.pods}
        self.pod_by_ip: dict[str, PodInfo] = {}
        for p in self.pods:
            if p.ip and p.ip not in self.node_by_ip:
                self.pod_by_ip.setdefault(p.ip, p)
        self.pods_by_ns: dict[str, list[PodInfo]] = {}
        for p in self.pods:
            self.pods_by_ns.setdefault(p.namespace, []).append(p)
            self.namespace_labels.setdefault(p.namespace, {NAMESPACE_NAME_LABEL: p.namespace})
        self.policies: tuple[Policy, ...] = tuple(
            sorted((Policy.from_object(o) for o in policies), key=lambda p: (p.namespace, p.name))
        )
        self._selecting: dict[str, dict[str, list[Policy]]] = {INGRESS: {}, EGRESS: {}}
        for pol in self.policies:
            for pod in self.pods_by_ns.get(pol.namespace, ()):  # R1
                if selector_matches(pol.pod_selector, pod.labels):  # R2
                    for d in (INGRESS, EGRESS):
                        if d in pol.policy_types:  # R4
                            self._selecting[d].setdefault(pod.key, []).append(pol)
        self._peer_cache: dict[tuple[str, str], frozenset[str]] = {}

    @classmethod
    def from_snapshot(cls, snap: "SnapshotLike") -> "Cluster":
        return cls(snap.list("Namespace"), snap.list("Node"), snap.list("Pod"), snap.list("NetworkPolicy"))

    def ns_labels(self, namespace: str) -> Mapping[str, str]:
        return self.namespace_labels.get(namespace) or {NAMESPACE_NAME_LABEL: namespace}

    def selecting(self, pod: PodInfo, direction: str) -> list[Policy]:
        """Policies that isolate ``pod`` for ``direction`` (R1-R4), sorted by namespace/name."""
        return self._selecting[direction].get(pod.key, [])

    def node_name(self, pod: PodInfo) -> str | None:
        """The pod's node; a pod without ``spec.nodeName`` in a one-node cluster is on that node."""
        if pod.node:
            return pod.node
        return next(iter(self.node_ips)) if len(self.node_ips) == 1 else None

    def node_of(self, pod: PodInfo) -> tuple[str, ...]:
        """Addresses of the pod's node (R23 exempts traffic between them and the pod)."""
        return self.node_ips.get(self.node_name(pod) or "", ())

    def endpoint(self, text: str) -> "PodInfo | str":
        """``ns/name`` -> the pod; ``ip:A.B.C.D`` or a bare address -> that pod if one has
        it, else the address itself (a node's address stays an address: it is that node)."""
        if text.startswith("ip:"):
            text = text[3:]
        elif text in self.pod_by_key:
            return self.pod_by_key[text]
        elif "/" in text and ip_key(text) is None:
            raise KeyError(f"no pod {text}")
        return self.pod_by_ip.get(text, text)

    def peer_ips(self, policy_ns: str, peer: Peer) -> frozenset[str]:
        """IPs of the pods a selector peer selects (R9-R12), cached per (namespace, peer)."""
        key = (policy_ns, json.dumps([peer.pod_selector, peer.namespace_selector], sort_keys=True))
        hit = self._peer_cache.get(key)
        if hit is None:
            ips = []
            for ns, pods in self.pods_by_ns.items():
                if not _namespace_matches(self, peer, policy_ns, ns):
                    continue
                ips.extend(p.ip for p in pods if p.ip and selector_matches(peer.pod_selector, p.labels))
            hit = self._peer_cache[key] = frozenset(ips)
        return hit


class SnapshotLike(Protocol):
    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]: ...


def _namespace_matches(cluster: Cluster, peer: Peer, policy_ns: str, ns: str) -> bool:
    if peer.namespace_selector is None:
        return ns == policy_ns  # R9: a podSelector-only peer is the POLICY's namespace
    return selector_matches(peer.namespace_selector, cluster.ns_labels(ns))  # R10, R12


# ---------------------------------------------------------------------------
# The reference engine (R30)


@dataclass(frozen=True)
class SideVerdict:
    """One pod end: which policies isolate it, and the first (policy, rule) that allows."""

    pod: str
    direction: str
    isolated_by: tuple[str, ...]
    allowed_by: tuple[str, str] | None
    remote: str
    port: int
    protocol: str

    @property
    def allowed(self) -> bool:
        return not self.isolated_by or self.allowed_by is not None

    def describe(self) -> str:
        return describe_side(
            self.pod, self.direction, self.isolated_by, self.allowed_by, self.remote, self.port, self.protocol
        )


@dataclass(frozen=True)
class Verdict:
    src: str
    dst: str
    port: int
    protocol: str
    allowed: bool
    rules_allowed: bool  # plain rule evaluation, without the node/loopback exemptions
    exemption: str | None  # "loopback" | "node" | None
    egress: SideVerdict | None  # the source pod's side (None: the source is not a pod)
    ingress: SideVerdict | None  # the destination pod's side
    because: str


def _name(ep: PodInfo | str) -> str:
    return ep.key if isinstance(ep, PodInfo) else f"ip:{ep}"


def _ip(ep: PodInfo | str) -> str | None:
    return ep.ip if isinstance(ep, PodInfo) else ep


def evaluate(
    cluster: Cluster, src: PodInfo | str, dst: PodInfo | str, port: int, protocol: str
) -> Verdict:
    """Is a new connection src -> dst:port/protocol allowed, and why (R30).

    ``src``/``dst`` are pods, or strings resolved by ``Cluster.endpoint`` (``ns/name``,
    ``ip:A.B.C.D`` or a bare address; a pod's address is that pod). ``port`` is the
    destination pod's port (R22).
    """
    protocol = protocol.upper()
    if isinstance(src, str):
        src = cluster.endpoint(src)  # a pod's address is that pod
    if isinstance(dst, str):
        dst = cluster.endpoint(dst)
    s = src if isinstance(src, PodInfo) else None
    d = dst if isinstance(dst, PodInfo) else None
    egress = _side(cluster, s, EGRESS, dst, port, protocol, d) if s is not None else None
    ingress = _side(cluster, d, INGRESS, src, port, protocol, d) if d is not None else None
    rules_allowed = (egress is None or egress.allowed) and (ingress is None or ingress.allowed)
    exemption = None
    if s is not None and s is d:
        exemption, because = "loopback", describe_loopback(s.key)  # R24
    elif d is not None and _ip(src) is not None and _ip(src) in cluster.node_of(d):
        exemption, because = "node", describe_node(d.key, cluster.node_name(d) or "")  # R23
    elif s is not None and _ip(dst) is not None and _ip(dst) in cluster.node_of(s):
        exemption, because = "node", describe_node(s.key, cluster.node_name(s) or "")  # R23 (lab)
    elif s is None and d is None:
        because = describe_not_pods()
    else:
        because = "; ".join(v.describe() for v in (egress, ingress) if v is not None)
    return Verdict(
        src=_name(src),
        dst=_name(dst),
        port=port,
        protocol=protocol,
        allowed=exemption is not None or rules_allowed,
        rules_allowed=rules_allowed,
        exemption=exemption,
        egress=egress,
        ingress=ingress,
        because=because,
    )


def _side(
    cluster: Cluster,
    pod: PodInfo,
    direction: str,
    remote: PodInfo | str,
    port: int,
    protocol: str,
    dst_pod: PodInfo | None,
) -> SideVerdict:
    """R5: not isolated -> allowed; isolated -> the first policy rule that matches, if any."""
    policies = cluster.selecting(pod, direction)
    allowed_by = None
    peers_word = "from" if direction == INGRESS else "to"
    for pol in policies:
        for i, rule in enumerate(pol.rules(direction)):
            if rule.ports and not any(_port_matches(p, port, protocol, dst_pod) for p in rule.ports):
                continue  # R7: ports ANDed with peers; entries ORed
            if not rule.peers:
                allowed_by = (pol.key, f"{direction.lower()}[{i}]")
                break
            j = next(
                (j for j, peer in enumerate(rule.peers) if _peer_matches(cluster, peer, pol.namespace, remote)),
                None,
            )
            if j is not None:
                allowed_by = (pol.key, f"{direction.lower()}[{i}].{peers_word}[{j}]")
                break
        if allowed_by is not None:
            break
    return SideVerdict(
        pod=pod.key,
        direction=direction,
        isolated_by=tuple(p.key for p in policies),
        allowed_by=allowed_by,
        remote=_name(remote),
        port=port,
        protocol=protocol,
    )


def _port_matches(spec: PortSpec, port: int, protocol: str, dst_pod: PodInfo | None) -> bool:
    if spec.protocol != protocol:
        return False  # R18
    if spec.port is None:
        return True  # R19
    if isinstance(spec.port, int):
        return spec.port <= port <= (spec.end_port if spec.end_port is not None else spec.port)  # R20
    if dst_pod is None:
        return False  # R21: a named port never matches a non-pod destination
    return any(
        cp.name == spec.port and cp.protocol == protocol and cp.port == port for cp in dst_pod.ports
    )  # R21: resolved on the destination pod, with its protocol


def _peer_matches(cluster: Cluster, peer: Peer, policy_ns: str, remote: PodInfo | str) -> bool:
    if peer.ip_block is not None:
        ip = _ip(remote)
        return ip is not None and peer.ip_block.contains(ip_key(ip))  # R15, R16
    if not isinstance(remote, PodInfo):
        return False  # R12: selectors only ever match pods
    if not _namespace_matches(cluster, peer, policy_ns, remote.namespace):
        return False
    return selector_matches(peer.pod_selector, remote.labels)  # R11: ANDed within one peer


# ---------------------------------------------------------------------------
# The compiler: per-pod allow sets for the data planes


def compile_policy_table(snap: SnapshotLike) -> PolicyTable:
    """What ``desired_routes`` puts in ``RouteTable.policy``: one snapshot, compiled."""
    return build_policy_table(Cluster.from_snapshot(snap))


def build_policy_table(cluster: Cluster) -> PolicyTable:
    """Resolve selectors to pod IP sets and named ports to numbers, per pod and direction.

    ACLs are shared between pods that are selected by the same policies (and, for
    ingress with named ports, declare the same ports), so 1,000 pods under one
    namespace-wide policy cost one ACL.
    """
    compiler = _Compiler(cluster)
    pods: dict[str, PodRules] = {}
    for pod in cluster.pods:
        if not pod.ip or pod.ip in pods or pod.ip in cluster.node_by_ip:
            continue
        node_ips = cluster.node_of(pod)
        pods[pod.ip] = PodRules(
            pod=pod.key,
            node=cluster.node_name(pod),
            node_ips=node_ips,
            ingress=compiler.acl(pod, INGRESS),
            egress=compiler.acl(pod, EGRESS),
        )
    nodes = {ip: name for ip, name in cluster.node_by_ip.items()}
    return PolicyTable(pods=pods, nodes=nodes)


class _Compiler:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.acls: dict[tuple[Any, ...], Acl] = {}
        self.policy_parts: dict[tuple[Any, ...], tuple[list[tuple[str, str]], list[AclEntry]]] = {}
        self.sets: dict[frozenset[str], frozenset[str]] = {}
        self.addressable = [p for p in cluster.pods if p.ip and p.ip not in cluster.node_by_ip]

    def acl(self, pod: PodInfo, direction: str) -> Acl | None:
        policies = self.cluster.selecting(pod, direction)
        if not policies:
            return None
        named_here = direction == INGRESS and any(
            isinstance(p.port, str) for pol in policies for r in pol.ingress for p in r.ports
        )
        key = (direction, tuple(p.key for p in policies), pod.ports if named_here else None)
        acl = self.acls.get(key)
        if acl is None:
            grants: list[tuple[str, str]] = []
            entries: list[AclEntry] = []
            for pol in policies:
                g, e = self._policy(pol, direction, pod if named_here else None)
                off = len(grants)
                grants.extend(g)
                entries.extend(AclEntry(x.grant + off, x.peer, x.ports) for x in e)
            acl = self.acls[key] = Acl(
                isolated_by=tuple(p.key for p in policies), grants=tuple(grants), entries=tuple(entries)
            )
        return acl

    def _policy(
        self, pol: Policy, direction: str, pod: PodInfo | None
    ) -> tuple[list[tuple[str, str]], list[AclEntry]]:
        """Grants and entries of one policy's rules for one direction, with local grant ids."""
        key = (pol.key, direction, pod.ports if pod is not None else None)
        hit = self.policy_parts.get(key)
        if hit is not None:
            return hit
        word, peers_word = direction.lower(), ("from" if direction == INGRESS else "to")
        grants: list[tuple[str, str]] = []
        entries: list[AclEntry] = []
        for i, rule in enumerate(pol.rules(direction)):
            if rule.peers:
                peers = [
                    (f"{word}[{i}].{peers_word}[{j}]", self._peer(pol, peer)) for j, peer in enumerate(rule.peers)
                ]
            else:
                peers = [(f"{word}[{i}]", None)]
            for path, resolved in peers:
                g = len(grants)
                grants.append((pol.key, path))
                entries.extend(self._entries(g, resolved, rule.ports, direction, pod))
        hit = self.policy_parts[key] = (grants, entries)
        return hit

    def _peer(self, pol: Policy, peer: Peer) -> frozenset[str] | IPBlock:
        if peer.ip_block is not None:
            return peer.ip_block
        ips = self.cluster.peer_ips(pol.namespace, peer)
        return self.sets.setdefault(ips, ips)

    def _entries(
        self,
        grant: int,
        peer: frozenset[str] | IPBlock | None,
        ports: tuple[PortSpec, ...],
        direction: str,
        pod: PodInfo | None,
    ) -> list[AclEntry]:
        if not ports:
            return [AclEntry(grant, peer, None)]
        out = []
        numeric = tuple(
            (p.protocol, *(ALL_PORTS if p.port is None else (p.port, p.end_port if p.end_port is not None else p.port)))
            for p in ports
            if not isinstance(p.port, str)
        )
        if numeric:
            out.append(AclEntry(grant, peer, numeric))  # type: ignore[arg-type]
        named = [p for p in ports if isinstance(p.port, str)]
        if not named:
            return out
        if direction == INGRESS:
            # R21: the destination is the selected pod itself
            resolved = tuple(
                (cp.protocol, cp.port, cp.port)
                for p in named
                for cp in (pod.ports if pod is not None else ())
                if cp.name == p.port and cp.protocol == p.protocol
            )
            if resolved:
                out.append(AclEntry(grant, peer, resolved))
            return out
        # Egress: the destination is the peer pod; each may resolve the name differently,
        # and a non-pod destination never matches a named port.
        groups: dict[tuple[tuple[str, int, int], ...], list[str]] = {}
        for dst in self.addressable:
            ip = dst.ip
            assert ip is not None
            if peer is not None:
                if isinstance(peer, IPBlock):
                    if not peer.contains(ip_key(ip)):
                        continue
                elif ip not in peer:
                    continue
            resolved = tuple(
                sorted(
                    {
                        (cp.protocol, cp.port, cp.port)
                        for p in named
                        for cp in dst.ports
                        if cp.name == p.port and cp.protocol == p.protocol
                    }
                )
            )
            if resolved:
                groups.setdefault(resolved, []).append(ip)
        for resolved, ips in sorted(groups.items()):
            s = frozenset(ips)
            out.append(AclEntry(grant, self.sets.setdefault(s, s), resolved))
        return out
