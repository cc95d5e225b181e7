"""Server-side printing: ``meta.k8s.io/v1`` Tables with the columns of upstream's printers.

kubectl shows these columns for ``kubectl get`` (only NAME and AGE without them), and the
kubelab CLI renders the same Table, so both tools print the same thing. Pure functions.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

Column = tuple[str, int]  # (name, priority): priority 1 = only with -o wide


def human_duration(seconds: float) -> str:
    """apimachinery's ``duration.HumanDuration`` (what kubectl prints as AGE)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def age(obj: dict, now: datetime.datetime | None = None) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    try:
        created = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<unknown>"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return human_duration((now - created).total_seconds())


def _labels(selector: dict | None) -> str:
    if not selector:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _label_selector(sel: dict | None) -> str:
    if not sel:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op, key, vals = e.get("operator"), e.get("key"), ",".join(e.get("values") or [])
        parts.append({"In": f"{key} in ({vals})", "NotIn": f"{key} notin ({vals})",
                      "Exists": key, "DoesNotExist": f"!{key}"}.get(op, key))
    return ",".join(parts) or "<none>"


def pod_status_reason(status: dict) -> str:
    """kubectl's STATUS column (printPod): the phase, or the pod's reason, or a container's
    waiting/terminated reason -- containers are walked last to first, so the *first*
    container with one wins; a pod that ran to completion is ``Completed`` (its phase is
    Succeeded, its containers' reason Completed). "Completed" while a container is still
    ready and running turns back into ``Running`` (``NotReady`` without the pod's Ready
    condition): a sidecar outlives a finished main container."""
    phase = status.get("phase") or "Unknown"
    reason = status.get("reason") or ("Completed" if phase == "Succeeded" else phase)
    has_running = False
    for c in reversed(status.get("containerStatuses") or []):
        state = c.get("state") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated")
        if waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated is not None and terminated.get("reason"):
            reason = terminated["reason"]
        elif terminated is not None:
            reason = f"Signal:{terminated['signal']}" if terminated.get("signal") \
                else f"ExitCode:{terminated.get('exitCode', 0)}"
        elif c.get("ready") and state.get("running") is not None:
            has_running = True
    if reason == "Completed" and has_running:
        ready = any(cond.get("type") == "Ready" and cond.get("status") == "True"
                    for cond in status.get("conditions") or [])
        reason = "Running" if ready else "NotReady"
    if phase == "Succeeded" and reason in ("Succeeded", "ExitCode:0"):
        reason = "Completed"
    return reason


def _pod(o: dict, now: Any) -> list:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    containers = spec.get("containers") or []
    statuses = status.get("containerStatuses") or []
    if statuses:
        ready = sum(1 for c in statuses if c.get("ready"))
    else:
        cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        ready = len(containers) if cond and cond.get("status") == "True" else 0
    reason = pod_status_reason(status)
    if (o.get("metadata") or {}).get("deletionTimestamp") and status.get("phase") not in ("Succeeded", "Failed"):
        reason = "Terminating"  # kubectl: a pod that already finished keeps its final status
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    gates = spec.get("readinessGates") or []
    return [o["metadata"]["name"], f"{ready}/{len(containers)}", reason, restarts, age(o, now),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", f"{len(gates)}/{len(gates)}" if gates else "<none>"]


def _service_ports(spec: dict) -> str:
    out = []
    for p in spec.get("ports") or []:
        proto = p.get("protocol") or "TCP"
        if p.get("nodePort"):
            out.append(f"{p.get('port')}:{p['nodePort']}/{proto}")
        else:
            out.append(f"{p.get('port')}/{proto}")
    return ",".join(out) or "<none>"


def _service(o: dict, now: Any) -> list:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    typ = spec.get("type") or "ClusterIP"
    external = list(spec.get("externalIPs") or [])
    if typ == "LoadBalancer":
        ingress = [i.get("ip") or i.get("hostname") for i in (status.get("loadBalancer") or {}).get("ingress") or []]
        external = ingress + external if ingress or external else ["<pending>"]
    elif typ == "ExternalName":
        external = [spec.get("externalName") or ""]
    return [o["metadata"]["name"], typ, spec.get("clusterIP") or "<none>", ",".join(external) or "<none>",
            _service_ports(spec), age(o, now), _labels(spec.get("selector"))]


def _endpointslice(o: dict, now: Any) -> list:
    ports = ",".join(str(p.get("port")) for p in o.get("ports") or [] if p.get("port") is not None) or "<unset>"
    addrs = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
    eps = ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "") if addrs else "<unset>"
    return [o["metadata"]["name"], o.get("addressType") or "", ports, eps, age(o, now)]


