"""A frontend that cannot bind is retried on every route table; only a new error warns.

A local lab run without root cannot bind port 443 of the ``kubernetes`` Service; the
warning is useful once, not on every EndpointSlice change for as long as the lab runs.
"""

import logging
import socket

from kubelab.proxy.config import ProxyConfig
from kubelab.proxy.service import ServiceProxy
from kubelab.proxy.table import Backend, Frontend, Route, RouteTable

IP = "127.81.7.1"


async def test_the_same_bind_error_warns_once(caplog):
    squatter = socket.socket()
    squatter.bind((IP, 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    proxy = ServiceProxy(ProxyConfig.for_lab(admin=None))
    await proxy.start()
    try:
        caplog.set_level(logging.DEBUG, logger="kubelab.proxy")
        route = Route("default/web", "http", "ClusterIP", (Backend("127.0.0.1", 9),))
        for generation in (1, 2, 3):
            await proxy.apply(RouteTable(generation, {Frontend(IP, port): route}))
        failures = [r for r in caplog.records if "cannot bind" in r.getMessage()]
        assert [r.levelno for r in failures] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
        assert proxy.routes()["frontends"][0]["state"] == "failed"

        squatter.close()  # the address is free now: the next table binds it
        await proxy.apply(RouteTable(4, {Frontend(IP, port): route}))
        assert proxy.routes()["frontends"][0]["state"] == "listening"
    finally:
        squatter.close()
        await proxy.close()
