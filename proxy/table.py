"""The controller -> proxy contract: which frontends exist and where they lead.

A ``RouteTable`` is a pure value computed from one registry snapshot. The proxy
applies it as a diff against what it runs (``diff``): new frontends get listeners,
removed ones stop accepting and drain, changed ones get their backends swapped in
place so established connections survive. ``to_json``/``from_json`` carry it over
HTTP when the proxy runs as its own process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kubelab.proxy.policy import PolicyTable


@dataclass(frozen=True, slots=True, order=True)
class Frontend:
    """An address the proxy listens on: a ClusterIP, LoadBalancer or external IP, or a node address for a NodePort."""

    ip: str
    port: int
    protocol: str = "TCP"  # TCP | UDP


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint address of the service port, with EndpointSlice conditions.

    The proxy uses ready backends; serving-but-terminating ones only when no ready
    backend exists (kube-proxy's fallback). ``node`` drives the ``Local`` traffic policies.
    """

    ip: str
    port: int
    pod: str | None = None  # "namespace/name"
    node: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """What one frontend does.

    ``kind`` is how the frontend came to exist (ClusterIP, NodePort, LoadBalancer,
    ExternalIP). ``traffic_policy`` is internalTrafficPolicy for ClusterIP frontends
    and externalTrafficPolicy for the others. ``affinity_timeout`` is set only for
    ``sessionAffinity: ClientIP``.
    """

    service: str  # "namespace/name"
    port_name: str
    kind: str
    backends: tuple[Backend, ...] = ()
    affinity_timeout: int | None = None
    traffic_policy: str = "Cluster"  # Cluster | Local


@dataclass(frozen=True)
class RouteTable:
    generation: int
    routes: Mapping[Frontend, Route] = field(default_factory=dict)
    policy: PolicyTable = field(default_factory=PolicyTable)

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "routes": [
                {
                    "frontend": [f.ip, f.port, f.protocol],
                    "service": r.service,
                    "portName": r.port_name,
                    "kind": r.kind,
                    "affinityTimeout": r.affinity_timeout,
                    "trafficPolicy": r.traffic_policy,
                    "backends": [
                        [b.ip, b.port, b.pod, b.node, b.ready, b.serving, b.terminating]
                        for b in r.backends
                    ],
                }
                for f, r in sorted(self.routes.items())
            ],
            "policy": self.policy.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RouteTable":
        routes: dict[Frontend, Route] = {}
        for r in data.get("routes", ()):
            ip, port, proto = r["frontend"]
            routes[Frontend(ip, int(port), proto)] = Route(
                service=r["service"],
                port_name=r.get("portName", ""),
                kind=r.get("kind", "ClusterIP"),
                backends=tuple(Backend(b[0], int(b[1]), *b[2:]) for b in r.get("backends", ())),
                affinity_timeout=r.get("affinityTimeout"),
                traffic_policy=r.get("trafficPolicy", "Cluster"),
            )
        return cls(
            generation=int(data["generation"]),
            routes=routes,
            policy=PolicyTable.from_json(data.get("policy") or {}),
        )


@dataclass(frozen=True)
class TableDiff:
    added: tuple[Frontend, ...]
    removed: tuple[Frontend, ...]
    changed: tuple[Frontend, ...]


def diff(old: RouteTable | None, new: RouteTable) -> TableDiff:
    """Frontends to open, to close (and drain), and to update in place."""
    old_routes = old.routes if old is not None else {}
    added = tuple(sorted(f for f in new.routes if f not in old_routes))
    removed = tuple(sorted(f for f in old_routes if f not in new.routes))
    changed = tuple(
        sorted(f for f, r in new.routes.items() if f in old_routes and old_routes[f] != r)
    )
    return TableDiff(added, removed, changed)
