"""The whole lab in one process: registry API, controllers, DNS, proxy and pod runtime.

``Lab`` owns every component and their order: start in dependency order (store,
registry, API, data planes, controllers, runtime, then the manifests given with
``-f``), close in reverse (stop accepting, drain, cancel). ``kubelab up`` and the
all-in-one tests use the same object, so what the tests check is what users run.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kubelab.controller.config import LabConfig

log = logging.getLogger(__name__)

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class LabError(RuntimeError):
    """A start-up failure with a one-line explanation (port in use, bad state dir, ...)."""


@dataclass(frozen=True)
class Listening:
    """Where each part of the lab answers, for the start-up banner and tests."""

    api: str
    dns: tuple[str, int] | None = None
    dns_admin: str | None = None
    proxy_admin: str | None = None
    kubeconfig: Path | None = None


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def node_object(config: LabConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": config.node_name,
            "labels": {"kubernetes.io/hostname": config.node_name, "kubernetes.io/os": "linux"},
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": config.node_ip},
                {"type": "Hostname", "address": config.node_name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


@dataclass
class Lab:
    config: LabConfig
    zone_sinks: tuple[str, ...] = ()  # URLs of standalone DNS servers (compose mode)
    route_sinks: tuple[str, ...] = ()  # URLs of standalone proxies (compose mode)
    dns_admin_addr: tuple[str, int] | None = ("127.0.0.1", 0)
    proxy_admin_addr: tuple[str, int] | None = ("127.0.0.1", 0)
    kubeconfig_path: Path | None = None
    listening: Listening | None = None
    _closers: list[Any] = field(default_factory=list)
    _ready_parts: dict[str, Any] = field(default_factory=dict)
    registry: Any = None
    dns: Any = None
    proxy: Any = None
    manager: Any = None
    runtime: Any = None
    token: str | None = None

    # -- start ---------------------------------------------------------------------------

    async def start(self) -> Listening:
        try:
            return await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> Listening:
        cfg = self.config
        store = self._open_store()
        self._closers.append(store.close)

        from kubelab.controller.admission import Admission
        from kubelab.controller.registry import Registry

        self.registry = Registry(store, Admission(cfg))
        await self._ensure_cluster_objects()

        api_url = await self._start_api()
        sinks: list[Any] = []
        dns_addr = dns_admin = proxy_admin = None
        if "dns" not in cfg.disabled:
            dns_addr, dns_admin = await self._start_dns()
            sinks.append(self._in_process_sink("dns", self.dns.set_zone))
        if "proxy" not in cfg.disabled:
            proxy_admin = await self._start_proxy()
            sinks.append(self._in_process_sink("proxy", self.proxy.apply))
        sinks.extend(self._http_sinks())

        from kubelab.controller.manager import ControllerManager

        self.manager = ControllerManager(self.registry, cfg, sinks)
        await self.manager.start()
        self._closers.append(self.manager.close)
        self._ready_parts["controllers"] = lambda: self.manager.ready

        if "runtime" not in cfg.disabled:
            from kubelab.runtime.manager import PodRuntime

            self.runtime = PodRuntime(self.registry, cfg)
            await self.runtime.start()
            self._closers.append(self.runtime.close)

        if cfg.manifests:
            await self._apply_manifests(cfg.manifests)

        kubeconfig = self._write_kubeconfig(api_url)
        self.listening = Listening(api_url, dns_addr, dns_admin, proxy_admin, kubeconfig)
        return self.listening

    def _open_store(self) -> Any:
        if self.config.state_dir is None:
            from kubelab.controller.store import MemoryStore

            return MemoryStore()
        from kubelab.controller.sqlite_store import SqliteStore

        try:
            self.config.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabError(f"cannot create state dir {self.config.state_dir}: {exc.strerror}") from None
        return SqliteStore(self.config.state_dir / "registry.db")

    async def _ensure_cluster_objects(self) -> None:
        snap = self.registry.store.snapshot()
        wanted = [node_object(self.config)]
        wanted += [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            for ns in SYSTEM_NAMESPACES
        ]
        missing = [o for o in wanted if snap.get(o["kind"], "", o["metadata"]["name"]) is None]
        if missing:
            await self.registry.apply(missing)

    async def _start_api(self) -> str:
        from kubelab.controller.api import READY_CHECK, make_app

        host, port = self.config.api_addr
        self.token = None if is_loopback(host) else secrets.token_urlsafe(24)
        app = make_app(self.registry, token=self.token)
        app[READY_CHECK] = self.readiness
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        self._closers.append(runner.cleanup)
        site = web.TCPSite(runner, host, port)
        await _bind(site.start(), f"registry API on {host}:{port}")
        bound = runner.addresses[0]
        return f"http://{_fmt_host(bound[0])}:{bound[1]}"

    async def _start_dns(self) -> tuple[tuple[str, int], str | None]:
        from kubelab.dns.config import DnsConfig
        from kubelab.dns.server import DnsServer

        cfg = self.config
        host, port = cfg.dns_addr
        self.dns = DnsServer(
            DnsConfig.for_lab(
                cluster_domain=cfg.cluster_domain,
                ttl=cfg.dns_ttl,
                pods_mode=cfg.dns_pods_mode,
                upstreams=cfg.dns_upstream,
                host=host,
                port=port,
                pod_cidr=str(cfg.pod_cidr),
                service_cidrs=tuple(str(c) for c in cfg.service_cidrs),
                admin=self.dns_admin_addr,
            )
        )
        await _bind(self.dns.start(), f"DNS on {host}:{port}")
        self._closers.append(self.dns.close)
        self._ready_parts["dns"] = lambda: self.dns.ready
        return self.dns.address, getattr(self.dns, "admin_url", None)

    async def _start_proxy(self) -> str | None:
        from kubelab.proxy.config import ProxyConfig
        from kubelab.proxy.service import ServiceProxy

        cfg = self.config
        self.proxy = ServiceProxy(
            ProxyConfig.for_lab(node_name=cfg.node_name, node_ips=(cfg.node_ip,), admin=self.proxy_admin_addr)
        )
        await _bind(self.proxy.start(), "proxy admin port")
        self._closers.append(self.proxy.close)
        self._ready_parts["proxy"] = lambda: self.proxy.ready
        return getattr(self.proxy, "admin_url", None)

    def _in_process_sink(self, name: str, fn: Any) -> Any:
        from kubelab.controller.sinks import InProcessSink

        return InProcessSink(name, fn)

    def _http_sinks(self) -> list[Any]:
        if not (self.zone_sinks or self.route_sinks):
            return []
        from kubelab.controller.sinks import HttpSink

        return [HttpSink("dns", url, "zone") for url in self.zone_sinks] + [
            HttpSink("proxy", url, "routes") for url in self.route_sinks
        ]

    async def _apply_manifests(self, paths: tuple[Path, ...]) -> None:
        from kubelab.controller.manifests import load_paths

        objs = load_paths([str(p) for p in paths])
        await self.registry.apply(objs)

    def _write_kubeconfig(self, api_url: str) -> Path | None:
        path = self.kubeconfig_path
        if path is None and self.config.state_dir is not None:
            path = self.config.state_dir / "kubeconfig"
        if path is None:
            return None
        from kubelab.controller.kubeconfig import write_kubeconfig

        write_kubeconfig(path, api_url, token=self.token)
        return path

    # -- readiness and shutdown --------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """``/readyz``: every component started and the first state applied."""
        waiting = [name for name, ready in self._ready_parts.items() if not ready()]
        if waiting:
            return False, "waiting for " + ", ".join(sorted(waiting))
        return True, "ok"

    async def wait_ready(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.readiness()[0]:
                await asyncio.sleep(0.005)

    async def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except Exception:  # keep closing the rest; the first failure is logged
                log.exception("error while shutting down %s", closer)


async def _bind(coro: Any, what: str) -> None:
    try:
        await coro
    except OSError as exc:
        raise LabError(f"cannot listen for {what}: {exc.strerror or exc}") from None


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
