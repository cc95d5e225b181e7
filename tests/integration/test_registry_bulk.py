"""Bulk applies (the bench's 60,000-object files, scaled down): atomic and durable on SQLite
even when the server is SIGKILLed while a bulk batch (>= BULK_WRITES objects, the path
with the collector paused and the heap frozen) is being written."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from kubelab.controller.client import ApiClient, ApiError
from kubelab.controller.store import BULK_WRITES
from tests.helpers import start_sqlite_api

BATCH = BULK_WRITES + 200


def pod(name, batch):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"batch": batch}},
            "spec": {"containers": [{"name": "c", "image": "kubelab/echo"}]},
            "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.mark.timeout(120)
async def test_sigkill_during_bulk_applies_keeps_every_acknowledged_batch_whole(tmp_path):
    log = open(tmp_path / "server.log", "wb")
    proc, url = await start_sqlite_api(tmp_path / "state", log)
    acked: list[str] = []
    attempted: list[str] = []
    enough = asyncio.Event()

    async def writer(client: ApiClient) -> None:
        i = 0
        while True:
            i += 1
            batch = f"b{i}"
            attempted.append(batch)
            try:
                await client.apply([pod(f"{batch}-{k}", batch) for k in range(BATCH)], brief=True)
            except (OSError, aiohttp.ClientError, ApiError, asyncio.TimeoutError):
                return  # the server is gone
            acked.append(batch)
            if len(acked) >= 3:
                enough.set()

    client = ApiClient(url)
    try:
        task = asyncio.ensure_future(writer(client))
        async with asyncio.timeout(60):
            await enough.wait()
        proc.kill()  # the writer has the next bulk batch in flight
        await proc.wait()
        async with asyncio.timeout(30):
            await task
    finally:
        await client.close()

    proc, url = await start_sqlite_api(tmp_path / "state", log)
    try:
        async with ApiClient(url) as c:
            pods = await c.list("Pod", "default")
    finally:
        proc.kill()
        await proc.wait()
        log.close()
    by_batch: dict[str, int] = {}
    for p in pods:
        b = p["metadata"]["labels"]["batch"]
        by_batch[b] = by_batch.get(b, 0) + 1
    assert set(acked) <= set(by_batch), f"lost acknowledged batches: {sorted(set(acked) - set(by_batch))}"
    assert all(n == BATCH for n in by_batch.values()), f"partial batch after the crash: {by_batch}"
    assert set(by_batch) <= set(attempted)
