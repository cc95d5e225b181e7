"""The object store: versioned Kubernetes objects, atomic batches, snapshots and watch.

Why it looks like this:

* **One global resourceVersion.** Every stored change (create, update, delete) takes the
  next integer, as etcd's revision does for the apiserver. A batch takes consecutive
  numbers; ``Snapshot.resource_version`` is the last one it contains.
* **Snapshots are free.** The state is a three-level persistent map (kind -> namespace ->
  name -> object). A commit copies only the maps it touches (path copying with an owner
  token, like Clojure's transients), so ``snapshot()`` is O(1) and a snapshot never
  changes. Objects themselves are shared, never copied: treat every dict you get from the
  store as immutable, and the store takes ownership of the dicts you commit.
* **Watch is a cursor into one shared history**, not a queue per watcher: a commit appends
  its events once and wakes everyone, so fan-out costs nothing per watcher. The history
  is bounded; a watcher that falls further behind than it (or asks for an older version)
  gets :class:`Gone` and must relist, as with the apiserver's 410.
* Backends persist a batch *before* it becomes visible (``_persist``), so whatever a
  caller saw acknowledged is durable (:mod:`kubelab.controller.sqlite_store`).
* **Stored objects are out of the cyclic GC's sight.** They are plain JSON trees (no
  cycles; reference counting frees them), yet with 60,000 objects loaded every full
  collection walks a million dicts: 0.6-0.8 s with the event loop stopped, which is what
  a readiness flip's p99 would see. After a bulk commit (:data:`BULK_WRITES` writes or
  more) the store calls :meth:`HeapSettler.settle`, which moves everything alive into the
  permanent generation (``gc.freeze()``); :func:`collector_paused` keeps the collector
  off while a bulk batch allocates (bench/registry/README.md has the numbers).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # kind, namespace, name

DEFAULT_HISTORY = 200_000
BULK_WRITES = 1000  # a batch at least this big is a bulk load: see HeapSettler


class StoreError(Exception):
    """Base of the store's refusals; carries the object's identity for Status bodies."""

    def __init__(self, kind: str = "", namespace: str = "", name: str = "", message: str = "") -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        super().__init__(message or self._default_message())

    def _default_message(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{type(self).__name__}: {self.kind} {where}"


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """The write named a resourceVersion that is no longer the stored one."""


class Gone(StoreError):
    """A watch asked for history older than the store keeps (HTTP 410, reason Expired)."""

    def __init__(self, requested: int, oldest: int, *, too_large: bool = False) -> None:
        self.requested, self.oldest = requested, oldest
        what = "too large" if too_large else "too old"
        super().__init__(message=f"{what} resource version: {requested} ({oldest})")


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # ADDED | MODIFIED | DELETED
    object: dict
    resource_version: int
    previous: dict | None = None  # the state before a MODIFIED/DELETED (selector transitions)


@dataclass(frozen=True, slots=True)
class Write:
    op: str  # create | update | delete
    obj: dict
    expect_rv: str | None = None


def object_key(obj: dict) -> Key:
    meta = obj.get("metadata") or {}
    return obj.get("kind", ""), meta.get("namespace") or "", meta.get("name") or ""


def new_uid() -> str:
    """A random (version 4) UUID string; ten times cheaper than ``str(uuid.uuid4())``."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@contextlib.contextmanager
def collector_paused(active: bool = True) -> Iterator[None]:
    """Keep the cyclic GC off while a bulk batch allocates (JSON trees have no cycles).

    Without it, building 60,000 objects triggers full collections that walk the whole
    heap again and again (a third of the time of a bulk apply). Nested and concurrent
    uses are harmless: only the outermost one that found the GC on turns it back on.
    """
    if not active or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


FULL_GC_INTERVAL = 60.0  # seconds: at most one full collection this often (see HeapSettler)


