"""The registry: the one write path into the store, for the API and controllers alike.

Every write runs ``admission.admit`` (defaulting, validation, allocation) and then
``store.commit`` under one asyncio lock, so admission always sees the state it is about
to extend and two allocations can never race. What the registry itself decides is the
apiserver's generic part: namespace defaulting and existence, server-owned metadata,
``generateName``, optimistic concurrency, namespace deletion, and the "unchanged"
verdict of an apply.

A batch (:meth:`Registry.apply`) is admitted object by object against an *overlay*
snapshot that already contains the earlier objects of the batch, and then committed as
one store transaction: either every object is stored or none is.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from kubelab.controller import discovery
from kubelab.controller.store import (
    BULK_WRITES,
    AlreadyExists,
    Conflict,
    NotFound,
    Snapshot,
    Store,
    StoreError,
    Write,
    collector_paused,
    object_key,
    same_content,
)

log = logging.getLogger(__name__)

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
UNDELETABLE_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
SERVER_OWNED_META = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink")
STATUS_OP = "update_status"  # the op admission sees for a controller's status write
YIELD_EVERY = 500  # objects admitted between yields to the event loop in a big batch


class AdmissionLike(Protocol):
    def admit(self, op: str, new: dict | None, old: dict | None, snap: Any) -> dict | None: ...


class PassThroughAdmission:
    """Admission that stores what it is given (tests, tools)."""

    def admit(self, op: str, new: dict | None, old: dict | None, snap: Any) -> dict | None:
        return new


class BadRequest(StoreError):
    """A request the registry cannot make sense of (HTTP 400)."""


class Forbidden(StoreError):
    """A request the registry refuses on principle (HTTP 403), e.g. deleting ``default``."""


@dataclass(frozen=True)
class FieldCause:
    """Duck-type twin of admission's FieldError for the registry's own checks."""

    field: str
    type: str
    value: Any
    detail: str

    def message(self) -> str:
        kind = {"FieldValueRequired": "Required value", "FieldValueInvalid": "Invalid value"}.get(self.type, self.type)
        if self.type == "FieldValueRequired":
            return f"{self.field}: {kind}: {self.detail}"
        return f"{self.field}: {kind}: {self.value!r}: {self.detail}"


class RequestInvalid(Exception):
    """The registry's own 422s; has the same attributes the API reads from admission's Invalid."""

    def __init__(self, kind: str, name: str, causes: list[FieldCause]) -> None:
        self.kind, self.name, self.causes = kind, name, causes
        body = causes[0].message() if len(causes) == 1 else "[" + ", ".join(c.message() for c in causes) + "]"
        super().__init__(f'{kind} "{name}" is invalid: {body}')


DeleteHook = Callable[[dict], "dict | None"]


class Overlay:
    """A snapshot plus the pending writes of a batch; what admission sees mid-batch."""

    def __init__(self, base: Snapshot) -> None:
        self.base = base
        self.resource_version = base.resource_version
        self._pending: dict[str, dict[tuple[str, str], dict | None]] = {}
        self._lists: dict[tuple[str, str | None], list[dict]] = {}

    def put(self, kind: str, namespace: str, name: str, obj: dict | None) -> None:
        self._pending.setdefault(kind, {})[(namespace, name)] = obj
        if self._lists:
            for key in [k for k in self._lists if k[0] == kind]:
                del self._lists[key]

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        p = self._pending.get(kind)
        if p is not None:
            key = (namespace or "", name)
            if key in p:
                return p[key]
        return self.base.get(kind, namespace, name)

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        p = self._pending.get(kind)
        if not p:
            return self.base.list(kind, namespace)
        cached = self._lists.get((kind, namespace))
        if cached is None:
            merged = {object_key(o)[1:]: o for o in self.base.list(kind, namespace)}
            for (ns, name), obj in p.items():
                if namespace is not None and ns != namespace:
                    continue
                if obj is None:
                    merged.pop((ns, name), None)
                else:
                    merged[(ns, name)] = obj
            cached = [merged[k] for k in sorted(merged)]
            self._lists[(kind, namespace)] = cached
        return list(cached)

    def count(self, kind: str, namespace: str | None = None) -> int:
        return len(self.list(kind, namespace))

    def kinds(self) -> list[str]:
        return sorted(set(self.base.kinds()) | set(self._pending))


def _random_suffix(n: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's: no vowels, no look-alikes
    return "".join(secrets.choice(alphabet) for _ in range(n))


class Registry:
    """The write path. Reads go straight to ``registry.store.snapshot()``."""

    def __init__(self, store: Store, admission: AdmissionLike, *, system_namespaces: Iterable[str] = SYSTEM_NAMESPACES) -> None:
        self.store = store
        self.admission = admission
        self.system_namespaces = tuple(system_namespaces)
        # kind -> hook(obj) returning an updated object to store instead of deleting (graceful
        # deletion: e.g. the pod runtime marks a Pod terminating and deletes it later with
        # force=True), or None to delete now.
        self.delete_hooks: dict[str, DeleteHook] = {}
        self._lock = asyncio.Lock()
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Create the system namespaces that are missing (first start of a state dir)."""
        if self._started:
            return
        self._started = True
        snap = self.store.snapshot()
        missing = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            for ns in self.system_namespaces
            if snap.get("Namespace", "", ns) is None
        ]
        if missing:
            await self.apply(missing)

    def snapshot(self) -> Snapshot:
        return self.store.snapshot()

    # -- helpers ----------------------------------------------------------------------------

    def _prepare(self, obj: dict, *, creating: bool) -> dict:
        """A normalised shallow copy: known kind, apiVersion, namespace, name."""
        if not isinstance(obj, dict):
            raise BadRequest(message="object must be a JSON object")
        kind = obj.get("kind")
        info = discovery.kind_info(kind) if isinstance(kind, str) else None
        if info is None:
            raise BadRequest(str(kind or ""), message=f'no kind "{kind}" is registered in kubelab' if kind else "Object 'Kind' is missing")
        meta = obj.get("metadata")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise BadRequest(info.kind, message=f"{info.kind}: metadata must be an object")
        meta = dict(meta)
        out = dict(obj)
        out["apiVersion"] = obj.get("apiVersion") or info.api_version
        if info.namespaced:
            meta["namespace"] = meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if creating:
            for k in SERVER_OWNED_META:
                meta.pop(k, None)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{_random_suffix()}"
        if not meta.get("name"):
            raise RequestInvalid(info.kind, "", [FieldCause("metadata.name", "FieldValueRequired", None, "name or generateName is required")])
        out["metadata"] = meta
        return out

    def _check_namespace(self, snap: Any, obj: dict) -> None:
        ns = obj["metadata"].get("namespace")
        if ns and ns not in self.system_namespaces and snap.get("Namespace", "", ns) is None:
            raise NotFound("Namespace", "", ns)

    def _admit(self, op: str, new: dict | None, old: dict | None, snap: Any) -> dict | None:
        out = self.admission.admit(op, new, old, snap)
        return new if out is None and op != "delete" else out

    @staticmethod
    def _carry_meta(new: dict, old: dict) -> None:
        """Server-owned metadata survives an update whatever the client sent."""
        meta, old_meta = new["metadata"], old["metadata"]
        for k in ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if k in old_meta:
                meta[k] = old_meta[k]
            elif k in meta and k not in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                del meta[k]

    # -- single-object writes ----------------------------------------------------------------

    async def create(self, obj: dict, *, dry_run: bool = False) -> dict:
        new = self._prepare(obj, creating=True)
        async with self._lock:
            snap = self.store.snapshot()
            self._check_namespace(snap, new)
            kind, ns, name = object_key(new)
            if snap.get(kind, ns, name) is not None:
                raise AlreadyExists(kind, ns, name)
            admitted = self._admit("create", new, None, snap)
            if dry_run:
                return admitted
            return (await self.store.commit([Write("create", admitted)]))[0]

    async def update(self, obj: dict, *, dry_run: bool = False) -> dict:
        """Replace an object; optimistic on ``metadata.resourceVersion`` when given."""
        return await self._update(obj, "update", dry_run)

    async def update_status(self, obj: dict, *, dry_run: bool = False) -> dict:
        """A controller's write of ``status`` (or of a derived object such as an EndpointSlice)."""
        return await self._update(obj, STATUS_OP, dry_run)

    async def _update(self, obj: dict, op: str, dry_run: bool) -> dict:
        new = self._prepare(obj, creating=False)
        kind, ns, name = object_key(new)
        return await self.mutate(kind, ns, name, lambda _old: new, op=op, dry_run=dry_run)

    async def mutate(self, kind: str, namespace: str, name: str, fn: Callable[[dict], dict], *,
                     op: str = "update", dry_run: bool = False) -> dict:
        """Read-modify-write under the lock: ``fn(old) -> new`` (``fn`` must not mutate ``old``).

        A ``metadata.resourceVersion`` in ``new`` different from the stored one is a
        Conflict (``kubectl label --resource-version``); patches are built on this.
        """
        namespace = namespace if discovery.is_namespaced(kind) else ""
        async with self._lock:
            snap = self.store.snapshot()
            old = snap.get(kind, namespace, name)
            if old is None:
                raise NotFound(kind, namespace, name)
            changed = fn(old)
            new = self._prepare(changed, creating=False)
            if object_key(new) != (kind, namespace, name):
                raise BadRequest(kind, namespace, name, message="the name of the object and the URL do not match")
            expect = new["metadata"].get("resourceVersion") or None
            if expect and expect != old["metadata"].get("resourceVersion"):
                raise Conflict(kind, namespace, name)
            self._carry_meta(new, old)
            admitted = self._admit(op, new, old, snap)
            if dry_run:
                return admitted
            return (await self.store.commit([Write("update", admitted)]))[0]

    async def patch(self, kind: str, ns: str, name: str, merge_patch: dict, *, dry_run: bool = False) -> dict:
        """JSON merge patch (RFC 7386) of one object."""
        from kubelab.controller.api_patch import json_merge_patch

        return await self.mutate(kind, ns, name, lambda old: json_merge_patch(old, merge_patch), dry_run=dry_run)

    async def delete(self, kind: str, ns: str, name: str, *, expect_rv: str | None = None,
                     force: bool = False, dry_run: bool = False) -> dict:
        """Delete one object (a Namespace takes its objects with it, in the same commit).

        Returns the deleted object's last state, or, when a delete hook defers the
        deletion, the object as marked for deletion.
        """
        ns = ns if discovery.is_namespaced(kind) else ""
        async with self._lock:
            snap = self.store.snapshot()
            old = snap.get(kind, ns, name)
            if old is None:
                raise NotFound(kind, ns, name)
            if expect_rv and expect_rv != old["metadata"].get("resourceVersion"):
                raise Conflict(kind, ns, name)
            hook = None if force else self.delete_hooks.get(kind)
            if hook is not None:
                marked = hook(old)
                if marked is not None:
                    if dry_run:
                        return marked
                    return (await self.store.commit([Write("update", marked)]))[0]
            writes = []
            if kind == "Namespace":
                if name in UNDELETABLE_NAMESPACES:
                    raise Forbidden(kind, "", name, f'namespaces "{name}" is forbidden: this namespace may not be deleted')
                for k in snap.kinds():
                    if discovery.is_namespaced(k):
                        for child in snap.list(k, name):
                            self._admit("delete", None, child, snap)
                            writes.append(Write("delete", child))
            self._admit("delete", None, old, snap)
            writes.append(Write("delete", old, expect_rv))
            if dry_run:
                return old
            return (await self.store.commit(writes))[-1]

    # -- batches ------------------------------------------------------------------------------

    async def apply(self, objs: list[dict], *, dry_run: bool = False) -> list[tuple[str, dict]]:
        """Create or update each object; all admitted first, then committed atomically.

        Returns ``("created" | "configured" | "unchanged", stored_object)`` per object, in
        order. Any refusal (Invalid, missing namespace, ...) raises and stores nothing.
        ``metadata.resourceVersion`` in a manifest is ignored (declarative apply).
        """
        with collector_paused(len(objs) >= BULK_WRITES):
            return await self._apply(objs, dry_run)

    async def _apply(self, objs: list[dict], dry_run: bool) -> list[tuple[str, dict]]:
        prepared = [self._prepare(o, creating=False) for o in objs]
        async with self._lock:
            snap = self.store.snapshot()
            view = Overlay(snap)
            writes: list[Write] = []
            index: dict[tuple[str, str, str], int] = {}  # key -> its write in this batch
            plan: list[tuple[str, int | dict]] = []  # (action, index into writes | unchanged obj)
            for i, new in enumerate(prepared):
                if i and i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a 60,000-object file must not stall DNS and the proxy
                key = object_key(new)
                self._check_namespace(view, new)
                old = view.get(*key)
                if old is None:
                    for k in SERVER_OWNED_META:
                        new["metadata"].pop(k, None)
                    admitted = self._admit("create", new, None, view)
                    writes.append(Write("create", admitted))
                    index[key] = len(writes) - 1
                    plan.append(("created", len(writes) - 1))
                else:
                    new["metadata"].pop("resourceVersion", None)
                    self._carry_meta(new, old)
                    if "status" not in new and "status" in old:
                        new["status"] = old["status"]
                    admitted = self._admit("update", new, old, view)
                    if same_content(old, admitted):
                        plan.append(("unchanged", old))
                        continue
                    prior = index.get(key)
                    if prior is not None:  # same object twice in one batch: last one wins
                        writes[prior] = Write(writes[prior].op, admitted)
                        plan.append(("configured", prior))
                    else:
                        writes.append(Write("update", admitted))
                        index[key] = len(writes) - 1
                        plan.append(("configured", len(writes) - 1))
                view.put(*key, admitted)
            if dry_run:
                stored = [w.obj for w in writes]
            else:
                stored = await self.store.commit(writes) if writes else []
        return [(action, stored[ref] if isinstance(ref, int) else ref) for action, ref in plan]
