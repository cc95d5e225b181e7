"""Store conformance: every backend (memory, SQLite) behaves the same."""

from __future__ import annotations

import asyncio

import pytest

from kubelab.controller.sqlite_store import SqliteStore
from kubelab.controller.store import (
    AlreadyExists,
    Conflict,
    Gone,
    MemoryStore,
    NotFound,
    Snapshot,
    Store,
    Write,
)
from tests.helpers import wait_until


def pod(name: str, ns: str = "default", **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": spec or {"containers": [{"name": "c", "image": "x"}]}}


@pytest.fixture(params=["memory", "sqlite"])
async def store(request, tmp_path):
    s: Store = MemoryStore(history=50) if request.param == "memory" else SqliteStore(tmp_path / "r.db", history=50)
    yield s
    await s.close()


async def test_create_assigns_metadata(store):
    (obj,) = await store.commit([Write("create", pod("a"))])
    meta = obj["metadata"]
    assert meta["resourceVersion"] == "1" and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert store.snapshot().get("Pod", "default", "a") == obj
    assert store.snapshot().resource_version == 1


async def test_create_existing_is_already_exists(store):
    await store.commit([Write("create", pod("a"))])
    with pytest.raises(AlreadyExists):
        await store.commit([Write("create", pod("a"))])
    assert store.resource_version == 1


async def test_update_bumps_rv_and_generation_only_on_spec_change(store):
    (a,) = await store.commit([Write("create", pod("a"))])
    labelled = {**a, "metadata": {**a["metadata"], "labels": {"x": "1"}}}
    (b,) = await store.commit([Write("update", labelled)])
    assert b["metadata"]["resourceVersion"] == "2" and b["metadata"]["generation"] == 1
    assert b["metadata"]["uid"] == a["metadata"]["uid"]
    respec = {**b, "spec": {"containers": [{"name": "c", "image": "y"}]}}
    (c,) = await store.commit([Write("update", respec)])
    assert c["metadata"]["generation"] == 2 and c["metadata"]["resourceVersion"] == "3"


async def test_noop_update_stores_nothing(store):
    (a,) = await store.commit([Write("create", pod("a"))])
    (same,) = await store.commit([Write("update", dict(a))])
    assert same["metadata"]["resourceVersion"] == "1"
    assert store.resource_version == 1


async def test_update_missing_is_not_found(store):
    with pytest.raises(NotFound):
        await store.commit([Write("update", pod("ghost"))])


async def test_stale_resource_version_conflicts(store):
    (a,) = await store.commit([Write("create", pod("a"))])
    await store.commit([Write("update", {**a, "spec": {"v": 2}})])
    with pytest.raises(Conflict):
        await store.commit([Write("update", {**a, "spec": {"v": 3}}, expect_rv="1")])
    with pytest.raises(Conflict):
        await store.commit([Write("delete", a, expect_rv="1")])
    assert store.snapshot().get("Pod", "default", "a")["spec"] == {"v": 2}


async def test_delete_returns_last_state_with_new_rv(store):
    (a,) = await store.commit([Write("create", pod("a"))])
    (gone,) = await store.commit([Write("delete", a)])
    assert gone["metadata"]["resourceVersion"] == "2"
    assert store.snapshot().get("Pod", "default", "a") is None
    with pytest.raises(NotFound):
        await store.commit([Write("delete", a)])


async def test_failing_write_in_batch_stores_nothing(store):
    await store.commit([Write("create", pod("a"))])
    events = []
    watch = store.watch()

    async def collect():
        async for ev in watch:
            events.append(ev)

    task = asyncio.ensure_future(collect())
    await asyncio.sleep(0)
    with pytest.raises(AlreadyExists):
        await store.commit([Write("create", pod("b")), Write("create", pod("c")), Write("create", pod("a"))])
    snap = store.snapshot()
    assert [o["metadata"]["name"] for o in snap.list("Pod")] == ["a"]
    assert snap.resource_version == 1
    await store.commit([Write("create", pod("d"))])
    await wait_until(lambda: events, 2, "the watch event", interval=0.001)
    assert [e.object["metadata"]["name"] for e in events] == ["d"]
    assert events[0].resource_version == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_snapshot_isolation(store):
    await store.commit([Write("create", pod("a")), Write("create", pod("b", ns="other"))])
    before = store.snapshot()
    listed = before.list("Pod")
    (a,) = await store.commit([Write("update", {**before.get("Pod", "default", "a"), "spec": {"v": 1}})])
    await store.commit([Write("create", pod("c")), Write("delete", before.get("Pod", "other", "b"))])
    assert before.list("Pod") == listed
    assert before.get("Pod", "default", "a")["spec"] != {"v": 1}
    assert before.get("Pod", "default", "c") is None
    after = store.snapshot()
    assert [o["metadata"]["name"] for o in after.list("Pod")] == ["a", "c"]
    assert after.get("Pod", "default", "a") is a


async def test_list_sorted_by_namespace_then_name(store):
    await store.commit([Write("create", pod(n, ns)) for ns, n in [("b", "x"), ("a", "z"), ("a", "y"), ("b", "a")]])
    snap = store.snapshot()
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in snap.list("Pod")] == [
        ("a", "y"), ("a", "z"), ("b", "a"), ("b", "x")]
    assert [o["metadata"]["name"] for o in snap.list("Pod", "b")] == ["a", "x"]
    assert snap.list("Pod", "none") == [] and snap.list("Service") == []
    assert snap.count("Pod") == 4


