"""EndpointSlices for a Service: a pure function of the Service and its namespace's Pods.

Why pure: the EndpointSlice controller (``manager``) only decides *which* services to
recompute and writes the differences; what a slice contains is decided here and is
table-tested against ``cluster.endpointSlices`` of the DNS conformance suite.

Rules (kubernetes ``pkg/controller/endpointslice`` and ``endpointslice/util``):

* A Service with no selector (nil or empty) gets no managed slices ("selectors match
  nothing, not everything"); neither does an ExternalName Service.
* Per pod: ``serving = podReady``, ``terminating = deletionTimestamp set``,
  ``ready = publishNotReadyAddresses or (podReady and not terminating)``. Pods without
  an IP of the slice's family, and pods in a terminal phase, are left out.
* ``hostname`` only when ``spec.hostname`` is set and ``spec.subdomain`` names the
  Service (same namespace).
* Ports come from the Service port (name, protocol); the number from ``FindPort``: an
  integer targetPort as is, a named one looked up among the pod's container ports
  with the same protocol. A pod without a match is left out of that port, so pods
  with different resolved port sets go to different slices (one slice per address
  family and distinct port set, as Kubernetes does).
* A selector that matches nothing still gets one empty placeholder slice per family.

Slices hold at most 100 endpoints, as with the controller's default
``--max-endpoints-per-slice``. Where the lab differs: names are deterministic
(``<service>-ipv4``, ``-<hash>`` for additional port sets, ``-2``, ``-3``... for
further chunks) instead of ``generateName`` suffixes, so the same cluster always
yields the same objects; and chunks are filled in pod-name order instead of
Kubernetes' churn-minimising packing, so adding or removing a pod can rewrite the
chunks after it (a readiness flip rewrites only its own slice).
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any, Iterable, Mapping

from kubelab.controller.validation import selector_matches

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "lab-controller"
API_VERSION = "discovery.k8s.io/v1"

PortKey = tuple[tuple[str, int, str], ...]  # (name, port, protocol) per resolved service port


def service_selects(svc: Mapping[str, Any]) -> bool:
    spec = svc.get("spec") or {}
    return bool(spec.get("selector")) and spec.get("type") != "ExternalName"


def service_families(svc: Mapping[str, Any]) -> list[str]:
    spec = svc.get("spec") or {}
    fams = list(spec.get("ipFamilies") or ())
    if not fams:
        for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []):
            try:
                fams.append("IPv4" if ipaddress.ip_address(ip).version == 4 else "IPv6")
            except ValueError:
                pass
    return fams or ["IPv4"]


def pod_ready(pod: Mapping[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def pod_ips(pod: Mapping[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    ips = [e.get("ip") if isinstance(e, dict) else e for e in status.get("podIPs") or ()]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return [ip for ip in ips if ip]


def pod_ip_for(pod: Mapping[str, Any], family: str) -> str | None:
    """The pod's address of ``family`` (admission validated them: ':' means IPv6)."""
    v6 = family == "IPv6"
    for ip in pod_ips(pod):
        if isinstance(ip, str) and (":" in ip) == v6:
            return ip
    return None


def find_port(pod: Mapping[str, Any], target: Any, protocol: str) -> int | None:
    """FindPort: an int targetPort as is; a named one from the pod's ports of that protocol."""
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    if isinstance(target, str):
        if target.isdigit():
            return int(target)
        spec = pod.get("spec") or {}
        containers = list(spec.get("containers") or ())
        containers += [c for c in spec.get("initContainers") or () if c.get("restartPolicy") == "Always"]
        for c in containers:
            for p in c.get("ports") or ():
                if p.get("name") == target and p.get("protocol", "TCP") == protocol:
                    return p.get("containerPort")
    return None


def endpoint_ports(svc: Mapping[str, Any], pod: Mapping[str, Any]) -> PortKey:
    out = []
    for sp in (svc.get("spec") or {}).get("ports") or ():
        proto = sp.get("protocol", "TCP")
        target = sp.get("targetPort")
        if target in (None, "", 0):
            target = sp.get("port")
        number = find_port(pod, target, proto)
        if number is None:
            continue
        out.append((sp.get("name", "") or "", number, proto))
    return tuple(out)


def _endpoint(svc: Mapping[str, Any], pod: Mapping[str, Any], ip: str) -> dict[str, Any]:
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    svc_meta = svc.get("metadata") or {}
    pna = bool((svc.get("spec") or {}).get("publishNotReadyAddresses"))
    serving = pod_ready(pod)
    terminating = meta.get("deletionTimestamp") is not None
    ready = pna or (serving and not terminating)
    ep: dict[str, Any] = {
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
    }
    if spec.get("nodeName"):
        ep["nodeName"] = spec["nodeName"]
    ep["targetRef"] = {"kind": "Pod", "namespace": meta.get("namespace") or "", "name": meta.get("name")}
    if spec.get("hostname") and spec.get("subdomain") == svc_meta.get("name"):
        ep["hostname"] = spec["hostname"]
    return ep


