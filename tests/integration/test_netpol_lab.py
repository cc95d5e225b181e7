"""NetworkPolicy on real traffic through the proxy in the local lab.

Clients bind their pod IP as the source address and connect to a ClusterIP; the proxy
picks the backend and asks the compiled table (source egress, backend ingress on the
target port). The outcome must match ``kubelab netpol matrix`` read from the same
running registry, and a policy change must reach new connections quickly.

Addresses: pods 127.77.0.0/16, services 127.78.0.0/24, node 127.76.0.1.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kubelab.controller.lab import Lab
from tests.helpers import (
    KUBELAB,
    local_lab,
    namespace,
    network_policy,
    pod,
    run_command,
    service,
    start_http_responder,
    wait_until,
)

NODE_IP = "127.76.0.1"
SERVICE_CIDR = "127.78.0.0/24"
CLIENT_IP = "127.77.1.10"
OTHER_IP = "127.77.1.11"
WEB_IP = "127.77.2.10"


def app_pod(ns: str, name: str, ip: str, app: str) -> dict:
    return pod(name, ns, {"app": app}, ip, ready=True, ports=[{"containerPort": 8080, "name": "http"}])


SERVICE = service("web", "y", selector={"app": "web"}, ports=[{"name": "http", "port": 80, "targetPort": "http"}])

WEB_FROM_CLIENT = network_policy(
    "web-from-client",
    "y",
    {"app": "web"},
    ingress=[
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
)

CLIENT_NO_EGRESS = network_policy("client-no-egress", "x", {"app": "client"}, policy_types=["Egress"])


@pytest.fixture
async def lab(tmp_path: Path):
    async with local_lab(tmp_path, node_ip=NODE_IP, service_cidr=SERVICE_CIDR) as lab:
        yield lab


@pytest.fixture
async def web():
    """The y/web pod's server: answers with the client address it saw."""
    server = await start_http_responder(WEB_IP, 8080, lambda writer: writer.get_extra_info("peername")[0])
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
    code, out, err = await run_command(
        KUBELAB, "netpol", "matrix", "--server", lab.listening.api, "--port", "8080/TCP", "-o", "json", timeout=60)
    assert code == 0, err
    return {(p["from"], p["to"]): p["allowed"] for p in json.loads(out)["probes"]}


async def test_proxy_enforces_what_the_matrix_says(lab: Lab, web):
    created = await lab.registry.apply(
        [namespace("x"), namespace("y"), app_pod("x", "client", CLIENT_IP, "client"),
         app_pod("x", "other", OTHER_IP, "other"), app_pod("y", "web", WEB_IP, "web"), SERVICE]
    )
    cluster_ip = next(o for _, o in created if o["kind"] == "Service")["spec"]["clusterIP"]
    # the route is up; no policy yet
    await wait_until(lambda: fetch(OTHER_IP, cluster_ip, 80), what="x/other to reach y/web")

    await lab.registry.apply([WEB_FROM_CLIENT])
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_until(lambda: _not(fetch(OTHER_IP, cluster_ip, 80)), timeout=5, what="the policy to cut x/other off",
                     interval=0.005)
    print(f"policy reached new connections in {(loop.time() - started) * 1000:.0f} ms")
    assert await fetch(CLIENT_IP, cluster_ip, 80)
    seen = await matrix(lab)
    assert seen[("x/client", "y/web")] is True
    assert seen[("x/other", "y/web")] is False

    # the client's own egress counts too (both ends must allow, R6)
    await lab.registry.apply([CLIENT_NO_EGRESS])
    await wait_until(lambda: _not(fetch(CLIENT_IP, cluster_ip, 80)), what="the egress policy to cut x/client off")
    seen = await matrix(lab)
    assert seen[("x/client", "y/web")] is False

    # removing policies opens the path again for new connections
    await lab.registry.delete("NetworkPolicy", "x", "client-no-egress")
    await lab.registry.delete("NetworkPolicy", "y", "web-from-client")
    await wait_until(lambda: fetch(OTHER_IP, cluster_ip, 80), what="x/other to reach y/web again")
    assert await fetch(CLIENT_IP, cluster_ip, 80)


async def _not(coro) -> bool:
    return not await coro
