"""The admin HTTP port: /healthz, /metrics, /routes, PUT/GET /v1/routes; and the kubelab-proxy process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import aiohttp
import pytest

from kubelab.proxy.admin import AdminServer
from kubelab.proxy.table import Frontend, RouteTable
from test_proxy_support import Lab, fresh_ip, route, until


async def test_admin_endpoints() -> None:
    async with Lab() as lab:
        p = await lab.proxy(healthz_timeout=0.2)
        admin = AdminServer(p, fresh_ip(), 0)
        await admin.start()
        base = f"http://{admin.host}:{admin.port}"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/healthz") as resp:
                    assert resp.status == 200
                    body = await resp.json()
                    assert body["lastUpdated"] == "0001-01-01T00:00:00Z"
                    assert {"currentTime", "nodeEligible"} <= set(body)
                async with http.get(base + "/v1/routes") as resp:
                    assert resp.status == 404

                b = await lab.echo("a")
                f = Frontend(fresh_ip(), 80)
                table = RouteTable(5, {f: route(b)})
                async with http.put(base + "/v1/routes", json=table.to_json()) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["generation"] == 5
                assert await lab.hello(f.ip, f.port) == "a"

                async with http.get(base + "/v1/routes") as resp:
                    assert RouteTable.from_json(await resp.json()) == table
                async with http.get(base + "/routes") as resp:
                    routes = await resp.json()
                    assert routes["generation"] == 5
                    [fe] = routes["frontends"]
                    assert fe["state"] == "listening" and fe["service"] == "default/web"
                    assert fe["backends"][0]["inRotation"] is True
                async with http.get(base + "/metrics") as resp:
                    text = await resp.text()
                    assert resp.headers["Content-Type"].startswith("text/plain")
                    ep = f'endpoint="{b.ip}:{b.port}"'
                    assert f'kubelab_proxy_connections_total{{{ep},port="http",service="default/web"}} 1.0' in text
                    assert "kubelab_proxy_sent_bytes_total" in text
                    assert "kubelab_proxy_table_generation 5.0" in text
                    assert 'kubelab_proxy_frontends{state="listening"} 1.0' in text

                stale = RouteTable(4, {})
                async with http.put(base + "/v1/routes", json=stale.to_json()) as resp:
                    assert resp.status == 409
                async with http.put(base + "/v1/routes", data=b"{not json") as resp:
                    assert resp.status == 400
                async with http.put(base + "/v1/routes", json={"routes": []}) as resp:
                    assert resp.status == 400
                async with http.get(base + "/healthz") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["generation"] == 5

                # A table stuck in apply longer than healthz_timeout makes /healthz 503.
                release = asyncio.Event()
                real_apply = p.manager.apply

                async def stuck(t: RouteTable) -> None:
                    await release.wait()
                    await real_apply(t)

                p.manager.apply = stuck  # type: ignore[method-assign]
                put = asyncio.create_task(p.apply(RouteTable(6, {})))

                async def status() -> int:
                    async with http.get(base + "/healthz") as resp:
                        return resp.status

                deadline = asyncio.get_running_loop().time() + 5
                while await status() != 503:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.02)
                release.set()
                await put
                assert await status() == 200
        finally:
            await admin.close()


async def test_service_proxy_serves_admin_port_from_config() -> None:
    from kubelab.proxy.config import ProxyConfig
    from kubelab.proxy.service import ServiceProxy

    ip = fresh_ip()
    p = ServiceProxy(ProxyConfig.for_lab(admin=(ip, 0)))
    await p.start()
    try:
        assert p.admin_url is not None and p.admin_url.startswith(f"http://{ip}:")
        assert not p.ready
        await p.apply(RouteTable(1, {}))
        assert p.ready
        async with aiohttp.ClientSession() as http:
            async with http.get(p.admin_url + "/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["generation"] == 1
    finally:
        await p.close()
    assert p.admin_url is None
    # a taken admin port is an OSError from start(), and nothing is left open
    blocker = ServiceProxy(ProxyConfig.for_lab(admin=(ip, 0)))
    await blocker.start()
    try:
        assert blocker.admin_address is not None
        clash = ServiceProxy(ProxyConfig.for_lab(admin=blocker.admin_address))
        with pytest.raises(OSError):
            await clash.start()
    finally:
        await blocker.close()


async def test_kubelab_proxy_process_serves_put_routes_and_exits_on_sigterm() -> None:
    async with Lab() as lab:
        b = await lab.echo("a")
        admin_ip = fresh_ip()
        env = dict(os.environ)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kubelab.proxy", "--admin-addr", f"{admin_ip}:10256", "--drain-timeout", "1",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with aiohttp.ClientSession() as http:

                async def healthy() -> bool:
                    try:
                        async with http.get(f"http://{admin_ip}:10256/healthz") as resp:
                            return resp.status == 200
                    except aiohttp.ClientConnectionError:
                        assert proc.returncode is None, await proc.stderr.read()  # type: ignore[union-attr]
                        return False

                deadline = asyncio.get_running_loop().time() + 20
                while not await healthy():
                    assert asyncio.get_running_loop().time() < deadline, "kubelab-proxy did not start"
                    await asyncio.sleep(0.05)
                f = Frontend(fresh_ip(), 80)
                async with http.put(f"http://{admin_ip}:10256/v1/routes",
                                    json=RouteTable(1, {f: route(b)}).to_json()) as resp:
                    assert resp.status == 200
            assert await lab.hello(f.ip, f.port) == "a"
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0, err.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
