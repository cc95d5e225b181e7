"""The whole lab in netns mode: a pod resolves a Service by its short name through the
cluster DNS on the DNS service IP, and curl reaches the pods through the proxy, exactly
as inside a Kubernetes pod. Needs root and ``ip netns``; everything is removed after.
"""

import os
import subprocess

import pytest

from tests.helpers import KUBELAB, ROOT, free_octet, free_port, is_ready, netns_lab_config, netns_leftovers
from tests.helpers import netns_prefix, require_netns, run_command, started_lab, wait_until

pytestmark = pytest.mark.e2e
require_netns("curl", "getent")


async def test_pod_uses_cluster_dns_and_services_by_short_name(tmp_path):
    x = free_octet(252, 253, 254)
    prefix = netns_prefix("kv")
    api_port = free_port()
    config = netns_lab_config(x, prefix, api_port, services=253, pods=254, lb_pool=252,
                              manifests=(ROOT / "examples" / "dns",))
    # the Lab builds the node side (bridge, local routes) before DNS binds the DNS service IP
    async with started_lab(config) as lab:
        def four_ready_pods():
            pods = lab.registry.store.snapshot().list("Pod", "default")
            return len(pods) == 4 and all(is_ready(p) for p in pods)

        await wait_until(four_ready_pods, timeout=20, what="the 4 example pods Ready", interval=0.05)
        env = {**os.environ, "KUBELAB_SERVER": f"http://127.0.0.1:{api_port}"}

        async def kexec(*cmd):
            rc, out, err = await run_command(KUBELAB, "exec", "--netns-prefix", prefix, "client", "--", *cmd,
                                             env=env, timeout=30)
            return rc, out + err

        svc_ip = lab.registry.store.snapshot().get("Service", "default", "my-service")["spec"]["clusterIP"]
        rc, out = await kexec("getent", "hosts", "my-service")
        assert rc == 0 and out.split()[:2] == [svc_ip, "my-service.default.svc.cluster.local"], out
        rc, out = await kexec("sh", "-c", "for i in $(seq 12); do curl -s -m 3 http://my-service/; done | sort -u")
        names = out.split()
        assert rc == 0 and len(names) == 3 and all(n.startswith("my-app-") for n in names), out
        rc, out = await kexec("sh", "-c", "exit 3")
        assert rc == 3
    assert netns_leftovers(prefix, links=False) == []
    routes = subprocess.run(["ip", "route", "show", "table", "local"], capture_output=True, text=True).stdout
    assert f"10.253.{x}.0/24" not in routes
