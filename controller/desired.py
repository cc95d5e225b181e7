"""Desired DNS zone and proxy route table: pure functions of one registry snapshot.

Why pure: the data planes are level-triggered consumers; given the same snapshot these
functions return equal values (everything sorted), so the manager can compare and
publish only real changes, and tests can check them without sockets.

``desired_zone`` / ``desired_routes`` compute everything from the snapshot.
``DesiredCache`` gives the same results incrementally for the manager: each service's
contribution is memoised by the resourceVersions of the Service and its
EndpointSlices, and the pod list is updated only for pods named as changed, so one
endpoint flip in a 10,000-service cluster recomputes one service.

Inputs (kubernetes semantics):

* zone: every Service (ClusterIPs, headless, ExternalName, ports) with the endpoints
  of the EndpointSlices labelled ``kubernetes.io/service-name`` (controller-made or
  user-made, as for selector-less services), each with its ready flag, hostname and
  resolved ports; the primary address per family of every pod that is neither
  terminal nor terminating; the names of all Namespaces.
* routes: for each Service port (TCP/UDP) a frontend on every ClusterIP, on every node
  address for its NodePort (Node ``InternalIP``s, else ``config.node_ip``), on every
  LoadBalancer ingress IP and external IP; backends from the slices of the frontend's
  address family with their conditions and node. ``traffic_policy`` is
  internalTrafficPolicy on ClusterIPs and externalTrafficPolicy elsewhere;
  ``affinity_timeout`` is set for ``sessionAffinity: ClientIP``. When two services
  claim one frontend (overlapping externalIPs) the first by namespace/name wins.
"""

from __future__ import annotations

import bisect
import importlib
import itertools
import logging
from typing import Any, Callable, Iterable, Mapping

from kubelab.controller.config import LabConfig
from kubelab.controller.endpointslices import SERVICE_NAME_LABEL
from kubelab.dns import zone as z
from kubelab.proxy.policy import PolicyTable
from kubelab.proxy.table import Backend, Frontend, Route, RouteTable

log = logging.getLogger(__name__)

SvcKey = tuple[str, str]  # namespace, name
PROXY_PROTOCOLS = ("TCP", "UDP")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _family(ip: str) -> int:
    """4, 6, or 0 for something that is no address. Admission has validated pod IPs, so
    telling the families apart is all that is left; ``ipaddress`` here cost ~1 s of the
    rebuild after loading 50,000 pods."""
    if ":" in ip:
        return 6
    return 4 if ip.count(".") == 3 else 0


def _slice_family(es: Mapping[str, Any]) -> int:
    return {"IPv4": 4, "IPv6": 6}.get(es.get("addressType", ""), 0)


def group_slices(slices: Iterable[Mapping[str, Any]]) -> dict[SvcKey, list[Mapping[str, Any]]]:
    """EndpointSlices by the Service they belong to (label ``kubernetes.io/service-name``)."""
    out: dict[SvcKey, list[Mapping[str, Any]]] = {}
    for es in slices:
        meta = _meta(es)
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if svc:
            out.setdefault((meta.get("namespace") or "", svc), []).append(es)
    for lst in out.values():
        lst.sort(key=lambda s: _meta(s).get("name") or "")
    return out


# --------------------------------------------------------------------------- zone


def zone_service(svc: Mapping[str, Any], slices: Iterable[Mapping[str, Any]]) -> z.Service:
    """One Service as DNS sees it."""
    meta = _meta(svc)
    spec = svc.get("spec") or {}
    ns, name = meta.get("namespace") or "", meta.get("name") or ""
    ports = tuple(
        z.ServicePort(p.get("name", "") or "", int(p.get("port") or 0), p.get("protocol", "TCP"))
        for p in spec.get("ports") or ()
    )
    if spec.get("type") == "ExternalName":
        return z.Service(ns, name, external_name=spec.get("externalName"), ports=ports)
    headless = spec.get("clusterIP") == "None"
    ips = () if headless else tuple(ip for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []) if ip and ip != "None")
    endpoints: list[z.Endpoint] = []
    for es in slices:
        if es.get("addressType") not in ("IPv4", "IPv6"):
            continue
        eps_ports = tuple(
            z.ServicePort(p.get("name", "") or "", int(p.get("port") or 0), p.get("protocol", "TCP"))
            for p in es.get("ports") or ()
            if p.get("port")
        )
        for ep in es.get("endpoints") or ():
            cond = ep.get("conditions") or {}
            ready = cond.get("ready")
            ready = True if ready is None else bool(ready)  # nil means ready (API docs)
            ref = ep.get("targetRef") or {}
            pod = f"{ref.get('namespace') or ns}/{ref['name']}" if ref.get("name") else None
            for addr in ep.get("addresses") or ():
                endpoints.append(z.Endpoint(addr, ready, ep.get("hostname") or None, eps_ports, pod))
    endpoints.sort(key=lambda e: (e.address, e.pod or "", e.ports))
    return z.Service(ns, name, cluster_ips=ips, headless=headless, ports=ports, endpoints=tuple(endpoints))


