"""Deployments: which Pods to create and delete, as pure functions.

Why pure: the deployment controller in ``manager`` only gathers a Deployment and the
Pods it owns from one snapshot and writes what ``plan`` says; the decisions are
table-tested here.

Kubernetes behaviour kept: pods are named ``<deployment>-<pod-template-hash>-<5 chars>``
with the hash of the pod template (FNV-32a, encoded with the apiserver's safe
alphabet), labelled ``pod-template-hash``; a template change rolls pods (new ones are
created, old ones removed while at least ``replicas - maxUnavailable`` stay ready;
``Recreate`` removes the old ones first); scale-down removes not-ready before ready
and newer before older pods; ``status.replicas/updatedReplicas/readyReplicas/
availableReplicas/unavailableReplicas/observedGeneration``.

Where the lab differs: there are no ReplicaSets; pods are owned by the Deployment
directly (``ownerReferences`` kind Deployment), and the controller deletes a
Deployment's pods when it goes away (Kubernetes' garbage collector does that there).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from kubelab.controller.defaults import clone
from kubelab.controller.endpointslices import pod_ready

HASH_LABEL = "pod-template-hash"
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand


def safe_encode(text: str) -> str:
    return "".join(SAFE_ALPHABET[ord(c) % len(SAFE_ALPHABET)] for c in text)


def template_hash(template: Mapping[str, Any]) -> str:
    """pod-template-hash: FNV-32a of the (canonical JSON) template, safe-encoded."""
    h = 0x811C9DC5
    for b in json.dumps(template, sort_keys=True, separators=(",", ":")).encode():
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return safe_encode(str(h))


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def owned_by(pod: Mapping[str, Any], dep: Mapping[str, Any]) -> bool:
    dmeta = _meta(dep)
    for ref in _meta(pod).get("ownerReferences") or ():
        if ref.get("kind") == "Deployment" and ref.get("name") == dmeta.get("name"):
            uid = dmeta.get("uid")
            return not uid or not ref.get("uid") or ref.get("uid") == uid
    return False


def owner_name(pod: Mapping[str, Any]) -> str | None:
    for ref in _meta(pod).get("ownerReferences") or ():
        if ref.get("kind") == "Deployment" and ref.get("controller", True):
            return ref.get("name")
    return None


def new_pod(dep: Mapping[str, Any], pod_hash: str, suffix: str) -> dict[str, Any]:
    """A Pod from the Deployment's template (a run pod: no status)."""
    dmeta = _meta(dep)
    tmpl = (dep.get("spec") or {}).get("template") or {}
    tmeta = tmpl.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels[HASH_LABEL] = pod_hash
    meta: dict[str, Any] = {
        "name": f"{dmeta.get('name')}-{pod_hash}-{suffix}",
        "namespace": dmeta.get("namespace") or "default",
        "labels": labels,
    }
    if tmeta.get("annotations"):
        meta["annotations"] = dict(tmeta["annotations"])
    ref: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dmeta.get("name"),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    if dmeta.get("uid"):
        ref["uid"] = dmeta["uid"]
    meta["ownerReferences"] = [ref]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": clone(tmpl.get("spec") or {})}


def _scaled(value: Any, replicas: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = float(value[:-1])
        except ValueError:
            return 0
        raw = pct * replicas / 100.0
        return int(math.ceil(raw) if round_up else math.floor(raw))
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def max_unavailable(dep: Mapping[str, Any]) -> int:
    spec = dep.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return replicas
    ru = strategy.get("rollingUpdate") or {}
    unavailable = _scaled(ru.get("maxUnavailable", "25%"), replicas, False)
    surge = _scaled(ru.get("maxSurge", "25%"), replicas, True)
    if unavailable == 0 and surge == 0:
        unavailable = 1
    return min(unavailable, replicas)


def _terminating(pod: Mapping[str, Any]) -> bool:
    return _meta(pod).get("deletionTimestamp") is not None


def _deletion_order(pod: Mapping[str, Any]) -> tuple[Any, ...]:
    """Sort key: pods to delete first come first (ActivePods ordering, simplified)."""
    status = pod.get("status") or {}
    return (
        bool((pod.get("spec") or {}).get("nodeName")),
        status.get("phase") == "Running",
        pod_ready(pod),
        # newer first: invert the timestamp ordering by sorting on its negation below
        tuple(-ord(c) for c in (_meta(pod).get("creationTimestamp") or "")),
        _meta(pod).get("name") or "",
    )


@dataclass(frozen=True)
class Plan:
    create: tuple[dict[str, Any], ...]
    delete: tuple[str, ...]  # pod names (the Deployment's namespace)


def plan(dep: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], rand: Callable[[], str]) -> Plan:
    """What to do for ``dep`` given the pods it owns (others are ignored)."""
    spec = dep.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    pod_hash = template_hash(spec.get("template") or {})
    live = [p for p in pods if owned_by(p, dep) and not _terminating(p)]
    new = [p for p in live if (_meta(p).get("labels") or {}).get(HASH_LABEL) == pod_hash]
    old = [p for p in live if p not in new]
    create: list[dict[str, Any]] = []
    delete: list[str] = []
    recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
    if recreate and old:
        delete = [_meta(p)["name"] for p in old]
        return Plan((), tuple(delete))
    if len(new) < replicas:
        taken = {_meta(p)["name"] for p in live}
        for _ in range(replicas - len(new)):
            pod = new_pod(dep, pod_hash, rand())
            while pod["metadata"]["name"] in taken:
                pod = new_pod(dep, pod_hash, rand())
            taken.add(pod["metadata"]["name"])
            create.append(pod)
    elif len(new) > replicas:
        excess = sorted(new, key=_deletion_order)[: len(new) - replicas]
        delete += [_meta(p)["name"] for p in excess]
    if old:
        ready_new = sum(1 for p in new if pod_ready(p))
        ready_new = min(ready_new, replicas)
        floor = replicas - max_unavailable(dep)
        ready_old = [p for p in old if pod_ready(p)]
        delete += [_meta(p)["name"] for p in old if not pod_ready(p)]
        keep = max(0, floor - ready_new)
        ready_old.sort(key=_deletion_order)
        delete += [_meta(p)["name"] for p in ready_old[: max(0, len(ready_old) - keep)]]
    return Plan(tuple(create), tuple(delete))


def deployment_status(dep: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``status`` for the Deployment given its owned pods."""
    spec = dep.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    pod_hash = template_hash(spec.get("template") or {})
    live = [p for p in pods if owned_by(p, dep) and not _terminating(p)]
    updated = sum(1 for p in live if (_meta(p).get("labels") or {}).get(HASH_LABEL) == pod_hash)
    ready = sum(1 for p in live if pod_ready(p))
    status: dict[str, Any] = {
        "observedGeneration": _meta(dep).get("generation") or 1,
        "replicas": len(live),
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, replicas - ready),
    }
    # kubectl omits zero counts the way the apiserver's omitempty does
    for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"):
        if not status[k]:
            del status[k]
    available = ready >= replicas - max_unavailable(dep)
    status["conditions"] = [
        {
            "type": "Available",
            "status": "True" if available else "False",
            "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
            "message": "Deployment has minimum availability."
            if available
            else "Deployment does not have minimum availability.",
        },
        {
            "type": "Progressing",
            "status": "True",
            "reason": "NewReplicaSetAvailable" if updated == replicas and ready >= replicas else "ReplicaSetUpdated",
            "message": f'Deployment "{_meta(dep).get("name")}" has successfully progressed.'
            if updated == replicas and ready >= replicas
            else f'Deployment "{_meta(dep).get("name")}" is progressing.',
        },
    ]
    return status
