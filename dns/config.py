"""DNS server configuration: one frozen value, with CoreDNS's defaults where it has one.

=====================  ==========================  =========================================
field                  default                     CoreDNS / Kubernetes analogue
=====================  ==========================  =========================================
zone                   ``cluster.local.``          ``kubernetes cluster.local`` / kubelet
                                                   ``--cluster-domain``
ttl                    5                           ``kubernetes { ttl 5 }`` (range 0-3600)
pods_mode              ``verified``                ``pods verified`` (CoreDNS default is
                                                   ``disabled``; the addon ships ``insecure``)
upstreams              ``None`` = resolv.conf      ``forward . /etc/resolv.conf``; ``()`` means
                                                   no forwarding: out-of-zone -> REFUSED
recursion_clients      loopback + pod CIDR         ``acl`` on the forward block: never an
                                                   open resolver
reverse_zones          derived from the CIDRs      ``kubernetes cluster.local in-addr.arpa ...``
dns_service_ip         ``None``                    glue A of ``ns.dns.<zone>`` (apex NS)
soa_*                  7200/1800/86400             ``plugin/backend_lookup.go`` SOA()
=====================  ==========================  =========================================
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PODS_MODES = ("verified", "insecure", "disabled")


def normalize_zone(zone: str) -> str:
    """``Cluster.Local`` -> ``cluster.local.`` (absolute, lowercase)."""
    zone = zone.strip().lower().rstrip(".")
    if not zone:
        raise ValueError("empty zone")
    return zone + "."


def reverse_zone_for(net: IPNetwork) -> str:
    """The reverse zone that covers ``net``, cut at the enclosing octet/nibble boundary.

    ``10.96.0.0/12`` -> ``10.in-addr.arpa.``; ``127.244.0.0/16`` -> ``244.127.in-addr.arpa.``;
    ``fd00:10:96::/112`` -> the 28-nibble ``ip6.arpa.`` zone.
    """
    if net.version == 4:
        octets = net.prefixlen // 8
        parts = str(net.network_address).split(".")[:octets]
        return ".".join(reversed(parts)) + (".in-addr.arpa." if parts else "in-addr.arpa.")
    nibbles = net.prefixlen // 4
    hexstr = net.network_address.exploded.replace(":", "")[:nibbles]
    return ".".join(reversed(hexstr)) + (".ip6.arpa." if hexstr else "ip6.arpa.")


def reverse_zones_for(cidrs: tuple[IPNetwork, ...]) -> tuple[str, ...]:
    """Distinct reverse zones for a set of CIDRs, dropping zones nested in another."""
    zones = sorted({reverse_zone_for(n) for n in cidrs}, key=len)
    out: list[str] = []
    for z in zones:
        if not any(z == o or z.endswith("." + o) for o in out):
            out.append(z)
    return tuple(out)


def resolv_conf_nameservers(path: Path = Path("/etc/resolv.conf")) -> tuple[tuple[str, int], ...]:
    """``nameserver`` lines of a resolv.conf, as (ip, 53); unreadable file -> ()."""
    try:
        text = path.read_text()
    except OSError:
        logger.warning("cannot read %s; forwarding disabled", path)
        return ()
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                ipaddress.ip_address(parts[1].split("%")[0])
            except ValueError:
                continue
            out.append((parts[1], 53))
    return tuple(out)


def parse_upstreams(text: str) -> tuple[tuple[str, int], ...] | None:
    """``--dns-upstream`` value: ``ADDR[:PORT][,ADDR...]``, ``none`` -> (), ``resolv.conf`` -> None."""
    text = text.strip()
    if text.lower() in ("none", ""):
        return ()
    if text.lower() in ("resolv.conf", "/etc/resolv.conf", "default"):
        return None
    out = []
    for part in text.split(","):
        part = part.strip()
        if part.startswith("["):  # [v6]:port
            host, _, port = part[1:].partition("]")
            port = port.lstrip(":")
        elif part.count(":") == 1:
            host, _, port = part.partition(":")
        else:
            host, port = part, ""
        ipaddress.ip_address(host)  # raises ValueError on junk
        out.append((host, int(port) if port else 53))
    return tuple(out)


def _default_clients() -> tuple[IPNetwork, ...]:
    return (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class DnsConfig:
    """Everything the DNS data plane needs; the lead maps ``kubelab up --dns-*`` onto it."""

    zone: str = "cluster.local."
    ttl: int = 5
    pods_mode: str = "verified"
    # None: the host's /etc/resolv.conf nameservers; (): no forwarding (REFUSED).
    upstreams: tuple[tuple[str, int], ...] | None = None
    # Clients that may use forwarding; the pod CIDR should be added by the caller.
    recursion_clients: tuple[IPNetwork, ...] = field(default_factory=_default_clients)
    # Reverse zones we are authoritative for; None = derived from service_cidrs + pod_cidrs.
    reverse_zones: tuple[str, ...] | None = None
    service_cidrs: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.96.0.0/16"),)
    pod_cidrs: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.244.0.0/16"),)
    addr: tuple[str, int] = ("127.0.0.1", 5353)  # UDP and TCP bind
    admin_addr: tuple[str, int] | None = None  # admin HTTP, started by DnsServer.start()
    dns_service_ip: str | None = None  # glue for ns.dns.<zone>
    dns_version: str = "1.1.0"
    dns_version_ttl: int = 28800
    soa_refresh: int = 7200
    soa_retry: int = 1800
    soa_expire: int = 86400
    soa_mname: str | None = None  # default ns.dns.<zone>
    soa_rname: str | None = None  # default hostmaster.<zone>
    # Largest UDP answer we send to an EDNS client (DNS flag day 2020 value); 512 without EDNS.
    edns_udp_size: int = 1232
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1024
    forward_timeout: float = 2.0
    forward_cache_size: int = 10000
    forward_max_ttl: int = 3600
    forward_max_inflight: int = 1024
    drain_timeout: float = 2.0
    # gc.freeze() after each zone change, so the ~500k long-lived table objects stay out
    # of the cyclic GC's full passes (p99 18 ms -> <1 ms at 50k pods). Process-wide, so
    # only entry points turn it on (kubelab-dns does).
    gc_freeze: bool = False
    # UDP through recvmmsg/sendmmsg (dns/udpbatch.py) where available; False = one
    # recvfrom/sendto per datagram (the portable path, also used off Linux).
    udp_mmsg: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "zone", normalize_zone(self.zone))
        if self.pods_mode not in PODS_MODES:
            raise ValueError(f"pods_mode must be one of {PODS_MODES}, not {self.pods_mode!r}")
        if not 0 <= self.ttl <= 3600:
            raise ValueError("ttl must be between 0 and 3600")
        if not 512 <= self.edns_udp_size <= 65535:
            raise ValueError("edns_udp_size must be between 512 and 65535")
        if self.reverse_zones is not None:
            object.__setattr__(
                self, "reverse_zones", tuple(normalize_zone(z) for z in self.reverse_zones)
            )

    @classmethod
    def for_lab(cls, *, cluster_domain: str = "cluster.local", ttl: int = 5,
                pods_mode: str = "verified", upstreams: "Sequence[str] | str | None" = None,
                host: str = "127.0.0.1", port: int = 5353, pod_cidr: "str | None" = None,
                service_cidrs: "Sequence[str] | str | None" = None,
                admin: tuple[str, int] | None = None, dns_service_ip: str | None = None,
                **overrides) -> "DnsConfig":
        """Build from ``kubelab up`` flag values (strings as the CLI has them).

        ``upstreams``: None = resolv.conf, () or ``"none"`` = no forwarding, else
        ``"ADDR"``/``"ADDR:PORT"``/``"[V6]:PORT"`` items. Forwarding is offered to loopback
        and the pod CIDR; reverse zones cover the service and pod CIDRs.
        """
        if upstreams is None:
            ups = None
        elif isinstance(upstreams, str):
            ups = parse_upstreams(upstreams)
        else:
            ups = parse_upstreams(",".join(upstreams)) if upstreams else ()
        kw: dict = {}
        if pod_cidr:
            kw["pod_cidrs"] = (ipaddress.ip_network(str(pod_cidr), strict=False),)
        if service_cidrs:
            items = service_cidrs.split(",") if isinstance(service_cidrs, str) else service_cidrs
            kw["service_cidrs"] = tuple(ipaddress.ip_network(str(c).strip(), strict=False) for c in items)
        kw["recursion_clients"] = _default_clients() + tuple(kw.get("pod_cidrs", cls.pod_cidrs))
        kw.update(overrides)
        return cls(zone=cluster_domain, ttl=ttl, pods_mode=pods_mode, upstreams=ups,
                   addr=(host, port), admin_addr=admin, dns_service_ip=dns_service_ip, **kw)

    @property
    def effective_reverse_zones(self) -> tuple[str, ...]:
        if self.reverse_zones is not None:
            return self.reverse_zones
        return reverse_zones_for(tuple(self.service_cidrs) + tuple(self.pod_cidrs))

    @property
    def effective_upstreams(self) -> tuple[tuple[str, int], ...]:
        if self.upstreams is None:
            return resolv_conf_nameservers()
        return self.upstreams

    @property
    def mname(self) -> str:
        return normalize_zone(self.soa_mname) if self.soa_mname else "ns.dns." + self.zone

    @property
    def rname(self) -> str:
        return normalize_zone(self.soa_rname) if self.soa_rname else "hostmaster." + self.zone

    @property
    def soa_ttl(self) -> int:
        return min(self.ttl, 300)
