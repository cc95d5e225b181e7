"""Durability: SIGKILL the API process in the middle of a stream of writes, restart it,
and find every acknowledged object and no partial batch."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from kubelab.controller.client import ApiClient, ApiError
from tests.helpers import pod, service, start_sqlite_api


@pytest.mark.timeout(120)
async def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path):
    log = open(tmp_path / "server.log", "wb")
    proc, url = await start_sqlite_api(tmp_path / "state", log)
    acked_pods: set[str] = set()
    acked_batches: set[str] = set()
    attempted_batches: set[str] = set()
    enough = asyncio.Event()

    async def writer(wid: int, client: ApiClient) -> None:
        i = 0
        while True:
            i += 1
            try:
                if i % 3 == 0:
                    batch = f"b{wid}-{i}"
                    attempted_batches.add(batch)
                    await client.apply([service(f"{batch}-{k}", None, labels={"batch": batch}) for k in range(8)])
                    acked_batches.add(batch)
                else:
                    name = f"p{wid}-{i}"
                    await client.create(pod(name, labels={"w": "1"}))
                    acked_pods.add(name)
            except (OSError, aiohttp.ClientError, ApiError, asyncio.TimeoutError):
                return  # the server is gone
            if len(acked_pods) + len(acked_batches) >= 150:
                enough.set()

    clients = [ApiClient(url) for _ in range(4)]
    try:
        tasks = [asyncio.ensure_future(writer(w, c)) for w, c in enumerate(clients)]
        async with asyncio.timeout(60):
            await enough.wait()
        proc.kill()  # SIGKILL while the writers still have requests in flight
        await proc.wait()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
    finally:
        for c in clients:
            await c.close()
    assert acked_pods and acked_batches

    proc, url = await start_sqlite_api(tmp_path / "state", log)
    try:
        async with ApiClient(url) as client:
            pods = {o["metadata"]["name"] for o in await client.list("Pod", "default")}
            services = await client.list("Service", "default")
    finally:
        proc.kill()
        await proc.wait()
        log.close()
    assert acked_pods <= pods, f"lost acknowledged pods: {sorted(acked_pods - pods)[:5]}"
    by_batch: dict[str, int] = {}
    for s in services:
        by_batch[s["metadata"]["labels"]["batch"]] = by_batch.get(s["metadata"]["labels"]["batch"], 0) + 1
    assert acked_batches <= set(by_batch), "lost an acknowledged batch"
    partial = {b: n for b, n in by_batch.items() if n != 8}
    assert not partial, f"partial batches after the crash: {partial}"
    assert set(by_batch) <= attempted_batches
