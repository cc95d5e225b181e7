"""Lab-wide configuration: one frozen value, built once by the CLI, passed to every part.

Defaults are the loopback analogues of a kubeadm cluster so that the default (local,
unprivileged) lab needs no root: Linux routes all of 127.0.0.0/8 to ``lo``, so a pod
or service address there can be bound by any process.

=================  ====================  ==========================================
setting            default               Kubernetes analogue
=================  ====================  ==========================================
service_cidrs      127.96.0.0/16         --service-cluster-ip-range 10.96.0.0/12
pod_cidr           127.244.0.0/16        --cluster-cidr 10.244.0.0/16
node_port_range    30000-32767           --service-node-port-range (same)
lb_pool            127.240.0.0/24        a MetalLB IPAddressPool
cluster_domain     cluster.local         kubelet --cluster-domain (same)
dns_ttl            5                     CoreDNS kubernetes plugin ``ttl`` (same)
=================  ====================  ==========================================
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A bad flag value; the CLI prints it on one line and exits 1."""


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"{text!r}: expected HOST:PORT")
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{text!r}: port must be between 0 and 65535")
    return host, number


def parse_cidrs(text: str) -> tuple[IPNetwork, ...]:
    """One CIDR, or an IPv4,IPv6 pair for dual-stack (as kube-apiserver takes it)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not 1 <= len(parts) <= 2:
        raise ConfigError(f"{text!r}: expected one CIDR or an IPv4,IPv6 pair")
    try:
        nets = tuple(ipaddress.ip_network(p, strict=True) for p in parts)
    except ValueError as exc:
        raise ConfigError(f"{text!r}: {exc}") from None
    if len(nets) == 2 and nets[0].version == nets[1].version:
        raise ConfigError(f"{text!r}: a dual-stack pair needs one IPv4 and one IPv6 CIDR")
    return nets


def parse_port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi)
    except ValueError:
        raise ConfigError(f"{text!r}: expected a port range like 30000-32767") from None
    if not sep or not 1 <= first <= last <= 65535:
        raise ConfigError(f"{text!r}: expected a port range like 30000-32767")
    return first, last


@dataclass(frozen=True)
class LabConfig:
    api_addr: tuple[str, int] = ("127.0.0.1", 6443)
    dns_addr: tuple[str, int] = ("127.0.0.1", 5353)
    service_cidrs: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.96.0.0/16"),)
    pod_cidr: IPNetwork = ipaddress.ip_network("127.244.0.0/16")
    node_port_range: tuple[int, int] = (30000, 32767)
    lb_pool: IPNetwork = ipaddress.ip_network("127.240.0.0/24")
    node_name: str = "lab-node"
    node_ip: str = "127.0.0.1"
    state_dir: Path | None = Path(".state")  # None: --ephemeral, in memory
    cluster_domain: str = "cluster.local"
    dns_ttl: int = 5
    dns_pods_mode: str = "verified"  # verified | insecure | disabled
    dns_upstream: tuple[str, ...] | None = None  # None: the host's resolv.conf; () : none
    disabled: frozenset[str] = field(default_factory=frozenset)  # dns, proxy, runtime
    manifests: tuple[Path, ...] = ()
