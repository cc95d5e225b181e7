"""The store keeps bulk-loaded objects out of the cyclic GC's full passes (bench/registry)."""

from __future__ import annotations

import gc

import pytest

from kubelab.controller.admission import Admission
from kubelab.controller.config import LabConfig
from kubelab.controller.registry import Registry
from kubelab.controller.store import BULK_WRITES, MemoryStore, Write, collector_paused


def pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}


@pytest.fixture
def restore_gc():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


def test_collector_paused_turns_gc_off_and_back_on(restore_gc):
    gc.enable()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested: the inner one leaves it to the outer one
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_collector_paused_inactive_or_already_off_changes_nothing(restore_gc):
    gc.enable()
    with collector_paused(False):
        assert gc.isenabled()
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_collector_back_on_after_an_error(restore_gc):
    gc.enable()
    with pytest.raises(RuntimeError):
        with collector_paused():
            raise RuntimeError("boom")
    assert gc.isenabled()


async def test_bulk_commit_freezes_what_it_stored_small_one_does_not(restore_gc):
    gc.unfreeze()
    store = MemoryStore()
    try:
        await store.commit([Write("create", pod("small"))])
        assert gc.get_freeze_count() == 0
        await store.commit([Write("create", pod(f"p{i}")) for i in range(BULK_WRITES)])
        frozen = gc.get_freeze_count()
        assert frozen > BULK_WRITES  # every stored dict (and more) moved to the permanent generation
    finally:
        await store.close()


async def test_bulk_apply_runs_with_gc_paused_and_restores_it(restore_gc):
    gc.enable()
    seen = []

    class Spy(Admission):
        def admit(self, op, new, old, snap):
            seen.append(gc.isenabled())
            return super().admit(op, new, old, snap)

    store = MemoryStore()
    reg = Registry(store, Spy(LabConfig()))
    try:
        await reg.apply([pod("one")])
        assert seen == [True]
        seen.clear()
        await reg.apply([pod(f"p{i}") for i in range(BULK_WRITES)])
        assert seen and not any(seen)
        assert gc.isenabled()
    finally:
        await store.close()


def test_an_object_frozen_alive_that_dies_in_a_cycle_is_freed_by_the_next_full_pass(restore_gc):
    import weakref

    from kubelab.controller.store import HeapSettler

    class Node:
        pass

    a, b = Node(), Node()
    a.peer, b.peer = b, a  # a cycle: only the cyclic GC can free it
    alive = weakref.ref(a)
    heap = HeapSettler(interval=3600)
    heap.settle()  # frozen while still in use
    del a, b
    gc.collect()
    assert alive() is not None  # frozen: a full collection does not see it
    heap.settle()  # a bulk commit within the interval: young generations only
    assert alive() is not None
    heap.last_full -= 3600  # the interval has passed
    heap.settle()
    assert alive() is None