def primary_pod_ips(pod: Mapping[str, Any]) -> tuple[str, ...]:
    """The pod's primary address of each family: ``status.podIP`` first, then the first
    entry of the other family in ``status.podIPs`` (dns-spec F2 publishes the primary
    podIP only; a dual-stack pod also gets its IPv6 label). Extra addresses of a family
    already covered (admission may accept them) are not published."""
    status = pod.get("status") or {}
    seen: dict[int, str] = {}
    candidates = [status.get("podIP")]
    candidates.extend(e.get("ip") if isinstance(e, dict) else e for e in status.get("podIPs") or ())
    for ip in candidates:
        if isinstance(ip, str) and ip:
            fam = _family(ip)
            if fam and fam not in seen:
                seen[fam] = ip
    return tuple(seen[f] for f in sorted(seen))


def zone_pods(pod: Mapping[str, Any]) -> tuple[z.Pod, ...]:
    """The pod's addresses for pod A/AAAA records (sorted by IP).

    None for terminal pods (Succeeded/Failed) and for terminating pods
    (``metadata.deletionTimestamp`` set): CoreDNS's ``object/pod.go`` drops those, so
    ``verified`` mode answers NXDOMAIN for them (dns-spec F2, case pod-terminating-nxdomain).
    """
    meta = _meta(pod)
    if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return ()
    ns, name = meta.get("namespace") or "", meta.get("name") or ""
    return tuple(z.Pod(ns, name, ip) for ip in sorted(primary_pod_ips(pod)))


def zone_namespaces(snap: Any) -> tuple[str, ...]:
    """Names of the Namespace objects, sorted: ``<ns>.svc``/``<ns>.pod`` exist for them
    (NODATA, not NXDOMAIN) even with no Service or Pod in them (dns-spec A8/F6, CoreDNS
    ``namespace.go``). A terminating namespace still exists until it is removed."""
    return tuple(sorted({_meta(n).get("name") or "" for n in snap.list("Namespace")} - {""}))


def desired_zone(snap: Any, config: LabConfig, generation: int) -> z.ZoneData:
    """The DNS zone for a snapshot (services keyed ``"ns/name"``, pods sorted by ns/name/ip)."""
    grouped = group_slices(snap.list("EndpointSlice"))
    services = {}
    for svc in snap.list("Service"):
        meta = _meta(svc)
        key = (meta.get("namespace") or "", meta.get("name") or "")
        s = zone_service(svc, grouped.get(key, ()))
        services[s.key] = s
    pods: list[z.Pod] = []
    for pod in snap.list("Pod"):
        pods.extend(zone_pods(pod))
    pods.sort(key=lambda p: (p.namespace, p.name, p.ip))
    return z.ZoneData(generation=generation, services=dict(sorted(services.items())), pods=tuple(pods),
                      namespaces=zone_namespaces(snap))


# --------------------------------------------------------------------------- routes


def node_addresses(snap: Any, config: LabConfig) -> tuple[str, ...]:
    """InternalIPs of the Node objects; ``config.node_ip`` when there is none."""
    ips: set[str] = set()
    for node in snap.list("Node"):
        for a in (node.get("status") or {}).get("addresses") or ():
            if a.get("type") == "InternalIP" and a.get("address"):
                ips.add(a["address"])
    return tuple(sorted(ips)) if ips else (config.node_ip,)


