"""The pod runtime against the real registry: run pods, status, probes, restarts, deletion."""

import asyncio
import ipaddress
import itertools

import aiohttp
import pytest

from kubelab.controller.config import LabConfig
from kubelab.runtime.manager import PodRuntime, RuntimeConfig
from tests.helpers import is_ready, memory_registry

_subnets = itertools.count(16)


@pytest.fixture
async def lab(tmp_path):
    """A registry plus a runtime whose pods live in their own 127.55.N.0/24."""
    cidr = f"127.55.{next(_subnets)}.0/24"
    config = LabConfig(pod_cidr=ipaddress.ip_network(cidr), state_dir=None)
    async with memory_registry(config) as registry:
        rt_config = RuntimeConfig(pod_cidr=cidr, log_dir=tmp_path / "pods", backoff_base=0.05, backoff_cap=0.2,
                                  max_grace=2, shutdown_grace=1)
        runtime = PodRuntime(registry, config, rt_config)
        await runtime.start()
        lab = Lab(registry, runtime, config, rt_config)
        try:
            yield lab
        finally:
            await lab.runtime.close()


class Lab:
    def __init__(self, registry, runtime, config, rt_config):
        self.registry, self.runtime, self.config, self.rt_config = registry, runtime, config, rt_config

    def pod(self, name, ns="default"):
        return self.registry.store.snapshot().get("Pod", ns, name)

    async def wait_pod(self, name, pred, timeout=10, ns="default"):
        """Wait until pred(pod) holds; returns the pod. Driven by the store's watch."""
        async with asyncio.timeout(timeout):
            since = self.registry.store.snapshot().resource_version
            pod = self.pod(name, ns)
            if pred(pod):
                return pod
            async for _ in self.registry.store.watch(since):
                pod = self.pod(name, ns)
                if pred(pod):
                    return pod

    async def restart_runtime(self):
        await self.runtime.close()
        self.runtime = PodRuntime(self.registry, self.config, self.rt_config)
        await self.runtime.start()


def echo_pod(name, port=8080, labels=None, **container):
    c = {"name": "echo", "image": "kubelab/echo", "ports": [{"name": "http", "containerPort": port}],
         "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1}}
    c.update(container)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {"app": "web"}},
            "spec": {"containers": [c], "terminationGracePeriodSeconds": 5}}


async def get(url):
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            return r.status, await r.text()


async def test_echo_pod_runs_gets_an_ip_and_becomes_ready(lab):
    await lab.registry.create(echo_pod("web-0"))
    pod = await lab.wait_pod("web-0", is_ready)
    st = pod["status"]
    ip = st["podIP"]
    assert ipaddress.ip_address(ip) in lab.config.pod_cidr
    assert st["phase"] == "Running" and st["podIPs"] == [{"ip": ip}] and st["hostIP"] == "127.0.0.1"
    assert {c["type"] for c in st["conditions"]} >= {"Ready", "ContainersReady", "PodScheduled", "Initialized"}
    cs = st["containerStatuses"][0]
    assert cs["ready"] and cs["started"] and cs["restartCount"] == 0 and "running" in cs["state"]
    assert await get(f"http://{ip}:8080/hostname") == (200, "web-0\n")


async def test_pod_env_has_service_variables(lab):
    await lab.registry.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "my-service"},
                               "spec": {"selector": {"app": "x"}, "ports": [{"name": "http", "port": 80}]}})
    svc = lab.registry.store.snapshot().get("Service", "default", "my-service")
    await lab.registry.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "envdump"}, "spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "env | sort"]}]}})
    pod = await lab.wait_pod("envdump", lambda p: p["status"].get("phase") == "Succeeded")
    log = lab.runtime.log_path("default", "envdump")
    text = log.read_text() if log else ""
    assert f"MY_SERVICE_SERVICE_HOST={svc['spec']['clusterIP']}\n" in text
    assert "MY_SERVICE_SERVICE_PORT=80\n" in text and "MY_SERVICE_SERVICE_PORT_HTTP=80\n" in text
    assert f"POD_IP={pod['status']['podIP']}\n" in text and "POD_NAME=envdump\n" in text
    assert "POD_NAMESPACE=default\n" in text and "HOSTNAME=envdump\n" in text
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"


async def test_unknown_image_is_err_image_pull(lab):
    await lab.registry.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nginx"},
                               "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}})
    pod = await lab.wait_pod("nginx", lambda p: p["status"].get("containerStatuses"))
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ErrImagePull" and 'image "nginx:1.27"' in waiting["message"]
    assert pod["status"]["phase"] == "Pending" and not is_ready(pod)
    assert lab.runtime.ready  # the runtime keeps running


