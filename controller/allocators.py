"""ClusterIP, NodePort and LoadBalancer-IP allocation, done at admission.

Why here and like this: the registry calls admission inside its write lock, so an
allocation decided against the current snapshot cannot race another write. What is in
use is *derived* from the stored Services (deleting a Service frees its addresses with
no bookkeeping); an index (address -> owning Service) keeps each decision O(1) at
10,000 services. An index entry is trusted only after checking the owner in the
snapshot still holds that address, so failed batches and deletions never leak.

Kubernetes rules followed (kube-apiserver ``pkg/registry/core/service``):

* ClusterIPs: network and broadcast addresses are never handed out; the low
  ``min(max(16, size/16), 256)`` addresses are the *static band*, preferred by nobody
  and used by dynamic allocation only when the rest is full, so users can pick
  well-known addresses there (KEP-3070). Dynamic picks here go round-robin from the
  last one (Kubernetes picks randomly; sequential keeps the lab deterministic and
  avoids re-using a just-freed address that clients may still cache).
* NodePorts: the same split with ``min(max(16, size/32), 128)`` (KEP-3668); ports of one
  Service with the same number and different protocols share a NodePort.
* LoadBalancer addresses: MetalLB style, the lowest free address of the pool (network
  and broadcast skipped), a requested ``spec.loadBalancerIP`` or
  ``metallb.universe.tf/loadBalancerIPs`` annotation honoured when free. As with
  MetalLB, an unsatisfiable request leaves the Service pending (no ingress) instead of
  refusing it.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Callable, Hashable, Mapping

from kubelab.controller.config import IPNetwork, LabConfig
from kubelab.controller.validation import FieldError, invalid

log = logging.getLogger(__name__)

LB_IP_ANNOTATIONS = ("metallb.universe.tf/loadBalancerIPs", "metallb.io/loadBalancerIPs")
MAX_RANGE = 1 << 20  # like the apiserver's bitmap, large (IPv6) ranges use their first 2^20 addresses
FAMILY = {4: "IPv4", 6: "IPv6"}

Owner = tuple[str, str]  # namespace, name


def static_band(size: int, lo: int, hi: int, step: int) -> int:
    """calculateRangeOffset: how many addresses at the low end are reserved for static picks."""
    if size <= lo:
        return 0
    return max(lo, min(size // step, hi))


def service_cluster_ips(svc: Mapping[str, Any] | None) -> list[str]:
    if not svc:
        return []
    spec = svc.get("spec") or {}
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [ip for ip in ips if ip and ip != "None"]


def service_node_ports(svc: Mapping[str, Any] | None) -> list[int]:
    if not svc:
        return []
    return [p["nodePort"] for p in (svc.get("spec") or {}).get("ports") or () if p.get("nodePort")]


def service_lb_ips(svc: Mapping[str, Any] | None) -> list[str]:
    if not svc:
        return []
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
    return [i["ip"] for i in ingress if i.get("ip")]


class _Index:
    """key -> (owner, snapshot rv when assigned), verified against the snapshot on use."""

    def __init__(self, held_by: Callable[[Mapping[str, Any] | None], list]) -> None:
        self.held_by = held_by
        self.owners: dict[Hashable, tuple[Owner, int]] = {}

    def add(self, key: Hashable, owner: Owner, rv: int) -> None:
        self.owners[key] = (owner, rv)

    def in_use(self, key: Hashable, snap: Any, me: Owner) -> bool:
        """Whether ``key`` is held by a Service other than ``me``."""
        entry = self.owners.get(key)
        if entry is None:
            return False
        owner, rv = entry
        if owner == me:
            return False
        holder = snap.get("Service", owner[0], owner[1])
        if holder is not None and key in self.held_by(holder):
            return True
        if holder is None and rv >= snap.resource_version:
            # assigned earlier in a batch not yet visible in this snapshot: still taken
            return True
        del self.owners[key]  # stale: deleted, changed, or its batch failed
        return False


class _IPRange:
    """One service CIDR: offsets 1..size-2 of the network (skipping network/broadcast)."""

    def __init__(self, net: IPNetwork) -> None:
        self.net = net
        self.base = int(net.network_address)
        self.size = min(net.num_addresses, MAX_RANGE)
        self.max = max(0, self.size - 2)  # usable addresses
        self.static = static_band(self.size, 16, 256, 16)
        self.cursor = self.static
        self.version = net.version

    def contains(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        if addr.version != self.version or addr not in self.net:
            return False
        off = int(addr) - self.base
        return 1 <= off <= self.max

    def ip_at(self, offset: int) -> str:
        return str(ipaddress.ip_address(self.base + 1 + offset))

    def scan(self) -> list[range]:
        """Offsets (0-based among usable) in allocation order: dynamic from the cursor, then the static band."""
        dyn_start = min(self.static, self.max)
        cur = self.cursor if dyn_start <= self.cursor < self.max else dyn_start
        return [range(cur, self.max), range(dyn_start, cur), range(0, dyn_start)]


class ServiceAllocator:
    """Allocates and checks a Service's ClusterIPs, NodePorts and LoadBalancer address."""

    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.ranges = {net.version: _IPRange(net) for net in config.service_cidrs}
        self.primary = config.service_cidrs[0].version
        self.np_lo, self.np_hi = config.node_port_range
        np_size = self.np_hi - self.np_lo + 1
        self.np_static = static_band(np_size, 16, 128, 32)
        self.np_cursor = self.np_lo + self.np_static
        pool = config.lb_pool
        self.lb_pool = pool
        self.ips = _Index(lambda s: [_norm_ip(ip) for ip in service_cluster_ips(s)])
        self.ports = _Index(service_node_ports)
        self.lbs = _Index(lambda s: [_norm_ip(ip) for ip in service_lb_ips(s)])
        self._built_rv: int | None = None

    # -- index ---------------------------------------------------------------------------

    def _ensure(self, snap: Any) -> None:
        rv = snap.resource_version
        if self._built_rv is not None and rv >= self._built_rv:
            return
        self.ips.owners.clear()
        self.ports.owners.clear()
        self.lbs.owners.clear()
        for svc in snap.list("Service"):
            self._record(svc, rv)
        self._built_rv = rv

    def _record(self, svc: Mapping[str, Any], rv: int) -> None:
        meta = svc.get("metadata") or {}
        owner = (meta.get("namespace") or "", meta.get("name") or "")
        for ip in service_cluster_ips(svc):
            self.ips.add(_norm_ip(ip), owner, rv)
        for port in service_node_ports(svc):
            self.ports.add(port, owner, rv)
        for ip in service_lb_ips(svc):
            self.lbs.add(_norm_ip(ip), owner, rv)

    # -- entry point ---------------------------------------------------------------------

    def allocate(self, svc: dict[str, Any], old: Mapping[str, Any] | None, snap: Any) -> list[FieldError]:
        """Fill in clusterIP(s), ipFamilies, nodePorts and LB ingress of a defaulted Service."""
        self._ensure(snap)
        meta = svc.get("metadata") or {}
        me = (meta.get("namespace") or "", meta.get("name") or "")
        spec = svc["spec"]
        errs = self._cluster_ips(spec, old, snap, me)
        if errs:
            return errs
        errs = self._node_ports(spec, old, snap, me)
        if errs:
            return errs
        self._lb(svc, old, snap, me)
        self._record(svc, snap.resource_version)
        return []

    # -- ClusterIP -----------------------------------------------------------------------

    def _families(self, spec: dict[str, Any], errs: list[FieldError]) -> list[str]:
        """Defaults ipFamilyPolicy and ipFamilies like the apiserver's initIPFamilyFields."""
        configured = [FAMILY[net.version] for net in self.config.service_cidrs]
        ips = [ip for ip in spec.get("clusterIPs") or () if ip not in ("", "None")]
        fams = list(spec.get("ipFamilies") or [])
        if not fams:
            for ip in ips:
                try:
                    fams.append(FAMILY[ipaddress.ip_address(ip).version])
                except ValueError:
                    pass
        policy = spec.get("ipFamilyPolicy")
        if policy is None:
            policy = "RequireDualStack" if len(fams) == 2 or len(ips) == 2 else "SingleStack"
        spec["ipFamilyPolicy"] = policy
        if policy == "RequireDualStack" and len(configured) < 2:
            errs.append(invalid("spec.ipFamilyPolicy", policy, "this cluster is not configured for dual-stack services"))
            return []
        for i, fam in enumerate(fams):
            if fam not in configured:
                errs.append(invalid(f"spec.ipFamilies[{i}]", fam, "not configured on this cluster"))
        if errs:
            return []
        if not fams:
            fams = [configured[0]]
        if policy in ("RequireDualStack", "PreferDualStack") and len(configured) == 2 and len(fams) == 1:
            fams.append(next(f for f in configured if f != fams[0]))
        if policy == "SingleStack" and len(fams) > 1:
            errs.append(invalid("spec.ipFamilies", fams, "when spec.ipFamilyPolicy is SingleStack, only one family may be set"))
            return []
        spec["ipFamilies"] = fams
        return fams

    def _cluster_ips(self, spec: dict[str, Any], old: Mapping[str, Any] | None, snap: Any, me: Owner) -> list[FieldError]:
        if spec.get("type") == "ExternalName":
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(key, None)
            return []
        old_spec = (old or {}).get("spec") or {}
        old_is_ext = old_spec.get("type") == "ExternalName"
        # An update that omits allocated values keeps them (the apiserver's
        # PatchAllocatedValues): clusterIPs, and with them the families and policy.
        if old is not None and not old_is_ext and old_spec.get("clusterIPs"):
            old_ips = list(old_spec["clusterIPs"])
            keep = False
            if not spec.get("clusterIP") and not spec.get("clusterIPs"):
                spec["clusterIPs"] = old_ips
                keep = True
            elif not spec.get("clusterIPs") and spec.get("clusterIP") == old_ips[0]:
                spec["clusterIPs"] = old_ips
                keep = True
            elif spec.get("clusterIPs") == old_ips:
                keep = True
            if keep:
                if not spec.get("ipFamilies") and old_spec.get("ipFamilies"):
                    spec["ipFamilies"] = list(old_spec["ipFamilies"])
                if not spec.get("ipFamilyPolicy") and old_spec.get("ipFamilyPolicy"):
                    spec["ipFamilyPolicy"] = old_spec["ipFamilyPolicy"]
        if spec.get("clusterIP") and not spec.get("clusterIPs"):
            spec["clusterIPs"] = [spec["clusterIP"]]
        requested = [ip for ip in spec.get("clusterIPs") or () if ip != ""]
        errs: list[FieldError] = []
        if requested and requested[0] == "None":
            fams = self._families(spec, errs)
            if errs:
                return errs
            spec["clusterIP"] = "None"
            spec["clusterIPs"] = ["None"]
            return []
        fams = self._families(spec, errs)
        if errs:
            return errs
        old_ips = set(service_cluster_ips(old)) if not old_is_ext else set()
        # requested addresses must match the families in order
        for i, ip in enumerate(requested):
            fam = FAMILY[ipaddress.ip_address(ip).version]
            if i >= len(fams) or fams[i] != fam:
                return [invalid(f"spec.clusterIPs[{i}]", ip, f"expected an IP from family {fams[i] if i < len(fams) else fams[-1]}")]
        result: list[str] = []
        for i, fam in enumerate(fams):
            rng = self.ranges[4 if fam == "IPv4" else 6]
            if i < len(requested):
                ip = requested[i]
                if ip in old_ips:
                    result.append(ip)
                    continue
                if not rng.contains(ip):
                    return [invalid("spec.clusterIPs", requested,
                                    f"failed to allocate IP {ip}: provided IP is not in the valid range. "
                                    f"The range of valid IPs is {rng.net}")]
                if self.ips.in_use(_norm_ip(ip), snap, me):
                    return [invalid("spec.clusterIPs", requested,
                                    f"failed to allocate IP {ip}: provided IP is already allocated")]
                result.append(ip)
                continue
            ip = self._next_ip(rng, snap, me)
            if ip is None:
                return [FieldError("spec.clusterIPs", "InternalError", detail="failed to allocate a serviceIP: range is full")]
            result.append(ip)
        spec["clusterIPs"] = result
        spec["clusterIP"] = result[0]
        return []

    def _next_ip(self, rng: _IPRange, snap: Any, me: Owner) -> str | None:
        for span in rng.scan():
            for off in span:
                ip = rng.ip_at(off)
                if not self.ips.in_use(ip, snap, me):
                    if off >= rng.static:
                        rng.cursor = off + 1
                    return ip
        return None

    # -- NodePort ------------------------------------------------------------------------

    def _node_ports(self, spec: dict[str, Any], old: Mapping[str, Any] | None, snap: Any, me: Owner) -> list[FieldError]:
        ports = spec.get("ports") or []
        needs = spec.get("type") == "NodePort" or (
            spec.get("type") == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True)
        )
        if not needs:
            if spec.get("type") != "LoadBalancer":
                for p in ports:
                    p.pop("nodePort", None)
            return []
        old_ports = ((old or {}).get("spec") or {}).get("ports") or ()
        previous: dict[tuple[Any, Any], int] = {}
        for p in old_ports:
            if p.get("nodePort"):
                previous[(p.get("port"), p.get("protocol", "TCP"))] = p["nodePort"]
                previous.setdefault((p.get("name"), None), p["nodePort"])
        old_set = set(service_node_ports(old))
        by_number: dict[int, int] = {}  # service port number -> node port (shared across protocols)
        used_here: set[tuple[int, str]] = set()
        for i, p in enumerate(ports):
            np = p.get("nodePort")
            proto = p.get("protocol", "TCP")
            if np:
                if (np, proto) in used_here:
                    return [FieldError(f"spec.ports[{i}].nodePort", "FieldValueDuplicate", np)]
                if np not in old_set and np not in by_number.values():
                    if not self.np_lo <= np <= self.np_hi:
                        return [invalid(f"spec.ports[{i}].nodePort", np,
                                        "provided port is not in the valid range. The range of valid ports is "
                                        f"{self.np_lo}-{self.np_hi}")]
                    if self.ports.in_use(np, snap, me):
                        return [invalid(f"spec.ports[{i}].nodePort", np, "provided port is already allocated")]
                used_here.add((np, proto))
                by_number.setdefault(p.get("port"), np)
        for i, p in enumerate(ports):
            if p.get("nodePort"):
                continue
            proto = p.get("protocol", "TCP")
            np = previous.get((p.get("port"), proto)) or previous.get((p.get("name"), None))
            if np and (np, proto) not in used_here:
                p["nodePort"] = np
            elif p.get("port") in by_number and (by_number[p["port"]], proto) not in used_here:
                p["nodePort"] = by_number[p["port"]]
            else:
                taken = {n for n, _ in used_here}
                np = self._next_port(snap, me, taken)
                if np is None:
                    return [FieldError(f"spec.ports[{i}].nodePort", "InternalError",
                                       detail="failed to allocate a nodePort: range is full")]
                p["nodePort"] = np
            used_here.add((p["nodePort"], proto))
            by_number.setdefault(p.get("port"), p["nodePort"])
        return []

    def _next_port(self, snap: Any, me: Owner, taken: set[int]) -> int | None:
        dyn = self.np_lo + self.np_static
        cur = self.np_cursor if dyn <= self.np_cursor <= self.np_hi else dyn
        for span in (range(cur, self.np_hi + 1), range(dyn, cur), range(self.np_lo, dyn)):
            for port in span:
                if port not in taken and not self.ports.in_use(port, snap, me):
                    if port >= dyn:
                        self.np_cursor = port + 1
                    return port
        return None

    # -- LoadBalancer --------------------------------------------------------------------

    def _lb(self, svc: dict[str, Any], old: Mapping[str, Any] | None, snap: Any, me: Owner) -> None:
        spec = svc["spec"]
        status = svc.setdefault("status", {})
        if spec.get("type") != "LoadBalancer":
            status["loadBalancer"] = {}
            return
        ann = (svc.get("metadata") or {}).get("annotations") or {}
        wanted = spec.get("loadBalancerIP") or next((ann[a] for a in LB_IP_ANNOTATIONS if ann.get(a)), None)
        if isinstance(wanted, str) and "," in wanted:
            wanted = wanted.split(",")[0].strip()
        current = service_lb_ips(old) if old is not None and (old.get("spec") or {}).get("type") == "LoadBalancer" else []
        ip: str | None = None
        if wanted:
            if wanted in current or (self._in_pool(wanted) and not self.lbs.in_use(_norm_ip(wanted), snap, me)):
                ip = wanted
            else:
                log.warning("service %s/%s: requested LoadBalancer IP %s is not free in pool %s; pending",
                            me[0], me[1], wanted, self.lb_pool)
        elif current and self._in_pool(current[0]):
            ip = current[0]
        else:
            ip = self._next_lb(snap, me)
            if ip is None:
                log.warning("service %s/%s: LoadBalancer pool %s is exhausted; pending", me[0], me[1], self.lb_pool)
        status["loadBalancer"] = {"ingress": [{"ip": ip, "ipMode": "VIP"}]} if ip else {}

    def _in_pool(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        pool = self.lb_pool
        if addr.version != pool.version or addr not in pool:
            return False
        if pool.num_addresses > 2 and addr in (pool.network_address, pool.broadcast_address):
            return False
        return True

    def _next_lb(self, snap: Any, me: Owner) -> str | None:
        pool = self.lb_pool
        hosts = pool.hosts() if pool.num_addresses > 2 else iter(pool)
        for n, addr in enumerate(hosts):
            if n >= MAX_RANGE:
                break
            ip = str(addr)
            if not self.lbs.in_use(ip, snap, me):
                return ip
        return None


def _norm_ip(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip
