"""Pod-to-pod enforcement with nftables in real network namespaces (the netns lab's path).

Each pod of a public case gets its own network namespace on a bridge, the ruleset
``kubelab.controller.netpol_nft`` compiles for it, and a TCP server on 80 and 81. Every
pod then connects to every other pod's IP: the connection must succeed exactly when the
matrix (the compiled table, and the case's expectation) says it is allowed. A denied
connection is refused at once (the ruleset rejects with a TCP reset).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any, Iterator

import pytest

from kubelab.controller.netpol import build_policy_table
from kubelab.controller.netpol_nft import pod_ruleset
from tests.helpers import load_netpol_cases, netpol_cluster

DATA = load_netpol_cases()
CASES = {c["id"]: c for c in DATA["cases"]}

IP = shutil.which("ip")
NFT = shutil.which("nft")
UNSHARE = shutil.which("unshare")

SERVER = r"""
import socket, sys, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        c.sendall(b"ok")
        c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

CLIENT = r"""
import json, socket, sys
out = []
for target in sys.argv[1:]:
    ip, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((ip, int(port)))
        out.append(s.recv(2) == b"ok")
    except OSError:
        out.append(False)
    finally:
        s.close()
print(json.dumps(out))
"""


def _root_netns_ok() -> bool:
    if not (IP and NFT and UNSHARE) or os.geteuid() != 0:
        return False
    probe = subprocess.run([UNSHARE, "-n", NFT, "list", "ruleset"], capture_output=True)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not _root_netns_ok(), reason="needs root, iproute2, nft and network namespaces"),
]


def cluster_for(case: dict[str, Any]) -> Any:
    return netpol_cluster(DATA, case)


def sh(*args: str, input: str | None = None) -> str:
    proc = subprocess.run(args, input=input, text=True, capture_output=True, timeout=30)
    assert proc.returncode == 0, (args, proc.stderr)
    return proc.stdout


@pytest.fixture
def netns_pods() -> Iterator[tuple[str, dict[str, str]]]:
    """A bridge namespace plus one namespace per pod of the suite topology."""
    prefix = f"knp{os.getpid() % 100000}"
    bridge_ns = f"{prefix}-node"
    created: list[str] = []
    servers: list[subprocess.Popen[str]] = []
    names: dict[str, str] = {}
    cluster = cluster_for(CASES["no-policies"])
    try:
        sh(IP, "netns", "add", bridge_ns)  # type: ignore[arg-type]
        created.append(bridge_ns)
        sh(IP, "-n", bridge_ns, "link", "add", "br0", "type", "bridge")  # type: ignore[arg-type]
        sh(IP, "-n", bridge_ns, "link", "set", "br0", "up")  # type: ignore[arg-type]
        for i, pod in enumerate(cluster.pods):
            ns = f"{prefix}-{pod.namespace}{pod.name}"
            sh(IP, "netns", "add", ns)  # type: ignore[arg-type]
            created.append(ns)
            sh(IP, "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"v{i}", "netns", bridge_ns)  # type: ignore[arg-type]
            sh(IP, "-n", ns, "addr", "add", f"{pod.ip}/16", "dev", "eth0")  # type: ignore[arg-type]
            sh(IP, "-n", ns, "link", "set", "eth0", "up")  # type: ignore[arg-type]
            sh(IP, "-n", ns, "link", "set", "lo", "up")  # type: ignore[arg-type]
            sh(IP, "-n", bridge_ns, "link", "set", f"v{i}", "master", "br0", "up")  # type: ignore[arg-type]
            proc = subprocess.Popen(
                [IP, "netns", "exec", ns, sys.executable, "-c", SERVER, "80", "81"],  # type: ignore[list-item]
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            names[pod.key] = ns
        yield prefix, names
    finally:
        for proc in servers:
            proc.kill()
            proc.communicate(timeout=10)
        for ns in reversed(created):
            subprocess.run([IP, "netns", "del", ns], capture_output=True)  # type: ignore[list-item]


@pytest.mark.parametrize(
    "case_id",
    ["egress-denied-client-side-despite-ingress-allow", "ingress-egress-combined", "ipblock-egress-except", "named-port-egress"],
)
def test_pod_to_pod_traffic_follows_the_matrix(netns_pods, case_id):
    _, names = netns_pods
    case = CASES[case_id]
    cluster = cluster_for(case)
    table = build_policy_table(cluster)
    for pod in cluster.pods:
        assert pod.ip is not None
        sh(IP, "netns", "exec", names[pod.key], NFT, "-f", "-", input=pod_ruleset(table, pod.ip))  # type: ignore[arg-type]
    expected = {(p["from"], p["to"], p["port"]): p["allowed"] for p in case["probes"] if p["protocol"] == "TCP"}
    wrong = []
    for src in cluster.pods:
        targets = [(dst, port) for dst in cluster.pods if dst is not src for port in (80, 81)]
        out = sh(
            IP, "netns", "exec", names[src.key], sys.executable, "-c", CLIENT,  # type: ignore[arg-type]
            *(f"{dst.ip}:{port}" for dst, port in targets),
        )
        for (dst, port), connected in zip(targets, json.loads(out)):
            want = table.allows(src.ip, dst.ip, port, "TCP")  # type: ignore[arg-type]
            if connected != want or expected.get((src.key, dst.key, port), want) != want:
                wrong.append((src.key, dst.key, port, connected, want))
    assert not wrong, wrong
    # every denial went through a counted reject rule
    denied = sum(
        not table.allows(s.ip, d.ip, port, "TCP")  # type: ignore[arg-type]
        for s in cluster.pods for d in cluster.pods if s is not d for port in (80, 81)
    )
    listing = "".join(sh(IP, "netns", "exec", ns, NFT, "list", "ruleset") for ns in names.values())  # type: ignore[arg-type]
    counted = sum(int(n) for n in re.findall(r"counter packets (\d+) bytes \d+ reject with tcp reset", listing))
    assert denied > 0 and counted >= denied


def test_every_ruleset_of_every_case_passes_nft_check():
    """``nft -c`` (check only) in a throwaway network namespace for every pod of every case."""
    bad = []
    for case_id, case in sorted(CASES.items()):
        table = build_policy_table(cluster_for(case))
        text = "".join(pod_ruleset(table, ip, proxied=["10.96.0.0/12", "fd00:96::/108"]) for ip in sorted(table.pods))
        proc = subprocess.run([UNSHARE, "-n", NFT, "-c", "-f", "-"], input=text, text=True, capture_output=True)  # type: ignore[list-item]
        if proc.returncode:
            bad.append((case_id, proc.stderr[:300]))
    assert not bad, bad
