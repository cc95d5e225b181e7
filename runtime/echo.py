"""The built-in image ``kubelab/echo``: a small agnhost-netexec-like server.

Why it exists: load balancing, readiness and policy are only visible when every backend
says who it is. One process serves, on each port of its container:

TCP ports -- HTTP/1.1 and raw TCP echo on the same port. The first bytes decide: a
request line (``GET /...``) gets HTTP, anything else is echoed back byte for byte.

=====================  =====================================================================
HTTP path              answer
=====================  =====================================================================
``/``, ``/hostname``   the pod name and a newline (agnhost omits the newline; curl output
                       reads better with it)
``/clientip``          ``ip:port`` of the peer as the pod sees it, and a newline
``/echo?msg=X``        ``X`` exactly (as agnhost)
``/healthz``           ``ok`` (200), or 503 after ``/sethealth?ok=0`` -- a way to fail a
                       readiness probe on purpose and watch the pod leave its Service
``/sethealth?ok=0|1``  flip ``/healthz``
``/exit?code=N``       answer, then exit with status N (to watch ``restartPolicy`` work)
=====================  =====================================================================

Each HTTP request is logged to stdout (``kubelab logs``) as ``CLIENT "METHOD TARGET" STATUS``,
except the kubelet's probes (User-Agent ``kube-probe/``), so a pod's log shows its traffic.

UDP ports -- one reply per datagram, agnhost style: ``hostname`` -> pod name,
``clientip`` -> peer ``ip:port``, ``echo X`` -> ``X``; anything else is echoed as is.

Ports come from ``--port 8080`` / ``--port 5353/UDP`` arguments (repeatable), or the
``ECHO_PORTS`` environment variable (``8080/TCP,5353/UDP``; the runtime sets it from the
container's ``ports``), else agnhost's defaults 8080/TCP and 8081/UDP. The server binds
``POD_IP`` (or ``--host``). ``python -m kubelab.runtime.echo`` runs it; SIGTERM closes
the listeners, lets open connections finish for a moment and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

HTTP_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT")
MAX_HEADER_BYTES = 65536
DEFAULT_PORTS = ((8080, "TCP"), (8081, "UDP"))


# --------------------------------------------------------------------------- config


def parse_port_spec(text: str) -> tuple[int, str]:
    """``8080`` / ``8080/tcp`` / ``53/UDP`` -> (port, protocol)."""
    number, _, proto = text.strip().partition("/")
    proto = (proto or "TCP").upper()
    if proto not in ("TCP", "UDP"):
        raise ValueError(f"{text!r}: protocol must be TCP or UDP")
    port = int(number)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port must be between 0 and 65535")
    return port, proto


@dataclass(frozen=True)
class EchoConfig:
    """Where the echo server listens and what it calls itself."""

    host: str = "127.0.0.1"
    ports: tuple[tuple[int, str], ...] = DEFAULT_PORTS
    pod_name: str = "echo"
    drain_timeout: float = 2.0  # seconds open connections get after SIGTERM

    @classmethod
    def from_args(cls, argv: Sequence[str], env: Mapping[str, str]) -> "EchoConfig":
        parser = argparse.ArgumentParser(prog="kubelab/echo", description="agnhost-netexec-like echo server")
        parser.add_argument("--host", default=env.get("POD_IP") or "127.0.0.1")
        parser.add_argument("--port", action="append", default=[], help="PORT[/TCP|/UDP], repeatable")
        parser.add_argument("--http-port", type=int, action="append", default=[], help="agnhost style")
        parser.add_argument("--udp-port", type=int, action="append", default=[], help="agnhost style")
        parser.add_argument("--name", default=env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname())
        args, _unknown = parser.parse_known_args(list(argv))  # tolerate agnhost flags we don't do
        ports: list[tuple[int, str]] = [parse_port_spec(p) for p in args.port]
        ports += [(p, "TCP") for p in args.http_port] + [(p, "UDP") for p in args.udp_port]
        if not ports and env.get("ECHO_PORTS"):
            ports = [parse_port_spec(p) for p in env["ECHO_PORTS"].split(",") if p.strip()]
        return cls(host=args.host, ports=tuple(dict.fromkeys(ports)) or DEFAULT_PORTS, pod_name=args.name)


# --------------------------------------------------------------------------- pure decisions


def classify(prefix: bytes) -> str | None:
    """Decide from a connection's first bytes: ``"http"``, ``"echo"``, or None (need more)."""
    for method in HTTP_METHODS:
        token = method + b" "
        if prefix.startswith(token):
            return "http"
        if token.startswith(prefix):
            return None  # could still become an HTTP request line
    return "echo"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    set_healthy: bool | None = None  # change /healthz after answering
    exit_code: int | None = None  # exit the process after answering


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def http_answer(method: str, target: str, *, pod_name: str, client: tuple[str, int], healthy: bool) -> HttpResponse:
    """The echo server's HTTP API as a pure function of one request."""
    url = urlsplit(target)
    query = parse_qs(url.query, keep_blank_values=True)
    path = url.path.rstrip("/") or "/"
    if method not in ("GET", "HEAD", "POST"):
        return HttpResponse(405, b"method not allowed\n")
    if path in ("/", "/hostname"):
        return HttpResponse(200, f"{pod_name}\n".encode())
    if path == "/clientip":
        return HttpResponse(200, f"{_hostport(client)}\n".encode())
    if path == "/echo":
        return HttpResponse(200, query.get("msg", [""])[0].encode())
    if path == "/healthz":
        return HttpResponse(200, b"ok\n") if healthy else HttpResponse(503, b"unhealthy\n")
    if path == "/sethealth":
        ok = query.get("ok", ["1"])[0].lower() not in ("0", "false", "no")
        return HttpResponse(200, f"healthz {'ok' if ok else 'failing'}\n".encode(), set_healthy=ok)
    if path == "/exit":
        try:
            code = int(query.get("code", ["0"])[0])
        except ValueError:
            return HttpResponse(400, b"code must be an integer\n")
        return HttpResponse(200, f"exiting with {code}\n".encode(), exit_code=code)
    return HttpResponse(404, b"404 page not found\n")


