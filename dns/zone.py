"""The controller -> DNS contract: the cluster as the DNS server needs to see it.

Like CoreDNS's ``object.Service``/``object.Endpoints``, these are *stripped* objects:
only what decides an answer, already resolved by the controller (ready endpoints,
per-endpoint port numbers, hostnames). The DNS server turns them into records; the
controller never builds DNS records itself, so the two can evolve independently.

``services`` is keyed by ``"namespace/name"`` and its values are immutable, so the
server can rebuild only the services whose value changed between two zones (an
endpoint flip in a 50,000-pod cluster touches one entry). ``to_json``/``from_json``
carry the same data over HTTP when DNS runs as its own process.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True, slots=True)
class ServicePort:
    """A port as DNS sees it: SRV uses name and protocol; port is the number to publish."""

    name: str
    port: int
    protocol: str = "TCP"  # TCP | UDP | SCTP


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a selector-backed service (one address of an EndpointSlice).

    ``ports`` are the endpoint's resolved target ports (named targetPorts differ per
    pod); headless SRV records use them. ``ready`` already folds in
    publishNotReadyAddresses and terminating, so DNS publishes exactly the ready ones.
    """

    address: str
    ready: bool = True
    hostname: str | None = None
    ports: tuple[ServicePort, ...] = ()
    pod: str | None = None  # "namespace/name" of the targetRef, for diagnostics


@dataclass(frozen=True, slots=True)
class Service:
    """A Service stripped to its DNS-visible fields.

    ``cluster_ips`` is empty for headless services (``clusterIP: None``) and for
    ExternalName services; ``external_name`` is set only for the latter.
    """

    namespace: str
    name: str
    cluster_ips: tuple[str, ...] = ()
    headless: bool = False
    external_name: str | None = None
    ports: tuple[ServicePort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Pod:
    """A pod address, for ``a-b-c-d.<ns>.pod.<zone>`` in ``verified`` mode and PTR."""

    namespace: str
    name: str
    ip: str


@dataclass(frozen=True)
class ZoneData:
    """Everything the authoritative server answers from, at one generation.

    ``generation`` increases with every zone the controller publishes; a data plane
    refuses an older generation than the one it serves (a late HTTP retry must not
    roll the zone back).
    """

    generation: int
    services: Mapping[str, Service] = field(default_factory=dict)
    pods: tuple[Pod, ...] = ()
    # Namespaces that exist, so ``<ns>.svc.<zone>`` is NODATA even with no Services in it
    # (dns-spec A8). Optional: namespaces of services and pods count as existing anyway.
    namespaces: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "services": [_service_to_json(s) for _, s in sorted(self.services.items())],
            "pods": [[p.namespace, p.name, p.ip] for p in self.pods],
            "namespaces": list(self.namespaces),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ZoneData":
        # Equal port lists share one tuple and namespaces are interned: a 50,000-pod zone
        # parsed from JSON would otherwise hold ~10 MB of identical ServicePort objects.
        ports_cache: dict[tuple, tuple[ServicePort, ...]] = {}
        services = (_service_from_json(s, ports_cache) for s in data.get("services", ()))
        return cls(
            generation=int(data["generation"]),
            services={s.key: s for s in services},
            pods=tuple(Pod(sys.intern(ns), name, ip) for ns, name, ip in data.get("pods", ())),
            namespaces=tuple(sys.intern(str(ns)) for ns in data.get("namespaces", ())),
        )


def _port_to_json(p: ServicePort) -> list[Any]:
    return [p.name, p.port, p.protocol]


def _port_from_json(p: list[Any]) -> ServicePort:
    return ServicePort(sys.intern(str(p[0])), int(p[1]), sys.intern(str(p[2])))


def _ports_from_json(items: Any, cache: dict[tuple, tuple[ServicePort, ...]] | None) -> tuple[ServicePort, ...]:
    if cache is None:
        return tuple(_port_from_json(p) for p in items)
    key = tuple(tuple(p) for p in items)
    ports = cache.get(key)
    if ports is None:
        ports = cache[key] = tuple(_port_from_json(p) for p in items)
    return ports


def _service_to_json(s: Service) -> dict[str, Any]:
    return {
        "namespace": s.namespace,
        "name": s.name,
        "clusterIPs": list(s.cluster_ips),
        "headless": s.headless,
        "externalName": s.external_name,
        "ports": [_port_to_json(p) for p in s.ports],
        "endpoints": [
            {
                "address": e.address,
                "ready": e.ready,
                "hostname": e.hostname,
                "ports": [_port_to_json(p) for p in e.ports],
                "pod": e.pod,
            }
            for e in s.endpoints
        ],
    }


def _service_from_json(d: Mapping[str, Any], ports_cache: dict | None = None) -> Service:
    return Service(
        namespace=sys.intern(d["namespace"]),
        name=d["name"],
        cluster_ips=tuple(d.get("clusterIPs", ())),
        headless=bool(d.get("headless", False)),
        external_name=d.get("externalName"),
        ports=_ports_from_json(d.get("ports", ()), ports_cache),
        endpoints=tuple(
            Endpoint(
                address=e["address"],
                ready=bool(e.get("ready", True)),
                hostname=e.get("hostname"),
                ports=_ports_from_json(e.get("ports", ()), ports_cache),
                pod=e.get("pod"),
            )
            for e in d.get("endpoints", ())
        ),
    )
