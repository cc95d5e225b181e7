"""Proxy settings: one frozen value with documented defaults.

=========================  ==========  ===============================================
setting                    default     why
=========================  ==========  ===============================================
node_name                  lab-node    ``Local`` traffic policies keep backends whose
                                       ``Backend.node`` equals this
node_ips                   127.0.0.1   the node's addresses (reported in /routes; the
                                       controller already puts them in NodePort frontends)
connect_schedule           .25 .5 1 2  kube-proxy userspace ``tryConnect``: one attempt per
                                       timeout, each on the next endpoint
idle_timeout               3600 s      a TCP connection with no bytes either way for this
                                       long is closed (checked by a timer, so the close
                                       happens between 1x and 2x the value)
max_connections            16384       above it a new client is reset at once (Envoy's
                                       overflow behaviour); fds are the real limit: a
                                       spliced connection holds 6 (two sockets, two
                                       pipes), so at most ~RLIMIT_NOFILE/6 connections.
                                       The proxy raises the soft limit to the hard one
                                       at start
drain_timeout              10 s        a removed frontend's live connections get this
                                       long to finish before they are aborted
high_water / low_water     256/64 KiB  transport relay: per-direction buffer marks;
                                       above high the *other* side stops reading
                                       (bounded memory)
pipe_size                  1 MiB root  splice relay: each direction's pipe, the bound
                           256 KiB     on bytes in flight (at least 4096: one page).
                           otherwise   1 MiB is the kernel's default pipe-max-size;
                                       against 256 KiB it took a 1 GiB transfer from
                                       0.60-0.72x to 0.75-0.81x a direct connection
                                       (bench/proxy). Without root every pipe's size
                                       counts against pipe-user-pages-soft (64 MiB),
                                       past which the kernel hands out 8 KiB pipes, so
                                       unprivileged proxies keep 256 KiB. The size is
                                       read back: the kernel may grant less
udp_idle_timeout           30 s        a UDP client session without packets is dropped.
                                       userspace kube-proxy used 250 ms (--udp-timeout);
                                       modern kube-proxy relies on conntrack's 30 s, which
                                       does not lose slow replies, so the lab uses that
udp_max_sessions           4096        per frontend; a new client above it is dropped
healthz_timeout            60 s        /healthz is 503 when a queued table has waited
                                       longer than this (kube-proxy --healthz timeout)
balancer                   roundrobin  ``roundrobin`` (userspace: over a list shuffled on
                                       every change) or ``random`` (iptables mode)
tcp_relay                  auto        ``splice``: raw sockets, batched accept, splice(2)
                                       between sockets through pooled pipes of
                                       ``pipe_size`` (``kubelab.proxy.zerocopy``);
                                       ``transport``: asyncio transports
                                       (``kubelab.proxy.splice``); ``auto``: splice
                                       where the platform has it (Linux)
vip_mode                   local       how VIPs are claimed: local | netns | compose
                                       (see ``kubelab.proxy.vip``)
admin_addr                 None        admin HTTP (/healthz /metrics /routes /v1/routes)
                                       started by ``ServiceProxy.start()``; port 0 = any.
                                       ``kubelab-proxy`` defaults it to 127.0.0.1:10256,
                                       kube-proxy's healthz port
=========================  ==========  ===============================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping


def privileged() -> bool:
    """Root: pipe sizes are not charged to a per-user budget (CAP_SYS_RESOURCE)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class ProxyConfig:
    node_name: str = "lab-node"
    node_ips: tuple[str, ...] = ("127.0.0.1",)
    connect_schedule: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    idle_timeout: float = 3600.0
    max_connections: int = 16384
    drain_timeout: float = 10.0
    high_water: int = 256 * 1024
    low_water: int = 64 * 1024
    pipe_size: int = field(default_factory=lambda: 1024 * 1024 if privileged() else 256 * 1024)
    udp_idle_timeout: float = 30.0
    udp_max_sessions: int = 4096
    udp_max_pending: int = 64  # datagrams queued per session while its upstream socket opens
    healthz_timeout: float = 60.0
    balancer: str = "roundrobin"  # roundrobin | random
    tcp_relay: str = "auto"  # auto | splice | transport
    vip_mode: str = "local"  # local | netns | compose
    vip_cidrs: tuple[str, ...] = ()  # netns: CIDRs routed as local on lo
    vip_interface: str = "eth0"  # compose: interface that gets the /32 addresses
    backlog: int = 1024
    admin_addr: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        if not self.connect_schedule or any(t <= 0 for t in self.connect_schedule):
            raise ValueError("connect_schedule needs at least one positive timeout")
        if self.balancer not in ("roundrobin", "random"):
            raise ValueError(f"balancer {self.balancer!r}: expected roundrobin or random")
        if self.tcp_relay not in ("auto", "splice", "transport"):
            raise ValueError(f"tcp_relay {self.tcp_relay!r}: expected auto, splice or transport")
        if self.vip_mode not in ("local", "netns", "compose"):
            raise ValueError(f"vip_mode {self.vip_mode!r}: expected local, netns or compose")
        if not 0 <= self.low_water <= self.high_water:
            raise ValueError("need 0 <= low_water <= high_water")
        if self.tcp_relay != "transport" and self.pipe_size < 4096:
            raise ValueError("pipe_size must be at least 4096 (one page)")
        for name in ("idle_timeout", "drain_timeout", "udp_idle_timeout", "healthz_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_connections < 1 or self.udp_max_sessions < 1:
            raise ValueError("limits must be at least 1")

    @classmethod
    def for_lab(
        cls,
        *,
        node_name: str = "lab-node",
        node_ips: tuple[str, ...] = ("127.0.0.1",),
        admin: tuple[str, int] | None = None,
        **overrides: object,
    ) -> "ProxyConfig":
        """What ``kubelab up`` passes: the node, the admin address, any other field by name."""
        return cls(node_name=node_name, node_ips=tuple(node_ips), admin_addr=admin, **overrides)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ProxyConfig":
        """``KUBELAB_PROXY_<FIELD>`` overrides (tuples are comma-separated)."""
        env = os.environ if env is None else env
        kwargs: dict[str, object] = {}
        for name, f in cls.__dataclass_fields__.items():
            raw = env.get("KUBELAB_PROXY_" + name.upper())
            if raw is None or name == "admin_addr":
                continue
            default = getattr(cls(), name)
            if isinstance(default, tuple):
                items = [p.strip() for p in raw.split(",") if p.strip()]
                kwargs[name] = tuple(float(p) for p in items) if name == "connect_schedule" else tuple(items)
            elif isinstance(default, bool):
                kwargs[name] = raw.lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                kwargs[name] = int(raw)
            elif isinstance(default, float):
                kwargs[name] = float(raw)
            else:
                kwargs[name] = raw
        return cls(**kwargs)  # type: ignore[arg-type]