def udp_answer(data: bytes, *, pod_name: str, client: tuple[str, int]) -> bytes:
    """agnhost netexec's UDP commands; anything else is echoed verbatim."""
    text = data.strip()
    if text == b"hostname":
        return pod_name.encode()
    if text == b"clientip":
        return _hostport(client).encode()
    if text.startswith(b"echo "):
        return text[5:]
    return data


def _hostport(addr: tuple[Any, ...]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str
    version: str
    headers: Mapping[str, str]
    length: int  # bytes consumed from the buffer, body included


class HttpError(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status


def parse_request(buf: bytes) -> HttpRequest | None:
    """Parse one request from the front of ``buf``; None if incomplete. Raises HttpError."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEADER_BYTES:
            raise HttpError(431, "request headers too large")
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    parts = head[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, "malformed header")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise HttpError(400, "chunked request bodies are not supported")
    try:
        body_len = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "bad content-length") from None
    total = end + 4 + body_len
    if len(buf) < total:
        return None
    return HttpRequest(parts[0], parts[1], parts[2], headers, total)


def keep_alive(req: HttpRequest) -> bool:
    conn = req.headers.get("connection", "").lower()
    if req.version == "HTTP/1.0":
        return conn == "keep-alive"
    return conn != "close"


def render(resp: HttpResponse, *, head_only: bool, close: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Unknown')}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head if head_only else head + resp.body


# --------------------------------------------------------------------------- protocols


@dataclass
class EchoState:
    """What all connections of one server share."""

    pod_name: str
    healthy: bool = True
    on_exit: Callable[[int], None] = lambda code: None
    access_log: Callable[[str], None] | None = None  # the container's stdout in a pod
    connections: set["EchoTcpProtocol"] = field(default_factory=set)


class EchoTcpProtocol(asyncio.Protocol):
    """Sniffs HTTP vs raw echo; raw echo pauses reading while the writer is paused."""

    def __init__(self, state: EchoState):
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.mode: str | None = None
        self.peer: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")[:2]
        self.state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.mode == "echo":
            self.transport.write(data)
            return
        self.buf += data
        if self.mode is None:
            self.mode = classify(self.buf[:8])
            if self.mode is None:
                return
            if self.mode == "echo":
                data, self.buf = self.buf, b""
                self.transport.write(data)
                return
        self._serve_http()

    def eof_received(self) -> bool | None:
        if self.mode == "echo" and self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()  # half-close: the client sees everything echoed, then EOF
            return True
        return None

    def _serve_http(self) -> None:
        assert self.transport is not None
        while self.buf and not self.transport.is_closing():
            try:
                req = parse_request(self.buf)
            except HttpError as exc:
                resp = HttpResponse(exc.status, f"{exc}\n".encode())
                self.transport.write(render(resp, head_only=False, close=True))
                self.transport.close()
                return
            if req is None:
                return
            self.buf = self.buf[req.length:]
            resp = http_answer(req.method, req.target, pod_name=self.state.pod_name,
                               client=self.peer, healthy=self.state.healthy)
            close = not keep_alive(req) or resp.exit_code is not None
            self.transport.write(render(resp, head_only=req.method == "HEAD", close=close))
            if self.state.access_log is not None and not req.headers.get("user-agent", "").startswith("kube-probe/"):
                self.state.access_log(f'{self.peer[0]} "{req.method} {req.target}" {resp.status}')
            if resp.set_healthy is not None:
                self.state.healthy = resp.set_healthy
            if close:
                self.transport.close()
            if resp.exit_code is not None:
                self.state.on_exit(resp.exit_code)
                return


class EchoUdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, state: EchoState):
        self.state = state
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.transport is not None:
            self.transport.sendto(udp_answer(data, pod_name=self.state.pod_name, client=addr[:2]), addr)


# --------------------------------------------------------------------------- server


class EchoServer:
    """All listeners of one echo container. ``start()`` binds, ``close()`` drains."""

    def __init__(self, config: EchoConfig, *, on_exit: Callable[[int], None] = lambda code: None,
                 access_log: Callable[[str], None] | None = None):
        self.config = config
        self.state = EchoState(config.pod_name, on_exit=on_exit, access_log=access_log)
        self._servers: list[asyncio.Server] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self.addresses: list[tuple[str, str, int]] = []  # (protocol, host, port) as bound

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for port, proto in self.config.ports:
                if proto == "TCP":
                    srv = await loop.create_server(lambda: EchoTcpProtocol(self.state), self.config.host, port,
                                                   reuse_address=True)
                    self._servers.append(srv)
                    bound = srv.sockets[0].getsockname()
                else:
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: EchoUdpProtocol(self.state), local_addr=(self.config.host, port))
                    self._udp.append(transport)
                    bound = transport.get_extra_info("sockname")
                self.addresses.append((proto, bound[0], bound[1]))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop accepting, let connections finish for ``drain_timeout``, then abort them."""
        for srv in self._servers:
            srv.close()
        for udp in self._udp:
            udp.close()
        self._udp.clear()
        try:
            async with asyncio.timeout(self.config.drain_timeout):
                while self.state.connections:
                    for conn in list(self.state.connections):
                        if conn.transport is not None and conn.mode != "echo" and not conn.buf:
                            conn.transport.close()  # idle HTTP keep-alive: nothing to lose
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        for conn in list(self.state.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for srv in self._servers:
            await srv.wait_closed()
        self._servers.clear()


async def serve(config: EchoConfig) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def finish(code: int) -> None:
        if not done.done():
            done.set_result(code)

    server = EchoServer(config, on_exit=finish, access_log=lambda line: print(line, flush=True))
    await server.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish, 0)
    print(f"kubelab/echo {config.pod_name} listening on "
          + " ".join(f"{h}:{p}/{proto}" for proto, h, p in server.addresses), flush=True)
    code = await done
    await server.close()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = EchoConfig.from_args(sys.argv[1:] if argv is None else argv, os.environ)
    except ValueError as exc:
        print(f"kubelab/echo: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(serve(config))
    except OSError as exc:
        print(f"kubelab/echo: cannot listen: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
