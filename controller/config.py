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
mode               local                 ``local``: pods on loopback addresses, no
                                         privileges; ``netns``: one network namespace
                                         per pod on a bridge (root), see below
dns_service_ip     None                  the ``kube-dns`` Service's ClusterIP (kubelet
                                         --cluster-dns); netns mode: 10.96.0.10
netns_prefix       kl-                   names of the namespaces, links and files of a
                                         netns lab start with it (``kubelab down``
                                         removes the lab's names with it)
=================  ====================  ==========================================

``--mode netns`` changes the defaults of the address flags to kubeadm's own, since
the addresses are real ones on a bridge there (:func:`mode_defaults`): pod CIDR
10.244.0.0/16, service CIDR 10.96.0.0/16, LB pool 10.97.0.0/24, node IP 10.244.0.1 (the
bridge, the pods' gateway), DNS service IP 10.96.0.10 and the DNS server on
10.96.0.10:53. A flag the user passes always wins; the node IP follows ``--pod-cidr``
(its first address) and the DNS service IP follows ``--service-cidr`` (its tenth
address, kubeadm's convention) unless they are given too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MODES = ("local", "netns")


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
    mode: str = "local"  # local | netns
    dns_service_ip: str | None = None  # the kube-dns ClusterIP; netns: what pods' resolv.conf names
    netns_prefix: str = "kl-"  # netns mode (runtime.netns.check_prefix): prefix of every namespace, link and file of the lab

    @property
    def bridge_ip(self) -> str | None:
        """netns mode: the bridge's address (the pods' gateway, the node as pods see it)."""
        if self.mode != "netns":
            return None
        return str(self.pod_cidr.network_address + 1)


# The address flags whose defaults depend on the mode (dest names of ``kubelab up``).
MODE_FLAGS = ("pod_cidr", "service_cidr", "lb_pool", "node_ip", "dns_service_ip", "dns_addr")


def mode_defaults(mode: str, given: Mapping[str, str | None]) -> dict[str, str | None]:
    """The address flags for ``mode``: each one the user gave (not None) kept as given,
    the others filled with the mode's default (strings, as the CLI has them).

    netns mode uses kubeadm's ranges; the node IP is the pod CIDR's first address (the
    bridge) and the DNS service IP the service CIDR's tenth, so that moving one range
    moves what lives in it. Local mode keeps the loopback defaults and has no DNS
    service IP unless one is given.
    """
    if mode not in MODES:
        raise ConfigError(f"--mode {mode}: expected one of {', '.join(MODES)}")
    out: dict[str, str | None] = {k: given.get(k) for k in MODE_FLAGS}
    d = LabConfig()
    if mode == "local":
        base: dict[str, str | None] = {
            "pod_cidr": str(d.pod_cidr), "service_cidr": ",".join(map(str, d.service_cidrs)),
            "lb_pool": str(d.lb_pool), "node_ip": d.node_ip, "dns_addr": "%s:%d" % d.dns_addr,
            "dns_service_ip": None,
        }
        return {k: out[k] if out[k] is not None else base[k] for k in MODE_FLAGS}
    for k, v in (("pod_cidr", "10.244.0.0/16"), ("service_cidr", "10.96.0.0/16"), ("lb_pool", "10.97.0.0/24")):
        if out[k] is None:
            out[k] = v
    if out["node_ip"] is None:
        out["node_ip"] = str(_first_v4(str(out["pod_cidr"]), "--pod-cidr").network_address + 1)
    if out["dns_service_ip"] is None:
        out["dns_service_ip"] = str(_first_v4(str(out["service_cidr"]), "--service-cidr").network_address + 10)
    if out["dns_addr"] is None:
        out["dns_addr"] = f"{out['dns_service_ip']}:53"
    return out


def _first_v4(cidrs: str, flag: str) -> IPNetwork:
    for net in parse_cidrs(cidrs):
        if net.version == 4:
            return net
    raise ConfigError(f"{flag} {cidrs}: netns mode needs an IPv4 range")


def check_mode_supported(mode: str, supported: tuple[bool, str] | Callable[[], tuple[bool, str]]) -> str | None:
    """The one-line error for a mode this machine can't run, or None. ``supported``: the
    result of ``kubelab.runtime.netns.supported()``, or that function (then called only
    for netns mode). Pure given a tuple, so it is tested without root."""
    if mode != "netns":
        return None
    ok, why = supported() if callable(supported) else supported
    if ok:
        return None
    return f"--mode netns: {why or 'network namespaces are not available'} (use --mode local)"


def validate_lab(config: LabConfig) -> None:
    """Cross-flag checks ``kubelab up`` makes once every flag is parsed."""
    if config.mode not in MODES:
        raise ConfigError(f"--mode {config.mode}: expected one of {', '.join(MODES)}")
    if config.dns_service_ip is not None:
        try:
            ip = ipaddress.ip_address(config.dns_service_ip)
        except ValueError:
            raise ConfigError(f"--dns-service-ip {config.dns_service_ip!r}: not an IP address") from None
        if not any(ip in net for net in config.service_cidrs):
            raise ConfigError(f"--dns-service-ip {ip}: not inside the service CIDR "
                              f"{','.join(map(str, config.service_cidrs))}")
        first = config.service_cidrs[0].network_address + 1
        if ip == first:
            raise ConfigError(f"--dns-service-ip {ip}: the service CIDR's first address is the "
                              "default/kubernetes Service's")
    if config.mode == "netns":
        from kubelab.runtime.netns import check_prefix

        if config.pod_cidr.version != 4 or config.pod_cidr.prefixlen > 30:
            raise ConfigError(f"--pod-cidr {config.pod_cidr}: netns mode needs an IPv4 range of at least /30")
        problem = check_prefix(config.netns_prefix)
        if problem:
            raise ConfigError(problem)
        clash = overlapping_ranges(config)
        if clash:
            raise ConfigError(clash)


def overlapping_ranges(config: LabConfig) -> str | None:
    """netns mode routes the pod CIDR to the bridge and the service CIDRs and the LB pool
    as local: the ranges must not overlap (pure; the message names the two flags)."""
    ranges = [("--pod-cidr", config.pod_cidr), *(("--service-cidr", n) for n in config.service_cidrs),
              ("--lb-pool", config.lb_pool)]
    for i, (flag_a, a) in enumerate(ranges):
        for flag_b, b in ranges[i + 1:]:
            if a.version == b.version and a.overlaps(b):  # type: ignore[arg-type]
                return f"{flag_a} {a} and {flag_b} {b} overlap: netns mode routes them differently"
    return None
