"""NetworkPolicy on real traffic through the proxy in the local lab.

Clients bind their pod IP as the source address and connect to a ClusterIP; the proxy
picks the backend and asks the compiled table (source egress, backend ingress on the
target port). The outcome must match ``kubelab netpol matrix`` read from the same
running registry, and a policy change must reach new connections quickly.

Addresses: pods 127.77.0.0/16, services 127.78.0.0/24, node 127.76.0.1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import pathlib
import sys
from pathlib import Path

import pytest

from kubelab.controller.config import LabConfig
from kubelab.controller.lab import Lab

NODE_IP = "127.76.0.1"
SERVICE_CIDR = "127.78.0.0/24"
CLIENT_IP = "127.77.1.10"
OTHER_IP = "127.77.1.11"
WEB_IP = "127.77.2.10"
KUBELAB = str(pathlib.Path(sys.executable).with_name("kubelab"))


def ns(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def pod(namespace: str, name: str, ip: str, app: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "kubelab/echo", "ports": [{"containerPort": 8080, "name": "http"}]}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "y"},
    "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
}

WEB_FROM_CLIENT = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "web-from-client", "namespace": "y"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}},
                        "podSelector": {"matchLabels": {"app": "client"}},
                    }
                ],
                "ports": [{"port": "http"}],
            }
        ],
    },
}

CLIENT_NO_EGRESS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "client-no-egress", "namespace": "x"},
    "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]},
}


async def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01):
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(interval)


@pytest.fixture
async def lab(tmp_path: Path):
    config = LabConfig(
        api_addr=("127.0.0.1", 0),
        dns_addr=("127.0.0.1", 0),
        service_cidrs=(ipaddress.ip_network(SERVICE_CIDR),),
        node_ip=NODE_IP,
        state_dir=None,
        disabled=frozenset({"runtime"}),
    )
    lab = Lab(config, kubeconfig_path=tmp_path / "kubeconfig")
    await lab.start()
    try:
        await lab.wait_ready(10)
        yield lab
    finally:
        await lab.close()


@pytest.fixture
async def web():
    """The y/web pod's server: answers with the client address it saw."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = writer.get_extra_info("peername")[0].encode()
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, WEB_IP, 8080)
    yield
    server.close()
    await server.wait_closed()


async def fetch(src: str, ip: str, port: int) -> bool:
    """True when a request from ``src`` got an answer; False when the proxy cut it."""
    try:
        reader, writer = await asyncio.open_connection(ip, port, local_addr=(src, 0))
    except ConnectionError:
        return False
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        return data.startswith(b"HTTP/1.0 200")
    except ConnectionError:
        return False
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def matrix(lab: Lab) -> dict[tuple[str, str], bool]:
    assert lab.listening is not None
    proc = await asyncio.create_subprocess_exec(
        KUBELAB, "netpol", "matrix", "--server", lab.listening.api, "--port", "8080/TCP", "-o", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return {(p["from"], p["to"]): p["allowed"] for p in json.loads(out)["probes"]}


async def test_proxy_enforces_what_the_matrix_says(lab: Lab, web):
    created = await lab.registry.apply(
        [ns("x"), ns("y"), pod("x", "client", CLIENT_IP, "client"), pod("x", "other", OTHER_IP, "other"),
         pod("y", "web", WEB_IP, "web"), SERVICE]
    )
    cluster_ip = next(o for _, o in created if o["kind"] == "Service")["spec"]["clusterIP"]
    await wait_for(lambda: fetch(OTHER_IP, cluster_ip, 80))  # the route is up; no policy yet

    await lab.registry.apply([WEB_FROM_CLIENT])
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_for(lambda: _not(fetch(OTHER_IP, cluster_ip, 80)), timeout=5, interval=0.005)
    print(f"policy reached new connections in {(loop.time() - started) * 1000:.0f} ms")
    assert await fetch(CLIENT_IP, cluster_ip, 80)
    seen = await matrix(lab)
    assert seen[("x/client", "y/web")] is True
    assert seen[("x/other", "y/web")] is False

    # the client's own egress counts too (both ends must allow, R6)
    await lab.registry.apply([CLIENT_NO_EGRESS])
    await wait_for(lambda: _not(fetch(CLIENT_IP, cluster_ip, 80)))
    seen = await matrix(lab)
    assert seen[("x/client", "y/web")] is False

    # removing policies opens the path again for new connections
    await lab.registry.delete("NetworkPolicy", "x", "client-no-egress")
    await lab.registry.delete("NetworkPolicy", "y", "web-from-client")
    await wait_for(lambda: fetch(OTHER_IP, cluster_ip, 80))
    assert await fetch(CLIENT_IP, cluster_ip, 80)


async def _not(coro) -> bool:
    return not await coro
