"""ControllerManager: the level-triggered controllers and the publisher of desired state.

One watch on the store feeds small indexes (pods by label, services by selector, pods by
owning Deployment, managed EndpointSlices by Service) and marks keys dirty; a
``BoundedFrequencyRunner`` coalesces the bursts into one ``sync()``, which reads ONE
snapshot and:

1. runs the Deployment controller for dirty Deployments (create/delete Pods through
   the registry, write ``status`` with ``registry.update_status``);
2. runs the EndpointSlice controller for dirty Services (``endpointslices`` decides;
   only slices whose content changed are written, in one ``registry.apply`` batch;
   stale managed slices are deleted);
3. brings ``DesiredCache`` up to the store and publishes a new ZoneData to the DNS
   sinks and a new RouteTable to the proxy sinks, each only when it changed.

Events carry no data into ``sync`` (they only mark keys), so a failed sync is retried
with the current state, never a stale one. Nothing is published before the first full
sync (``ready`` turns True after every sink took its first state). A watch that falls
too far behind (``Gone``) relists and does a full pass. An unexpected exception stops
the manager: ``wait()`` re-raises it for the owner (``kubelab up`` exits loudly).

Sinks are routed by name: a sink named ``dns`` (or whose ``what`` is ``zone``) gets
``ZoneData``; ``proxy`` (or ``what == "routes"``) gets ``RouteTable``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Iterable, Mapping, Sequence

from kubelab.controller.config import LabConfig
from kubelab.controller.deployments import deployment_status, owned_by, owner_name, plan
from kubelab.controller.desired import DesiredCache, policy_table
from kubelab.controller.endpointslices import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    pod_ips,
    service_selects,
    slice_content,
    slices_for_service,
)
from kubelab.controller.runner import BoundedFrequencyRunner
from kubelab.controller.sinks import SinkError
from kubelab.controller.store import Conflict, Gone, NotFound, AlreadyExists
from kubelab.controller.validation import Invalid

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _key(obj: Mapping[str, Any]) -> Key:
    m = _meta(obj)
    return (m.get("namespace") or "", m.get("name") or "")


def _random_suffix() -> str:
    return "".join(secrets.choice(_SAFE) for _ in range(5))


def _sink_target(sink: Any) -> str:
    what = getattr(sink, "what", None)
    if what in ("zone", "routes"):
        return what
    name = str(getattr(sink, "name", ""))
    if "dns" in name or "zone" in name:
        return "zone"
    if "proxy" in name or "route" in name:
        return "routes"
    raise ValueError(f"sink {sink!r}: cannot tell whether it takes zones or routes (name it 'dns' or 'proxy')")


class _LabelIndex:
    """(namespace, key, value) -> names; answers selector queries without a scan."""

    def __init__(self) -> None:
        self.labels: dict[Key, dict[str, str]] = {}
        self.index: dict[tuple[str, str, str], set[str]] = {}

    def set(self, key: Key, labels: Mapping[str, str] | None) -> dict[str, str] | None:
        """Record ``labels`` (None: object gone); returns the previous labels."""
        ns, name = key
        old = self.labels.pop(key, None)
        if old:
            for k, v in old.items():
                s = self.index.get((ns, k, v))
                if s is not None:
                    s.discard(name)
                    if not s:
                        del self.index[(ns, k, v)]
        if labels is not None:
            labels = dict(labels)
            self.labels[key] = labels
            for k, v in labels.items():
                self.index.setdefault((ns, k, v), set()).add(name)
        return old

    def select(self, ns: str, selector: Mapping[str, str]) -> set[str]:
        sets = []
        for k, v in selector.items():
            s = self.index.get((ns, k, v))
            if not s:
                return set()
            sets.append(s)
        if not sets:
            return set()
        sets.sort(key=len)
        out = set(sets[0])
        for s in sets[1:]:
            out &= s
        return out


class ControllerManager:
    def __init__(
        self,
        registry: Any,
        config: LabConfig,
        sinks: Sequence[Any] = (),
        *,
        min_interval: float = 0.01,
        retry_interval: float = 0.5,
        resync_interval: float | None = None,
    ) -> None:
        self.registry = registry
        self.config = config
        self.sinks = list(sinks)
        self._targets = {id(s): _sink_target(s) for s in self.sinks}
        self.ready = False
        self.syncs = 0
        self.cache = DesiredCache(config)
        self.zone: Any = None  # last published ZoneData
        self.routes: Any = None  # last published RouteTable
        self._generation = 0
        self._policy: Any = None
        self._pending_sinks: set[int] = {id(s) for s in self.sinks}  # sinks owed the current state
        self._runner = BoundedFrequencyRunner(
            "controllers",
            self.sync,
            min_interval=min_interval,
            max_interval=resync_interval,
            retry_interval=retry_interval,
            retry_on=(SinkError, Conflict, NotFound, AlreadyExists, OSError, asyncio.TimeoutError),
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._failed: asyncio.Future[None] | None = None
        self._reset_indexes()

    # -- lifecycle ---------------------------------------------------------------------

    def _reset_indexes(self) -> None:
        self._pods = _LabelIndex()
        self._pod_owner: dict[Key, Key] = {}  # pod -> (ns, deployment)
        self._owned: dict[Key, set[str]] = {}  # (ns, deployment) -> pod names
        self._pod_proj: dict[Key, Any] = {}  # projection NetworkPolicy depends on
        self._svc_selector: dict[Key, dict[str, str]] = {}
        self._sel_index: dict[tuple[str, str, str], set[str]] = {}
        self._slices: dict[Key, set[str]] = {}  # (ns, service) -> managed slice names
        self._slice_svc: dict[Key, str] = {}
        self._dirty_svcs: set[Key] = set()
        self._dirty_deps: set[Key] = set()
        self._written: dict[Key, Any] = {}  # slice -> content we wrote (its watch echo is not news)
        self._policy_dirty = True
        self._full = True
        self._rv = 0

    async def start(self) -> None:
        """Index the current state and start watching; the first sync follows at once."""
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        self._relist()
        self._tasks = [
            asyncio.create_task(self._watch_loop(), name="controllers-watch"),
            asyncio.create_task(self._runner.loop(), name="controllers-sync"),
        ]
        for t in self._tasks:
            t.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._failed is None or self._failed.done():
            return
        exc = task.exception()
        if exc is not None:
            log.error("controller task %s failed: %r", task.get_name(), exc, exc_info=exc)
            self._failed.set_exception(exc)
        else:
            self._failed.set_result(None)

    async def wait(self) -> None:
        """Return when the manager stops; re-raise the exception that stopped it."""
        if self._failed is None:
            raise RuntimeError("ControllerManager.wait() before start()")
        await asyncio.shield(self._failed)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception:  # already reported through wait()
                pass
        self._tasks = []
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(None)
        elif self._failed is not None and not self._failed.cancelled():
            self._failed.exception()  # mark retrieved: the owner may not have awaited wait()
        for sink in self.sinks:
            closer = getattr(sink, "close", None)
            if closer is not None:
                await closer()

    # -- watch -------------------------------------------------------------------------

    def _relist(self) -> None:
        snap = self.registry.store.snapshot()
        self._reset_indexes()
        self._rv = snap.resource_version
        for pod in snap.list("Pod"):
            self._on_pod(pod, deleted=False)
        for svc in snap.list("Service"):
            self._on_service(svc, deleted=False)
        for es in snap.list("EndpointSlice"):
            self._on_slice(es, deleted=False)
        for dep in snap.list("Deployment"):
            self._dirty_deps.add(_key(dep))
        self._dirty_svcs = set(self._svc_selector) | {k for k in self._slices}
        self.cache.reset()
        self._full = True
        self._runner.run()

    async def _watch_loop(self) -> None:
        while True:
            try:
                async for ev in self.registry.store.watch(self._rv):
                    self._rv = ev.resource_version
                    if self._on_event(ev.type, ev.object):
                        self._runner.run()
                return  # the store closed
            except Gone as exc:
                log.warning("controllers: watch expired (%s); relisting", exc)
                self._relist()

    def _on_event(self, etype: str, obj: Mapping[str, Any]) -> bool:
        """Index one event; False when it is no news (no sync needed for it)."""
        kind = obj.get("kind")
        deleted = etype == "DELETED"
        if kind == "Pod":
            self._on_pod(obj, deleted)
        elif kind == "Service":
            self._on_service(obj, deleted)
        elif kind == "EndpointSlice":
            return self._on_slice(obj, deleted)
        elif kind == "Deployment":
            self._dirty_deps.add(_key(obj))
        elif kind == "Node":
            self.cache.mark_nodes()
        elif kind in ("Namespace", "NetworkPolicy"):
            self._policy_dirty = True
        else:
            return False
        return True

    def _on_pod(self, pod: Mapping[str, Any], deleted: bool) -> None:
        key = _key(pod)
        ns = key[0]
        labels = None if deleted else (_meta(pod).get("labels") or {})
        old_labels = self._pods.set(key, labels)
        for lbls in (old_labels, labels):
            if lbls:
                self._dirty_svcs.update((ns, s) for s in self._services_selecting(ns, lbls))
        owner = None if deleted else owner_name(pod)
        old_owner = self._pod_owner.pop(key, None)
        if old_owner is not None:
            self._owned.get(old_owner, set()).discard(key[1])
            self._dirty_deps.add(old_owner)
        if owner is not None:
            self._pod_owner[key] = (ns, owner)
            self._owned.setdefault((ns, owner), set()).add(key[1])
            self._dirty_deps.add((ns, owner))
        proj = None if deleted else (labels, tuple(pod_ips(pod)))
        if self._pod_proj.get(key) != proj:
            self._policy_dirty = True
            if proj is None:
                self._pod_proj.pop(key, None)
            else:
                self._pod_proj[key] = proj
        self.cache.mark_pod(*key)

    def _services_selecting(self, ns: str, labels: Mapping[str, str]) -> set[str]:
        candidates: set[str] = set()
        index = self._sel_index
        for k, v in labels.items():
            found = index.get((ns, k, v))
            if found:
                candidates.update(found)
        out = set()
        for name in candidates:
            sel = self._svc_selector.get((ns, name))
            if sel and all(labels.get(k) == v for k, v in sel.items()):
                out.add(name)
        return out

    def _on_service(self, svc: Mapping[str, Any], deleted: bool) -> None:
        key = _key(svc)
        old = self._svc_selector.pop(key, None)
        if old:
            for k, v in old.items():
                s = self._sel_index.get((key[0], k, v))
                if s is not None:
                    s.discard(key[1])
                    if not s:
                        del self._sel_index[(key[0], k, v)]
        if not deleted and service_selects(svc):
            sel = dict((svc.get("spec") or {}).get("selector") or {})
            self._svc_selector[key] = sel
            for k, v in sel.items():
                self._sel_index.setdefault((key[0], k, v), set()).add(key[1])
        self._dirty_svcs.add(key)
        self.cache.mark_service(*key)

    def _on_slice(self, es: Mapping[str, Any], deleted: bool) -> bool:
        """Index a slice event; False for the echo of our own write.

        An echo needs no sync: the sync that wrote the slice indexed it and marked the
        desired-state cache itself, before it published. Skipping it keeps a readiness
        flip from costing two syncs, the second of which would delay the next change by
        the runner's ``min_interval``.
        """
        key = _key(es)
        labels = _meta(es).get("labels") or {}
        old_svc = self._slice_svc.pop(key, None)
        if old_svc is not None:
            self._slices.get((key[0], old_svc), set()).discard(key[1])
        svc = labels.get(SERVICE_NAME_LABEL)
        if not deleted and svc and labels.get(MANAGED_BY_LABEL) == MANAGED_BY:
            self._slice_svc[key] = svc
            self._slices.setdefault((key[0], svc), set()).add(key[1])
            written = self._written.pop(key, None)
            if written is not None and written == slice_content(es):
                return False
            self._dirty_svcs.add((key[0], svc))  # not the echo of our own write: re-check
        elif old_svc is not None:
            self._dirty_svcs.add((key[0], old_svc))  # a managed slice vanished or was relabelled
        self.cache.mark_slice(*key)
        return True

    # -- sync --------------------------------------------------------------------------

    async def sync(self) -> None:
        """One level-triggered pass over everything marked dirty (see module docstring)."""
        snap = self.registry.store.snapshot()
        deps, self._dirty_deps = self._dirty_deps, set()
        svcs, self._dirty_svcs = self._dirty_svcs, set()
        try:
            await self._sync_deployments(snap, deps)
            await self._sync_slices(snap, svcs)
        except BaseException:
            self._dirty_deps |= deps  # retry them with the state current at the retry
            self._dirty_svcs |= svcs
            raise
        await self._publish()
        self.syncs += 1

    async def _sync_deployments(self, snap: Any, keys: Iterable[Key]) -> None:
        for key in sorted(keys):
            ns, name = key
            dep = snap.get("Deployment", ns, name)
            pods = [p for p in (snap.get("Pod", ns, n) for n in sorted(self._owned.get(key, ()))) if p is not None]
            if dep is None:
                for pod in pods:
                    if not _meta(pod).get("deletionTimestamp"):
                        await self._delete("Pod", ns, _meta(pod)["name"])
                continue
            orphans = [p for p in pods if not owned_by(p, dep)]  # a deleted incarnation's pods
            for pod in orphans:
                if not _meta(pod).get("deletionTimestamp"):
                    await self._delete("Pod", ns, _meta(pod)["name"])
            pods = [p for p in pods if owned_by(p, dep)]
            todo = plan(dep, pods, _random_suffix)
            if todo.create:
                try:
                    created = await self.registry.apply(list(todo.create))
                except Invalid as exc:
                    log.error("deployment %s/%s: cannot create pods: %s", ns, name, exc)
                    created = []
                for _, pod in created:  # count them now, not when their watch echo arrives
                    pkey = _key(pod)
                    self._pod_owner[pkey] = key
                    self._owned.setdefault(key, set()).add(pkey[1])
                    pods.append(pod)
            for pod_name in todo.delete:
                await self._delete("Pod", ns, pod_name)
            gone = set(todo.delete)
            status = deployment_status(dep, [p for p in pods if _meta(p).get("name") not in gone])
            if status != (dep.get("status") or {}):
                await self.registry.update_status({**dep, "status": status})

    async def _sync_slices(self, snap: Any, keys: Iterable[Key]) -> None:
        writes: list[dict] = []
        deletes: list[Key] = []
        for key in sorted(keys):
            ns, name = key
            svc = snap.get("Service", ns, name)
            existing = {n: snap.get("EndpointSlice", ns, n) for n in self._slices.get(key, ())}
            want: list[dict] = []
            if svc is not None and service_selects(svc):
                sel = self._svc_selector.get(key) or (svc.get("spec") or {}).get("selector") or {}
                names = self._pods.select(ns, sel)
                pods = [p for p in (snap.get("Pod", ns, n) for n in names) if p is not None]
                want = slices_for_service(svc, pods)
            wanted_names = set()
            for es in want:
                sname = es["metadata"]["name"]
                wanted_names.add(sname)
                have = existing.get(sname) or snap.get("EndpointSlice", ns, sname)
                if have is not None and slice_content(have) == slice_content(es):
                    continue
                writes.append(es)
            for sname, have in existing.items():
                if sname not in wanted_names and have is not None:
                    deletes.append((ns, sname))
        if writes:
            for es in writes:
                self._written[_key(es)] = slice_content(es)
            try:
                stored = [obj for _, obj in await self.registry.apply(writes)]
            except Invalid as exc:
                # one bad slice must not block the others: write them one by one
                log.error("endpointslices: batch refused (%s); writing one by one", exc)
                stored = []
                for es in writes:
                    try:
                        stored += [obj for _, obj in await self.registry.apply([es])]
                    except Invalid as exc1:
                        log.error("endpointslice %s/%s refused: %s", es["metadata"]["namespace"], es["metadata"]["name"], exc1)
            for es in stored:
                # index what we wrote now (its watch echo may come after the next sync)
                key = _key(es)
                svc_name = (_meta(es).get("labels") or {}).get(SERVICE_NAME_LABEL)
                if svc_name and self._slice_svc.get(key) != svc_name:
                    self._slice_svc[key] = svc_name
                    self._slices.setdefault((key[0], svc_name), set()).add(key[1])
                self.cache.mark_slice(*key)
        for ns, sname in deletes:
            await self._delete("EndpointSlice", ns, sname)
            old_svc = self._slice_svc.pop((ns, sname), None)
            if old_svc is not None:
                self._slices.get((ns, old_svc), set()).discard(sname)
            self.cache.mark_slice(ns, sname)

    async def _delete(self, kind: str, ns: str, name: str) -> None:
        try:
            await self.registry.delete(kind, ns, name)
        except NotFound:
            pass

    async def _publish(self) -> None:
        """Zone first, then routes: compiling NetworkPolicy (for routes) never delays DNS."""
        snap = self.registry.store.snapshot()
        zone_changed, routes_changed = self.cache.update(snap)
        if zone_changed or self.zone is None:
            self.zone = self.cache.zone(self._next_generation())
            self._pending_sinks |= {id(s) for s in self.sinks if self._targets[id(s)] == "zone"}
        failures = await self._push("zone")
        if self._policy_dirty or self._policy is None:
            self._policy_dirty = False
            policy = policy_table(snap)
            if self._policy is None or policy != self._policy:
                self._policy = policy
                routes_changed = True
        if routes_changed or self.routes is None:
            self.routes = self.cache.routes(self._next_generation(), self._policy)
            self._pending_sinks |= {id(s) for s in self.sinks if self._targets[id(s)] == "routes"}
        failures += await self._push("routes")
        if failures:
            raise failures[0]
        self.ready = True

    async def _push(self, target: str) -> list[BaseException]:
        """Give each sink of ``target`` that is owed a state the current one."""
        failures: list[BaseException] = []
        for sink in self.sinks:
            if self._targets[id(sink)] != target or id(sink) not in self._pending_sinks:
                continue
            try:
                await sink.apply(self.zone if target == "zone" else self.routes)
            except SinkError as exc:
                failures.append(exc)
                continue
            self._pending_sinks.discard(id(sink))
        return failures

    def _next_generation(self) -> int:
        """Monotonic across controller restarts (standalone data planes refuse older ones)."""
        self._generation = max(self._generation + 1, int(time.time() * 1000))
        return self._generation