async def test_crash_loop_shows_back_off_and_restart_count(lab):
    await lab.registry.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crash"},
                               "spec": {"containers": [{"name": "c", "image": "x",
                                                        "command": ["sh", "-c", "echo boom; exit 2"]}]}})
    pod = await lab.wait_pod("crash", lambda p: any(
        cs["restartCount"] >= 2 and cs["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
        for cs in p["status"].get("containerStatuses", [])))
    cs = pod["status"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] == 2
    assert "back-off" in cs["state"]["waiting"]["message"] and "container=c pod=crash_default" in cs["state"][
        "waiting"]["message"]
    assert pod["status"]["phase"] == "Running"
    assert lab.runtime.log_path("default", "crash").read_text() == "boom\n"
    assert lab.runtime.read_log("default", "crash", "c", tail_lines=1) == b"boom\n"
    assert lab.runtime.read_log("default", "crash", tail_lines=0) == b""
    assert lab.runtime.read_log("default", "crash", "nope") is None
    assert lab.runtime.log_path("default", "crash", previous=True).read_text() == "boom\n"


async def test_readiness_flip_and_liveness_restart(lab):
    await lab.registry.create(echo_pod("flip", livenessProbe={
        "httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2}))
    pod = await lab.wait_pod("flip", is_ready)
    ip = pod["status"]["podIP"]
    await get(f"http://{ip}:8080/sethealth?ok=0")
    pod = await lab.wait_pod("flip", lambda p: not is_ready(p))
    assert pod["status"]["conditions"][2]["reason"] == "ContainersNotReady"
    # liveness fails too: the container is killed and restarted, healthy again
    pod = await lab.wait_pod("flip", lambda p: is_ready(p) and p["status"]["containerStatuses"][0]["restartCount"] == 1,
                             timeout=15)
    assert pod["status"]["podIP"] == ip  # a container restart keeps the pod's IP


async def test_graceful_delete_marks_terminating_then_removes(lab):
    await lab.registry.create(echo_pod("bye"))
    await lab.wait_pod("bye", is_ready)
    marked = await lab.registry.delete("Pod", "default", "bye")
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["deletionGracePeriodSeconds"] == 5
    assert await lab.wait_pod("bye", lambda p: p is None) is None
    assert "default/bye" not in lab.runtime.pods and lab.runtime.ipam.get("default/bye") is None


async def test_simulated_pods_are_left_alone(lab):
    await lab.registry.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sim"},
                               "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                               "status": {"podIP": "10.1.2.3"}})
    await lab.registry.create(echo_pod("real"))
    await lab.wait_pod("real", is_ready)
    assert "default/sim" not in lab.runtime.pods
    assert lab.pod("sim")["status"]["podIP"] == "10.1.2.3"
    await lab.registry.delete("Pod", "default", "sim")  # no hook for simulated pods: gone at once
    assert lab.pod("sim") is None


async def test_runtime_restart_keeps_pod_ips(lab):
    for name in ("a", "b"):
        await lab.registry.create(echo_pod(name))
    ips = {n: (await lab.wait_pod(n, is_ready))["status"]["podIP"] for n in ("a", "b")}
    await lab.restart_runtime()
    for n in ("a", "b"):
        pod = await lab.wait_pod(n, lambda p, n=n: is_ready(p)
                                 and p["status"]["containerStatuses"][0].get("containerID")
                                 and lab.runtime.pods.get(f"default/{n}") is not None)
        assert pod["status"]["podIP"] == ips[n]
    await lab.registry.create(echo_pod("c"))
    c_ip = (await lab.wait_pod("c", is_ready))["status"]["podIP"]
    assert c_ip not in ips.values()


async def test_pods_in_other_namespaces_and_sidecars(lab):
    await lab.registry.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    pod = echo_pod("two", port=8080)
    pod["metadata"]["namespace"] = "shop"
    pod["spec"]["containers"].append({"name": "sidecar", "image": "kubelab/echo", "args": ["--port", "9090"],
                                      "readinessProbe": {"tcpSocket": {"port": 9090}, "periodSeconds": 1}})
    await lab.registry.create(pod)
    pod = await lab.wait_pod("two", is_ready, ns="shop")
    ip = pod["status"]["podIP"]
    assert len(pod["status"]["containerStatuses"]) == 2
    assert await get(f"http://{ip}:8080/") == (200, "two\n")
    assert await get(f"http://{ip}:9090/") == (200, "two\n")  # same pod IP, two processes


async def test_startup_probe_gates_readiness_and_never_policy_fails(lab, tmp_path):
    flag = tmp_path / "started"
    await lab.registry.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "slow"}, "spec": {
        "containers": [{"name": "c", "image": "x", "command": ["sh", "-c", "exec sleep 60"],
                        "startupProbe": {"exec": {"command": ["test", "-e", str(flag)]}, "periodSeconds": 1,
                                         "failureThreshold": 30},
                        "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]}})
    pod = await lab.wait_pod("slow", lambda p: p["status"].get("containerStatuses", [{}])[0].get("state", {}).get(
        "running"))
    cs = pod["status"]["containerStatuses"][0]
    assert not cs["started"] and not cs["ready"]  # running, but the startup probe has not passed
    flag.touch()
    pod = await lab.wait_pod("slow", is_ready)
    assert pod["status"]["containerStatuses"][0]["started"]

    await lab.registry.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "once"}, "spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "x", "command": ["sh", "-c", "exit 5"]}]}})
    pod = await lab.wait_pod("once", lambda p: p["status"].get("phase") == "Failed")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 5 and term["reason"] == "Error"
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


async def test_missing_command_is_a_start_error_with_back_off(lab):
    await lab.registry.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "typo"}, "spec": {
        "containers": [{"name": "c", "image": "x", "command": ["no-such-program-kl"]}]}})
    pod = await lab.wait_pod("typo", lambda p: p["status"].get("containerStatuses", [{}])[0].get("lastState", {}).get(
        "terminated", {}).get("reason") == "StartError")
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 128 and 'exec: "no-such-program-kl": executable file not found in $PATH' == last[
        "message"]
