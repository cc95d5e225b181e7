"""The runtime's pod-network hook (NetworkPolicy enforcement's entry point) in netns mode:
awaited after the pod's namespace exists and before any container starts, with the pod IP
already published; ``netns_of_ip`` maps a pod IP to its namespace while the pod lives.
Needs root and ``ip netns``. Pods in 10.242.X.0/24 (X free), namespaces ``kh<pid>-``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import subprocess
import sys

import pytest

from kubelab.runtime.netns import NetnsConfig, cleanup, supported

pytestmark = pytest.mark.e2e

ok, why = supported()
if not ok:
    pytest.skip(why, allow_module_level=True)


def free_octet() -> int:
    routes = subprocess.run(["ip", "-j", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    used = " ".join(r.get("dst", "") for r in json.loads(routes or "[]"))
    for _ in range(50):
        x = random.randint(1, 254)
        if f"10.242.{x}." not in used:
            return x
    pytest.skip("no free test subnet")


async def test_hook_runs_between_namespace_and_first_process(tmp_path):
    from kubelab.controller.admission import Admission
    from kubelab.controller.config import LabConfig
    from kubelab.controller.registry import Registry
    from kubelab.controller.store import MemoryStore
    from kubelab.runtime.manager import PodRuntime, RuntimeConfig

    x, prefix = free_octet(), f"kh{os.getpid() % 10000:04d}-"
    cidr = ipaddress.ip_network(f"10.242.{x}.0/24")
    config = LabConfig(pod_cidr=cidr, state_dir=None, mode="netns", netns_prefix=prefix)
    registry = Registry(MemoryStore(), Admission(config))
    await registry.start()
    rt = RuntimeConfig(mode="netns", pod_cidr=str(cidr), log_dir=tmp_path / "pods", max_grace=1, shutdown_grace=1,
                       python=sys.executable, netns=NetnsConfig(pod_cidr=cidr, dns_ip="10.96.0.10", prefix=prefix))
    seen: list[tuple[str, str, bool, str | None, str | None]] = []
    runtime = PodRuntime(registry, config, rt)

    async def hook(netns: str, ip: str) -> None:
        # the enforcer waits here for a policy table that knows the pod: the registry must
        # learn the pod IP while the hook waits, or that wait could never end
        published = None
        async with asyncio.timeout(5):
            while published is None:
                published = (registry.store.snapshot().get("Pod", "default", "p").get("status") or {}).get("podIP")
                await asyncio.sleep(0.01)
        run = runtime.pods["default/p"]
        ns_exists = os.path.exists(f"/var/run/netns/{netns}")
        started = any(c.supervisor is not None for c in run.containers)
        seen.append((netns, ip, ns_exists and not started, runtime.netns_of_ip(ip), published))

    runtime.on_pod_network = hook
    await runtime.start()
    try:
        await registry.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                               "spec": {"containers": [{"name": "c", "image": "x", "command": ["sleep", "30"]}]}}])
        async with asyncio.timeout(10):
            while not seen or (registry.store.snapshot().get("Pod", "default", "p").get("status") or {}).get(
                    "phase") != "Running":
                await asyncio.sleep(0.02)
        netns, ip, ordered, mapped, published = seen[0]
        assert published == ip
        assert netns == f"{prefix}default_p" and ipaddress.ip_address(ip) in cidr
        assert ordered, "the hook must run after the namespace exists and before the first process"
        assert mapped == netns and runtime.netns_of_ip(ip) == netns
        assert registry.store.snapshot().get("Pod", "default", "p")["status"]["podIP"] == ip
        await registry.delete("Pod", "default", "p")
        async with asyncio.timeout(10):
            while registry.store.snapshot().get("Pod", "default", "p") is not None:
                await asyncio.sleep(0.02)
        assert runtime.netns_of_ip(ip) is None
    finally:
        await runtime.close()
        await registry.store.close()
        cleanup(prefix)


async def test_failing_hook_is_a_sandbox_error_not_a_crash(tmp_path):
    from kubelab.controller.admission import Admission
    from kubelab.controller.config import LabConfig
    from kubelab.controller.registry import Registry
    from kubelab.controller.store import MemoryStore
    from kubelab.runtime.manager import PodRuntime, RuntimeConfig

    x, prefix = free_octet(), f"kg{os.getpid() % 10000:04d}-"
    cidr = ipaddress.ip_network(f"10.242.{x}.0/24")
    config = LabConfig(pod_cidr=cidr, state_dir=None, mode="netns", netns_prefix=prefix)
    registry = Registry(MemoryStore(), Admission(config))
    await registry.start()
    rt = RuntimeConfig(mode="netns", pod_cidr=str(cidr), log_dir=tmp_path / "pods", max_grace=1, shutdown_grace=1,
                       netns=NetnsConfig(pod_cidr=cidr, dns_ip="10.96.0.10", prefix=prefix))

    async def hook(netns: str, ip: str) -> None:
        raise RuntimeError("nft: no such table")

    runtime = PodRuntime(registry, config, rt, on_pod_network=hook)
    await runtime.start()
    try:
        await registry.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q", "namespace": "default"},
                               "spec": {"containers": [{"name": "c", "image": "x", "command": ["sleep", "30"]}]}}])

        def waiting():
            st = (registry.store.snapshot().get("Pod", "default", "q").get("status") or {})
            for cs in st.get("containerStatuses") or []:
                return (cs.get("state") or {}).get("waiting", {}).get("reason")
            return None

        async with asyncio.timeout(10):
            while waiting() != "CreatePodSandboxError":
                await asyncio.sleep(0.02)
        assert all(c.supervisor is None for c in runtime.pods["default/q"].containers)
    finally:
        await runtime.close()
        await registry.store.close()
        cleanup(prefix)
