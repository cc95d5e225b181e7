"""Prometheus metrics with CoreDNS's names, collected at scrape time.

The hot path only bumps plain ints (one dict increment per query, a bucket counter per
latency sample); this collector turns them into the metric families CoreDNS exposes
(``plugin/metrics/vars``, ``plugin/cache``, ``plugin/forward``), so dashboards built
for CoreDNS work unchanged. Each server owns a fresh ``CollectorRegistry``: nothing is
module-global, and tests can run several servers in one process.

Families:
  coredns_dns_requests_total{server,zone,view,proto,family,type}
  coredns_dns_responses_total{server,zone,view,rcode,plugin}
  coredns_dns_request_duration_seconds{server,zone,view,type}  (histogram; zone/type "all":
      latency is measured per transport, not per zone, to keep the hot path cheap)
  coredns_cache_hits_total{server,type,zones,view}, coredns_cache_misses_total, coredns_cache_entries
  coredns_forward_requests_total{to}, coredns_forward_responses_total{to,rcode}
  kubelab_dns_zone_generation, kubelab_dns_zone_serial, kubelab_dns_zone_records,
  kubelab_dns_zone_updates_total, kubelab_dns_zone_update_duration_seconds (last)
  kubelab_dns_query_failures_total{type} (answers that raised)
  kubelab_dns_udp_{wakeups,batches,received,errors,dropped}_total
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from kubelab.dns import wire

if TYPE_CHECKING:  # pragma: no cover
    from kubelab.dns.server import DnsServer

# CoreDNS: prometheus.ExponentialBuckets(0.00025, 2, 16)
BUCKETS = tuple(0.00025 * 2**i for i in range(16))

# The qtypes CoreDNS labels by name (plugin/metrics/vars/report.go monitorType); rest "other".
_MONITORED = {wire.A, wire.AAAA, wire.NS, wire.PTR, wire.SOA, wire.CNAME, wire.MX, wire.TXT,
              wire.SRV, wire.AXFR, wire.IXFR, wire.ANY, 35, 43, 46, 47, 48, 50, 64, 65, 257, 99, 13}


def type_label(qtype: int) -> str:
    if qtype in _MONITORED:
        return wire.TYPE_NAMES.get(qtype, str(qtype))
    return "other"


def rcode_label(rcode: int) -> str:
    return wire.RCODE_NAMES.get(rcode, str(rcode))


class Latency:
    """A histogram as plain ints: the protocols call :meth:`observe` per query."""

    __slots__ = ("counts", "sum", "first")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.first = BUCKETS[0]

    def observe(self, seconds: float) -> None:
        self.sum += seconds
        if seconds <= self.first:
            self.counts[0] += 1
            return
        self.observe_count(seconds)

    def observe_many(self, seconds: float, n: int) -> None:
        """``n`` queries that each took ``seconds`` (a batch answered together)."""
        self.sum += seconds * n
        for i, b in enumerate(BUCKETS):
            if seconds <= b:
                self.counts[i] += n
                return
        self.counts[-1] += n

    def observe_count(self, seconds: float) -> None:
        """Bucket only (the caller added to ``sum``): the slow branch of the hot path."""
        for i, b in enumerate(BUCKETS):
            if seconds <= b:
                self.counts[i] += 1
                return
        self.counts[-1] += 1


class DnsMetrics:
    """Custom collector over one :class:`DnsServer`; ``registry`` is private to it."""

    def __init__(self, server: "DnsServer") -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def describe(self):  # noqa: D102 - no static description; collected lazily
        return []

    def _zone_name(self, index: int) -> str:
        if index < 0:
            return "."
        zones = self.server.zone_names
        return zones[index] if index < len(zones) else "."

    def collect(self):
        srv = self.server
        server_label = srv.server_label
        req = CounterMetricFamily("coredns_dns_requests", "Counter of DNS requests made per zone, protocol and family.",
                                  labels=["server", "zone", "view", "proto", "family", "type"])
        resp = CounterMetricFamily("coredns_dns_responses", "Counter of response status codes.",
                                   labels=["server", "zone", "view", "rcode", "plugin"])
        reqs: dict[tuple[str, ...], int] = {}
        resps: dict[tuple[str, ...], int] = {}
        hist_counts = [0] * (len(BUCKETS) + 1)
        hist_sum = 0.0
        for proto, family, answerer, latency in srv.stat_sources():
            for key, n in list(answerer.counts.items()):
                if key.__class__ is bytes:  # hot path: template bytes [zone, qtype x2, flags x2]
                    zone, qtype, rcode = key[0], (key[1] << 8) | key[2], key[4] & 0xF
                else:
                    zone, qtype, rcode = key
                z = self._zone_name(zone)
                k = (server_label, z, "", proto, family, type_label(qtype))
                reqs[k] = reqs.get(k, 0) + n
                plugin = "forward" if zone == -1 and rcode not in (wire.REFUSED,) else ("kubernetes" if zone >= 0 else "")
                k2 = (server_label, z, "", rcode_label(rcode), plugin)
                resps[k2] = resps.get(k2, 0) + n
            for i, c in enumerate(latency.counts):
                hist_counts[i] += c
            hist_sum += latency.sum
        for k, n in sorted(reqs.items()):
            req.add_metric(list(k), n)
        for k, n in sorted(resps.items()):
            resp.add_metric(list(k), n)
        yield req
        yield resp
        hist = HistogramMetricFamily("coredns_dns_request_duration_seconds",
                                     "Histogram of the time (in seconds) each request took.",
                                     labels=["server", "zone", "view", "type"])
        cum = 0
        buckets = []
        for b, c in zip(BUCKETS, hist_counts):
            cum += c
            buckets.append((repr(b), cum))
        cum += hist_counts[-1]
        buckets.append(("+Inf", cum))
        hist.add_metric([server_label, "all", "", "all"], buckets, hist_sum)
        yield hist

        fwd = srv.forwarder
        hits = CounterMetricFamily("coredns_cache_hits", "The count of cache hits.",
                                   labels=["server", "type", "zones", "view"])
        misses = CounterMetricFamily("coredns_cache_misses", "The count of cache misses.",
                                     labels=["server", "zones", "view"])
        entries = GaugeMetricFamily("coredns_cache_entries", "The number of elements in the cache.",
                                    labels=["server", "type", "zones", "view"])
        freq = CounterMetricFamily("coredns_forward_requests", "Counter of requests made per upstream.",
                                   labels=["to"])
        fresp = CounterMetricFamily("coredns_forward_responses", "Counter of responses received per upstream.",
                                    labels=["rcode", "to"])
        if fwd is not None:
            for t in ("success", "denial"):
                hits.add_metric([server_label, t, ".", ""], fwd.cache_hits[t])
            misses.add_metric([server_label, ".", ""], fwd.cache_misses)
            entries.add_metric([server_label, "all", ".", ""], fwd.cache_entries())
            for to, n in sorted(fwd.requests.items()):
                freq.add_metric([to], n)
            for (to, rcode), n in sorted(fwd.responses.items()):
                fresp.add_metric([rcode_label(rcode), to], n)
        yield hits
        yield misses
        yield entries
        yield freq
        yield fresp

        gen = GaugeMetricFamily("kubelab_dns_zone_generation",
                                "Generation of the zone being served (-1 before the first zone).")
        gen.add_metric([], srv.generation)
        yield gen
        serial = GaugeMetricFamily("kubelab_dns_zone_serial", "SOA serial of the zone being served.")
        serial.add_metric([], srv.serial)
        yield serial
        recs = GaugeMetricFamily("kubelab_dns_zone_records",
                                 "Pre-packed answers (name, type) in the table.")
        recs.add_metric([], srv.record_count)
        yield recs
        upd = CounterMetricFamily("kubelab_dns_zone_updates", "Zones applied.")
        upd.add_metric([], srv.updates)
        yield upd
        dur = GaugeMetricFamily("kubelab_dns_zone_update_duration_seconds",
                                "Time the last zone update took to apply (plan + commit).")
        dur.add_metric([], srv.last_update_seconds)
        yield dur

        fails = CounterMetricFamily("kubelab_dns_query_failures",
                                    "Queries whose answer raised (answered SERVFAIL or dropped), by exception type.",
                                    labels=["type"])
        for kind, n in sorted(srv.query_failures.items()):
            fails.add_metric([kind], n)
        yield fails
        udp = srv.udp_stats()
        for key, text in (("wakeups", "UDP reader wake-ups (batched sockets)."),
                          ("batches", "recvmmsg calls that returned datagrams."),
                          ("received", "Datagrams received by batched sockets."),
                          ("errors", "UDP socket errors and dropped datagrams after callback bugs (batched sockets)."),
                          ("dropped", "UDP replies dropped because the send buffer was full.")):
            c = CounterMetricFamily(f"kubelab_dns_udp_{key}", text)
            c.add_metric([], udp[key])
            yield c
