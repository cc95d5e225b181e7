"""The registry's write path: metadata rules, namespaces, atomic apply, admission hook."""

from __future__ import annotations

import pytest

from kubelab.controller.registry import BadRequest, Forbidden, Overlay, Registry, RequestInvalid
from kubelab.controller.store import AlreadyExists, Conflict, MemoryStore, NotFound
from tests.helpers import Invalid, PassThrough, PortCheck, namespace


class Recording(PortCheck):
    """The tiny admission the brief asks for: stores what it is given (refusing a Service
    port outside 1-65535), and records every call."""

    def __init__(self):
        self.calls = []

    def admit(self, op, new, old, snap):
        self.calls.append((op, (new or old)["metadata"]["name"]))
        return super().admit(op, new, old, snap)


def svc(name, port=80, ns=None):
    meta = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"ports": [{"port": port}]}}


@pytest.fixture
async def reg():
    store = MemoryStore()
    r = Registry(store, Recording())
    await r.start()
    yield r
    await store.close()


async def test_start_creates_system_namespaces_once(reg):
    names = [o["metadata"]["name"] for o in reg.store.snapshot().list("Namespace")]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
    rv = reg.store.resource_version
    reg._started = False
    await reg.start()
    assert reg.store.resource_version == rv


async def test_namespace_defaults_to_default(reg):
    obj = await reg.create(svc("web"))
    assert obj["metadata"]["namespace"] == "default"
    assert reg.store.snapshot().get("Service", "default", "web") is obj


async def test_missing_namespace_is_not_found(reg):
    with pytest.raises(NotFound) as exc:
        await reg.create(svc("web", ns="nope"))
    assert (exc.value.kind, exc.value.name) == ("Namespace", "nope")


async def test_system_namespaces_always_exist():
    r = Registry(MemoryStore(), PassThrough())  # not started: no Namespace objects yet
    assert (await r.create(svc("web", ns="kube-system")))["metadata"]["namespace"] == "kube-system"


async def test_cluster_scoped_kind_drops_namespace(reg):
    obj = await reg.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lab", "namespace": "x"}})
    assert "namespace" not in obj["metadata"]


async def test_unknown_kind_and_missing_name(reg):
    with pytest.raises(BadRequest):
        await reg.create({"apiVersion": "v1", "kind": "Gizmo", "metadata": {"name": "g"}})
    with pytest.raises(RequestInvalid) as exc:
        await reg.create({"apiVersion": "v1", "kind": "Service", "metadata": {}})
    assert exc.value.causes[0].field == "metadata.name"


async def test_generate_name(reg):
    obj = await reg.create({"apiVersion": "v1", "kind": "Service", "metadata": {"generateName": "web-"}, "spec": {}})
    assert obj["metadata"]["name"].startswith("web-") and len(obj["metadata"]["name"]) == 9


async def test_create_ignores_client_server_fields(reg):
    o = svc("web")
    o["metadata"].update(uid="u", resourceVersion="99", creationTimestamp="2000-01-01T00:00:00Z")
    obj = await reg.create(o)
    assert obj["metadata"]["uid"] != "u" and obj["metadata"]["resourceVersion"] != "99"
    assert obj["metadata"]["creationTimestamp"] != "2000-01-01T00:00:00Z"


async def test_create_duplicate(reg):
    await reg.create(svc("web"))
    with pytest.raises(AlreadyExists):
        await reg.create(svc("web"))


async def test_update_optimistic_concurrency(reg):
    a = await reg.create(svc("web"))
    b = await reg.update({**a, "spec": {"ports": [{"port": 81}]}})
    assert b["metadata"]["generation"] == 2
    with pytest.raises(Conflict):
        await reg.update({**a, "spec": {"ports": [{"port": 82}]}})
    # without a resourceVersion the update is unconditional; uid survives whatever the client says
    c = await reg.update({**svc("web", 83), "metadata": {"name": "web", "uid": "forged"}})
    assert c["metadata"]["uid"] == a["metadata"]["uid"]


async def test_invalid_update_stores_nothing(reg):
    a = await reg.create(svc("web"))
    rv = reg.store.resource_version
    with pytest.raises(Invalid):
        await reg.update({**a, "spec": {"ports": [{"port": 0}]}})
    assert reg.store.resource_version == rv


async def test_patch_is_merge_patch(reg):
    await reg.create(svc("web"))
    out = await reg.patch("Service", "default", "web", {"metadata": {"labels": {"a": "b"}}})
    assert out["metadata"]["labels"] == {"a": "b"} and out["spec"] == {"ports": [{"port": 80}]}
    out = await reg.patch("Service", "default", "web", {"metadata": {"labels": {"a": None}}})
    assert out["metadata"]["labels"] == {}


