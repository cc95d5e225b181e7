"""``kubelab-dns`` as its own process: flags, --zone-file, PUT /v1/zone, SIGTERM exit 0."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import pytest

from kubelab.dns.zone import Service, ServicePort, ZoneData
from tests.helpers import wait_until

HOST = "127.53.6.1"
PORT = 5301
ADMIN = 9301


async def wait_answer(name: str, timeout: float = 10.0):
    async def answer():
        try:
            return await dns.asyncquery.udp(dns.message.make_query(name, "A"), HOST, port=PORT, timeout=0.2)
        except (dns.exception.Timeout, ConnectionError, OSError):
            return None

    return await wait_until(answer, timeout, f"an answer for {name}", interval=0.05)


@pytest.mark.timeout(60)
async def test_standalone_process(tmp_path):
    z = ZoneData(1, {"prod/web": Service("prod", "web", ("10.96.10.10",), ports=(ServicePort("http", 80),))})
    zf = tmp_path / "zone.json"
    zf.write_text(json.dumps(z.to_json()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubelab.dns", "--addr", f"{HOST}:{PORT}", "--admin", f"{HOST}:{ADMIN}",
        "--upstream", "none", "--ttl", "7", "--zone-file", str(zf), "--log-level", "WARNING",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        r = await wait_answer("web.prod.svc.cluster.local.")
        assert r.answer[0].ttl == 7 and r.answer[0][0].to_text() == "10.96.10.10"
        z2 = ZoneData(2, {"prod/web": Service("prod", "web", ("10.96.10.12",))})
        async with aiohttp.ClientSession() as http:

            async def admin_ready():
                try:
                    async with http.get(f"http://{HOST}:{ADMIN}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            # the admin port comes up right after DNS
            await wait_until(admin_ready, 10, "the admin port's /readyz", interval=0.05)
            async with http.put(f"http://{HOST}:{ADMIN}/v1/zone", json=z2.to_json()) as resp:
                assert resp.status == 200
        r = await wait_answer("web.prod.svc.cluster.local.")
        assert r.answer[0][0].to_text() == "10.96.10.12"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
