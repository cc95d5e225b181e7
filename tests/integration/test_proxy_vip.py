"""VIP claim modes (netns: ``ip route add local``; compose: ``ip addr add``) in a private
network namespace (``unshare -n``), so the host's routes and addresses are never touched."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from kubelab.proxy.vip import LocalClaim, make_claimer
from kubelab.proxy.config import ProxyConfig


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    try:
        return subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_netns = pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -n` (CAP_SYS_ADMIN/CAP_NET_ADMIN) and iproute2")

SCRIPT = textwrap.dedent(
    """
    import asyncio, subprocess, sys
    from kubelab.proxy.config import ProxyConfig
    from kubelab.proxy.service import ServiceProxy
    from kubelab.proxy.table import Backend, Frontend, Route, RouteTable

    def ip(*args):
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout

    async def main(mode):
        ip("link", "set", "lo", "up")
        async def handler(r, w):
            w.write(b"pod\\n"); await w.drain(); w.close()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        if mode == "netns":
            # another lab's route, and one of our CIDRs that the runtime already made local:
            # the proxy must leave both alone (it removes only what it added)
            ip("route", "add", "local", "10.99.0.0/16", "dev", "lo", "table", "local", "proto", "252")
            ip("route", "add", "local", "10.98.0.0/16", "dev", "lo", "table", "local", "proto", "252")
            cfg = ProxyConfig(vip_mode="netns", vip_cidrs=("10.96.0.0/16", "10.98.0.0/16"))
            vip = "10.96.0.10"
        else:
            # a container's eth0 in real compose; lo here (no dummy/veth modules needed)
            cfg = ProxyConfig(vip_mode="compose", vip_interface="lo")
            vip = "10.97.0.5"
        p = ServiceProxy(cfg)
        await p.start()
        route = Route("default/web", "http", "ClusterIP", (Backend("127.0.0.1", port),))
        await p.apply(RouteTable(1, {Frontend(vip, 80): route}))
        assert p.routes()["frontends"][0]["state"] == "listening", p.routes()
        r, w = await asyncio.open_connection(vip, 80)
        assert await r.readline() == b"pod\\n"
        w.close(); await w.wait_closed()
        if mode == "compose":
            assert vip + "/32" in ip("addr", "show", "dev", "lo")
            await p.apply(RouteTable(2, {}))
            await p.manager.close(0.1)  # wait for the drain and the release
            assert vip not in ip("addr", "show", "dev", "lo")
        else:
            assert "10.96.0.0/16" in ip("route", "show", "table", "local", "proto", "252")
        await p.close(0.1)
        if mode == "netns":
            assert "10.96.0.0/16" not in ip("route", "show", "table", "local")
            assert "10.98.0.0/16" in ip("route", "show", "table", "local")
            assert "10.99.0.0/16" in ip("route", "show", "table", "local")
        server.close(); await server.wait_closed()
        print("ok")

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.e2e
@needs_netns
@pytest.mark.parametrize("mode", ["netns", "compose"])
def test_vip_claim_modes_in_private_netns(mode: str) -> None:
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_claimer_choice() -> None:
    assert isinstance(make_claimer(ProxyConfig()), LocalClaim)
    assert type(make_claimer(ProxyConfig(vip_mode="netns", vip_cidrs=("10.96.0.0/16",)))).__name__ == "NetnsClaim"
    assert type(make_claimer(ProxyConfig(vip_mode="compose"))).__name__ == "ComposeClaim"
