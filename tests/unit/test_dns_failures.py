"""What a query whose answer raised costs: SERVFAIL (or a drop), a counter, and a
traceback in the log at most once per exception type per interval; plus the Latency
histogram's batch update."""

from __future__ import annotations

import logging

import pytest

from kubelab.dns import wire
from kubelab.dns.config import DnsConfig
from kubelab.dns.metrics import BUCKETS, Latency
from kubelab.dns.server import DnsServer

QUERY = bytes.fromhex("abcd0100000100000000000003777777076578616d706c6503636f6d0000010001")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(srv: DnsServer, exc: Exception, data: bytes = QUERY):
    try:
        raise exc
    except Exception:
        return srv.failed_reply(data, lambda: ("10.0.0.1", 5353))


@pytest.fixture
def srv():
    s = DnsServer(DnsConfig(upstreams=()))
    s._failure_clock = Clock()
    return s


def test_failure_is_servfail_and_logged_once_per_type_per_interval(srv, caplog):
    with caplog.at_level(logging.ERROR, logger="kubelab.dns.server"):
        for _ in range(50):
            reply = fail(srv, KeyError("k"))
            assert reply is not None and reply[:2] == QUERY[:2] and reply[3] & 0xF == wire.SERVFAIL
        fail(srv, ValueError("v"))  # another type: logged on its own
        assert len(caplog.records) == 2
        srv._failure_clock.now += srv.FAILURE_LOG_INTERVAL - 1
        fail(srv, KeyError("k"))
        assert len(caplog.records) == 2
        srv._failure_clock.now += 1
        fail(srv, KeyError("k"))
        assert len(caplog.records) == 3
    assert all(r.exc_info is not None for r in caplog.records)
    assert srv.query_failures == {"KeyError": 52, "ValueError": 1}
    reg = srv.metrics.registry
    assert reg.get_sample_value("kubelab_dns_query_failures_total", {"type": "KeyError"}) == 52


def test_failure_never_raises(srv, monkeypatch):
    def servfail_for(data):
        raise RuntimeError("the parser again")

    monkeypatch.setattr(srv, "servfail_for", servfail_for)
    assert fail(srv, KeyError("k")) is None


def test_failure_on_unparseable_input_is_dropped(srv):
    assert fail(srv, KeyError("k"), b"\x00\x01") is None


def test_observe_many_buckets_a_batch():
    lat = Latency()
    lat.observe_many(BUCKETS[0] / 2, 5)  # first bucket
    lat.observe_many(BUCKETS[3], 2)  # exactly a bound: that bucket (le)
    lat.observe_many(BUCKETS[3] * 1.01, 3)  # just above: the next one
    lat.observe_many(BUCKETS[-1] * 2, 4)  # beyond the last bound: +Inf
    assert lat.counts[0] == 5 and lat.counts[3] == 2 and lat.counts[4] == 3 and lat.counts[-1] == 4
    assert sum(lat.counts) == 14
    assert lat.sum == pytest.approx(BUCKETS[0] / 2 * 5 + BUCKETS[3] * 2 + BUCKETS[3] * 1.01 * 3 + BUCKETS[-1] * 8)
    one = Latency()
    for _ in range(3):
        one.observe(BUCKETS[3] * 1.01)
    assert one.counts[4] == 3  # the same buckets as per-query observe()