async def test_noop_patch_keeps_resource_version(reg):
    a = await reg.create(svc("web"))
    out = await reg.patch("Service", "default", "web", {"spec": {"ports": [{"port": 80}]}})
    assert out["metadata"]["resourceVersion"] == a["metadata"]["resourceVersion"]


async def test_apply_reports_created_configured_unchanged(reg):
    res = await reg.apply([svc("a"), svc("b")])
    assert [a for a, _ in res] == ["created", "created"]
    res = await reg.apply([svc("a"), svc("b", 81), svc("c")])
    assert [a for a, _ in res] == ["unchanged", "configured", "created"]
    assert res[1][1]["spec"]["ports"][0]["port"] == 81
    assert res[1][1]["metadata"]["resourceVersion"] == str(reg.store.resource_version - 1)


async def test_apply_is_all_or_nothing(reg):
    rv = reg.store.resource_version
    with pytest.raises(Invalid) as exc:
        await reg.apply([svc("a"), namespace("lab"), svc("b", 0), svc("c")])
    assert exc.value.causes[0].field == "spec.ports[0].port"
    snap = reg.store.snapshot()
    assert snap.resource_version == rv and snap.list("Service") == []
    assert snap.get("Namespace", "", "lab") is None


async def test_apply_sees_earlier_objects_of_the_batch(reg):
    seen = []

    class Spy(PassThrough):
        def admit(self, op, new, old, snap):
            seen.append([o["metadata"]["name"] for o in snap.list("Service")])
            return new

    reg.admission = Spy()
    res = await reg.apply([namespace("lab"), svc("a", ns="lab"), svc("b", ns="lab"), svc("a", 90, ns="lab")])
    assert seen == [[], [], ["a"], ["a", "b"]]
    assert [a for a, _ in res] == ["created", "created", "created", "configured"]
    stored = reg.store.snapshot().get("Service", "lab", "a")
    assert stored["spec"]["ports"][0]["port"] == 90


async def test_apply_keeps_status_when_manifest_has_none(reg):
    a = await reg.create(svc("web"))
    await reg.update_status({**a, "status": {"loadBalancer": {"ingress": [{"ip": "127.240.0.1"}]}}})
    res = await reg.apply([svc("web")])
    assert res[0][0] == "unchanged"
    assert res[0][1]["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.240.0.1"


async def test_update_status_uses_its_own_op(reg):
    a = await reg.create(svc("web"))
    reg.admission.calls.clear()
    await reg.update_status({**a, "status": {"x": 1}})
    assert reg.admission.calls == [("update_status", "web")]


async def test_delete_namespace_deletes_its_objects(reg):
    await reg.apply([namespace("lab"), svc("a", ns="lab"), svc("b", ns="lab"), svc("keep")])
    rv = reg.store.resource_version
    await reg.delete("Namespace", "", "lab")
    snap = reg.store.snapshot()
    assert snap.list("Service", "lab") == [] and snap.get("Namespace", "", "lab") is None
    assert snap.get("Service", "default", "keep") is not None
    assert snap.resource_version == rv + 3  # one commit, three deletions


async def test_default_namespace_cannot_be_deleted(reg):
    with pytest.raises(Forbidden):
        await reg.delete("Namespace", "", "default")


async def test_delete_hook_defers_deletion(reg):
    await reg.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}})
    reg.delete_hooks["Pod"] = lambda o: {**o, "metadata": {**o["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    marked = await reg.delete("Pod", "default", "p")
    assert reg.store.snapshot().get("Pod", "default", "p")["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
    await reg.delete("Pod", "default", "p", force=True)
    assert reg.store.snapshot().get("Pod", "default", "p") is None


async def test_delete_missing_and_stale(reg):
    with pytest.raises(NotFound):
        await reg.delete("Service", "default", "ghost")
    await reg.create(svc("web"))
    with pytest.raises(Conflict):
        await reg.delete("Service", "default", "web", expect_rv="1")


async def test_dry_run_stores_nothing(reg):
    rv = reg.store.resource_version
    out = await reg.create(svc("web"), dry_run=True)
    assert out["metadata"]["name"] == "web"
    await reg.apply([svc("x")], dry_run=True)
    assert reg.store.resource_version == rv


def test_overlay_merges_pending_writes():
    from kubelab.controller.store import Snapshot

    o = Overlay(Snapshot(0))
    o.put("Pod", "b", "x", {"kind": "Pod", "metadata": {"name": "x", "namespace": "b"}})
    o.put("Pod", "a", "y", {"kind": "Pod", "metadata": {"name": "y", "namespace": "a"}})
    assert [p["metadata"]["name"] for p in o.list("Pod")] == ["y", "x"]
    o.put("Pod", "a", "y", None)
    assert [p["metadata"]["name"] for p in o.list("Pod")] == ["x"]
    assert o.get("Pod", "a", "y") is None and o.list("Pod", "a") == []
