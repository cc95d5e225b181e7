"""``ServiceProxy``: the proxy data plane as one object (start / apply / close).

It owns the listener manager, the VIP claimer and the metrics, and keeps what
``/healthz`` needs with kube-proxy's semantics: the proxy is unhealthy when a
table has been queued (``apply`` called) and not applied within
``healthz_timeout``. Tables are applied one at a time, in order; a table older
than the one applied is refused with ``StaleGeneration`` (HTTP 409 on the admin
port) so a slow, retried PUT can never roll the proxy back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from kubelab.proxy.config import ProxyConfig
from kubelab.proxy.listener import ListenerManager, Shared
from kubelab.proxy.metrics import ProxyMetrics
from kubelab.proxy.table import RouteTable
from kubelab.proxy.vip import VipClaimer, make_claimer
from kubelab.proxy.zerocopy import raise_nofile

log = logging.getLogger(__name__)


class StaleGeneration(Exception):
    def __init__(self, got: int, have: int) -> None:
        super().__init__(f"route table generation {got} is older than the applied generation {have}")
        self.got = got
        self.have = have


class ServiceProxy:
    def __init__(self, config: ProxyConfig | None = None, *, vip: VipClaimer | None = None) -> None:
        self.config = config or ProxyConfig()
        self.metrics = ProxyMetrics()
        self.vip = vip if vip is not None else make_claimer(self.config)
        self.table: RouteTable | None = None
        self.last_updated: float | None = None  # unix time of the last applied table
        self._queued_at: float | None = None  # monotonic time the oldest unapplied table arrived
        self._lock = asyncio.Lock()
        self._pending = 0
        self._manager: ListenerManager | None = None
        self._started = False
        self._admin: Any = None
        self.admin_address: tuple[str, int] | None = None

    @property
    def ready(self) -> bool:
        """True once a route table has been applied (for ``/readyz`` of ``kubelab up``)."""
        return self.table is not None

    @property
    def admin_url(self) -> str | None:
        """``http://host:port`` of the admin port when ``config.admin_addr`` is set."""
        if self.admin_address is None:
            return None
        host, port = self.admin_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def generation(self) -> int:
        return self.table.generation if self.table is not None else -1

    @property
    def manager(self) -> ListenerManager:
        if self._manager is None:
            raise RuntimeError("ServiceProxy.start() has not been awaited")
        return self._manager

    async def start(self) -> None:
        """Claim VIP ranges, then serve the admin port if configured (OSError if it can't bind)."""
        if self._started:
            return
        loop = asyncio.get_running_loop()
        await self.vip.start()
        shared = Shared(self.config, loop, self.metrics)
        if shared.zerocopy:
            # Six fds per spliced connection: the default soft limit (1024) would cap the
            # proxy at ~170 connections. See kubelab.proxy.zerocopy.raise_nofile.
            raise_nofile()
        self._manager = ListenerManager(shared, self.vip)
        self.metrics.frontend_states = self._manager.state_counts
        self._started = True
        if self.config.admin_addr is not None:
            from kubelab.proxy.admin import AdminServer  # admin imports this module

            admin = AdminServer(self, *self.config.admin_addr)
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                await self.close()
                raise
            self._admin = admin
            self.admin_address = (admin.host, admin.port)

    async def apply(self, table: RouteTable) -> None:
        """Apply a route table as a diff; raises ``StaleGeneration`` for an older one."""
        if self._queued_at is None:
            self._queued_at = time.monotonic()
        self._pending += 1
        try:
            async with self._lock:
                if self.table is not None and table.generation < self.table.generation:
                    raise StaleGeneration(table.generation, self.table.generation)
                await self.manager.apply(table)
                self.table = table
                self.last_updated = time.time()
                self.metrics.generation = table.generation
                self.metrics.last_applied = self.last_updated
                # Tables still waiting for the lock count as queued from now on.
                self._queued_at = time.monotonic() if self._pending > 1 else None
        except StaleGeneration:
            if self._pending == 1:
                self._queued_at = None
            raise
        finally:
            self._pending -= 1
        log.debug("applied route table generation %d (%d frontends)", table.generation, len(table.routes))

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        """kube-proxy's /healthz: healthy unless a queued table is older than the timeout."""
        now = time.time()
        queued = self._queued_at
        ok = queued is None or time.monotonic() - queued <= self.config.healthz_timeout
        detail: dict[str, Any] = {
            "lastUpdated": _rfc3339(self.last_updated),
            "currentTime": _rfc3339(now),
            "nodeEligible": True,
            "generation": self.generation,
        }
        if self._manager is not None:
            failed = self._manager.failed()
            if failed:
                detail["failedFrontends"] = failed
        return ok, detail

    def routes(self) -> dict[str, Any]:
        """The live table with each frontend's listener state, for /routes."""
        return {
            "generation": self.generation,
            "node": self.config.node_name,
            "nodeIPs": list(self.config.node_ips),
            "activeConnections": self._manager.shared.active if self._manager else 0,
            "frontends": self._manager.describe() if self._manager else [],
        }

    async def close(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, drain live connections (bounded), abort the rest, release VIPs."""
        if not self._started:
            return
        self._started = False
        assert self._manager is not None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
            self.admin_address = None
        await self._manager.close(drain_timeout)
        await self.vip.close()


def _rfc3339(ts: float | None) -> str:
    if ts is None:
        return "0001-01-01T00:00:00Z"  # Go's zero time, as kube-proxy reports before its first sync
    t = time.gmtime(ts)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + ".%06dZ" % int((ts % 1) * 1e6)
