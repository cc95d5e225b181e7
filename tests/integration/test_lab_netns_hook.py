"""The runtime's pod-network hook (NetworkPolicy enforcement's entry point) in netns mode:
awaited after the pod's namespace exists and before any container starts, with the pod IP
already published; ``netns_of_ip`` maps a pod IP to its namespace while the pod lives.
Needs root and ``ip netns``. Pods in 10.242.X.0/24 (X free), namespaces ``kh<pid>-``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubelab.runtime.netns import NetnsConfig, cleanup
from tests.helpers import free_octet, memory_registry, netns_prefix, pod_status, require_netns, wait_until

pytestmark = pytest.mark.e2e
require_netns()


@contextlib.asynccontextmanager
async def netns_registry(tmp_path: Path, tag: str, **runtime: Any) -> AsyncIterator[tuple[Any, ...]]:
    """A registry plus what a netns ``PodRuntime`` on 10.242.X.0/24 takes; the test builds
    the runtime (its hook may need it). Everything named ``<tag><pid>-`` is removed after."""
    from kubelab.controller.config import LabConfig
    from kubelab.runtime.manager import RuntimeConfig

    x, prefix = free_octet(242), netns_prefix(tag)
    cidr = ipaddress.ip_network(f"10.242.{x}.0/24")
    config = LabConfig(pod_cidr=cidr, state_dir=None, mode="netns", netns_prefix=prefix)
    rt = RuntimeConfig(mode="netns", pod_cidr=str(cidr), log_dir=tmp_path / "pods", max_grace=1, shutdown_grace=1,
                       netns=NetnsConfig(pod_cidr=cidr, dns_ip="10.96.0.10", prefix=prefix), **runtime)
    try:
        async with memory_registry(config) as registry:
            yield registry, config, rt, prefix, cidr
    finally:
        cleanup(prefix)


def sleeper(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x", "command": ["sleep", "30"]}]}}


async def test_hook_runs_between_namespace_and_first_process(tmp_path):
    from kubelab.runtime.manager import PodRuntime

    async with netns_registry(tmp_path, "kh", python=sys.executable) as (registry, config, rt, prefix, cidr):
        seen: list[tuple[str, str, bool, str | None, str | None]] = []
        runtime = PodRuntime(registry, config, rt)

        async def hook(netns: str, ip: str) -> None:
            # the enforcer waits here for a policy table that knows the pod: the registry must
            # learn the pod IP while the hook waits, or that wait could never end
            published = await wait_until(lambda: pod_status(registry, "p").get("podIP"), timeout=5,
                                         what="the pod IP in the registry")
            run = runtime.pods["default/p"]
            ns_exists = os.path.exists(f"/var/run/netns/{netns}")
            started = any(c.supervisor is not None for c in run.containers)
            seen.append((netns, ip, ns_exists and not started, runtime.netns_of_ip(ip), published))

        runtime.on_pod_network = hook
        await runtime.start()
        try:
            await registry.apply([sleeper("p")])
            await wait_until(lambda: seen and pod_status(registry, "p").get("phase") == "Running", timeout=10,
                             what="the hook ran and pod p Running", interval=0.02)
            netns, ip, ordered, mapped, published = seen[0]
            assert published == ip
            assert netns == f"{prefix}default_p" and ipaddress.ip_address(ip) in cidr
            assert ordered, "the hook must run after the namespace exists and before the first process"
            assert mapped == netns and runtime.netns_of_ip(ip) == netns
            assert registry.store.snapshot().get("Pod", "default", "p")["status"]["podIP"] == ip
            await registry.delete("Pod", "default", "p")
            await wait_until(lambda: registry.store.snapshot().get("Pod", "default", "p") is None, timeout=10,
                             what="pod p gone", interval=0.02)
            assert runtime.netns_of_ip(ip) is None
        finally:
            await runtime.close()


async def test_failing_hook_is_a_sandbox_error_not_a_crash(tmp_path):
    from kubelab.runtime.manager import PodRuntime

    async with netns_registry(tmp_path, "kg") as (registry, config, rt, _, _):
        async def hook(netns: str, ip: str) -> None:
            raise RuntimeError("nft: no such table")

        runtime = PodRuntime(registry, config, rt, on_pod_network=hook)
        await runtime.start()
        try:
            await registry.apply([sleeper("q")])

            def waiting():
                for cs in pod_status(registry, "q").get("containerStatuses") or []:
                    return (cs.get("state") or {}).get("waiting", {}).get("reason")
                return None

            await wait_until(lambda: waiting() == "CreatePodSandboxError", timeout=10,
                             what="q waiting with CreatePodSandboxError", interval=0.02)
            assert all(c.supervisor is None for c in runtime.pods["default/q"].containers)
        finally:
            await runtime.close()
