"""kubelab/echo over real sockets: HTTP, raw TCP echo, UDP, keep-alive, exit, SIGTERM."""

import asyncio
import os
import signal
import sys

import aiohttp
import pytest

from kubelab.runtime.echo import EchoConfig, EchoServer

HOST = "127.55.1.1"


@pytest.fixture
async def echo():
    exits = []
    server = EchoServer(EchoConfig(host=HOST, ports=((0, "TCP"), (0, "UDP")), pod_name="web-0", drain_timeout=0.5),
                        on_exit=exits.append)
    await server.start()
    server.exits = exits
    yield server
    await server.close()


def port(server, proto):
    return next(p for pr, _, p in server.addresses if pr == proto)


async def test_http_endpoints(echo):
    base = f"http://{HOST}:{port(echo, 'TCP')}"
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/") as r:
            assert r.status == 200 and await r.text() == "web-0\n"
        async with s.get(base + "/hostname") as r:
            assert await r.text() == "web-0\n"
        async with s.get(base + "/clientip") as r:
            ip, _, p = (await r.text()).strip().rpartition(":")
            assert ip == "127.0.0.1" and int(p) > 0  # aiohttp connects from the default source
        async with s.get(base + "/echo", params={"msg": "héllo"}) as r:
            assert await r.text() == "héllo"
        async with s.get(base + "/healthz") as r:
            assert r.status == 200
        async with s.get(base + "/sethealth?ok=0") as r:
            assert r.status == 200
        async with s.get(base + "/healthz") as r:
            assert r.status == 503
        async with s.get(base + "/missing") as r:
            assert r.status == 404


async def test_keep_alive_serves_pipelined_requests(echo):
    reader, writer = await asyncio.open_connection(HOST, port(echo, "TCP"))
    writer.write(b"GET /hostname HTTP/1.1\r\nHost: x\r\n\r\nGET /echo?msg=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = b""
    async with asyncio.timeout(5):
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"2"):
            data += await reader.read(4096)
    assert b"web-0\n" in data
    writer.close()
    await writer.wait_closed()


async def test_raw_tcp_echo_and_half_close(echo):
    reader, writer = await asyncio.open_connection(HOST, port(echo, "TCP"))
    payload = b"hello\x00" + os.urandom(200_000)
    writer.write(payload)
    writer.write_eof()
    async with asyncio.timeout(5):
        got = await reader.read()  # until the server's EOF
    assert got == payload
    writer.close()
    await writer.wait_closed()


async def test_udp_commands(echo):
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            replies.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=(HOST, port(echo, "UDP")))
    try:
        for msg, want in ((b"hostname", b"web-0"), (b"echo abc", b"abc"), (b"raw", b"raw")):
            transport.sendto(msg)
            async with asyncio.timeout(5):
                assert await replies.get() == want
    finally:
        transport.close()


async def test_exit_endpoint_reports_the_code(echo):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{HOST}:{port(echo, 'TCP')}/exit?code=7") as r:
            assert await r.text() == "exiting with 7\n"
    assert echo.exits == [7]


async def test_module_runs_and_stops_on_sigterm():
    env = {**os.environ, "POD_IP": HOST, "POD_NAME": "proc-0", "ECHO_PORTS": "0/TCP"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "kubelab.runtime.echo", env=env,
                                                stdout=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(10):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("kubelab/echo proc-0 listening on 127.55.1.1:")
        listen_port = int(line.split(":")[-1].split("/")[0])
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://{HOST}:{listen_port}/") as r:
                assert await r.text() == "proc-0\n"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest = await proc.stdout.read()
            assert await proc.wait() == 0
        assert b'"GET /" 200' in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
