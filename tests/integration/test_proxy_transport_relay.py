"""The TCP scenarios again on the asyncio-transport relay (``tcp_relay="transport"``).

``auto`` picks the splice relay on Linux, so the other test modules exercise
``kubelab.proxy.zerocopy``; this one keeps the fallback (non-Linux platforms) honest.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

import test_proxy_clients as clients
import test_proxy_tcp as tcp
from test_proxy_support import TCP_RELAY

SCENARIOS: list[Callable[[], Any]] = [
    tcp.test_round_robin_spreads_evenly_over_three_backends,
    tcp.test_retry_past_dead_endpoints,
    tcp.test_all_endpoints_dead_resets_client_after_schedule,
    tcp.test_endpoint_removed_during_long_transfer_completes,
    tcp.test_removed_frontend_stops_accepting_and_drains,
    tcp.test_half_close_propagates_both_ways,
    tcp.test_client_speaks_first_and_half_closes_before_endpoint_is_connected,
    tcp.test_slow_reader_keeps_proxy_buffers_bounded,
    tcp.test_connection_limit_resets_extra_clients,
    tcp.test_idle_connections_are_closed_busy_ones_kept,
    tcp.test_local_traffic_policy_without_local_endpoint_drops,
    clients.test_curl_through_nodeport_and_clusterip_reaches_all_pods,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("test_"))
def test_on_transport_relay(scenario: Callable[[], Any]) -> None:
    token = TCP_RELAY.set("transport")
    try:
        asyncio.run(scenario())
    finally:
        TCP_RELAY.reset(token)


def test_transport_relay_is_really_used() -> None:
    async def check() -> None:
        from kubelab.proxy.splice import Downstream
        from kubelab.proxy.table import Frontend
        from test_proxy_support import Lab, fresh_ip, route, tcp_frontend

        async with Lab() as lab:
            p = await lab.proxy()
            b = await lab.echo("a")
            f = Frontend(fresh_ip(), 80)
            await p.apply(lab.table({f: route(b)}))
            r, w = await lab.connect(f.ip, f.port)
            assert await r.readline() == b"a\n"
            conns = tcp_frontend(p, f).connections
            assert conns and all(isinstance(c, Downstream) for c in conns)

    token = TCP_RELAY.set("transport")
    try:
        asyncio.run(check())
    finally:
        TCP_RELAY.reset(token)
