"""Admin HTTP: health, readiness, Prometheus metrics with CoreDNS names, and the zone
feed (PUT /v1/zone with generation checks). The feeder going away changes nothing."""

from __future__ import annotations

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from kubelab.dns.config import DnsConfig
from kubelab.dns.server import DnsServer
from kubelab.dns.zone import Service, ServicePort, ZoneData

HOST = "127.53.4.1"


def zone(gen: int, ip: str = "10.96.10.10") -> ZoneData:
    return ZoneData(gen, {"prod/web": Service("prod", "web", (ip,), ports=(ServicePort("http", 80),))},
                    (), ("prod",))


@pytest.fixture
async def server():
    srv = DnsServer(DnsConfig(addr=(HOST, 0), admin_addr=(HOST, 0), upstreams=()))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def ask(srv, name="web.prod.svc.cluster.local.", rtype="A"):
    host, port = srv.address
    return await dns.asyncquery.udp(dns.message.make_query(name, rtype), host, port=port, timeout=2)


async def test_health_ready_and_zone_feed(server):
    url = server.admin_url
    assert url.startswith(f"http://{HOST}:")
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/healthz") as r:
            assert r.status == 200
        async with http.get(url + "/readyz") as r:
            assert r.status == 503
        async with http.get(url + "/v1/zone") as r:
            assert r.status == 404
        async with http.put(url + "/v1/zone", json={"generation": 5, "zone": zone(5).to_json()}) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
            assert body["generation"] == 5 and body["changed"] is True
        async with http.get(url + "/readyz") as r:
            assert r.status == 200
        async with http.get(url + "/v1/zone") as r:
            got = await r.json()
            assert ZoneData.from_json(got["zone"]) == zone(5) and got["generation"] == 5
        # the controller's HttpSink sends the bare ZoneData JSON
        async with http.put(url + "/v1/zone", json=zone(6, "10.96.10.11").to_json()) as r:
            assert r.status == 200
        async with http.put(url + "/v1/zone", json=zone(4).to_json()) as r:
            assert r.status == 409 and (await r.json())["generation"] == 6
        async with http.put(url + "/v1/zone", data=b"{not json") as r:
            assert r.status == 400
        async with http.put(url + "/v1/zone", json={"services": []}) as r:
            assert r.status == 400  # no generation
    # The feeder (this HTTP client) is gone: DNS keeps serving the last zone.
    r = await ask(server)
    assert [rd.to_text() for rrset in r.answer for rd in rrset] == ["10.96.10.11"]
    assert server.generation == 6


async def test_metrics_use_coredns_names(server):
    server.set_zone(zone(3))
    await ask(server)
    await ask(server)
    await ask(server, "nosuch.prod.svc.cluster.local.")
    await ask(server, "www.example.com.")
    async with aiohttp.ClientSession() as http:
        async with http.get(server.admin_url + "/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    label = f'server="dns://{HOST}:{server.address[1]}"'
    assert (f'coredns_dns_requests_total{{family="1",proto="udp",{label},type="A",view="",zone="cluster.local."}} 3.0'
            in text), text
    assert f'coredns_dns_responses_total{{plugin="kubernetes",rcode="NOERROR",{label},view="",zone="cluster.local."}} 2.0' in text
    assert 'rcode="NXDOMAIN"' in text and 'rcode="REFUSED"' in text
    assert "coredns_dns_request_duration_seconds_bucket" in text
    assert 'coredns_dns_request_duration_seconds_count{server=' in text
    assert "kubelab_dns_zone_generation 3.0" in text
    assert "coredns_cache_hits_total" in text or "coredns_cache_misses_total" in text


async def test_each_server_has_its_own_registry():
    a = DnsServer(DnsConfig(addr=(HOST, 0), upstreams=()))
    b = DnsServer(DnsConfig(addr=(HOST, 0), upstreams=()))
    assert a.metrics.registry is not b.metrics.registry
    a.set_zone(zone(9))
    assert a.metrics.registry.get_sample_value("kubelab_dns_zone_generation") == 9
    assert b.metrics.registry.get_sample_value("kubelab_dns_zone_generation") == -1
