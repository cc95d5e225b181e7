"""Durability: SIGKILL the API process in the middle of a stream of writes, restart it,
and find every acknowledged object and no partial batch."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import pytest

from kubelab.controller.client import ApiClient, ApiError

SERVER = r"""
import asyncio, sys
from kubelab.controller.sqlite_store import SqliteStore
from kubelab.controller.registry import Registry
from kubelab.controller.api import make_app, serve

class PassThrough:
    def admit(self, op, new, old, snap):
        return new

async def main():
    store = SqliteStore(sys.argv[1])
    runner, url = await serve(make_app(Registry(store, PassThrough())), "127.0.0.1", 0)
    print(url, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def start_server(state_dir, log):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, str(state_dir), stdout=asyncio.subprocess.PIPE, stderr=log)
    try:
        async with asyncio.timeout(20):
            line = await proc.stdout.readline()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert line.startswith(b"http://"), line
    return proc, line.decode().strip()


def pod(name, ns="default"):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"w": "1"}},
            "spec": {"containers": [{"name": "c", "image": "kubelab/echo"}]}}


def svc(name, batch):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"batch": batch}},
            "spec": {"ports": [{"port": 80}]}}


@pytest.mark.timeout(120)
async def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path):
    log = open(tmp_path / "server.log", "wb")
    proc, url = await start_server(tmp_path / "state", log)
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
                    await client.apply([svc(f"{batch}-{k}", batch) for k in range(8)])
                    acked_batches.add(batch)
                else:
                    name = f"p{wid}-{i}"
                    await client.create(pod(name))
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

    proc, url = await start_server(tmp_path / "state", log)
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
