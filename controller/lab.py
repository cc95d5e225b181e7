"""The whole lab in one process: registry API, controllers, DNS, proxy and pod runtime.

``Lab`` owns every component and their order: start in dependency order (store,
registry, API, data planes, controllers, runtime, then the manifests given with
``-f``), close in reverse (stop accepting, drain, cancel). ``kubelab up`` and the
all-in-one tests use the same object, so what the tests check is what users run.

netns mode (``config.mode == "netns"``) adds, in this order: the node side of the pod
network (bridge, service CIDR and LB pool routed as local) BEFORE the DNS server and
the proxy start, so that the DNS server can bind the DNS service IP and the proxy the
VIPs; NetworkPolicy enforcement in each pod's namespace (``runtime.netpol_enforce``,
fed the route table like the proxy, and called by the runtime before a pod's first
process starts); and an API listener on the bridge address, for the ``kubernetes``
Service.

Every lab has the two Services every cluster has: ``default/kubernetes`` (the first
address of the service CIDR, port 443 -> the API; plain HTTP, see README "deliberate
differences") with its selectorless EndpointSlice, and, when there is a DNS service IP
(netns mode, or ``--dns-service-ip``), ``kube-system/kube-dns``. In netns mode the DNS
server itself listens on the kube-dns ClusterIP (as NodeLocal DNSCache does on a node),
so that frontend is left out of the proxy's table; when the DNS server listens
elsewhere, an EndpointSlice sends the ClusterIP to it through the proxy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kubelab.controller.cluster_objects import (
    SYSTEM_NAMESPACES,
    api_endpoint,
    cluster_ip_outside,
    dns_served_on_vip,
    is_wildcard,
    kube_dns_objects,
    kubernetes_service_objects,
    node_addresses,
    node_object,
    state_services_problem,
    without_frontends,
)
from kubelab.controller.config import LabConfig

log = logging.getLogger(__name__)

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
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Lab:
    config: LabConfig
    zone_sinks: tuple[str, ...] = ()  # URLs of standalone DNS servers (compose mode)
    route_sinks: tuple[str, ...] = ()  # URLs of standalone proxies (compose mode)
    dns_admin_addr: tuple[str, int] | None = ("127.0.0.1", 0)
    proxy_admin_addr: tuple[str, int] | None = ("127.0.0.1", 0)
    kubeconfig_path: Path | None = None
    # gc.freeze() after zone changes is process-wide: ``kubelab up`` turns it on, a test
    # process that starts many labs does not (frozen garbage cycles would never be freed)
    gc_freeze: bool = False
    listening: Listening | None = None
    _closers: list[Any] = field(default_factory=list)
    _ready_parts: dict[str, Any] = field(default_factory=dict)
    registry: Any = None
    dns: Any = None
    proxy: Any = None
    manager: Any = None
    runtime: Any = None
    enforcer: Any = None
    token: str | None = None
    node_api_token: str | None = None  # the bridge listener's token (netns; None: same as token)
    _api_bound: tuple[str, int] | None = None
    _ready_event: asyncio.Event | None = None

    # -- start ---------------------------------------------------------------------------

    async def start(self) -> Listening:
        try:
            return await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> Listening:
        cfg = self.config
        self._ready_event = asyncio.Event()
        store = self._open_store()
        self._closers.append(store.close)

        from kubelab.controller.admission import Admission
        from kubelab.controller.registry import Registry

        if cfg.state_dir is not None:
            problem = state_services_problem(cfg, store.snapshot().list("Service"))
            if problem:
                raise LabError(problem)
        self.registry = Registry(store, Admission(cfg))
        await self._ensure_cluster_objects()
        # not ready before the -f manifests are in: a client that waits for /readyz finds them
        self._ready_parts["start"] = lambda: self.listening is not None

        if cfg.mode == "netns":  # the bridge first: --api-addr may be its address
            await self._prepare_node()
        api_url = await self._start_api()
        if cfg.mode == "netns":
            await self._start_node_api()
        sinks: list[Any] = []
        dns_addr = dns_admin = proxy_admin = None
        if "dns" not in cfg.disabled:
            dns_addr, dns_admin = await self._start_dns()
            sinks.append(self._in_process_sink("dns", self.dns.set_zone, "zone"))
        if "proxy" not in cfg.disabled:
            proxy_admin = await self._start_proxy()
            skip = frozenset({dns_addr}) if dns_served_on_vip(cfg, dns_addr) else frozenset()
            apply = self.proxy.apply
            sinks.append(self._in_process_sink("proxy", lambda t: apply(without_frontends(t, skip)), "routes"))
        sinks.extend(_Notifying(s, s.what, self._readiness_hook) for s in self._http_sinks())
        if cfg.mode == "netns" and "runtime" not in cfg.disabled:
            sinks.append(self._start_enforcer())
        # Every sink checks readiness after it applied a state (on the next loop turn: the
        # manager sets ``ready`` right after its last push); this one runs on every publish
        # even when no data plane is in process.
        sinks.append(self._in_process_sink("readiness", lambda _t: None, "routes"))

        from kubelab.controller.manager import ControllerManager

        self.manager = ControllerManager(self.registry, cfg, sinks)
        await self.manager.start()
        self._closers.append(self.manager.close)
        self._ready_parts["controllers"] = lambda: self.manager.ready

        await self._ensure_builtin_services(dns_addr)

        if "runtime" not in cfg.disabled:
            runtime = self._make_runtime()
            await runtime.start()
            if cfg.mode != "netns":
                self._closers.append(runtime.close)

        if cfg.manifests:
            await self._apply_manifests(cfg.manifests)

        kubeconfig = self._write_kubeconfig(api_url)
        self.listening = Listening(api_url, dns_addr, dns_admin, proxy_admin, kubeconfig)
        self._check_ready()
        return self.listening

    def _make_runtime(self) -> Any:
        if self.runtime is None:
            from kubelab.runtime.manager import PodRuntime

            self.runtime = PodRuntime(self.registry, self.config)
        return self.runtime

    async def _prepare_node(self) -> None:
        """netns: the bridge and the local routes for the service CIDR and LB pool, before
        anything binds an address in them. The runtime is closed after the DNS server and
        the proxy (closers run in reverse), so the routes outlive every socket on them."""
        runtime = self._make_runtime()
        self._closers.append(runtime.close)
        try:
            await runtime.prepare()
        except Exception as exc:  # NetnsError: the failing ip command and its stderr
            raise LabError(f"cannot build the pod network: {exc}") from None

    def _start_enforcer(self) -> Any:
        """NetworkPolicy in the pod namespaces: a route sink that never raises nor blocks
        (the enforcer's own task writes the rulesets, see runtime.netpol_enforce)."""
        from kubelab.runtime.netpol_enforce import NetnsPolicyEnforcer, proxied_cidrs

        cfg = self.config
        runtime = self._make_runtime()
        self.enforcer = NetnsPolicyEnforcer(runtime.netns_of_ip, proxied_cidrs(cfg.service_cidrs, cfg.lb_pool),
                                            prefix=cfg.netns_prefix)
        runtime.on_pod_network = self.enforcer.pod_network_ready
        # closed after the runtime (closers run in reverse): no pod starts without it
        self._closers.insert(self._closers.index(runtime.close), self.enforcer.close)
        return self._in_process_sink("netpol", self.enforcer.apply, "routes")

    def _readiness_hook(self) -> None:
        asyncio.get_running_loop().call_soon(self._check_ready)

    def _check_ready(self) -> None:
        if self._ready_event is not None and self.readiness()[0]:
            self._ready_event.set()

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
        node = snap.get("Node", "", self.config.node_name)
        if node is not None and (node.get("status") or {}).get("addresses") != node_addresses(self.config):
            # the lab restarted with another node IP or mode: what policy exempts must follow
            status = {**(node.get("status") or {}), "addresses": node_addresses(self.config)}
            await self.registry.update_status({**node, "status": status})

    async def _ensure_builtin_services(self, dns_bound: tuple[str, int] | None) -> None:
        """``default/kubernetes`` (+ slice) and, with a DNS service IP, ``kube-system/kube-dns``.

        Applied on every start, each on its own (create or update, "unchanged" when
        equal): the API port may differ from the last run. A stored one with another
        ClusterIP (immutable; the lab ran with another --service-cidr or
        --dns-service-ip) is deleted and created again. A clash (the address is taken by
        a user's Service) is logged, not fatal: the lab works without that one."""
        assert self._api_bound is not None
        builtins = [kubernetes_service_objects(self.config, api_endpoint(self.config, self._api_bound))]
        if self.config.dns_service_ip:
            builtins.append(kube_dns_objects(self.config, dns_bound))
        else:
            await self._drop_stale_kube_dns()
        for objs in builtins:
            await self._ensure_builtin(objs)

    async def _drop_stale_kube_dns(self) -> None:
        """No DNS service IP this run: a ``kube-dns`` a netns run left outside the service
        CIDR would be a VIP nothing routes; delete it (and its slice)."""
        from kubelab.controller.store import StoreError

        stored = self.registry.store.snapshot().get("Service", "kube-system", "kube-dns")
        if stored is None or not cluster_ip_outside(stored, list(self.config.service_cidrs)):
            return
        for kind in ("Service", "EndpointSlice"):
            try:
                await self.registry.delete(kind, "kube-system", "kube-dns")
            except StoreError:  # NotFound: no slice (the DNS server served the VIP itself)
                pass

    async def _ensure_builtin(self, objs: list[dict[str, Any]]) -> None:
        from kubelab.controller.registry import RequestInvalid
        from kubelab.controller.store import StoreError
        from kubelab.controller.validation import Invalid

        svc = objs[0]
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        try:
            stored = self.registry.store.snapshot().get("Service", ns, name)
            if stored is not None and (stored.get("spec") or {}).get("clusterIP") != svc["spec"]["clusterIP"]:
                log.info("re-creating Service %s/%s: its ClusterIP is now %s", ns, name, svc["spec"]["clusterIP"])
                await self.registry.delete("Service", ns, name)
            await self.registry.apply(objs)
        except (StoreError, Invalid, RequestInvalid) as exc:
            log.warning("cannot create the built-in Service %s/%s: %s", ns, name,
                        getattr(exc, "message", None) or exc)

    async def _serve_api(self, host: str, port: int, token: str | None) -> web.AppRunner:
        """One API listener (the main one, and in netns mode the bridge one): the same
        app, readiness and pod log reader on each."""
        from kubelab.controller.api import LOG_READER, READY_CHECK, make_app

        app = make_app(self.registry, token=token)
        app[READY_CHECK] = self.readiness
        app[LOG_READER] = self._read_log
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        self._closers.append(runner.cleanup)
        await _bind(web.TCPSite(runner, host, port).start(), f"registry API on {host}:{port}")
        return runner

    async def _start_api(self) -> str:
        host, port = self.config.api_addr
        self.token = None if is_loopback(host) else secrets.token_urlsafe(24)
        runner = await self._serve_api(host, port, self.token)
        bound = runner.addresses[0]
        self._api_bound = (bound[0], bound[1])
        return f"http://{_fmt_host(bound[0])}:{bound[1]}"

    async def _start_node_api(self) -> None:
        """netns: the API also on the bridge address (same port), the ``kubernetes``
        Service's endpoint. Pods are not the lab's user: this listener requires a bearer
        token (the API's own when it has one, else a fresh one nobody is given), so from a
        pod only the public paths answer (/version, /healthz, /readyz), as they do for an
        unauthenticated client of a real cluster."""
        assert self._api_bound is not None and self.config.bridge_ip is not None
        host, port = self.config.bridge_ip, self._api_bound[1]
        if is_wildcard(self._api_bound[0]) or self._api_bound[0] == host:
            return  # the API listens there already
        self.node_api_token = self.token or secrets.token_urlsafe(24)
        await self._serve_api(host, port, self.node_api_token)

    def _read_log(self, namespace: str, name: str, container: str | None, *, previous: bool = False,
                  tail_lines: int | None = None, limit_bytes: int | None = None,
                  uid: str | None = None) -> bytes | None:
        """For the API's ``pods/{name}/log``: the runtime's log files (None: no runtime / no log)."""
        if self.runtime is None:
            return None
        return self.runtime.read_log(namespace, name, container, previous=previous, tail_lines=tail_lines,
                                     limit_bytes=limit_bytes, uid=uid)

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
                dns_service_ip=cfg.dns_service_ip,
                # the zone is long-lived and acyclic: keep it out of the cyclic GC's passes
                gc_freeze=self.gc_freeze,
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
        node_ips = tuple(a["address"] for a in node_addresses(cfg) if a["type"] == "InternalIP")
        extra: dict[str, Any] = {}
        if cfg.mode == "netns":  # the service CIDRs and the LB pool as local routes (see proxy.vip)
            from kubelab.runtime.netpol_enforce import proxied_cidrs

            extra = {"vip_mode": "netns", "vip_cidrs": proxied_cidrs(cfg.service_cidrs, cfg.lb_pool)}
        self.proxy = ServiceProxy(
            ProxyConfig.for_lab(node_name=cfg.node_name, node_ips=node_ips, admin=self.proxy_admin_addr, **extra)
        )
        await _bind(self.proxy.start(), "proxy admin port")
        self._closers.append(self.proxy.close)
        self._ready_parts["proxy"] = lambda: self.proxy.ready
        return getattr(self.proxy, "admin_url", None)

    def _in_process_sink(self, name: str, fn: Any, what: str) -> Any:
        from kubelab.controller.sinks import InProcessSink

        return _Notifying(InProcessSink(name, fn), what, self._readiness_hook)

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
        """Until ``readiness()`` holds. Woken by the manager's last route sink, which runs
        on every publish (the parts only flip when a state is applied), not by polling."""
        assert self._ready_event is not None, "wait_ready() before start()"
        async with asyncio.timeout(timeout):
            while not self.readiness()[0]:
                self._ready_event.clear()
                await self._ready_event.wait()

    async def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except Exception:  # keep closing the rest; the first failure is logged
                log.exception("error while shutting down %s", closer)


class _Notifying:
    """A sink that calls ``applied()`` after its inner sink took a state: the readiness
    parts (DNS, proxy, controllers) only change when a state is applied, so this is the
    hook ``wait_ready`` waits on. ``what`` tells the manager which state it takes."""

    def __init__(self, inner: Any, what: str, applied: Any) -> None:
        self.inner, self.name, self.what, self._applied = inner, inner.name, what, applied

    async def apply(self, state: Any) -> None:
        await self.inner.apply(state)
        self._applied()

    async def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if closer is not None:
            await closer()

    def __repr__(self) -> str:
        return f"{self.inner!r}->{self.what}"


async def _bind(coro: Any, what: str) -> None:
    try:
        await coro
    except OSError as exc:
        raise LabError(f"cannot listen for {what}: {exc.strerror or exc}") from None


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
