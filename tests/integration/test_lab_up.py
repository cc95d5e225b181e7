"""The local lab's built-in Services, readiness and the pod log subresource, in process.

Addresses: services 127.214.0.0/24, pods 127.215.0.0/24, LB pool 127.216.0.0/24, node
127.217.0.1 (this file's own range); API and DNS on port 0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import pytest

from kubelab.controller.config import LabConfig
from kubelab.controller.kubeconfig import write_kubeconfig
from kubelab.controller.lab import Lab
from tests.helpers import KUBELAB, pod_status, run_command, started_lab, wait_until

KUBECTL = shutil.which("kubectl")
NODE_IP = "127.217.0.1"


def config(**kw) -> LabConfig:
    base = dict(api_addr=("127.0.0.1", 0), dns_addr=("127.0.0.1", 0),
                service_cidrs=(ipaddress.ip_network("127.214.0.0/24"),),
                pod_cidr=ipaddress.ip_network("127.215.0.0/24"), lb_pool=ipaddress.ip_network("127.216.0.0/24"),
                node_ip=NODE_IP, state_dir=None, dns_upstream=())
    base.update(kw)
    return LabConfig(**base)


@pytest.fixture
async def lab(tmp_path):
    async with started_lab(config(dns_service_ip="127.214.0.10"), kubeconfig_path=tmp_path / "kubeconfig") as lab:
        await lab.wait_ready(10)
        yield lab


def binds_port(port: int) -> pytest.MarkDecorator:
    """Skip unless this user may bind ``port`` (root, or a low ``ip_unprivileged_port_start``)."""
    unprivileged = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    return pytest.mark.skipif(os.geteuid() != 0 and unprivileged > port, reason=f"binding port {port} needs root")


async def http_get(ip: str, port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(ip, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def query(lab: Lab, name: str, rdtype: str = "A") -> list[str]:
    host, port = lab.listening.dns
    reply = await dns.asyncquery.udp(dns.message.make_query(name, rdtype), host, port=port, timeout=2)
    return sorted(r.to_text() for rrset in reply.answer for r in rrset)


async def test_readiness_and_builtin_services(lab):
    assert lab.readiness() == (True, "ok")
    snap = lab.registry.store.snapshot()
    svc = snap.get("Service", "default", "kubernetes")
    assert svc["spec"]["clusterIP"] == "127.214.0.1" and svc["spec"]["ports"][0]["port"] == 443
    es = snap.get("EndpointSlice", "default", "kubernetes")
    api_port = int(lab.listening.api.rsplit(":", 1)[1])
    assert es["endpoints"][0]["addresses"] == ["127.0.0.1"] and es["ports"][0]["port"] == api_port
    dns_svc = snap.get("Service", "kube-system", "kube-dns")
    assert dns_svc["spec"]["clusterIP"] == "127.214.0.10"
    assert snap.get("EndpointSlice", "kube-system", "kube-dns")["ports"][0]["port"] == lab.listening.dns[1]
    # ready = every part serves and the start state is stored; DNS follows within a publish
    await wait_until(lambda: query(lab, "kubernetes.default.svc.cluster.local."), what="kubernetes in DNS")
    assert await query(lab, "kubernetes.default.svc.cluster.local.") == ["127.214.0.1"]
    assert await query(lab, "kube-dns.kube-system.svc.cluster.local.") == ["127.214.0.10"]


async def test_slices_survive_the_controllers(lab):
    """The EndpointSlice controller leaves the selectorless Services' slices alone."""
    await lab.registry.apply([{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "poke", "namespace": "default"},
                               "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}}])
    await wait_until(lambda: lab.registry.store.snapshot().get("EndpointSlice", "default", "poke-ipv4") is not None
                     or any(e["metadata"]["name"].startswith("poke") for e in
                            lab.registry.store.snapshot().list("EndpointSlice", "default")), what="poke's slice")
    assert lab.registry.store.snapshot().get("EndpointSlice", "default", "kubernetes")["endpoints"]


@binds_port(443)
async def test_kubernetes_service_reaches_the_api_through_the_proxy(lab):
    status, body = await wait_until(lambda: _try_get("127.214.0.1", 443, "/version"), what="kubernetes ClusterIP")
    assert status == 200 and json.loads(body)["major"] == "1"


@binds_port(53)
async def test_kube_dns_clusterip_answers_through_the_proxy(lab):
    async def ask():
        try:
            reply = await dns.asyncquery.udp(dns.message.make_query("kubernetes.default.svc.cluster.local.", "A"),
                                             "127.214.0.10", port=53, timeout=0.5)
        except (dns.exception.Timeout, OSError):
            return None
        return [r.to_text() for rrset in reply.answer for r in rrset]

    assert await wait_until(ask, what="DNS on the kube-dns ClusterIP") == ["127.214.0.1"]


async def _try_get(ip, port, path):
    try:
        return await http_get(ip, port, path)
    except OSError:
        return None


async def test_wait_ready_wakes_without_polling(tmp_path):
    """wait_ready returns once the controllers published, even with every data plane off."""
    async with started_lab(config(disabled=frozenset({"dns", "proxy", "runtime"}))) as lab:
        await lab.wait_ready(5)
        assert lab.readiness() == (True, "ok") and lab.manager.ready


def echo_pod(name: str, script: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]}}


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
async def test_kubectl_logs_and_completed_status(lab, tmp_path):
    await lab.registry.apply([echo_pod("hello", "echo one; echo two; echo three")])
    await wait_until(lambda: pod_status(lab.registry, "hello").get("phase") == "Succeeded", timeout=10,
                     what="pod hello Succeeded")
    kubeconfig = write_kubeconfig(tmp_path / "kc", lab.listening.api)
    env = {**os.environ, "KUBECACHEDIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}

    async def kubectl(*args):
        return await run_command(KUBECTL, "--kubeconfig", str(kubeconfig), *args, env=env, timeout=60)

    rc, out, err = await kubectl("logs", "hello")
    assert rc == 0 and out == "one\ntwo\nthree\n", err
    rc, out, err = await kubectl("logs", "hello", "--tail=1", "-c", "main")
    assert rc == 0 and out == "three\n", err
    rc, out, err = await kubectl("logs", "hello", "-c", "nope")
    assert rc != 0 and "container nope is not valid for pod hello" in err
    rc, out, err = await kubectl("logs", "missing")
    assert rc != 0 and 'pods "missing" not found' in err
    rc, out, err = await kubectl("get", "pod", "hello")
    assert rc == 0 and out.splitlines()[1].split()[:3] == ["hello", "0/1", "Completed"], out


async def test_log_endpoint_text_plain_and_errors(lab):
    await lab.registry.apply([echo_pod("talk", "echo a; echo b")])
    await wait_until(lambda: pod_status(lab.registry, "talk").get("phase") == "Succeeded", timeout=10,
                     what="pod talk Succeeded")
    host, port = lab.listening.api.removeprefix("http://").rsplit(":", 1)
    status, body = await http_get(host, int(port), "/api/v1/namespaces/default/pods/talk/log?tailLines=1")
    assert (status, body) == (200, b"b\n")
    status, body = await http_get(host, int(port), "/api/v1/namespaces/default/pods/talk/log?limitBytes=1")
    assert (status, body) == (200, b"a")
    status, body = await http_get(host, int(port), "/api/v1/namespaces/default/pods/talk/log?tailLines=x")
    assert status == 400 and json.loads(body)["reason"] == "BadRequest"
    status, body = await http_get(host, int(port), "/api/v1/namespaces/default/pods/talk/log?previous=true")
    assert status == 400 and "previous terminated container" in json.loads(body)["message"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="runs kubelab as nobody: needs root and setpriv")
async def test_netns_mode_as_a_user_is_one_line_and_exit_1():
    rc, out, err = await run_command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                     KUBELAB, "up", "--mode", "netns", "--ephemeral", timeout=30)
    assert rc == 1 and out == ""
    assert err == "kubelab up: --mode netns: netns mode needs root (use --mode local)\n"
