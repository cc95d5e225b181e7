"""Admission: the one gate every write passes (API and controllers alike).

Why one gate: defaulting, validation and allocation must see exactly what will be
stored, in the registry's write lock, so two Services can never get the same
ClusterIP and nothing invalid is ever half-applied. ``Admission.admit`` is called by
the registry for each object of a batch, against a snapshot that already holds the
batch's earlier objects.

Operations (``op``):

``create``
    default, validate, allocate. A Pod created with ``status.podIP`` is *simulated*:
    it gets the annotation ``kubelab.dev/simulated: "true"`` and keeps the status it
    was given (phase defaults to Running, ``podIPs`` to ``[podIP]``, and a Running pod
    without a Ready condition is Ready). Any other Pod is a *run pod*: status
    ``{phase: Pending}``, ``spec.nodeName`` defaults to the lab's node (there is no
    scheduler), and the pod runtime owns its status from then on.
``update``
    like create, plus update rules (immutable fields, pod spec immutability). As on
    the apiserver's main resource, the status of run Pods, Deployments and Services
    is kept from the stored object (it belongs to controllers); a simulated Pod takes
    the status it is given, or keeps its old one when the update has none.
``update_status`` (also accepted: ``status``)
    the status subresource: the stored object with the new ``status``; everything
    else in the request is ignored. Kinds without a status subresource (EndpointSlice)
    are treated as ``update``.
``delete``
    nothing to check; returns ``old`` (allocations are derived from the stored
    Services, so deleting one frees its addresses).

``FieldError`` and ``Invalid`` live in ``validation`` (to avoid an import cycle) and
are re-exported here; other parts import them from this module.
"""

from __future__ import annotations

import logging
from typing import Any

from kubelab.controller.allocators import ServiceAllocator
from kubelab.controller.config import LabConfig
from kubelab.controller.defaults import clone, default_object
from kubelab.controller.validation import (
    FieldError,
    Invalid,
    not_supported,
    validate_object,
)
from kubelab.controller.netpol_validation import validate_network_policy

__all__ = ["Admission", "FieldError", "Invalid", "SIMULATED_ANNOTATION", "is_simulated"]

log = logging.getLogger(__name__)

SIMULATED_ANNOTATION = "kubelab.dev/simulated"
STATUS_OPS = frozenset({"update_status", "status", "update-status"})
_STATUS_SUBRESOURCE_KINDS = frozenset({"Pod", "Service", "Deployment", "Namespace", "Node"})


def is_simulated(pod: dict[str, Any] | None) -> bool:
    ann = ((pod or {}).get("metadata") or {}).get("annotations") or {}
    return ann.get(SIMULATED_ANNOTATION) == "true"


def _name(obj: dict[str, Any] | None) -> str:
    meta = (obj or {}).get("metadata") or {}
    return str(meta.get("name") or "")


class Admission:
    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.services = ServiceAllocator(config)

    def admit(self, op: str, new: dict | None, old: dict | None, snap: Any) -> dict | None:
        """The object to store for this write, or ``Invalid``."""
        if op == "delete":
            return old
        if new is None:
            raise ValueError(f"admit({op!r}) needs an object")
        kind = new.get("kind") or (old or {}).get("kind") or ""
        if op in STATUS_OPS:
            if old is not None and kind in _STATUS_SUBRESOURCE_KINDS:
                return self._status_update(kind, new, old)
            op = "update" if old is not None else "create"
        if op not in ("create", "update"):
            raise ValueError(f"unknown admission op {op!r}")
        if op == "update" and old is None:
            op = "create"
        obj = default_object(new)
        if kind == "Pod":
            self._pod_status(op, obj, old)
        elif kind in ("Deployment", "Service") and op == "update" and old is not None:
            obj["status"] = clone(old.get("status") or {})
        errs = validate_object(obj, old if op == "update" else None)
        if kind == "NetworkPolicy" and not errs:
            errs = validate_network_policy(obj)
        if errs:
            raise Invalid(kind or "Object", _name(obj), errs)
        if kind == "Service":
            errs = self.services.allocate(obj, old if op == "update" else None, snap)
            if errs:
                raise Invalid(kind, _name(obj), errs)
        return obj

    # -- pods ----------------------------------------------------------------------------

    def _pod_status(self, op: str, pod: dict[str, Any], old: dict | None) -> None:
        meta = pod.setdefault("metadata", {})
        spec = pod.get("spec")
        old_node = ((old or {}).get("spec") or {}).get("nodeName")
        if op == "update" and old_node and isinstance(spec, dict) and not spec.get("nodeName"):
            spec["nodeName"] = old_node  # assigned at create; a re-applied manifest lacks it
        given = pod.get("status")
        if op == "create":
            simulated = isinstance(given, dict) and bool(given.get("podIP"))
        else:
            simulated = is_simulated(old)
        if simulated:
            ann = meta.get("annotations")
            if not isinstance(ann, dict):
                ann = meta["annotations"] = {}
            ann[SIMULATED_ANNOTATION] = "true"
            if not isinstance(given, dict) or not given:
                given = clone((old or {}).get("status") or {})
            pod["status"] = _default_simulated_status(given)
            return
        if op == "create":
            pod["status"] = {"phase": "Pending"}
            spec = pod.get("spec")
            if isinstance(spec, dict) and not spec.get("nodeName"):
                spec["nodeName"] = self.config.node_name
        else:
            pod["status"] = clone((old or {}).get("status") or {"phase": "Pending"})
            ann = (old or {}).get("metadata", {}).get("annotations") or {}
            if SIMULATED_ANNOTATION in ann:  # keep whatever the stored object says
                meta.setdefault("annotations", {})[SIMULATED_ANNOTATION] = ann[SIMULATED_ANNOTATION]

    def _status_update(self, kind: str, new: dict, old: dict) -> dict:
        obj = dict(old)  # shallow: only status is replaced, the rest is shared (immutable)
        obj["status"] = clone(new.get("status") or {})
        meta = new.get("metadata") or {}
        if "deletionTimestamp" in meta or "resourceVersion" in meta:
            obj["metadata"] = dict(old.get("metadata") or {})
            if "resourceVersion" in meta:
                obj["metadata"]["resourceVersion"] = meta["resourceVersion"]
        errs = validate_object(obj, None) if kind == "Pod" else []
        if errs:
            raise Invalid(kind, _name(obj), errs)
        return obj


def _default_simulated_status(status: dict[str, Any]) -> dict[str, Any]:
    status.setdefault("phase", "Running")
    if status.get("podIP") and not status.get("podIPs"):
        status["podIPs"] = [{"ip": status["podIP"]}]
    conds = status.get("conditions")
    if not isinstance(conds, list):
        conds = status["conditions"] = []
    if not any(isinstance(c, dict) and c.get("type") == "Ready" for c in conds):
        conds.append({"type": "Ready", "status": "True" if status["phase"] == "Running" else "False"})
    return status


# ``not_supported`` is re-exported for callers building their own causes.
__all__.append("not_supported")