def _backends(slices: Iterable[Mapping[str, Any]], port_name: str, protocol: str, family: int) -> tuple[Backend, ...]:
    out = []
    for es in slices:
        if _slice_family(es) != family:
            continue
        number = None
        for p in es.get("ports") or ():
            if (p.get("name", "") or "") == port_name and p.get("protocol", "TCP") == protocol:
                number = p.get("port")
                break
        if not number:
            continue
        for ep in es.get("endpoints") or ():
            cond = ep.get("conditions") or {}
            ready = cond.get("ready")
            ready = True if ready is None else bool(ready)
            serving = cond.get("serving")
            serving = ready if serving is None else bool(serving)
            terminating = bool(cond.get("terminating"))
            ref = ep.get("targetRef") or {}
            pod = f"{ref.get('namespace') or _meta(es).get('namespace')}/{ref['name']}" if ref.get("name") else None
            for addr in ep.get("addresses") or ():
                out.append(Backend(addr, int(number), pod, ep.get("nodeName"), ready, serving, terminating))
    out.sort(key=lambda b: (b.ip, b.port, b.pod or ""))
    return tuple(out)


def service_routes(
    svc: Mapping[str, Any], slices: Iterable[Mapping[str, Any]], node_ips: Iterable[str]
) -> dict[Frontend, Route]:
    """Every frontend one Service opens, with its backends."""
    spec = svc.get("spec") or {}
    stype = spec.get("type", "ClusterIP")
    if stype == "ExternalName":
        return {}
    slices = list(slices)
    meta = _meta(svc)
    key = f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"
    affinity = None
    if spec.get("sessionAffinity") == "ClientIP":
        affinity = int(((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds") or 10800)
    itp = spec.get("internalTrafficPolicy") or "Cluster"
    etp = spec.get("externalTrafficPolicy") or "Cluster"
    cluster_ips = [ip for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []) if ip and ip != "None"]
    lb_ips = [i["ip"] for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or () if i.get("ip")]
    ext_ips = list(spec.get("externalIPs") or ())
    node_ips = list(node_ips)
    routes: dict[Frontend, Route] = {}
    cache: dict[tuple[str, str, int], tuple[Backend, ...]] = {}

    def backends(port_name: str, proto: str, ip: str) -> tuple[Backend, ...]:
        fam = _family(ip)
        k = (port_name, proto, fam)
        if k not in cache:
            cache[k] = _backends(slices, port_name, proto, fam)
        return cache[k]

    for p in spec.get("ports") or ():
        proto = p.get("protocol", "TCP")
        if proto not in PROXY_PROTOCOLS or not p.get("port"):
            continue
        pname = p.get("name", "") or ""
        port = int(p["port"])
        for ip in cluster_ips:
            routes[Frontend(ip, port, proto)] = Route(key, pname, "ClusterIP", backends(pname, proto, ip), affinity, itp)
        if stype in ("NodePort", "LoadBalancer") and p.get("nodePort"):
            for ip in node_ips:
                routes.setdefault(
                    Frontend(ip, int(p["nodePort"]), proto),
                    Route(key, pname, "NodePort", backends(pname, proto, ip), affinity, etp),
                )
        if stype == "LoadBalancer":
            for ip in lb_ips:
                routes.setdefault(
                    Frontend(ip, port, proto), Route(key, pname, "LoadBalancer", backends(pname, proto, ip), affinity, etp)
                )
        for ip in ext_ips:
            routes.setdefault(
                Frontend(ip, port, proto), Route(key, pname, "ExternalIP", backends(pname, proto, ip), affinity, etp)
            )
    return routes


def policy_table(snap: Any) -> PolicyTable:
    """The NetworkPolicy engineer's compiled table, or allow-all when that part is absent."""
    try:
        mod = importlib.import_module("kubelab.controller.netpol")
    except ModuleNotFoundError as exc:
        if exc.name != "kubelab.controller.netpol":
            raise
        return PolicyTable()
    fn: Callable[[Any], PolicyTable] | None = getattr(mod, "compile_policy_table", None)
    return fn(snap) if fn is not None else PolicyTable()


def _merge_routes(per_service: Iterable[dict[Frontend, Route]]) -> dict[Frontend, Route]:
    merged: dict[Frontend, Route] = {}
    for routes in per_service:  # in service order: the first claim of a frontend wins
        for f, r in routes.items():
            if f not in merged:
                merged[f] = r
    return dict(sorted(merged.items()))


def desired_routes(snap: Any, config: LabConfig, generation: int) -> RouteTable:
    """The proxy's route table for a snapshot (frontends sorted)."""
    grouped = group_slices(snap.list("EndpointSlice"))
    nodes = node_addresses(snap, config)
    per_service = []
    for svc in snap.list("Service"):
        meta = _meta(svc)
        key = (meta.get("namespace") or "", meta.get("name") or "")
        per_service.append(service_routes(svc, grouped.get(key, ()), nodes))
    return RouteTable(generation=generation, routes=_merge_routes(per_service), policy=policy_table(snap))


# --------------------------------------------------------------------------- incremental


def _rv(obj: Mapping[str, Any] | None) -> Any:
    if obj is None:
        return None
    rv = _meta(obj).get("resourceVersion")
    return rv if rv is not None else id(obj)


class DesiredCache:
    """Incremental ``desired_zone``/``desired_routes`` with identical results.

    The caller names what may have changed since the last ``update`` (``mark_*``, from
    watch events); ``reset()`` means "anything": a full pass. Per-service results are
    memoised by ``(service rv, slice rvs)``, so even a full pass re-derives only the
    services whose objects changed, and a pod readiness flip costs one service.
    """

    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget what changed: the next ``update`` re-reads the whole snapshot."""
        self._full = True
        self._dirty_services: set[SvcKey] = set()
        self._dirty_slices: set[SvcKey] = set()
        self._dirty_pods: set[SvcKey] = set()
        self._nodes_dirty = True
        if not hasattr(self, "_memo_zone"):
            self._memo_zone: dict[SvcKey, tuple[Any, z.Service]] = {}
            self._memo_routes: dict[SvcKey, tuple[Any, dict[Frontend, Route]]] = {}
            self._slices_by_svc: dict[SvcKey, dict[str, Mapping[str, Any]]] = {}
            self._slice_owner: dict[SvcKey, SvcKey] = {}  # (ns, slice name) -> service key
            self._services: dict[str, z.Service] = {}
            self._pods: dict[SvcKey, tuple[z.Pod, ...]] = {}  # entries sorted by ip (zone_pods)
            self._pod_keys: list[SvcKey] = []  # sorted keys of _pods
            self._pods_tuple: tuple[z.Pod, ...] = ()
            self._routes: dict[SvcKey, dict[Frontend, Route]] = {}
            self._claims: dict[Frontend, int] = {}
            self._merged: dict[Frontend, Route] = {}
            self._nodes: tuple[str, ...] = ()
            self._namespaces: tuple[str, ...] = ()

    # -- change notes (cheap; called per watch event) --

    def mark_service(self, namespace: str, name: str) -> None:
        self._dirty_services.add((namespace, name))

    def mark_slice(self, namespace: str, name: str) -> None:
        self._dirty_slices.add((namespace, name))

    def mark_pod(self, namespace: str, name: str) -> None:
        self._dirty_pods.add((namespace, name))

    def mark_nodes(self) -> None:
        self._nodes_dirty = True

    # -- compute --

    def update(self, snap: Any) -> tuple[bool, bool]:
        """Bring the cache up to ``snap``; returns (zone changed, routes changed)."""
        zone_changed = routes_changed = False
        full = self._full
        if self._nodes_dirty or full:
            nodes = node_addresses(snap, self.config)
            if nodes != self._nodes:
                self._nodes = nodes
                self._memo_routes.clear()
                full = True
        if full:
            self._slices_by_svc = {}
            self._slice_owner = {}
            for es in snap.list("EndpointSlice"):
                self._index_slice(es)
            dirty = {(_meta(s).get("namespace") or "", _meta(s).get("name") or "") for s in snap.list("Service")}
            dirty |= set(self._routes) | {tuple(k.split("/", 1)) for k in self._services}  # type: ignore[misc]
            pods: dict[SvcKey, tuple[z.Pod, ...]] = {}
            for pod in snap.list("Pod"):
                entry = zone_pods(pod)
                if entry:
                    m = _meta(pod)
                    pods[(m.get("namespace") or "", m.get("name") or "")] = entry
            if pods != self._pods:
                self._pods = pods
                self._pod_keys = sorted(pods)
                self._pods_tuple = self._flat_pods()
                zone_changed = True
        else:
            dirty = set(self._dirty_services)
            for key in self._dirty_slices:
                owner = self._slice_owner.pop(key, None)
                if owner is not None:
                    self._slices_by_svc.get(owner, {}).pop(key[1], None)
                    dirty.add(owner)
                es = snap.get("EndpointSlice", *key)
                if es is not None:
                    owner = self._index_slice(es)
                    if owner is not None:
                        dirty.add(owner)
            pods_changed = False
            keys = self._pod_keys
            bulk = len(self._dirty_pods) > 256  # many changes: one sort beats many insertions
            for key in self._dirty_pods:
                pod = snap.get("Pod", *key)
                entry = zone_pods(pod) if pod is not None else ()
                before = self._pods.get(key, ())
                if before != entry:
                    pods_changed = True
                    if entry:
                        if not before and not bulk:
                            bisect.insort(keys, key)
                        self._pods[key] = entry
                    else:
                        del self._pods[key]
                        if not bulk:
                            del keys[bisect.bisect_left(keys, key)]
            if pods_changed and bulk:
                self._pod_keys = sorted(self._pods)
            if pods_changed:
                self._pods_tuple = self._flat_pods()
                zone_changed = True
        # Namespaces are few and the manager does not name them as changed: re-read them
        # on every update (a sorted list of ~100 names), so adding or removing an empty
        # namespace flips <ns>.svc between NODATA and NXDOMAIN.
        namespaces = zone_namespaces(snap)
        if namespaces != self._namespaces:
            self._namespaces = namespaces
            zone_changed = True
        self._full = False
        self._nodes_dirty = False
        self._dirty_services, self._dirty_slices, self._dirty_pods = set(), set(), set()
        remerge = False
        for key in dirty:
            svc = snap.get("Service", *key)
            skey = f"{key[0]}/{key[1]}"
            if svc is None:
                self._memo_zone.pop(key, None)
                self._memo_routes.pop(key, None)
                if self._services.pop(skey, None) is not None:
                    zone_changed = True
                old = self._routes.pop(key, None)
                if old:
                    remerge |= self._unclaim(key, old)
                    routes_changed = True
                continue
            slices = sorted(self._slices_by_svc.get(key, {}).values(), key=lambda s: _meta(s).get("name") or "")
            memo_key = (_rv(svc), tuple((_meta(s).get("name"), _rv(s)) for s in slices))
            zm = self._memo_zone.get(key)
            if zm is None or zm[0] != memo_key:
                zs = zone_service(svc, slices)
                self._memo_zone[key] = (memo_key, zs)
                if self._services.get(skey) != zs:
                    self._services[skey] = zs
                    zone_changed = True
            rm = self._memo_routes.get(key)
            if rm is None or rm[0] != memo_key:
                rs = service_routes(svc, slices, self._nodes)
                self._memo_routes[key] = (memo_key, rs)
                old = self._routes.get(key)
                if old != rs:
                    if old:
                        remerge |= self._unclaim(key, old)
                    if rs:
                        self._routes[key] = rs
                        remerge |= self._claim(key, rs)
                    else:
                        self._routes.pop(key, None)
                    routes_changed = True
        if remerge:
            self._merged = _merge_routes(self._routes[k] for k in sorted(self._routes))
        return zone_changed, routes_changed

    def _claim(self, key: SvcKey, routes: dict[Frontend, Route]) -> bool:
        """Add a service's frontends; True when a frontend is contested (full re-merge)."""
        contested = False
        for f, r in routes.items():
            n = self._claims.get(f, 0)
            self._claims[f] = n + 1
            if n:
                contested = True
            else:
                self._merged[f] = r
        return contested

    def _unclaim(self, key: SvcKey, routes: dict[Frontend, Route]) -> bool:
        contested = False
        for f in routes:
            n = self._claims.get(f, 0) - 1
            if n > 0:
                self._claims[f] = n
                contested = True
            else:
                self._claims.pop(f, None)
                self._merged.pop(f, None)
        return contested

    def _index_slice(self, es: Mapping[str, Any]) -> SvcKey | None:
        meta = _meta(es)
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not svc:
            return None
        ns, name = meta.get("namespace") or "", meta.get("name") or ""
        owner = (ns, svc)
        self._slices_by_svc.setdefault(owner, {})[name] = es
        self._slice_owner[(ns, name)] = owner
        return owner

    def _flat_pods(self) -> tuple[z.Pod, ...]:
        pods = self._pods
        return tuple(itertools.chain.from_iterable(pods[k] for k in self._pod_keys))

    def zone(self, generation: int) -> z.ZoneData:
        return z.ZoneData(generation=generation, services=dict(self._services), pods=self._pods_tuple,
                          namespaces=self._namespaces)

    def routes(self, generation: int, policy: PolicyTable) -> RouteTable:
        return RouteTable(generation=generation, routes=dict(self._merged), policy=policy)
