"""The real kubectl (1.32) against the registry API, through a kubeconfig we wrote."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from types import SimpleNamespace

import pytest

from kubelab.controller.api import _WATCHERS, make_app, serve
from kubelab.controller.kubeconfig import write_kubeconfig
from kubelab.controller.registry import Registry
from kubelab.controller.store import MemoryStore
from tests.helpers import PassThrough, pod, run_command, service, wait_until

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture
async def lab(tmp_path):
    store = MemoryStore()
    reg = Registry(store, PassThrough())
    app = make_app(reg)
    runner, url = await serve(app)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
    env = {**os.environ, "KUBECACHEDIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}

    async def kubectl(*args, stdin: bytes | None = None):
        return await run_command(KUBECTL, "--kubeconfig", str(kubeconfig), *args, env=env, stdin=stdin, timeout=60)

    yield SimpleNamespace(reg=reg, kubectl=kubectl, tmp=tmp_path, app=app, env=env, kubeconfig=kubeconfig)
    await runner.cleanup()
    await store.close()


def web_pod(name, ip):
    return pod(name, labels={"app": "web"}, ip=ip, ready=True)


async def test_get_pods_json_table_and_services(lab):
    await lab.reg.apply([web_pod("web-1", "127.244.0.1"), web_pod("web-2", "127.244.0.2"),
                         service("web", selector={"app": "web"}, ports=[{"port": 80, "protocol": "TCP"}],
                                 type="ClusterIP", cluster_ip="127.96.0.10")])
    rc, out, err = await lab.kubectl("get", "pods", "-o", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert [i["metadata"]["name"] for i in doc["items"]] == ["web-1", "web-2"]
    assert doc["items"][0]["status"]["podIP"] == "127.244.0.1"

    rc, out, err = await lab.kubectl("get", "pods")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split()[:3] == ["web-1", "1/1", "Running"]

    rc, out, err = await lab.kubectl("get", "svc", "-o", "wide")
    assert rc == 0, err
    assert out.splitlines()[1].split()[:5] == ["web", "ClusterIP", "127.96.0.10", "<none>", "80/TCP"]

    rc, out, err = await lab.kubectl("get", "pod", "nope")
    assert rc == 1 and 'Error from server (NotFound): pods "nope" not found' in err


async def test_apply_create_configure_unchanged_delete(lab):
    manifest = lab.tmp / "deploy.yaml"
    text = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: main, image: "busybox:1.36", env: [{name: A, value: "1"}, {name: B, value: "2"}]}
"""
    manifest.write_text(text)
    rc, out, err = await lab.kubectl("apply", "-f", str(manifest))
    assert rc == 0, err
    assert out.strip() == "deployment.apps/web created"
    rc, out, err = await lab.kubectl("apply", "-f", str(manifest))
    assert out.strip() == "deployment.apps/web unchanged", err
    manifest.write_text(text.replace('{name: B, value: "2"}', '{name: C, value: "3"}'))
    rc, out, err = await lab.kubectl("apply", "-f", str(manifest))
    assert out.strip() == "deployment.apps/web configured", err
    stored = lab.reg.store.snapshot().get("Deployment", "default", "web")
    env = stored["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]

    rc, out, err = await lab.kubectl("scale", "deploy", "web", "--replicas=4")
    assert rc == 0 and "scaled" in out, err
    assert lab.reg.store.snapshot().get("Deployment", "default", "web")["spec"]["replicas"] == 4

    rc, out, err = await lab.kubectl("delete", "-f", str(manifest))
    assert rc == 0 and 'deployment.apps "web" deleted' in out, err
    assert lab.reg.store.snapshot().get("Deployment", "default", "web") is None


async def test_get_watch_prints_table_rows(lab):
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(lab.kubeconfig), "get", "pods", "-w", env=lab.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(30):
            # kubectl lists first (nothing yet), then watches: create pods until one shows up
            seen = b""
            i = 0
            while b"web-" not in seen:
                await lab.reg.apply([web_pod(f"web-{i}", f"127.244.0.{i + 1}")])
                i += 1
                try:
                    seen += await asyncio.wait_for(proc.stdout.readline(), 0.5)
                except TimeoutError:
                    continue
            while b"\n" not in seen.split(b"web-", 1)[1]:
                seen += await proc.stdout.readline()
    finally:
        proc.kill()
        await proc.wait()
    row = next(line for line in seen.decode().splitlines() if line.startswith("web-"))
    assert row.split()[1:3] == ["1/1", "Running"]


async def test_delete_waits_for_graceful_deletion(lab):
    await lab.reg.apply([web_pod("slow", "127.244.0.9")])

    def mark(obj):  # what the pod runtime does: mark terminating, delete later
        if obj["metadata"].get("deletionTimestamp"):
            return obj
        return {**obj, "metadata": {**obj["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}

    lab.reg.delete_hooks["Pod"] = mark

    async def finish_later():
        snap = lab.reg.store.snapshot

        def terminating():
            return (snap().get("Pod", "default", "slow") or {}).get("metadata", {}).get("deletionTimestamp")

        await wait_until(terminating, 30, "the pod to be marked terminating")
        await wait_until(lambda: lab.app[_WATCHERS], 30, "kubectl to wait on its watch")
        await lab.reg.delete("Pod", "default", "slow", force=True)

    finisher = asyncio.ensure_future(finish_later())
    rc, out, err = await lab.kubectl("delete", "pod", "slow")
    await finisher
    assert rc == 0 and out.strip() == 'pod "slow" deleted', err
    assert lab.reg.store.snapshot().get("Pod", "default", "slow") is None


async def test_imperative_creates_send_protobuf(lab):
    rc, out, err = await lab.kubectl("create", "namespace", "lab")
    assert (rc, out.strip()) == (0, "namespace/lab created"), err
    rc, out, err = await lab.kubectl("create", "deployment", "web", "--image=kubelab/echo", "--replicas=3",
                                     "--port=8080", "-n", "lab")
    assert rc == 0, err
    dep = lab.reg.store.snapshot().get("Deployment", "lab", "web")
    assert dep["spec"]["replicas"] == 3 and dep["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert dep["spec"]["template"]["spec"]["containers"] == [
        {"name": "echo", "image": "kubelab/echo", "ports": [{"containerPort": 8080}]}]
    rc, out, err = await lab.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", "lab")
    assert rc == 0, err
    svc = lab.reg.store.snapshot().get("Service", "lab", "web")
    assert svc["spec"]["ports"] == [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}]
