"""Proxy counters: plain integers on the hot path, Prometheus text at scrape time.

The data path bumps attributes of small ``__slots__`` objects (one per service
port and one per endpoint); a custom collector turns them into metric families
only when ``/metrics`` is scraped. Calling ``Counter.labels(...).inc()`` per
connection or per chunk would cost a lock and a dict lookup each time.

Each ``ProxyMetrics`` has its own ``CollectorRegistry`` so several proxies (tests,
``kubelab up``) never share global state.
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class EndpointStats:
    """Counters of one backend address of one service port."""

    __slots__ = ("active", "total", "bytes_in", "bytes_out", "connect_failures")

    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.bytes_in = 0  # client -> backend
        self.bytes_out = 0  # backend -> client
        self.connect_failures = 0


class ServiceStats:
    """Counters of one service port (all its frontends together)."""

    __slots__ = ("retries", "refused", "policy_denied", "limit_rejected", "dropped", "udp_sessions", "endpoints")

    def __init__(self) -> None:
        self.retries = 0
        self.refused = 0  # accepted, then reset because every connect attempt failed
        self.policy_denied = 0
        self.limit_rejected = 0
        self.dropped = 0  # Local traffic policy without a local endpoint (held / discarded)
        self.udp_sessions = 0
        self.endpoints: dict[str, EndpointStats] = {}

    def endpoint(self, ip: str, port: int) -> EndpointStats:
        key = f"{ip}:{port}"
        ep = self.endpoints.get(key)
        if ep is None:
            ep = self.endpoints[key] = EndpointStats()
        return ep


class ProxyMetrics:
    def __init__(self) -> None:
        self.services: dict[tuple[str, str], ServiceStats] = {}
        self.generation = -1
        self.last_applied = 0.0  # unix time
        self.frontend_states: Callable[[], dict[str, int]] = dict
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def service(self, service: str, port_name: str) -> ServiceStats:
        key = (service, port_name)
        s = self.services.get(key)
        if s is None:
            s = self.services[key] = ServiceStats()
        return s


class _Collector(Collector):
    def __init__(self, m: ProxyMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        p = "kubelab_proxy_"
        sl = ["service", "port"]
        el = ["service", "port", "endpoint"]
        active = GaugeMetricFamily(p + "connections_active", "Open client connections.", labels=el)
        total = CounterMetricFamily(p + "connections", "Client connections handed to an endpoint.", labels=el)
        bin_ = CounterMetricFamily(p + "received_bytes", "Bytes from clients to endpoints.", labels=el)
        bout = CounterMetricFamily(p + "sent_bytes", "Bytes from endpoints to clients.", labels=el)
        fails = CounterMetricFamily(p + "connect_failures", "Failed connect attempts to an endpoint.", labels=el)
        retries = CounterMetricFamily(p + "connect_retries", "Connect attempts after a failed one.", labels=sl)
        refused = CounterMetricFamily(
            p + "refused_connections", "Clients reset: all connect attempts failed.", labels=sl
        )
        denied = CounterMetricFamily(p + "policy_denied", "Connections or UDP flows denied by NetworkPolicy.", labels=sl)
        limited = CounterMetricFamily(p + "limit_rejected", "Clients reset because max_connections was reached.", labels=sl)
        dropped = CounterMetricFamily(p + "dropped", "Connections or flows dropped (Local policy, no local endpoint).", labels=sl)
        udp = GaugeMetricFamily(p + "udp_sessions", "Live UDP client sessions.", labels=sl)
        for (svc, port), s in sorted(m.services.items()):
            retries.add_metric([svc, port], s.retries)
            refused.add_metric([svc, port], s.refused)
            denied.add_metric([svc, port], s.policy_denied)
            limited.add_metric([svc, port], s.limit_rejected)
            dropped.add_metric([svc, port], s.dropped)
            udp.add_metric([svc, port], s.udp_sessions)
            for ep, e in sorted(s.endpoints.items()):
                lab = [svc, port, ep]
                active.add_metric(lab, e.active)
                total.add_metric(lab, e.total)
                bin_.add_metric(lab, e.bytes_in)
                bout.add_metric(lab, e.bytes_out)
                fails.add_metric(lab, e.connect_failures)
        yield from (active, total, bin_, bout, fails, retries, refused, denied, limited, dropped, udp)
        gen = GaugeMetricFamily(p + "table_generation", "Generation of the applied route table.")
        gen.add_metric([], m.generation)
        yield gen
        ts = GaugeMetricFamily(p + "last_applied_timestamp_seconds", "When the last route table was applied.")
        ts.add_metric([], m.last_applied)
        yield ts
        fe = GaugeMetricFamily(p + "frontends", "Frontends by listener state.", labels=["state"])
        for state, n in sorted(m.frontend_states().items()):
            fe.add_metric([state], n)
        yield fe
