"""Admin HTTP for the DNS data plane: health, metrics, and the zone feed.

    GET  /healthz    200 while the process runs
    GET  /readyz     200 once a zone is served, else 503 (DNS answers SERVFAIL then)
    GET  /metrics    Prometheus text format (CoreDNS metric names, see metrics.py)
    PUT  /v1/zone    body {"generation": N, "zone": ZoneData.to_json()} (or the bare
                     ZoneData JSON); 200 {"generation", "serial", "changed"};
                     409 {"generation": current} for an older generation; 400 on junk
    GET  /v1/zone    200 {"generation", "serial", "zone"}; 404 before the first zone

Embed with ``make_app(server)`` in an ``aiohttp.web.AppRunner`` (never ``run_app``:
the entry point owns the loop and the signals). ``start_admin`` does that.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubelab.dns.server import DnsServer, StaleGeneration
from kubelab.dns.zoneio import ZoneJsonError, parse_zone_json, release_memory

logger = logging.getLogger(__name__)

DNS_SERVER = web.AppKey("dns_server", DnsServer)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    server = request.app[DNS_SERVER]
    if server.ready:
        return web.Response(text=f"ok generation={server.generation}\n")
    return web.Response(status=503, text="no zone yet\n")


async def _metrics(request: web.Request) -> web.Response:
    server = request.app[DNS_SERVER]
    body = generate_latest(server.metrics.registry)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def _put_zone(request: web.Request) -> web.Response:
    server = request.app[DNS_SERVER]
    body = await request.read()
    try:
        zone = parse_zone_json(body)  # streaming: no full JSON tree for 50k pods
    except ZoneJsonError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    del body
    try:
        changed = server.set_zone(zone)
    except StaleGeneration as exc:
        return web.json_response(
            {"error": str(exc), "generation": exc.current}, status=409)
    if changed and server.record_count > 10000:
        release_memory()  # big swaps leave freed heap behind; hand it back
    return web.json_response(
        {"generation": server.generation, "serial": server.serial, "changed": changed})


async def _get_zone(request: web.Request) -> web.Response:
    server = request.app[DNS_SERVER]
    if server.zone is None:
        return web.json_response({"error": "no zone yet"}, status=404)
    return web.json_response(
        {"generation": server.generation, "serial": server.serial, "zone": server.zone.to_json()})


def make_app(server: DnsServer) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[DNS_SERVER] = server
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_put("/v1/zone", _put_zone)
    app.router.add_get("/v1/zone", _get_zone)
    return app


async def start_admin(server: DnsServer, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
    """Serve :func:`make_app` on host:port; returns the runner (``await runner.cleanup()``)
    and the bound address (port 0 picks one)."""
    runner = web.AppRunner(make_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    bound = sock.getsockname()[:2]
    logger.info("dns admin on http://%s:%d", bound[0], bound[1])
    return runner, (bound[0], bound[1])
