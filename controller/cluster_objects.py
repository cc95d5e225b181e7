"""The objects every lab has, and the pure decisions about them.

A cluster is never empty: kubeadm leaves a Node, the system namespaces, the API's own
``default/kubernetes`` Service and CoreDNS's ``kube-system/kube-dns`` on the DNS service
IP. ``Lab`` stores these at every start; what they look like for a given ``LabConfig``
is decided here, without I/O, so it is table-tested in tests/unit/test_ctrl_config.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Iterable

from kubelab.controller.config import LabConfig
from kubelab.controller.endpointslices import MANAGED_BY_LABEL, SERVICE_NAME_LABEL

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def is_wildcard(host: str) -> bool:
    """A listen address meaning "every address of the node"."""
    return host in ("0.0.0.0", "::", "")


LAB_MANAGED_BY = "lab.kubelab.dev"  # not the EndpointSlice controller's: it leaves the slice alone


def node_addresses(config: LabConfig) -> list[dict[str, str]]:
    """InternalIP(s) + Hostname. netns mode adds the bridge address when it differs from
    the node IP: traffic from the node side reaches pods from there, and NetworkPolicy
    exempts the node's own addresses (as Kubernetes network plugins do for the kubelet)."""
    addrs = [{"type": "InternalIP", "address": config.node_ip}]
    bridge = config.bridge_ip
    if bridge and bridge != config.node_ip:
        addrs.append({"type": "InternalIP", "address": bridge})
    addrs.append({"type": "Hostname", "address": config.node_name})
    return addrs


def first_service_ip(config: LabConfig) -> str:
    """The ``kubernetes`` Service's ClusterIP: the first address of the (primary) service CIDR."""
    return str(config.service_cidrs[0].network_address + 1)


def api_endpoint(config: LabConfig, bound: tuple[str, int]) -> tuple[str, int]:
    """Where the ``kubernetes`` Service sends traffic: the API's bound address, or the
    node's when it listens on all addresses; in netns mode the bridge address (the API
    also listens there, see ``Lab._start_node_api``)."""
    host, port = bound
    if config.bridge_ip:
        return config.bridge_ip, port
    if is_wildcard(host):
        return config.node_ip, port
    if host == "localhost":
        return "127.0.0.1", port
    return host, port


def _selectorless_slice(namespace: str, name: str, ip: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    """The EndpointSlice of a built-in Service: one ready endpoint, the lab's manager label
    (the EndpointSlice controller leaves it alone)."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: LAB_MANAGED_BY}},
        "addressType": "IPv6" if ":" in ip else "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True, "serving": True, "terminating": False}}],
        "ports": ports,
    }


def kubernetes_service_objects(config: LabConfig, endpoint: tuple[str, int]) -> list[dict[str, Any]]:
    """``default/kubernetes`` and its EndpointSlice, as kube-apiserver's reconciler writes them."""
    ip, port = endpoint
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": first_service_ip(config),
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
    }
    return [svc, _selectorless_slice("default", "kubernetes", ip, [{"name": "https", "port": port, "protocol": "TCP"}])]


def kube_dns_objects(config: LabConfig, dns_bound: tuple[str, int] | None) -> list[dict[str, Any]]:
    """``kube-system/kube-dns`` on the DNS service IP (selectorless: no pod serves it).

    When the DNS server listens on that IP's port 53 itself, the Service only reserves the
    address (the proxy leaves it alone); otherwise an EndpointSlice sends it to the DNS
    server's address through the proxy."""
    assert config.dns_service_ip is not None
    target = dns_bound[1] if dns_bound else 53
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"type": "ClusterIP", "clusterIP": config.dns_service_ip,
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": target},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": target}]},
    }
    if dns_bound is None or dns_served_on_vip(config, dns_bound):
        return [svc]
    host = config.node_ip if is_wildcard(dns_bound[0]) else dns_bound[0]
    return [svc, _selectorless_slice("kube-system", "kube-dns", host,
                                     [{"name": "dns", "port": dns_bound[1], "protocol": "UDP"},
                                      {"name": "dns-tcp", "port": dns_bound[1], "protocol": "TCP"}])]


def dns_served_on_vip(config: LabConfig, dns_bound: tuple[str, int] | None) -> bool:
    return dns_bound is not None and config.dns_service_ip is not None and \
        dns_bound == (config.dns_service_ip, 53)


def without_frontends(table: Any, skip: frozenset[tuple[str, int]]) -> Any:
    """``table`` minus the frontends on (ip, port) in ``skip`` (the DNS server's own VIP)."""
    if not skip or not any((f.ip, f.port) in skip for f in table.routes):
        return table
    return dataclasses.replace(table, routes={f: r for f, r in table.routes.items() if (f.ip, f.port) not in skip})


BUILTIN_SERVICES = (("default", "kubernetes"), ("kube-system", "kube-dns"))


def services_outside(services: Iterable[dict[str, Any]], cidrs: Iterable[Any]) -> list[str]:
    """``ns/name (ip)`` of every stored Service (built-ins aside: the lab re-creates those)
    with a ClusterIP outside ``cidrs``: a state dir made with other ranges (pure)."""
    nets = [ipaddress.ip_network(str(c)) for c in cidrs]
    out = []
    for svc in services:
        meta = svc.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta.get("name") or "")
        stray = cluster_ip_outside(svc, nets)
        if stray and key not in BUILTIN_SERVICES:
            out.append(f"{key[0]}/{key[1]} ({stray})")
    return out


def cluster_ip_outside(svc: dict[str, Any], nets: list[Any]) -> str | None:
    """The Service's first ClusterIP outside ``nets`` (None: all inside, or headless)."""
    spec = svc.get("spec") or {}
    for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
        if not ip or ip == "None":
            continue
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            continue
        if not any(addr.version == n.version and addr in n for n in nets):
            return str(ip)
    return None


def state_services_problem(config: LabConfig, services: Iterable[dict[str, Any]]) -> str | None:
    """Why a state dir can't serve this lab (None: it can): its Services lie outside
    --service-cidr. Their ClusterIPs are immutable, and the proxy and DNS would serve
    addresses the lab does not route (a dir made by a lab in another --mode, for example)."""
    bad = services_outside(services, config.service_cidrs)
    if not bad:
        return None
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return (f"state dir {config.state_dir}: Services {', '.join(bad[:3])}{more} are outside "
            f"--service-cidr {','.join(map(str, config.service_cidrs))} (made with other ranges or "
            "another --mode): use another --state-dir, or --ephemeral")


def node_object(config: LabConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": config.node_name,
            "labels": {"kubernetes.io/hostname": config.node_name, "kubernetes.io/os": "linux"},
        },
        "status": {
            "addresses": node_addresses(config),
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
