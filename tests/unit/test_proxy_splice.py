"""The TCP relay's flow-control, half-close and close rules, with fake transports."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from kubelab.proxy.config import ProxyConfig
from kubelab.proxy.metrics import EndpointStats, ServiceStats
from kubelab.proxy.splice import BIG_READ, Downstream, ReadBuffer, Upstream, sweep_idle


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.eof_written = False
        self.closed = False
        self.aborted = False
        self.limits: tuple[int, int] | None = None
        self.pending = 0  # what a real transport could not send yet
        self.short_write = False  # the next write only partly reaches the socket

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))
        self.raw: Any = data
        if self.short_write:
            self.pending = 10

    def get_write_buffer_size(self) -> int:
        return self.pending

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def get_extra_info(self, name: str) -> Any:
        return ("127.80.0.9", 5555) if name == "peername" else None


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Any]] = []

    def call_later(self, delay: float, cb: Any) -> Any:
        self.timers.append((delay, cb))
        return SimpleNamespace(cancel=lambda: None)


def pair(**cfg: Any) -> tuple[Downstream, FakeTransport, Upstream, FakeTransport, Any]:
    cfg.setdefault("tcp_relay", "transport")  # these are transport relay tests
    config = ProxyConfig(**cfg)
    loop = FakeLoop()
    shared = SimpleNamespace(config=config, loop=loop, active=1, policy=None, rbuf=ReadBuffer())
    done: list[Downstream] = []
    fe = SimpleNamespace(shared=shared, stats=ServiceStats(), connection_done=done.append,
                         route=SimpleNamespace(service="ns/s"), action="serve")
    d = Downstream(fe)  # type: ignore[arg-type]
    dt = FakeTransport()
    d.transport = dt
    d.counted = True
    d.ep = EndpointStats()
    d.ep.active = 1
    d.backend = object()
    up = Upstream(d)
    ut = FakeTransport()
    up.connection_made(ut)
    d.upt = ut  # what _connect does once the early bytes are flushed
    return d, dt, up, ut, SimpleNamespace(fe=fe, loop=loop, done=done, shared=shared)


def test_upstream_connect_links_pair_and_sets_buffer_limits() -> None:
    d, dt, up, ut, _ = pair(high_water=1000, low_water=100)
    assert d.up is up
    assert ut.limits == (1000, 100)


def feed(proto: Any, data: bytes) -> None:
    """What the event loop does for a BufferedProtocol: fill get_buffer(), then buffer_updated()."""
    buf = proto.get_buffer(-1)
    buf[: len(data)] = data
    proto.buffer_updated(len(data))


def test_bytes_flow_both_ways_and_are_counted() -> None:
    d, dt, up, ut, _ = pair()
    feed(d, b"ping")
    feed(up, b"pong!")
    assert ut.written == [b"ping"] and dt.written == [b"pong!"]
    assert d.ep.bytes_in == 4 and d.ep.bytes_out == 5  # type: ignore[union-attr]
    assert d.active


def test_backpressure_pauses_the_other_side() -> None:
    d, dt, up, ut, _ = pair()
    d.pause_writing()  # client reads slowly -> stop reading the endpoint
    assert not ut.reading and dt.reading
    d.resume_writing()
    assert ut.reading
    up.pause_writing()  # endpoint reads slowly -> stop reading the client
    assert not dt.reading and ut.reading
    up.resume_writing()
    assert dt.reading


def test_half_close_each_way_then_full_close() -> None:
    d, dt, up, ut, _ = pair()
    assert d.eof_received() is True  # keep the client transport open for the reply
    assert ut.eof_written and not ut.closed and not dt.closed
    feed(up, b"reply")
    assert dt.written == [b"reply"]
    assert up.eof_received() is True
    assert dt.closed and ut.closed  # both directions done


def test_endpoint_half_close_first() -> None:
    d, dt, up, ut, _ = pair()
    up.eof_received()
    assert dt.eof_written and not dt.closed
    feed(d, b"late")
    assert ut.written == [b"late"]


def test_reset_on_one_side_aborts_the_other() -> None:
    d, dt, up, ut, _ = pair()
    up.connection_lost(ConnectionResetError())
    assert dt.aborted
    d2, dt2, up2, ut2, env = pair()
    d2.connection_lost(ConnectionResetError())
    assert ut2.aborted
    assert env.done == [d2] and env.shared.active == 0 and d2.ep.active == 0  # type: ignore[union-attr]


def test_clean_close_closes_peer_gracefully() -> None:
    d, dt, up, ut, env = pair()
    d.connection_lost(None)
    assert ut.closed and not ut.aborted
    d.connection_lost(None)  # idempotent: counters not decremented twice
    assert env.shared.active == 0


def test_small_reads_are_copied_big_ones_sent_from_the_shared_buffer() -> None:
    d, dt, up, ut, env = pair()
    rbuf = env.shared.rbuf
    feed(d, b"small")
    assert isinstance(ut.raw, bytes)  # copied: the shared buffer is reused at once
    big = b"y" * BIG_READ
    before = rbuf.view
    feed(d, big)
    assert isinstance(ut.raw, memoryview) and rbuf.view is before  # zero-copy, all sent
    ut.short_write = True  # the transport keeps part of it: it now references our memory
    feed(d, big)
    assert isinstance(ut.raw, memoryview) and ut.written[-1] == big
    assert rbuf.view is not before  # so later reads go to a fresh buffer
    after = rbuf.view
    feed(d, big)  # behind a queue: copied, no renewal
    assert isinstance(ut.raw, bytes) and rbuf.view is after


def test_client_bytes_and_eof_before_connect_are_held() -> None:
    d, dt, up, ut, _ = pair()
    d.upt = None  # still connecting
    feed(d, b"GET / HTTP/1.0\r\n\r\n")
    assert d.eof_received() is True  # keep the transport; the EOF is forwarded later
    assert d.early == [b"GET / HTTP/1.0\r\n\r\n"] and ut.written == [] and not ut.eof_written
    assert dt.reading  # small: no pause (saves two epoll_ctl per connection)
    d.early = None
    d.data_received(b"x" * (ProxyConfig().high_water + 1))  # (early data is kept as bytes)
    assert not dt.reading  # above the high water mark the client is paused


def test_abandoned_attempt_does_not_close_client() -> None:
    d, dt, up, ut, _ = pair()
    d.up = d.upt = None  # what _connect does after a timed-out attempt
    up.connection_lost(None)
    assert not dt.closed and not dt.aborted


def test_idle_sweep_closes_only_idle_connections() -> None:
    busy, bt, _, but, _ = pair()
    idle, it, _, iut, _ = pair()
    idle.active = False  # no traffic in the period (a new connection starts active)
    busy.active = True
    assert sweep_idle({busy, idle}) == 1  # busy had traffic in the period: kept, flag reset
    assert it.closed and iut.closed and not bt.closed
    assert sweep_idle({busy}) == 1  # nothing since the last sweep
    assert bt.closed and but.closed