def _deployment(o: dict, now: Any) -> list:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    containers = pod.get("containers") or []
    return [o["metadata"]["name"], f"{status.get('readyReplicas') or 0}/{spec.get('replicas', 1)}",
            status.get("updatedReplicas") or 0, status.get("availableReplicas") or 0, age(o, now),
            ",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers),
            _label_selector(spec.get("selector"))]


def _netpol(o: dict, now: Any) -> list:
    return [o["metadata"]["name"], _label_selector((o.get("spec") or {}).get("podSelector")), age(o, now)]


def _namespace(o: dict, now: Any) -> list:
    return [o["metadata"]["name"], (o.get("status") or {}).get("phase") or "Active", age(o, now)]


def _node(o: dict, now: Any) -> list:
    status = o.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = "Ready" if ready and ready.get("status") == "True" else "NotReady"
    addrs = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    info = status.get("nodeInfo") or {}
    return [o["metadata"]["name"], state, "<none>", age(o, now), info.get("kubeletVersion") or "",
            addrs.get("InternalIP") or "<none>", addrs.get("ExternalIP") or "<none>",
            info.get("osImage") or "<unknown>", info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>"]


def _generic(o: dict, now: Any) -> list:
    return [o["metadata"]["name"], age(o, now)]


PRINTERS: dict[str, tuple[list[Column], Callable[[dict, Any], list]]] = {
    "Pod": ([("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0), ("IP", 1), ("Node", 1),
             ("Nominated Node", 1), ("Readiness Gates", 1)], _pod),
    "Service": ([("Name", 0), ("Type", 0), ("Cluster-IP", 0), ("External-IP", 0), ("Port(s)", 0), ("Age", 0),
                 ("Selector", 1)], _service),
    "EndpointSlice": ([("Name", 0), ("AddressType", 0), ("Ports", 0), ("Endpoints", 0), ("Age", 0)], _endpointslice),
    "Deployment": ([("Name", 0), ("Ready", 0), ("Up-to-date", 0), ("Available", 0), ("Age", 0), ("Containers", 1),
                    ("Images", 1), ("Selector", 1)], _deployment),
    "NetworkPolicy": ([("Name", 0), ("Pod-Selector", 0), ("Age", 0)], _netpol),
    "Namespace": ([("Name", 0), ("Status", 0), ("Age", 0)], _namespace),
    "Node": ([("Name", 0), ("Status", 0), ("Roles", 0), ("Age", 0), ("Version", 0), ("Internal-IP", 1),
              ("External-IP", 1), ("OS-Image", 1), ("Kernel-Version", 1), ("Container-Runtime", 1)], _node),
}


def column_definitions(kind: str) -> list[dict]:
    cols = PRINTERS.get(kind, ([("Name", 0), ("Age", 0)], _generic))[0]
    return [{"name": n, "type": "integer" if n == "Restarts" else "string", "format": "name" if n == "Name" else "",
             "description": "", "priority": p} for n, p in cols]


def partial_metadata(obj: dict) -> dict:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata") or {}}


def table(kind: str, objs: list[dict], resource_version: str = "", *, include_object: bool = False,
          with_columns: bool = True, now: datetime.datetime | None = None) -> dict:
    fn = PRINTERS.get(kind, (None, _generic))[1]
    now = now or datetime.datetime.now(datetime.timezone.utc)
    rows = [{"cells": fn(o, now), "object": o if include_object else partial_metadata(o)} for o in objs]
    out: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version}}
    if with_columns:
        out["columnDefinitions"] = column_definitions(kind)
    out["rows"] = rows
    return out


def render(tbl: dict, *, wide: bool = False, namespace_column: bool = False) -> str:
    """Text like kubectl's: upper-case headers, columns padded by 3 spaces."""
    cols = [(i, c) for i, c in enumerate(tbl.get("columnDefinitions") or []) if wide or c.get("priority", 0) == 0]
    header = [c["name"].upper() for _, c in cols]
    rows = []
    for row in tbl.get("rows") or []:
        cells = ["" if row["cells"][i] is None else str(row["cells"][i]) for i, _ in cols]
        if namespace_column:
            cells.insert(0, ((row.get("object") or {}).get("metadata") or {}).get("namespace", ""))
        rows.append(cells)
    if namespace_column:
        header.insert(0, "NAMESPACE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines) + "\n"
