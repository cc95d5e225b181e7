"""``kubelab up --mode netns`` as a user runs it (a subprocess), then ``kubelab exec``
from a pod: the Service by its short name (getent, curl), ``kubernetes.default`` and the
API through it; SIGINT leaves no namespace, link, route or file behind, and neither does
a restart after SIGKILL. Needs root and ``ip netns`` (skipped otherwise).

Addresses: 10.241.X.0/24 services, 10.242.X.0/24 pods, 10.243.X.0/24 LB pool, with X
picked free from the routing table (other tests use 10.252-254); explicit, never the
netns defaults (10.96/10.244), which a real lab on this machine may hold.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import BinaryIO

import pytest

from kubelab.runtime.netns import cleanup
from tests.helpers import KUBELAB, ROOT, free_octet, free_port, is_ready, netns_leftovers, netns_prefix
from tests.helpers import require_netns, run_command, wait_until

pytestmark = pytest.mark.e2e
require_netns("curl", "getent")


class NetnsLab:
    def __init__(self, tmp: Path):
        self.x = free_octet(241, 242, 243)
        self.prefix = netns_prefix("kn")
        self.port = free_port()
        self.env = {**os.environ, "KUBELAB_SERVER": f"http://127.0.0.1:{self.port}"}
        self.tmp = tmp
        self.proc: asyncio.subprocess.Process | None = None
        self.log: BinaryIO | None = None

    def argv(self) -> list[str]:
        x = self.x
        return [KUBELAB, "up", "--mode", "netns", "--netns-prefix", self.prefix, "--ephemeral",
                "--api-addr", f"127.0.0.1:{self.port}", "--service-cidr", f"10.241.{x}.0/24",
                "--pod-cidr", f"10.242.{x}.0/24", "--lb-pool", f"10.243.{x}.0/24", "--dns-upstream", "none",
                "-f", str(ROOT / "examples" / "dns")]

    async def start(self) -> None:
        self.log = open(self.tmp / f"up-{self.port}.log", "ab")
        self.proc = await asyncio.create_subprocess_exec(*self.argv(), cwd=ROOT, stdout=self.log, stderr=self.log)
        await wait_until(self.pods_ready, timeout=30, what="4 ready pods")

    async def pods_ready(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"kubelab up exited {self.proc.returncode}: {self.output()}")
        rc, out, _ = await run_command(KUBELAB, "get", "pods", "-o", "json", env=self.env, timeout=20)
        if rc != 0:
            return False
        pods = json.loads(out)["items"]
        return len(pods) == 4 and all(is_ready(p) for p in pods)

    def output(self) -> str:
        return (self.tmp / f"up-{self.port}.log").read_text(errors="replace")[-2000:]

    async def kexec(self, *cmd: str) -> tuple[int, str]:
        rc, out, err = await run_command(KUBELAB, "exec", "--netns-prefix", self.prefix, "client", "--", *cmd,
                                         env=self.env, timeout=30)
        return rc, out + err

    async def stop(self, sig: int = signal.SIGINT) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        rc = await asyncio.wait_for(self.proc.wait(), 30)
        if self.log is not None:
            self.log.close()
        return rc

    def leftovers(self) -> list[str]:
        routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
        return netns_leftovers(self.prefix) + [
            line for line in routes.splitlines() if any(f"10.{b}.{self.x}." in line for b in (241, 242, 243))]


@pytest.fixture
async def netns_lab(tmp_path):
    lab = NetnsLab(tmp_path)
    try:
        yield lab
    finally:
        if lab.proc is not None and lab.proc.returncode is None:
            await lab.stop(signal.SIGKILL)
        if lab.log is not None:
            lab.log.close()  # stop() closes it too, but not after `kubelab up` exited on its own
        cleanup(lab.prefix)
        for b in (241, 242, 243):  # routes of a custom prefix are not cleanup()'s to find
            subprocess.run(["ip", "route", "del", "local", f"10.{b}.{lab.x}.0/24", "table", "local"],
                           capture_output=True)


async def test_up_mode_netns_pods_use_services_dns_and_the_api(netns_lab):
    lab = netns_lab
    x = lab.x
    await lab.start()
    rc, out, _ = await run_command(KUBELAB, "get", "service", "-A", "-o", "json", env=lab.env)
    services = {f"{s['metadata']['namespace']}/{s['metadata']['name']}": s for s in json.loads(out)["items"]}
    svc_ip = services["default/my-service"]["spec"]["clusterIP"]
    assert services["default/kubernetes"]["spec"]["clusterIP"] == f"10.241.{x}.1"
    assert services["kube-system/kube-dns"]["spec"]["clusterIP"] == f"10.241.{x}.10"

    rc, out = await lab.kexec("cat", "/etc/resolv.conf")
    assert rc == 0 and f"nameserver 10.241.{x}.10" in out, out
    rc, out = await lab.kexec("getent", "hosts", "my-service")
    assert rc == 0 and out.split()[:2] == [svc_ip, "my-service.default.svc.cluster.local"], out
    rc, out = await lab.kexec("sh", "-c", "for i in $(seq 12); do curl -s -m 3 http://my-service/; done | sort -u")
    assert rc == 0 and len(out.split()) == 3 and all(n.startswith("my-app-") for n in out.split()), out
    rc, out = await lab.kexec("getent", "hosts", "kubernetes.default")
    assert rc == 0 and out.split()[:2] == [f"10.241.{x}.1", "kubernetes.default.svc.cluster.local"], out
    rc, out = await lab.kexec("curl", "-s", "-m", "3", "http://kubernetes.default:443/version")
    assert rc == 0 and json.loads(out)["gitCommit"] == "kubelab", out
    # pods are not the lab's user: the bridge listener wants the token for anything else
    rc, out = await lab.kexec("curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}",
                              "http://kubernetes.default:443/api/v1/pods")
    assert rc == 0 and out == "401", out
    # the node reaches the ClusterIP too (the service CIDR is local on the node)
    rc, out, _ = await run_command("curl", "-s", "-m", "3", f"http://{svc_ip}/hostname", timeout=10)
    assert rc == 0 and out.startswith("my-app-"), out

    # NetworkPolicy holds in the pods' namespaces; the node (kubelet probes) stays exempt
    rc, out, _ = await run_command(KUBELAB, "get", "pods", "-l", "app=my-app", "-o", "json", env=lab.env)
    pod_ip = json.loads(out)["items"][0]["status"]["podIP"]
    rc, out = await lab.kexec("curl", "-s", "-m", "3", f"http://{pod_ip}:8080/hostname")
    assert rc == 0 and out.startswith("my-app-"), out
    deny = json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": "deny-my-app", "namespace": "default"},
                       "spec": {"podSelector": {"matchLabels": {"app": "my-app"}}, "policyTypes": ["Ingress"]}})
    rc, out, err = await run_command(KUBELAB, "apply", "-f", "-", env=lab.env, stdin=deny.encode())
    assert rc == 0, err

    async def blocked() -> bool:
        rc, _ = await lab.kexec("curl", "-s", "-m", "1", f"http://{pod_ip}:8080/hostname")
        return rc != 0

    await wait_until(blocked, timeout=15, what="the deny policy to hold")
    rc, out, _ = await run_command("curl", "-s", "-m", "3", f"http://{pod_ip}:8080/healthz", timeout=10)
    assert rc == 0, "the node must stay exempt (readiness probes come from it)"
    assert await lab.pods_ready()

    assert await lab.stop() == 0, lab.output()
    assert lab.leftovers() == []


async def test_restart_after_sigkill_then_sigint_leaves_nothing(netns_lab):
    lab = netns_lab
    await lab.start()
    assert await lab.stop(signal.SIGKILL) == -signal.SIGKILL
    assert lab.leftovers()  # a crash leaves the lab's namespaces behind ...
    await lab.start()  # ... which the next start removes before building its own
    rc, out = await lab.kexec("getent", "hosts", "my-service")
    assert rc == 0, out
    assert await lab.stop() == 0, lab.output()
    assert lab.leftovers() == []
