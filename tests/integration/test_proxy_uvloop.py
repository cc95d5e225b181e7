"""The same TCP/UDP scenarios on uvloop, the loop ``kubelab-proxy`` uses in production.

uvloop's transports differ from the stdlib's in the details the relay depends on
(pause/resume, write_eof, server close with live connections), so the core
scenarios run on both. Each runs in its own uvloop loop from a sync test.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

import test_proxy_tcp as tcp
import test_proxy_udp as udp
import test_proxy_zerocopy as zc

uvloop = pytest.importorskip("uvloop")

SCENARIOS: list[Callable[[], Any]] = [
    tcp.test_round_robin_spreads_evenly_over_three_backends,
    tcp.test_no_endpoints_refuses_at_once_then_serves_then_refuses,
    tcp.test_retry_past_dead_endpoints,
    tcp.test_all_endpoints_dead_resets_client_after_schedule,
    tcp.test_endpoint_removed_during_long_transfer_completes,
    tcp.test_removed_frontend_stops_accepting_and_drains,
    tcp.test_half_close_propagates_both_ways,
    tcp.test_client_speaks_first_and_half_closes_before_endpoint_is_connected,
    tcp.test_slow_reader_keeps_proxy_buffers_bounded,
    tcp.test_connection_limit_resets_extra_clients,
    tcp.test_close_drains_then_aborts,
    tcp.test_idle_connections_are_closed_busy_ones_kept,
    zc.test_default_relay_is_splice_and_bytes_are_intact_and_counted,
    zc.test_many_concurrent_short_connections,
    udp.test_udp_echo_sessions_and_idle_expiry,
    udp.test_udp_no_endpoints_is_port_unreachable,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("test_"))
def test_on_uvloop(scenario: Callable[[], Any]) -> None:
    uvloop.run(scenario())