def _slice(svc: Mapping[str, Any], name: str, family: str, ports: PortKey, endpoints: list[dict]) -> dict[str, Any]:
    svc_meta = svc.get("metadata") or {}
    labels = {k: v for k, v in (svc_meta.get("labels") or {}).items() if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL)}
    labels[SERVICE_NAME_LABEL] = svc_meta.get("name")
    labels[MANAGED_BY_LABEL] = MANAGED_BY
    meta: dict[str, Any] = {"name": name, "namespace": svc_meta.get("namespace") or "", "labels": labels}
    if svc_meta.get("uid"):
        meta["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "name": svc_meta.get("name"),
                "uid": svc_meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    port_list = []
    svc_ports = {(p.get("name", "") or "", p.get("protocol", "TCP")): p for p in (svc.get("spec") or {}).get("ports") or ()}
    for pname, number, proto in ports:
        entry: dict[str, Any] = {"name": pname, "port": number, "protocol": proto}
        app = svc_ports.get((pname, proto), {}).get("appProtocol")
        if app:
            entry["appProtocol"] = app
        port_list.append(entry)
    return {
        "apiVersion": API_VERSION,
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": family,
        "ports": port_list,
        "endpoints": endpoints,
    }


def _terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


MAX_ENDPOINTS_PER_SLICE = 100  # kube-controller-manager --max-endpoints-per-slice default


def slices_for_service(
    svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], *, max_endpoints: int = MAX_ENDPOINTS_PER_SLICE
) -> list[dict[str, Any]]:
    """The EndpointSlices Kubernetes would keep for ``svc``, given candidate ``pods``.

    ``pods`` may be any superset (e.g. the namespace's pods); the selector and namespace
    are checked here. Output is sorted by slice name; endpoints by pod name. A group of
    more than ``max_endpoints`` endpoints is split into slices ``<name>``, ``<name>-2``, ...
    (in pod-name order: a readiness flip never moves an endpoint between slices).
    """
    if not service_selects(svc):
        return []
    svc_meta = svc.get("metadata") or {}
    ns = svc_meta.get("namespace") or ""
    # A Service selector is a plain label map: the matchLabels of a LabelSelector. It is
    # never empty here (service_selects), so "{} selects everything" cannot apply.
    selector = {"matchLabels": (svc.get("spec") or {}).get("selector")}
    name = svc_meta.get("name") or ""
    matched = [
        p
        for p in pods
        if ((p.get("metadata") or {}).get("namespace") or "") == ns
        and selector_matches(selector, (p.get("metadata") or {}).get("labels"))
        and not _terminal(p)
    ]
    matched.sort(key=lambda p: p["metadata"]["name"])
    out: list[dict[str, Any]] = []
    for family in service_families(svc):
        groups: dict[PortKey, list[dict]] = {}
        for pod in matched:
            ip = pod_ip_for(pod, family)
            if ip is None:
                continue
            groups.setdefault(endpoint_ports(svc, pod), []).append(_endpoint(svc, pod, ip))
        base = f"{name}-{family.lower()}"
        if not groups:
            out.append(_slice(svc, base, family, (), []))
            continue
        # the port set with the most ports (ties: sorted) keeps the plain name
        keys = sorted(groups, key=lambda k: (-len(k), k))
        for i, key in enumerate(keys):
            slice_name = base if i == 0 else f"{base}-{_port_hash(key)}"
            eps = groups[key]
            step = max(1, max_endpoints)
            for n, start in enumerate(range(0, len(eps), step)):
                name_n = slice_name if n == 0 else f"{slice_name}-{n + 1}"
                out.append(_slice(svc, name_n, family, key, eps[start : start + step]))
    out.sort(key=lambda s: s["metadata"]["name"])
    return out


def _port_hash(key: PortKey) -> str:
    text = ";".join(f"{n}/{p}/{proto}" for n, p, proto in key)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def slice_content(es: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two slices equal for the controller: content and our labels, not bookkeeping."""
    meta = es.get("metadata") or {}
    return (
        es.get("addressType"),
        es.get("ports") or [],
        es.get("endpoints") or [],
        meta.get("labels") or {},
        meta.get("ownerReferences") or [],
    )


def is_managed(es: Mapping[str, Any]) -> bool:
    return ((es.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


def slice_service(es: Mapping[str, Any]) -> str | None:
    return ((es.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
