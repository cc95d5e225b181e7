"""Real clients (curl) against NodePort / ClusterIP frontends, and NetworkPolicy denial."""

from __future__ import annotations

import asyncio
import shutil
import socket
from dataclasses import dataclass

import pytest

from kubelab.proxy.policy import PolicyTable
from kubelab.proxy.table import Frontend
from test_proxy_support import Lab, fresh_ip, route

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl binary not installed")


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


async def curl(url: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "5", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode().strip(), err.decode().strip()


@needs_curl
async def test_curl_through_nodeport_and_clusterip_reaches_all_pods() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        bs = [await lab.http(n) for n in ("pod-a", "pod-b", "pod-c")]
        node_port = free_port()
        cluster = Frontend(fresh_ip(), 80)
        nodeport = Frontend("127.0.0.1", node_port)
        await p.apply(lab.table({cluster: route(*bs), nodeport: route(*bs, kind="NodePort")}))
        for url in (f"http://{cluster.ip}/", f"http://127.0.0.1:{node_port}/"):
            seen = set()
            for _ in range(6):
                code, out, err = await curl(url)
                assert code == 0, err
                seen.add(out)
            assert seen == {"pod-a", "pod-b", "pod-c"}


@needs_curl
async def test_curl_sees_connection_refused_without_endpoints() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        node_port = free_port()
        await p.apply(lab.table({Frontend("127.0.0.1", node_port): route(kind="NodePort")}))
        code, out, err = await curl(f"http://127.0.0.1:{node_port}/")
        assert code == 7, (code, err)  # CURLE_COULDNT_CONNECT
        assert "refused" in err.lower() or "couldn't connect" in err.lower()


@dataclass(frozen=True)
class DenyFrom(PolicyTable):
    bad: str = ""

    def allows(self, src_ip: str, dst_ip: str, port: int, protocol: str) -> bool:
        return src_ip != self.bad

    def explain(self, src_ip: str, dst_ip: str, port: int, protocol: str) -> str:
        return f"test policy isolates {self.bad}"


async def test_policy_denial_resets_client_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        bad, good = fresh_ip(), fresh_ip()
        await p.apply(lab.table({f: route(b)}, DenyFrom(bad=bad)))
        assert await lab.hello(f.ip, f.port, local_ip=good) == "a"
        with caplog.at_level("INFO", logger="kubelab.proxy"):
            try:  # the reset may come before the client's connect() has even returned
                r, w = await lab.connect(f.ip, f.port, local_ip=bad)
                assert await asyncio.wait_for(r.read(), 5) == b""
            except ConnectionResetError:
                pass
        s = p.metrics.service("default/web", "http")
        assert s.policy_denied == 1
        assert s.endpoint(b.ip, b.port).total == 1  # only the good client got through
        assert f"test policy isolates {bad}" in caplog.text
