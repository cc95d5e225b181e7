"""The proxy's admin HTTP port (aiohttp).

=================  ======  =====================================================
path               method  what
=================  ======  =====================================================
/healthz, /livez   GET     200, or 503 when a queued route table has not been
                           applied within ``healthz_timeout`` (kube-proxy). Body:
                           ``{"lastUpdated", "currentTime", "nodeEligible",
                           "generation"[, "failedFrontends"]}``
/metrics           GET     Prometheus text (per-instance registry)
/routes            GET     the live table: every frontend with its listener state
                           (listening / refusing / dropping / failed / draining),
                           endpoints in rotation, open connections or UDP sessions
/v1/routes         GET     the applied ``RouteTable.to_json()`` (404 before the first)
/v1/routes         PUT     body ``RouteTable.to_json()``; 200 ``{"generation"}``;
                           409 for a generation older than the applied one; 400 for
                           a malformed body
=================  ======  =====================================================

``make_app`` returns the application for embedding (``kubelab up`` may mount it
or serve it with ``AdminServer``); ``AdminServer`` runs it on its own port with an
``AppRunner``/``TCPSite`` inside the caller's loop, never ``web.run_app``.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubelab.proxy.service import ServiceProxy, StaleGeneration
from kubelab.proxy.table import RouteTable

log = logging.getLogger(__name__)

PROXY = web.AppKey("proxy", ServiceProxy)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=1) + "\n", status=status, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    ok, detail = request.app[PROXY].healthy()
    return _json(detail, 200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[PROXY].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def routes(request: web.Request) -> web.Response:
    return _json(request.app[PROXY].routes())


async def get_table(request: web.Request) -> web.Response:
    table = request.app[PROXY].table
    if table is None:
        return _json({"error": "no route table applied yet"}, 404)
    return _json(table.to_json())


async def put_table(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    try:
        data = await request.json()
        table = RouteTable.from_json(data)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return _json({"error": f"bad route table: {exc!r}"}, 400)
    try:
        await proxy.apply(table)
    except StaleGeneration as exc:
        return _json({"error": str(exc), "generation": exc.have}, 409)
    return _json({"generation": proxy.generation})


def make_app(proxy: ServiceProxy) -> web.Application:
    app = web.Application()
    app[PROXY] = proxy
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/routes", routes)
    app.router.add_get("/v1/routes", get_table)
    app.router.add_put("/v1/routes", put_table)
    return app


class AdminServer:
    """Serves ``make_app(proxy)`` on ``host:port`` (port 0: the kernel picks; see ``port``)."""

    def __init__(self, proxy: ServiceProxy, host: str = "127.0.0.1", port: int = 10256) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(make_app(self.proxy), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0 and self._runner.addresses:
            self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