async def test_watch_from_resource_version_replays_in_order(store):
    (a,) = await store.commit([Write("create", pod("a"))])
    (a2,) = await store.commit([Write("update", {**a, "spec": {"v": 1}})])
    await store.commit([Write("delete", a2), Write("create", pod("b"))])
    seen = []
    async for ev in store.watch(0):
        seen.append((ev.type, ev.object["metadata"]["name"], ev.resource_version))
        if len(seen) == 4:
            break
    assert seen == [("ADDED", "a", 1), ("MODIFIED", "a", 2), ("DELETED", "a", 3), ("ADDED", "b", 4)]
    resumed = []
    async for ev in store.watch(2):
        resumed.append(ev.resource_version)
        if len(resumed) == 2:
            break
    assert resumed == [3, 4]


async def test_watch_live_events_then_close_ends_it(store):
    got = []

    async def consume():
        async for ev in store.watch():
            got.append(ev.object["metadata"]["name"])

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    await store.commit([Write("create", pod("a"))])
    await store.commit([Write("create", pod("b"))])
    await wait_until(lambda: len(got) == 2, 2, "both watch events", interval=0.001)
    await store.close()
    await asyncio.wait_for(task, 2)
    assert got == ["a", "b"]


async def test_watch_too_old_is_gone(store):
    for i in range(80):  # history keeps 50 (+25% slack before trimming)
        await store.commit([Write("create", pod(f"p{i}"))])
    with pytest.raises(Gone) as exc:
        async for _ in store.watch(1):
            pass
    assert "too old resource version" in str(exc.value)
    oldest = store.oldest_resource_version
    first = None
    async for ev in store.watch(oldest):
        first = ev.resource_version
        break
    assert first == oldest + 1


async def test_slow_watcher_falls_behind_and_gets_gone(store):
    it = store.watch().__aiter__()
    await store.commit([Write("create", pod("first"))])
    assert (await it.__anext__()).object["metadata"]["name"] == "first"
    for i in range(100):
        await store.commit([Write("create", pod(f"p{i}"))])
    with pytest.raises(Gone):
        await it.__anext__()


async def test_snapshot_type_and_empty(store):
    snap = store.snapshot()
    assert isinstance(snap, Snapshot) and snap.resource_version == 0
    assert snap.get("Pod", "default", "a") is None and snap.list("Pod") == []


async def test_cluster_scoped_objects_use_empty_namespace(store):
    await store.commit([Write("create", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lab"}})])
    assert store.snapshot().get("Namespace", "", "lab")["metadata"]["name"] == "lab"


async def test_sqlite_reopen_keeps_objects_and_resource_version(tmp_path):
    s = SqliteStore(tmp_path)
    (a,) = await s.commit([Write("create", pod("a"))])
    await s.commit([Write("create", pod("b")), Write("create", pod("c"))])
    await s.commit([Write("delete", a)])
    await s.close()
    s2 = SqliteStore(tmp_path)
    try:
        snap = s2.snapshot()
        assert snap.resource_version == 4
        assert [o["metadata"]["name"] for o in snap.list("Pod")] == ["b", "c"]
        with pytest.raises(Gone):  # history does not survive a restart: clients relist
            async for _ in s2.watch(2):
                pass
        (d,) = await s2.commit([Write("create", pod("d"))])
        assert d["metadata"]["resourceVersion"] == "5"
    finally:
        await s2.close()


async def test_cancelled_commit_still_lands_consistently(tmp_path):
    s = SqliteStore(tmp_path)
    task = asyncio.ensure_future(s.commit([Write("create", pod("a"))]))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await s.close()  # waits for the in-flight commit
    s2 = SqliteStore(tmp_path)
    try:
        mem = s2.snapshot().get("Pod", "default", "a")
        assert (mem is None) == (s2.snapshot().resource_version == 0)
    finally:
        await s2.close()


async def test_events_carry_the_previous_state(store):
    (a,) = await store.commit([Write("create", pod("a"))])
    (b,) = await store.commit([Write("update", {**a, "spec": {"v": 1}})])
    await store.commit([Write("delete", b)])
    events = []
    async for ev in store.watch(0):
        events.append(ev)
        if len(events) == 3:
            break
    assert events[0].previous is None
    assert events[1].previous is a and events[2].previous is b


async def test_watch_from_a_future_version_is_gone(store):
    await store.commit([Write("create", pod("a"))])
    with pytest.raises(Gone, match="too large"):
        store.watch(50)


async def test_sqlite_new_database_uses_big_pages_and_a_rowid_table(tmp_path):
    import sqlite3

    from kubelab.controller.sqlite_store import PAGE_SIZE

    s = SqliteStore(tmp_path)
    await s.commit([Write("create", pod("a"))])
    await s.close()
    db = sqlite3.connect(str(tmp_path / "registry.db"))
    try:
        assert db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name='objects'").fetchone()
        assert "WITHOUT ROWID" not in sql and "UNIQUE" in sql
    finally:
        db.close()


async def test_sqlite_database_with_the_old_without_rowid_table_still_works(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(str(path))
    db.executescript(
        "CREATE TABLE objects (kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,"
        " rv INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, namespace, name)) WITHOUT ROWID;"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    )
    db.close()
    s = SqliteStore(path)
    (a,) = await s.commit([Write("create", pod("a"))])
    await s.commit([Write("create", pod("b"))])
    await s.commit([Write("update", {**a, "spec": {"containers": [{"name": "c", "image": "y"}]}})])
    await s.commit([Write("delete", pod("b"))])
    await s.close()
    again = SqliteStore(path)
    try:
        snap = again.snapshot()
        assert snap.resource_version == 4
        assert [p["metadata"]["name"] for p in snap.list("Pod")] == ["a"]
        assert snap.get("Pod", "default", "a")["spec"]["containers"][0]["image"] == "y"
    finally:
        await again.close()
