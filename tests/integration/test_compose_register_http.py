"""The compose lab's register sidecar against real HTTP servers on loopback.

A small fake registry (the Kubernetes pod paths, with a bearer token) checks the
sidecar's protocol; the last test runs it against the real registry API so the
simulated-pod contract with admission is checked end to end.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kubelab.runtime.register import Registrar, RegisterConfig
from tests.helpers import namespace, wait_until


def ready_of(pod: dict | None) -> str | None:
    for c in ((pod or {}).get("status") or {}).get("conditions") or ():
        if c["type"] == "Ready":
            return c["status"]
    return None


def failure(code: int) -> web.Response:
    """A bare metav1.Status error, as far as the sidecar reads it."""
    return web.json_response({"kind": "Status", "code": code}, status=code)


class FakeApi:
    """Pods only; 401 without the current token; resourceVersion bumps on each write."""

    def __init__(self, token: str | None = "tok-1") -> None:
        self.token = token
        self.pods: dict[tuple[str, str], dict] = {}
        self.calls: list[str] = []
        self.rv = 0
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/api/v1/namespaces/{ns}/pods", self._create)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._get)
        app.router.add_put("/api/v1/namespaces/{ns}/pods/{name}", self._put)
        app.router.add_delete("/api/v1/namespaces/{ns}/pods/{name}", self._delete)
        self.runner = web.AppRunner(app)

    async def start(self) -> str:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.calls.append(request.method)
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return failure(401)
        return await handler(request)

    def _stamp(self, obj: dict) -> dict:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return obj

    async def _create(self, request: web.Request) -> web.Response:
        obj = await request.json()
        key = (request.match_info["ns"], obj["metadata"]["name"])
        if key in self.pods:
            return failure(409)
        self.pods[key] = self._stamp(obj)
        return web.json_response(obj, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        obj = self.pods.get((request.match_info["ns"], request.match_info["name"]))
        if obj is None:
            return failure(404)
        return web.json_response(obj)

    async def _put(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        obj = await request.json()
        if key not in self.pods:
            return failure(404)
        if obj["metadata"].get("resourceVersion") != self.pods[key]["metadata"]["resourceVersion"]:
            return failure(409)
        self.pods[key] = self._stamp(obj)
        return web.json_response(obj)

    async def _delete(self, request: web.Request) -> web.Response:
        obj = self.pods.pop((request.match_info["ns"], request.match_info["name"]), None)
        if obj is None:
            return failure(404)
        return web.json_response(obj)


class Workload:
    """Stands in for the echo server: /healthz answers 200 or 503."""

    def __init__(self) -> None:
        self.healthy = True
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        self.runner = web.AppRunner(app)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok" if self.healthy else "no", status=200 if self.healthy else 503)

    async def start(self) -> int:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return self.runner.addresses[0][1]


@pytest.fixture
async def api():
    fake = FakeApi()
    fake.url = await fake.start()
    yield fake
    await fake.runner.cleanup()


@pytest.fixture
async def workload():
    w = Workload()
    w.port = await w.start()
    yield w
    await w.runner.cleanup()


def config(api: FakeApi, workload: Workload, **kw: Any) -> RegisterConfig:
    base: dict[str, Any] = dict(
        server=api.url, name="echo-1", namespace="default", labels={"app": "echo"}, ip="auto",
        port=workload.port, period=0.05, resync=0.2, failure_threshold=2, timeout=1.0, token="tok-1",
    )
    base.update(kw)
    return RegisterConfig(**base)


async def test_registers_ready_pod_with_its_address_and_deletes_it_on_close(api, workload):
    reg = Registrar(config(api, workload))
    await reg.start()
    try:
        key = ("default", "echo-1")
        pod = await wait_until(lambda: ready_of(api.pods.get(key)) == "True" and api.pods[key],
                               what="default/echo-1 registered Ready")
        assert pod["status"]["podIP"] == "127.0.0.1"  # "auto": the address that reaches the server
        assert pod["metadata"]["labels"] == {"app": "echo"}
    finally:
        await reg.close()
    assert ("default", "echo-1") not in api.pods
    assert api.calls[-1] == "DELETE"


async def test_ready_condition_follows_the_workload(api, workload):
    reg = Registrar(config(api, workload))
    await reg.start()
    try:
        key = ("default", "echo-1")
        await wait_until(lambda: ready_of(api.pods.get(key)) == "True", what="the pod Ready")
        workload.healthy = False
        await wait_until(lambda: ready_of(api.pods.get(key)) == "False", what="the pod not Ready")
        workload.healthy = True
        await wait_until(lambda: ready_of(api.pods.get(key)) == "True", what="the pod Ready again")
    finally:
        await reg.close()


async def test_recreates_a_pod_the_registry_lost(api, workload):
    reg = Registrar(config(api, workload))
    await reg.start()
    try:
        key = ("default", "echo-1")
        first = await wait_until(lambda: api.pods.get(key), what="the pod registered")
        api.pods.clear()  # the controller restarted with an empty (--ephemeral) registry
        second = await wait_until(lambda: api.pods.get(key), what="the lost pod registered again")
        assert second is not first and second["status"]["podIP"] == "127.0.0.1"
    finally:
        await reg.close()


async def test_rereads_the_kubeconfig_token_on_401(api, workload, tmp_path: Path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("users: [{name: kubelab, user: {token: tok-1}}]\n")
    reg = Registrar(config(api, workload, token=None, kubeconfig=kubeconfig))
    await reg.start()
    try:
        await wait_until(lambda: api.pods.get(("default", "echo-1")), what="the pod registered with tok-1")
        api.token = "tok-2"  # the controller restarted and minted a new token
        kubeconfig.write_text("users: [{name: kubelab, user: {token: tok-2}}]\n")
        api.pods.clear()
        await wait_until(lambda: api.pods.get(("default", "echo-1")), what="the pod registered with tok-2")
    finally:
        await reg.close()
    assert not api.pods


async def test_keeps_retrying_until_the_registry_answers(workload):
    fake = FakeApi()
    # Reserve a port, start the sidecar against it while nothing listens there.
    probe = FakeApi()
    url = await probe.start()
    await probe.runner.cleanup()
    reg = Registrar(RegisterConfig(server=url, name="late", port=workload.port, period=0.05,
                                   resync=0.2, timeout=0.5, token="tok-1", ip="127.0.0.1"))
    await reg.start()
    try:
        await wait_until(lambda: reg.api_errors >= 2, what="two failed API calls")  # connection refused, retried
        assert not reg.registered.is_set()
        host, port = url.removeprefix("http://").split(":")
        await fake.runner.setup()
        await web.TCPSite(fake.runner, host, int(port)).start()
        await wait_until(lambda: fake.pods.get(("default", "late")), timeout=10, what="default/late registered")
    finally:
        await reg.close()
        await fake.runner.cleanup()


async def test_against_the_real_registry_api(workload):
    pytest.importorskip("kubelab.controller.api")
    from kubelab.controller.admission import Admission
    from kubelab.controller.api import make_app, serve
    from kubelab.controller.config import LabConfig
    from kubelab.controller.registry import Registry
    from kubelab.controller.store import MemoryStore

    registry = Registry(MemoryStore(), Admission(LabConfig()))
    await registry.apply([namespace("default")])
    runner, url = await serve(make_app(registry, token="real-token"))

    def stored() -> dict | None:
        return registry.store.snapshot().get("Pod", "default", "echo-9")

    reg = Registrar(RegisterConfig(server=url, name="echo-9", labels={"app": "echo"}, ip="127.244.0.9",
                                   port=workload.port, period=0.05, resync=0.2, failure_threshold=1,
                                   timeout=1.0, token="real-token"))
    await reg.start()
    try:
        pod = await wait_until(lambda: ready_of(stored()) == "True" and stored(), what="default/echo-9 stored Ready")
        assert pod["status"]["podIP"] == "127.244.0.9"
        assert pod["metadata"]["annotations"].get("kubelab.dev/simulated") == "true"
        workload.healthy = False  # the status change must reach the stored simulated pod
        await wait_until(lambda: ready_of(stored()) == "False", what="default/echo-9 stored not Ready")
        labels = copy.deepcopy(stored()["metadata"]["labels"])
        assert labels == {"app": "echo"}
    finally:
        await reg.close()
        await runner.cleanup()
    assert stored() is None