@dataclass
class HeapSettler:
    """After a bulk commit: collect the young garbage, then freeze what survived.

    Frozen objects are still freed by reference counting when dropped, but one that
    later dies in a reference cycle is only collected once unfrozen. So at most once
    per ``interval`` everything is unfrozen and fully collected first: the leak is
    bounded by time, and the full pass (1-2 s at 60k objects) does not run on every
    bulk commit.
    """

    interval: float = FULL_GC_INTERVAL
    last_full: float = field(default_factory=time.monotonic)

    def settle(self) -> None:
        now = time.monotonic()
        if now - self.last_full >= self.interval:
            self.last_full = now
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)
        gc.freeze()


def now_timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- persistent maps ------------------------------------------------------------------------


class _Map(dict):
    """A dict owned by one transaction; read-only once that transaction is committed.

    ``sorted_keys`` is shared by copies whose key set is unchanged (an update of an
    existing object does not re-sort 50,000 names); ``sorted_values`` caches the values
    in that order and is only built for frozen maps.
    """

    __slots__ = ("owner", "sorted_keys", "sorted_values")

    def __init__(self, owner: object, *args: Any) -> None:
        super().__init__(*args)
        self.owner = owner
        self.sorted_keys: list | None = None
        self.sorted_values: list | None = None


_EMPTY = _Map(None)


class _Txn:
    """Path-copying writer over a root: copies each map once, on its first write."""

    __slots__ = ("token", "root")

    def __init__(self, root: _Map) -> None:
        self.token = object()
        self.root = root

    def _own(self, m: _Map) -> _Map:
        if m.owner is self.token:
            m.sorted_values = None
            return m
        copy = _Map(self.token, m)
        copy.sorted_keys = m.sorted_keys
        return copy

    def get(self, key: Key) -> dict | None:
        kind, ns, name = key
        by_ns = self.root.get(kind)
        if by_ns is None:
            return None
        names = by_ns.get(ns)
        return None if names is None else names.get(name)

    @staticmethod
    def _set(m: _Map, key: str, value: Any) -> None:
        if value is None:
            if key in m:
                del m[key]
                m.sorted_keys = None
        else:
            if key not in m:
                m.sorted_keys = None
            m[key] = value

    def put(self, key: Key, obj: dict | None) -> None:
        kind, ns, name = key
        root = self._own(self.root)
        by_ns = self._own(root.get(kind, _EMPTY))
        names = self._own(by_ns.get(ns, _EMPTY))
        self._set(names, name, obj)
        self._set(by_ns, ns, names if names else None)
        self._set(root, kind, by_ns if by_ns else None)
        self.root = root


def _sorted_values(m: _Map) -> list:
    cached = m.sorted_values
    if cached is None:
        keys = m.sorted_keys
        if keys is None:
            keys = m.sorted_keys = sorted(m)
        cached = m.sorted_values = [m[k] for k in keys]
    return cached


