"""netns mode end to end: real namespaces, a bridge, pod IPs, resolv.conf, exec, cleanup.

Needs root and ``ip netns``; every name starts with a per-run prefix and everything is
removed afterwards (the test checks that nothing is left behind).
"""

import asyncio
import ipaddress
import subprocess
import sys

import pytest

from kubelab.runtime.netns import NETNS_ETC_DIR, NetnsConfig, cleanup
from tests.helpers import free_octet, is_ready, memory_registry, netns_leftovers, netns_prefix, require_netns
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e
require_netns()


@pytest.fixture
async def netns_lab(tmp_path):
    from kubelab.controller.config import LabConfig
    from kubelab.runtime.manager import PodRuntime, RuntimeConfig

    prefix = netns_prefix("kt")
    x = free_octet(253, 254)
    net = ipaddress.ip_network(f"10.254.{x}.0/24")
    svc_net = ipaddress.ip_network(f"10.253.{x}.0/24")
    config = LabConfig(pod_cidr=net, service_cidrs=(svc_net,), state_dir=None)
    ncfg = NetnsConfig(pod_cidr=net, dns_ip=str(svc_net.network_address + 10), prefix=prefix,
                       local_cidrs=(str(svc_net),))
    rcfg = RuntimeConfig(mode="netns", pod_cidr=str(net), host_ip=str(net.network_address + 1),
                         log_dir=tmp_path / "pods", max_grace=2, shutdown_grace=1, netns=ncfg)
    try:
        async with memory_registry(config) as registry:
            runtime = PodRuntime(registry, config, rcfg)
            try:
                await runtime.start()
                yield registry, runtime, prefix, net, svc_net
            finally:
                await runtime.close()
    finally:
        cleanup(prefix)


async def wait_ready(registry, name, timeout=15):
    def ready_pod():
        pod = registry.store.snapshot().get("Pod", "default", name)
        return pod if is_ready(pod) else None

    return await wait_until(ready_pod, timeout, f"pod default/{name} Ready", interval=0.05)


def echo_pod(name, **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "echo", "image": "kubelab/echo", "ports": [{"containerPort": 8080}],
                                     "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}],
                     **spec}}


def in_ns(ns, *argv):
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=20)


async def test_pods_get_namespaces_real_ips_and_cluster_dns_config(netns_lab):
    registry, runtime, prefix, net, svc_net = netns_lab
    await registry.create(echo_pod("web-0", hostname="web-0", subdomain="web"))
    await registry.create(echo_pod("client"))
    web = await wait_ready(registry, "web-0")
    client = await wait_ready(registry, "client")
    web_ip, client_ip = web["status"]["podIP"], client["status"]["podIP"]
    assert ipaddress.ip_address(web_ip) in net and web_ip != client_ip
    ns = runtime.netns_of("default", "client")
    assert ns == f"{prefix}default_client"

    # the pod's own view: its IP on eth0, the cluster resolv.conf, its name in /etc/hosts
    addr = in_ns(ns, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"{client_ip}/{net.prefixlen}" in addr
    resolv = in_ns(ns, "cat", "/etc/resolv.conf").stdout
    assert resolv == (f"search default.svc.cluster.local svc.cluster.local cluster.local\n"
                      f"nameserver {svc_net.network_address + 10}\noptions ndots:5\n")
    hosts = in_ns(runtime.netns_of("default", "web-0"), "cat", "/etc/hosts").stdout
    assert f"{web_ip}\tweb-0.web.default.svc.cluster.local\tweb-0" in hosts

    # pod to pod over the bridge, and the pod answers with its name
    fetch = ("import sys,urllib.request;"
             "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end='')")
    r = in_ns(ns, sys.executable, "-c", fetch, f"http://{web_ip}:8080/clientip")
    assert r.returncode == 0 and r.stdout.startswith(f"{client_ip}:"), r.stderr
    # the node (root namespace) reaches pods too (probes, the proxy)
    reader, writer = await asyncio.open_connection(web_ip, 8080)
    writer.close()
    await writer.wait_closed()
    # the service CIDR is local in the node namespace: bindable, and reachable from pods
    vip = str(svc_net.network_address + 20)
    server = await asyncio.start_server(lambda r, w: w.close(), vip, 8081)
    try:
        probe = "import socket,sys;s=socket.create_connection((sys.argv[1],8081),5);s.close()"
        r = in_ns(ns, sys.executable, "-c", probe, vip)
        assert r.returncode == 0, r.stderr
    finally:
        server.close()
        await server.wait_closed()


async def test_exec_runs_in_the_pod_namespace(netns_lab, monkeypatch):
    registry, runtime, prefix, net, _ = netns_lab
    await registry.create(echo_pod("client"))
    pod = await wait_ready(registry, "client")
    from kubelab.runtime import cli

    class Args:
        container = None
        netns_prefix = prefix

    async def fake_fetch(args, ns, name, *, services):
        return "http://x", registry.store.snapshot().get("Pod", ns, name), []

    monkeypatch.setattr(cli, "_fetch", fake_fetch)
    argv, env = await cli._exec_plan(Args(), "default", "client", ["ip", "-4", "-o", "addr", "show", "eth0"])
    assert argv[:4] == ["ip", "netns", "exec", f"{prefix}default_client"]
    assert env["POD_IP"] == pod["status"]["podIP"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)
    assert pod["status"]["podIP"] in out.stdout


async def test_close_and_crash_cleanup_leave_nothing(netns_lab):
    registry, runtime, prefix, _, svc_net = netns_lab
    await registry.create(echo_pod("a"))
    await wait_ready(registry, "a")
    assert netns_leftovers(prefix)
    await runtime.close()  # the fixture closes again: close is idempotent
    assert netns_leftovers(prefix) == []
    routes = subprocess.run(["ip", "route", "show", "table", "local", "proto", "252"], capture_output=True,
                            text=True).stdout
    assert str(svc_net) not in routes
    # a "crash": namespaces and links made behind the runtime's back are found by prefix
    subprocess.run(["ip", "netns", "add", f"{prefix}crashed_pod"], check=True)
    subprocess.run(["ip", "link", "add", f"{prefix}br0", "type", "bridge"], check=True)
    (NETNS_ETC_DIR / f"{prefix}crashed_pod").mkdir(parents=True, exist_ok=True)
    removed = cleanup(prefix)
    assert f"netns {prefix}crashed_pod" in removed and netns_leftovers(prefix) == []


def test_kubelab_down_removes_leftovers(capsys):
    import argparse

    from kubelab.runtime.cli import cmd_down

    prefix = netns_prefix("kd")
    subprocess.run(["ip", "netns", "add", f"{prefix}default_p"], check=True)
    subprocess.run(["ip", "link", "add", f"{prefix}br0", "type", "bridge"], check=True)
    try:
        assert cmd_down(argparse.Namespace(prefix=prefix)) == 0
        out = capsys.readouterr().out
        assert f"removed netns {prefix}default_p\n" in out and f"removed link {prefix}br0\n" in out
        assert netns_leftovers(prefix) == []
        assert cmd_down(argparse.Namespace(prefix=prefix)) == 0
        assert capsys.readouterr().out == "nothing to clean up\n"
    finally:
        cleanup(prefix)
