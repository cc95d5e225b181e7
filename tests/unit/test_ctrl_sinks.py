"""Sinks: in-process calls (plain or async) and the HTTP sink's URL building; no sockets."""

import pytest

from kubelab.controller.manager import _sink_target
from kubelab.controller.sinks import HttpSink, InProcessSink, Sink
from kubelab.dns.zone import ZoneData


async def test_in_process_sink_plain_and_async():
    got = []

    async def async_fn(state):
        got.append(("async", state.generation))

    await InProcessSink("dns", lambda s: got.append(("plain", s.generation))).apply(ZoneData(generation=1))
    await InProcessSink("dns", async_fn).apply(ZoneData(generation=2))
    assert got == [("plain", 1), ("async", 2)]


async def test_in_process_sink_errors_propagate():
    def boom(state):
        raise ValueError("data plane bug")

    with pytest.raises(ValueError):
        await InProcessSink("dns", boom).apply(ZoneData(generation=1))


async def test_http_sink_urls_and_protocol():
    zone = HttpSink("dns", "http://10.0.0.2:8053/", "zone")
    routes = HttpSink("proxy", "http://10.0.0.3:8054", "routes")
    assert zone.url == "http://10.0.0.2:8053/v1/zone"
    assert routes.url == "http://10.0.0.3:8054/v1/routes"
    assert isinstance(zone, Sink) and isinstance(InProcessSink("dns", print), Sink)
    with pytest.raises(ValueError):
        HttpSink("x", "http://h", "nope")
    await zone.close()  # never opened: nothing to close


@pytest.mark.parametrize(
    "sink,target",
    [
        (InProcessSink("dns", print), "zone"),
        (InProcessSink("proxy", print), "routes"),
        (HttpSink("whatever", "http://h", "routes"), "routes"),
        (HttpSink("dns-2", "http://h", "zone"), "zone"),
    ],
)
def test_sink_routing(sink, target):
    assert _sink_target(sink) == target


def test_unknown_sink_name_is_refused():
    with pytest.raises(ValueError):
        _sink_target(InProcessSink("mystery", print))
