"""The whole lab in netns mode: a pod resolves a Service by its short name through the
cluster DNS on the DNS service IP, and curl reaches the pods through the proxy, exactly
as inside a Kubernetes pod. Needs root and ``ip netns``; everything is removed after.
"""

import asyncio
import ipaddress
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from kubelab.runtime.netns import NETNS_ETC_DIR, cleanup, supported

pytestmark = pytest.mark.e2e

ok, why = supported()
if not ok:
    pytest.skip(why, allow_module_level=True)
if not all(Path(p).exists() for p in ("/usr/bin/curl", "/usr/bin/getent")):
    pytest.skip("needs curl and getent", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
KUBELAB = str(Path(sys.executable).with_name("kubelab"))


def free_octet() -> int:
    routes = subprocess.run(["ip", "-j", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    used = " ".join(r.get("dst", "") for r in json.loads(routes or "[]"))
    for _ in range(50):
        x = random.randint(1, 254)
        if all(f"10.{b}.{x}." not in used for b in (252, 253, 254)):
            return x
    pytest.skip("no free test subnets")


def lab_config(x: int, prefix: str, api_port: int):
    from kubelab.controller.config import LabConfig

    return LabConfig(
        api_addr=("127.0.0.1", api_port), dns_addr=(f"10.253.{x}.10", 53),
        service_cidrs=(ipaddress.ip_network(f"10.253.{x}.0/24"),), pod_cidr=ipaddress.ip_network(f"10.254.{x}.0/24"),
        lb_pool=ipaddress.ip_network(f"10.252.{x}.0/24"), node_ip=f"10.254.{x}.1", state_dir=None, dns_upstream=(),
        manifests=(ROOT / "examples" / "dns",), mode="netns", dns_service_ip=f"10.253.{x}.10", netns_prefix=prefix)


async def test_pod_uses_cluster_dns_and_services_by_short_name(tmp_path):
    from kubelab.controller.lab import Lab

    x = free_octet()
    prefix = f"kl-l{os.getpid() % 10000:04d}-"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        api_port = s.getsockname()[1]
    config = lab_config(x, prefix, api_port)
    lab = Lab(config)  # builds the node side (bridge, local routes) before DNS binds the DNS service IP
    try:
        await lab.start()
        async with asyncio.timeout(20):
            while True:
                pods = lab.registry.store.snapshot().list("Pod", "default")
                if len(pods) == 4 and all(any(c["type"] == "Ready" and c["status"] == "True"
                                              for c in p["status"].get("conditions", [])) for p in pods):
                    break
                await asyncio.sleep(0.05)
        env = {**os.environ, "KUBELAB_SERVER": f"http://127.0.0.1:{api_port}"}

        async def kexec(*cmd):
            p = await asyncio.create_subprocess_exec(
                KUBELAB, "exec", "--netns-prefix", prefix, "client", "--", *cmd, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(p.communicate(), 30)
            return p.returncode, out.decode()

        svc_ip = lab.registry.store.snapshot().get("Service", "default", "my-service")["spec"]["clusterIP"]
        rc, out = await kexec("getent", "hosts", "my-service")
        assert rc == 0 and out.split()[:2] == [svc_ip, "my-service.default.svc.cluster.local"], out
        rc, out = await kexec("sh", "-c", "for i in $(seq 12); do curl -s -m 3 http://my-service/; done | sort -u")
        names = out.split()
        assert rc == 0 and len(names) == 3 and all(n.startswith("my-app-") for n in names), out
        rc, out = await kexec("sh", "-c", "exit 3")
        assert rc == 3
    finally:
        await lab.close()
        cleanup(prefix)
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in ns
    assert not [d for d in NETNS_ETC_DIR.glob(f"{prefix}*")] if NETNS_ETC_DIR.is_dir() else True
    routes = subprocess.run(["ip", "route", "show", "table", "local"], capture_output=True, text=True).stdout
    assert f"10.253.{x}.0/24" not in routes
