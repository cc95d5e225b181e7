"""``externalTrafficPolicy: Local`` / ``internalTrafficPolicy: Local`` across two nodes.

Two network namespaces are two nodes (n1 10.77.0.1, n2 10.77.0.2, joined by a veth
pair); each runs its own ``ServiceProxy`` configured with its node name and address,
as a multi-node lab runs one proxy per node, plus one pod (an echo server on a pod IP
of that node, routed across the veth). The route tables are what the controller
gives each node: NodePorts on the node's own address, the ClusterIP claimed in netns
mode. Clients run inside the namespaces (a line-driven prober in each node process).

Root-only (creates namespaces and a veth pair); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections import Counter

import pytest

from kubelab.proxy.table import Backend, Frontend, Route, RouteTable

NODE = textwrap.dedent(
    """
    import asyncio, json, sys
    from kubelab.proxy.config import ProxyConfig
    from kubelab.proxy.service import ServiceProxy
    from kubelab.proxy.table import RouteTable

    async def probe(ip, port):
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(ip, port), 2)
        except ConnectionRefusedError:
            return "refused"
        except (OSError, TimeoutError) as exc:
            return "error:%r" % (exc,)
        try:
            line = await asyncio.wait_for(r.readline(), 1.5)
            return line.decode().strip() or "eof"
        except TimeoutError:
            return "timeout"  # connected, nothing comes: the proxy dropped it
        except OSError:
            return "reset"
        finally:
            w.close()

    async def main(node, node_ip, pod, pod_ip, table):
        async def hello(r, w):
            w.write(pod.encode() + b"\\n")
            await w.drain()
            w.close()
        server = await asyncio.start_server(hello, pod_ip, 8080)
        proxy = ServiceProxy(ProxyConfig(node_name=node, node_ips=(node_ip,), vip_mode="netns",
                                         vip_cidrs=("10.96.0.0/16",), idle_timeout=5))
        await proxy.start()
        await proxy.apply(RouteTable.from_json(json.loads(table)))
        states = {f["frontend"]["port"]: f["state"] for f in proxy.routes()["frontends"]}
        print("ready", json.dumps(states), flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            ip, port = line.split()
            print(await probe(ip, int(port)), flush=True)
        await proxy.close(0.1)
        server.close()
        await server.wait_closed()

    asyncio.run(main(*sys.argv[1:]))
    """
)

N1, N2 = "10.77.0.1", "10.77.0.2"
POD_A, POD_B = "10.244.1.10", "10.244.2.10"
CLUSTER_IP = "10.96.0.10"


def _can_make_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root (ip netns, veth)"
    if shutil.which("ip") is None:
        return "needs iproute2"
    name = f"klp-chk-{uuid.uuid4().hex[:6]}"
    try:
        ok = subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10).returncode == 0
        if ok:
            ok = subprocess.run(["ip", "netns", "exec", name, "ip", "link", "add", "va", "type", "veth", "peer",
                                 "name", "vb"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return None if ok else "cannot create network namespaces with a veth pair here"


_skip = _can_make_netns()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_skip is not None, reason=_skip or "")]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def node_table(node_ip: str) -> RouteTable:
    """What the controller gives one node: NodePorts on its address, the ClusterIP."""
    a = Backend(POD_A, 8080, pod="default/web-a", node="n1")
    b = Backend(POD_B, 8080, pod="default/web-b", node="n2")
    routes = {
        Frontend(node_ip, 30080): Route("default/web", "http", "NodePort", (a, b), traffic_policy="Local"),
        Frontend(node_ip, 30081): Route("default/only-a", "http", "NodePort", (a,), traffic_policy="Local"),
        Frontend(node_ip, 30082): Route("default/web", "http", "NodePort", (a, b)),  # Cluster
        Frontend(CLUSTER_IP, 80): Route("default/web", "http", "ClusterIP", (a, b), traffic_policy="Local"),
    }
    return RouteTable(1, routes)


class Node:
    def __init__(self, ns: str, name: str, node_ip: str, pod: str, pod_ip: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", NODE, name, node_ip, pod, pod_ip,
             json.dumps(node_table(node_ip).to_json())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("ready"):
            self.proc.kill()
            raise AssertionError(f"node {name} did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.states = {int(k): v for k, v in json.loads(line.split(" ", 1)[1]).items()}

    def probe(self, ip_: str, port: int) -> str:
        self.proc.stdin.write(f"{ip_} {port}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.proc.stdout.readline().strip()  # type: ignore[union-attr]

    def stop(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()  # type: ignore[union-attr]


@pytest.fixture
def two_nodes():  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:6]
    ns1, ns2 = f"klp-{tag}-n1", f"klp-{tag}-n2"
    nodes: list[Node] = []
    try:
        ip("netns", "add", ns1)
        ip("netns", "add", ns2)
        ip("-n", ns1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns2)
        for ns, addr, pod_ip, peer_pods, peer in ((ns1, N1, POD_A, "10.244.2.0/24", N2),
                                                  (ns2, N2, POD_B, "10.244.1.0/24", N1)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "addr", "add", f"{pod_ip}/32", "dev", "lo")  # the pod on this node
            ip("-n", ns, "route", "add", peer_pods, "via", peer)
        nodes.append(Node(ns1, "n1", N1, "web-a", POD_A))
        nodes.append(Node(ns2, "n2", N2, "web-b", POD_B))
        yield nodes
    finally:
        for n in nodes:
            n.stop()
        for ns in (ns1, ns2):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_local_policies_across_two_nodes(two_nodes: list[Node]) -> None:
    n1, n2 = two_nodes
    # Every frontend listens (a node without a local endpoint DROPs, it does not refuse).
    assert n1.states == {30080: "listening", 30081: "listening", 30082: "listening", 80: "listening"}
    assert n2.states == {30080: "listening", 30081: "dropping", 30082: "listening", 80: "listening"}

    # externalTrafficPolicy: Local -- each node's NodePort reaches only its own pod, whoever asks.
    assert Counter(n2.probe(N1, 30080) for _ in range(4)) == {"web-a": 4}
    assert Counter(n1.probe(N2, 30080) for _ in range(4)) == {"web-b": 4}
    # ... and a node without a local endpoint drops (the client waits, nothing comes).
    assert n1.probe(N2, 30081) == "timeout"
    assert n2.probe(N1, 30081) == "web-a"
    # externalTrafficPolicy: Cluster on the same pods crosses nodes: both answer.
    assert set(n1.probe(N2, 30082) for _ in range(6)) == {"web-a", "web-b"}

    # internalTrafficPolicy: Local -- the ClusterIP goes to the client's own node's pod.
    assert Counter(n1.probe(CLUSTER_IP, 80) for _ in range(4)) == {"web-a": 4}
    assert Counter(n2.probe(CLUSTER_IP, 80) for _ in range(4)) == {"web-b": 4}
