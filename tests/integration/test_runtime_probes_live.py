"""Probe checks against real servers and processes, and the worker loop."""

import asyncio

import pytest

from kubelab.runtime.echo import EchoConfig, EchoServer
from kubelab.runtime.probes import CheckTarget, ProbeSpec, ProbeWorker, check
from tests.helpers import close_writer, free_port

HOST = "127.55.2.1"


@pytest.fixture
async def echo():
    server = EchoServer(EchoConfig(host=HOST, ports=((0, "TCP"),), pod_name="p", drain_timeout=0.2))
    await server.start()
    yield server
    await server.close()


def tcp_port(server):
    return server.addresses[0][2]


async def test_tcp_probe(echo):
    target = CheckTarget(HOST)
    assert (await check(ProbeSpec("tcpSocket", port=tcp_port(echo)), target))[0]
    ok, msg = await check(ProbeSpec("tcpSocket", port=free_port(HOST)), target)
    assert not ok and "tcpSocket probe failed" in msg


async def test_http_probe_status_codes(echo):
    target = CheckTarget(HOST)
    spec = ProbeSpec("httpGet", port=tcp_port(echo), path="/healthz")
    assert await check(spec, target) == (True, "")
    echo.state.healthy = False
    assert await check(spec, target) == (False, "HTTP probe failed with statuscode: 503")
    ok, _ = await check(ProbeSpec("httpGet", port=tcp_port(echo), path="/nope"), target)
    assert not ok
    ok, msg = await check(ProbeSpec("httpGet", port=tcp_port(echo), scheme="HTTPS"), target)
    assert not ok and "HTTPS" in msg


async def test_exec_probe_uses_pod_env(tmp_path):
    target = CheckTarget(HOST, env={"READY_FILE": str(tmp_path / "ready")})
    spec = ProbeSpec("exec", command=("sh", "-c", 'test -f "$READY_FILE"'))
    ok, msg = await check(spec, target)
    assert not ok and "exited with 1" in msg
    (tmp_path / "ready").touch()
    assert await check(spec, target) == (True, "")
    ok, msg = await check(ProbeSpec("exec", command=("no-such-binary-kl",)), target)
    assert not ok and "not found" in msg


async def test_probe_timeout():
    writers = []
    release = asyncio.Event()

    async def never(reader, writer):
        writers.append(writer)
        await release.wait()
        writer.close()

    srv = await asyncio.start_server(never, HOST, 0)
    try:
        p = srv.sockets[0].getsockname()[1]
        ok, msg = await check(ProbeSpec("httpGet", port=p, timeout=0.2), CheckTarget(HOST))
        assert not ok and "timed out after 0.2s" in msg
        ok, msg = await check(ProbeSpec("exec", command=("sleep", "5"), timeout=0.2), CheckTarget(HOST))
        assert not ok and "timed out" in msg
    finally:
        release.set()
        srv.close()
        await srv.wait_closed()
        for w in writers:
            await close_writer(w)


async def test_worker_reports_flips_only(echo):
    changes: asyncio.Queue = asyncio.Queue()
    spec = ProbeSpec("httpGet", port=tcp_port(echo), path="/healthz", period=0.05, failure_threshold=2)
    worker = ProbeWorker("readiness", spec, CheckTarget(HOST), lambda ok, msg: changes.put_nowait((ok, msg)))
    worker.start()
    try:
        async with asyncio.timeout(5):
            assert await changes.get() == (True, "")
            echo.state.healthy = False
            ok, msg = await changes.get()
            assert not ok and "503" in msg
            assert worker.state.failures >= 2
            echo.state.healthy = True
            assert (await changes.get())[0] is True
    finally:
        await worker.close()
