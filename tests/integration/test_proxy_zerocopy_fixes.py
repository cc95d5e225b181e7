"""Failure paths of the splice relay (``kubelab.proxy.zerocopy``): out of fds, a broken
handler, bytes stuck in a pipe at close, TCP_NODELAY, bad backend addresses, DROP
clients that leave, a cancelled shutdown, and no fd leaks across all of them."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from kubelab.proxy import zerocopy
from kubelab.proxy.policy import PolicyTable
from kubelab.proxy.splice import sweep_idle
from kubelab.proxy.table import Backend, Frontend
from test_proxy_support import Lab, fresh_ip, route, tcp_frontend, until

pytestmark = pytest.mark.skipif(not zerocopy.available(), reason="splice(2) relay is Linux-only")


class FailingPool(zerocopy.PipePool):
    """Hands out ``ok`` pipes, then raises ``exc`` on every further ``get``."""

    def __init__(self, size: int, ok: int, exc: BaseException) -> None:
        super().__init__(size)
        self.ok = ok
        self.exc = exc
        self.calls = 0

    def get(self) -> zerocopy.Pipe:
        self.calls += 1
        if self.calls > self.ok:
            raise self.exc
        return super().get()


async def read_until_reset(r: asyncio.StreamReader) -> bool:
    """Read to the end: True if the stream ended with a reset, False on a clean EOF."""
    try:
        while await asyncio.wait_for(r.read(1 << 20), 5):
            pass
    except ConnectionResetError:
        return True
    return False


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    "ok, exc",
    [(0, OSError(errno.EMFILE, "Too many open files")), (1, OSError(errno.ENFILE, "Too many open files in system")),
     (0, RuntimeError("bug"))],
    ids=["first-emfile", "second-enfile", "handler-bug"],
)
async def test_pipe_failure_resets_client_and_frees_everything(
    ok: int, exc: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    try:
        async with Lab() as lab:
            p = await lab.proxy()
            b = await lab.echo("a")
            f = Frontend(fresh_ip(), 80)
            await p.apply(lab.table({f: route(b)}))
            sh = p.manager.shared
            sh.pipes = pool = FailingPool(sh.config.pipe_size, ok, exc)
            with caplog.at_level(logging.WARNING, logger="kubelab.proxy"):
                try:  # the reset may come before the client's connect() has even returned
                    r, _ = await lab.connect(f.ip, f.port)
                    assert await read_until_reset(r)
                except ConnectionResetError:
                    pass
                await until(lambda: p.routes()["activeConnections"] == 0, what="slot freed")
                for _ in range(20):  # loop turns in which a still-registered socket would fire again
                    await asyncio.sleep(0)
            assert sh.poller is not None and sh.poller.handlers == {}
            assert len(pool.free) == ok  # a pipe got before the failure went back to the pool
            assert p.metrics.service("default/web", "http").endpoint(b.ip, b.port).active == 0
            failures = [rec for rec in caplog.records if "relay handler" in rec.getMessage()]
            assert len(failures) == (1 if isinstance(exc, RuntimeError) else 0)
            assert loop_errors == []
            # The proxy still serves once pipes are available again.
            pool.ok = 10**6
            assert await lab.hello(f.ip, f.port) == "a"
    finally:
        loop.set_exception_handler(None)


async def test_idle_close_with_bytes_in_a_pipe_resets_the_client() -> None:
    async with Lab() as lab:
        p = await lab.proxy(idle_timeout=0.2)
        b = await lab.bulk(64 * 1024 * 1024)
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        r, _ = await lab.connect(f.ip, f.port)  # reads nothing: the pipe fills up and stays full
        fe = tcp_frontend(p, f)
        conn = await until(lambda: next(iter(fe.connections), None), what="connection")
        await until(lambda: conn.buffered() and not conn.reading_backend(), what="pipe full")
        await until(lambda: not fe.connections, what="idle sweep")
        assert await read_until_reset(r), "a truncated stream ended with a clean EOF"


async def test_relayed_sockets_have_tcp_nodelay() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        r, _ = await lab.connect(f.ip, f.port)
        assert await r.readline() == b"a\n"
        conn = next(iter(tcp_frontend(p, f).connections))
        for s in (conn.csock, conn.bsock):
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_unusable_backend_address_is_a_failed_attempt_not_a_leak() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(Backend(fresh_ip(), 70000))}))  # connect_ex: OverflowError
        before = fd_count()
        try:
            r, _ = await lab.connect(f.ip, f.port)
            await read_until_reset(r)  # reset (or EOF): the client is let go, not held
        except ConnectionResetError:
            pass
        await until(lambda: p.routes()["activeConnections"] == 0, what="slot freed")
        assert p.metrics.service("default/web", "http").refused == 1
        for w in list(lab.writers):
            w.close()
            await w.wait_closed()
            lab.writers.discard(w)
        await until(lambda: fd_count() <= before, what="no fd left behind")


@pytest.mark.parametrize("relay", ["splice", "transport"])
async def test_dropped_client_that_leaves_frees_its_slot(relay: str) -> None:
    async with Lab() as lab:
        p = await lab.proxy(node_name="n1", tcp_relay=relay)
        remote = await lab.echo("remote", node="n2")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(remote, kind="NodePort", traffic_policy="Local")}))
        r, w = await lab.connect(f.ip, f.port)
        w.write(b"hello?")  # read or not, it must not keep the proxy busy
        await until(lambda: p.routes()["activeConnections"] == 1, what="held")
        w.close()
        await until(lambda: p.routes()["activeConnections"] == 0, what="slot freed when the client left")
        assert p.metrics.service("default/web", "http").dropped == 1


@pytest.mark.parametrize("relay", ["splice", "transport"])
async def test_new_connection_survives_the_first_sweep(relay: str) -> None:
    async with Lab() as lab:
        p = await lab.proxy(tcp_relay=relay)
        b = await lab.blackhole()  # connects hang: the connection stays in its connect phase
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        await lab.connect(f.ip, f.port)
        fe = tcp_frontend(p, f)
        await until(lambda: fe.connections, what="accepted")
        assert sweep_idle(fe.connections) == 0  # no idle period has passed yet
        assert sweep_idle(fe.connections) == 1  # a whole one without traffic has


async def test_cancelled_shutdown_still_closes_connections_poller_and_pipes() -> None:
    async with Lab() as lab:
        p = await lab.proxy()
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        r, _ = await lab.connect(f.ip, f.port)
        assert await r.readline() == b"a\n"
        sh = p.manager.shared
        pool = sh.pipes
        assert pool is not None
        closing = asyncio.ensure_future(p.manager.close(drain_timeout=30))
        await until(lambda: tcp_frontend_state(p, f) == "draining", what="draining")
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert sh.poller is None and pool.free == [] and sh.active == 0
        assert await read_until_reset(r)


def tcp_frontend_state(p: Any, f: Frontend) -> str:
    fes = list(p.manager.frontends.values()) + list(p.manager.draining)
    return fes[0].state if fes else "draining"  # close() empties frontends first


@dataclass(frozen=True)
class DenyFrom(PolicyTable):
    bad: str = ""

    def allows(self, src_ip: str, dst_ip: str, port: int, protocol: str) -> bool:
        return src_ip != self.bad

    def explain(self, src_ip: str, dst_ip: str, port: int, protocol: str) -> str:
        return "test"


async def _finish(lab: Lab, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(r.read(), 5)
    except ConnectionResetError:
        pass
    w.close()
    lab.writers.discard(w)
    try:
        await w.wait_closed()
    except ConnectionResetError:
        pass


async def test_no_fd_leak_across_every_way_a_connection_ends() -> None:
    before = fd_count()
    async with Lab() as lab:
        p = await lab.proxy(max_connections=3, idle_timeout=0.2, drain_timeout=0.2)
        echo = await lab.echo("a")

        async def resetter(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, zerocopy._LINGER0)
            w.transport.abort()

        rst = await lab.serve(resetter)
        f_ok, f_dead, f_deny, f_rst, f_drain = (Frontend(fresh_ip(), 80) for _ in range(5))
        bad = fresh_ip()
        routes = {f_ok: route(echo), f_dead: route(lab.dead(), service="default/dead"),
                  f_deny: route(echo, service="default/deny"), f_rst: route(rst, service="default/rst"),
                  f_drain: route(echo, service="default/drain")}
        await p.apply(lab.table(routes, DenyFrom(bad=bad)))
        # normal
        assert await lab.hello(f_ok.ip, f_ok.port) == "a"
        # refused, policy-denied, backend reset
        for fr, local in ((f_dead, None), (f_deny, bad), (f_rst, None)):
            try:
                r, w = await lab.connect(fr.ip, fr.port, local_ip=local)
                await _finish(lab, r, w)
            except ConnectionResetError:
                pass
        await until(lambda: p.routes()["activeConnections"] == 0, what="short ones closed")
        # over the limit: three held (later idle-closed), the fourth reset
        held = [await lab.connect(f_ok.ip, f_ok.port) for _ in range(3)]
        for r, _ in held:
            assert await r.readline() == b"a\n"
        try:
            r, w = await lab.connect(f_ok.ip, f_ok.port)
            await _finish(lab, r, w)
        except ConnectionResetError:
            pass
        assert p.metrics.service("default/web", "http").limit_rejected == 1
        # idle-closed
        await until(lambda: p.routes()["activeConnections"] == 0, what="idle sweep")
        for r, w in held:
            await _finish(lab, r, w)
        # drain-aborted: a live connection on a removed frontend
        r, w = await lab.connect(f_drain.ip, f_drain.port)
        assert await r.readline() == b"a\n"
        del routes[f_drain]
        await p.apply(lab.table(routes, DenyFrom(bad=bad)))
        await until(lambda: not p.manager.draining, what="drained")
        await _finish(lab, r, w)
        # one connection still open at proxy close
        r, w = await lab.connect(f_ok.ip, f_ok.port)
        assert await r.readline() == b"a\n"
        await p.close(drain_timeout=0.1)
        await _finish(lab, r, w)
        s = p.metrics.service
        assert s("default/dead", "http").refused == 1 and s("default/deny", "http").policy_denied == 1
    await until(lambda: fd_count() <= before, what=f"fd count back to {before}")


async def test_transport_relay_creates_no_pipes_or_poller() -> None:
    async with Lab() as lab:
        p = await lab.proxy(tcp_relay="transport")
        b = await lab.echo("a")
        f = Frontend(fresh_ip(), 80)
        await p.apply(lab.table({f: route(b)}))
        assert await lab.hello(f.ip, f.port) == "a"
        assert p.manager.shared.pipes is None and p.manager.shared.poller is None


def test_flow_with_a_full_pipe_does_not_read_as_eof() -> None:
    a, b = socket.socketpair()
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        a.setblocking(False)
        b.sendall(b"data")
        conn = SimpleNamespace(active=False, abort=lambda exc=None: pytest.fail(f"aborted: {exc!r}"))
        flow = zerocopy.Flow(conn, a.fileno(), b.fileno(), b, (r, w, 4096), True)  # type: ignore[arg-type]
        flow.inpipe = 4096  # full: splice(len=0) would return 0
        flow.read()
        assert not flow.eof and not flow.shut and flow.blocked
    finally:
        a.close()
        b.close()
        os.close(r)
        os.close(w)


def test_probe_falls_back_when_the_kernel_refuses_splice() -> None:
    def refuse(*args: Any) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    assert zerocopy.probe_splice(refuse) is False
    assert zerocopy.probe_splice(os.splice) is True