def _sorted_keys(m: _Map) -> list:
    keys = m.sorted_keys
    if keys is None:
        keys = m.sorted_keys = sorted(m)
    return keys


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the whole store at ``resource_version``."""

    resource_version: int
    _root: _Map = field(default_factory=lambda: _EMPTY, repr=False, compare=False)

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        by_ns = self._root.get(kind)
        if by_ns is None:
            return None
        names = by_ns.get(namespace or "")
        return None if names is None else names.get(name)

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        """Objects of ``kind`` (in ``namespace``, or all when None), sorted by (namespace, name)."""
        by_ns = self._root.get(kind)
        if by_ns is None:
            return []
        if namespace is not None:
            names = by_ns.get(namespace)
            return [] if names is None else list(_sorted_values(names))
        if len(by_ns) == 1:
            return list(_sorted_values(next(iter(by_ns.values()))))
        out: list[dict] = []
        for ns in _sorted_keys(by_ns):
            out.extend(_sorted_values(by_ns[ns]))
        return out

    def count(self, kind: str, namespace: str | None = None) -> int:
        by_ns = self._root.get(kind)
        if by_ns is None:
            return 0
        if namespace is not None:
            return len(by_ns.get(namespace, ()))
        return sum(len(m) for m in by_ns.values())

    def kinds(self) -> list[str]:
        return list(_sorted_keys(self._root))

    def namespaces_of(self, kind: str) -> list[str]:
        by_ns = self._root.get(kind)
        return [] if by_ns is None else list(_sorted_keys(by_ns))


# -- the store --------------------------------------------------------------------------------


def _spec_changed(old: dict, new: dict) -> bool:
    return old.get("spec") != new.get("spec")


def same_content(old: dict, new: dict) -> bool:
    """True when ``new`` would store nothing new (metadata bookkeeping aside)."""
    if old.keys() != new.keys():
        return False
    for k, v in new.items():
        if k == "metadata":
            continue
        if old[k] != v:
            return False
    om, nm = old.get("metadata") or {}, new.get("metadata") or {}
    for k in om.keys() | nm.keys():
        if k in ("resourceVersion", "managedFields"):
            continue
        if om.get(k) != nm.get(k):
            return False
    return True


class Store(abc.ABC):
    """Commit batches atomically, hand out snapshots, stream events.

    Subclasses implement durability in :meth:`_persist` (called with the batch's final
    per-key states before the batch becomes visible) and may preload state with
    :meth:`_load`.
    """

    def __init__(self, *, history: int = DEFAULT_HISTORY) -> None:
        self._root: _Map = _Map(None)
        self._rv = 0
        self._history: list[Event] = []
        self._first_rv = 1  # resource version of _history[0]
        self._max_history = max(1, history)
        self._wakeup: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self._tasks: set[asyncio.Future] = set()
        self.heap = HeapSettler()

    # -- hooks for backends --

    def _load(self, objects: Iterable[dict], resource_version: int) -> None:
        txn = _Txn(self._root)
        for obj in objects:
            txn.put(object_key(obj), obj)
        self._root = txn.root
        self._freeze(txn)
        self._rv = resource_version
        self._first_rv = resource_version + 1

    @staticmethod
    def _freeze(txn: _Txn) -> None:
        txn.token = object()  # maps owned by the old token can never be written again

    async def _persist(self, changes: dict[Key, dict | None], resource_version: int) -> None:
        """Make ``changes`` (key -> final object, None = deleted) durable. Default: nothing."""

    # -- public API --

    @property
    def resource_version(self) -> int:
        return self._rv

    def snapshot(self) -> Snapshot:
        return Snapshot(self._rv, self._root)

    async def commit(self, writes: Sequence[Write]) -> list[dict]:
        """Apply ``writes`` all or nothing and return the stored objects, in order.

        Assigns ``metadata.uid``, ``resourceVersion``, ``creationTimestamp`` and
        ``generation``. An update equal to the stored object stores nothing and returns the
        stored object (no new resourceVersion, no event). For a delete the result is the
        object's last state with the deletion's resourceVersion.
        """
        if self._closed:
            raise StoreError(message="store is closed")
        # The commit runs as its own task: a caller cancelled while the backend is
        # writing must not leave durable state and memory disagreeing.
        task = asyncio.ensure_future(self._commit(list(writes)))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return await asyncio.shield(task)

    def _task_done(self, task: asyncio.Future) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here in case the caller was cancelled

    async def _commit(self, writes: list[Write]) -> list[dict]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            txn = _Txn(self._root)
            rv = self._rv
            now = now_timestamp()
            results: list[dict] = []
            events: list[Event] = []
            changes: dict[Key, dict | None] = {}
            for i, w in enumerate(writes):
                if i and i % 2000 == 0:
                    await asyncio.sleep(0)  # nothing is visible until the swap below
                key = object_key(w.obj)
                kind, ns, name = key
                if not kind or not name:
                    raise StoreError(kind, ns, name, "object needs kind and metadata.name")
                old = txn.get(key)
                if w.op == "create":
                    if old is not None:
                        raise AlreadyExists(kind, ns, name)
                    rv += 1
                    meta = dict(w.obj.get("metadata") or {})
                    meta["uid"] = meta.get("uid") or new_uid()
                    meta["resourceVersion"] = str(rv)
                    meta["creationTimestamp"] = meta.get("creationTimestamp") or now
                    meta["generation"] = 1
                    meta.pop("managedFields", None)
                    obj = {**w.obj, "metadata": meta}
                    events.append(Event("ADDED", obj, rv))
                elif w.op == "update":
                    if old is None:
                        raise NotFound(kind, ns, name)
                    old_meta = old["metadata"]
                    if w.expect_rv and w.expect_rv != old_meta.get("resourceVersion"):
                        raise Conflict(kind, ns, name)
                    if same_content(old, w.obj):
                        results.append(old)
                        continue
                    rv += 1
                    meta = dict(w.obj.get("metadata") or {})
                    meta["uid"] = old_meta.get("uid")
                    meta["creationTimestamp"] = old_meta.get("creationTimestamp")
                    meta["resourceVersion"] = str(rv)
                    gen = old_meta.get("generation") or 1
                    meta["generation"] = gen + 1 if _spec_changed(old, w.obj) else gen
                    meta.pop("managedFields", None)
                    obj = {**w.obj, "metadata": meta}
                    events.append(Event("MODIFIED", obj, rv, old))
                elif w.op == "delete":
                    if old is None:
                        raise NotFound(kind, ns, name)
                    if w.expect_rv and w.expect_rv != old["metadata"].get("resourceVersion"):
                        raise Conflict(kind, ns, name)
                    rv += 1
                    obj = {**old, "metadata": {**old["metadata"], "resourceVersion": str(rv)}}
                    events.append(Event("DELETED", obj, rv, old))
                    txn.put(key, None)
                    changes[key] = None
                    results.append(obj)
                    continue
                else:
                    raise StoreError(kind, ns, name, f"unknown write op {w.op!r}")
                txn.put(key, obj)
                changes[key] = obj
                results.append(obj)
            if not events:
                return results
            await self._persist(changes, rv)
            self._freeze(txn)
            self._root = txn.root
            self._rv = rv
            self._publish(events)
            if len(events) >= BULK_WRITES:
                self.heap.settle()
            return results

    def _publish(self, events: list[Event]) -> None:
        hist = self._history
        hist.extend(events)
        limit = self._max_history
        if len(hist) > limit + limit // 4:  # trim in chunks: amortised O(1) per event
            excess = len(hist) - limit
            del hist[:excess]
            self._first_rv += excess
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    @property
    def oldest_resource_version(self) -> int:
        """The oldest version a watch can resume from (events after it are all kept)."""
        return self._first_rv - 1

    def watch(self, since_rv: int | None = None) -> AsyncIterator[Event]:
        """Events with resourceVersion > ``since_rv`` (default: the version now), forever.

        The starting point is fixed when ``watch`` is called, not when iteration starts.
        Raises :class:`Gone` when that history is no longer kept: here, or later if the
        watcher falls further behind than the kept history. Ends when the store closes.
        """
        pos = self._rv + 1 if since_rv is None else since_rv + 1
        if pos < self._first_rv:
            raise Gone(pos - 1, self._first_rv - 1)
        if pos > self._rv + 1:  # a version from before a restart of an in-memory store: relist
            raise Gone(pos - 1, self._first_rv - 1, too_large=True)
        return self._follow(pos)

    async def _follow(self, pos: int) -> AsyncIterator[Event]:
        while True:
            while pos <= self._rv:
                idx = pos - self._first_rv
                if idx < 0:
                    raise Gone(pos - 1, self._first_rv - 1)
                ev = self._history[idx]
                pos += 1
                yield ev
            if self._closed:
                return
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            await self._wakeup.wait()

    async def close(self) -> None:
        """Refuse new commits, finish the ones in flight, end every watch."""
        self._closed = True
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None


class MemoryStore(Store):
    """The store without persistence: tests and ``kubelab up --ephemeral``."""
