"""Which backend a new connection goes to: pure decisions, no sockets.

Two layers, both table-tested in ``tests/unit/test_proxy_balancer.py``:

``select_endpoints(route, node_name)``
    kube-proxy's ``CategorizeEndpoints`` reduced to what the lab models. Ready
    endpoints are used; when none is ready, serving-but-terminating ones are the
    fallback. With a ``Local`` traffic policy only endpoints on this node count.
    The outcome is one of three actions:

    * ``serve``  -- use ``backends``;
    * ``reject`` -- the service has no usable endpoint anywhere: the client must see
      "connection refused" at once (kube-proxy's REJECT rule);
    * ``drop``   -- endpoints exist but none on this node and the policy is
      ``Local``: kube-proxy DROPs, so the client times out.

``Balancer``
    per service port. kube-proxy userspace's ``LoadBalancerRR``: the endpoint list
    is shuffled whenever the *set* changes and the index resets; then plain
    round-robin. ``random`` (iptables mode) is the alternative. ``ClientIP``
    affinity maps a client IP to its endpoint with a TTL refreshed on every hit;
    after a failed connect the caller passes ``reset_affinity=True`` so the retry
    skips the sticky endpoint and advances round-robin (userspace
    ``sessionAffinityReset``). Affinity entries of endpoints that disappear are
    dropped. Clock and RNG are injected so tests are deterministic.
"""

from __future__ import annotations

import random as _random
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from kubelab.proxy.table import Backend, Route

SERVE = "serve"
REJECT = "reject"
DROP = "drop"

DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds; Kubernetes' default for ClientIP


@dataclass(frozen=True, slots=True)
class Selection:
    action: str  # serve | reject | drop
    backends: tuple[Backend, ...]
    reason: str


def _usable(backends: Iterable[Backend]) -> tuple[Backend, ...]:
    """Ready endpoints, else serving+terminating ones (kube-proxy's fallback)."""
    bs = tuple(backends)
    ready = tuple(b for b in bs if b.ready)
    if ready:
        return ready
    return tuple(b for b in bs if b.serving and b.terminating)


def select_endpoints(route: Route, node_name: str) -> Selection:
    usable = _usable(route.backends)
    if not usable:
        return Selection(REJECT, (), f"service {route.service} has no usable endpoints")
    if route.traffic_policy == "Local":
        local = _usable(b for b in route.backends if b.node == node_name)
        if not local:
            return Selection(
                DROP,
                (),
                f"{route.kind} traffic policy Local and no usable endpoint of "
                f"{route.service} on node {node_name}",
            )
        return Selection(SERVE, local, f"{len(local)} local endpoint(s)")
    ready = sum(1 for b in usable if b.ready)
    how = "ready" if ready else "serving+terminating (fallback)"
    return Selection(SERVE, usable, f"{len(usable)} {how} endpoint(s)")


def _key(b: Backend) -> tuple[str, int]:
    return (b.ip, b.port)


class Balancer:
    """Round-robin (shuffled) or random picker with optional ClientIP affinity."""

    __slots__ = (
        "mode", "backends", "index", "affinity_timeout", "affinity", "_rng", "_clock", "_picks", "__weakref__",
    )

    def __init__(
        self,
        backends: Sequence[Backend] = (),
        *,
        mode: str = "roundrobin",
        affinity_timeout: float | None = None,
        rng: _random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in ("roundrobin", "random"):
            raise ValueError(f"unknown balancer mode {mode!r}")
        self.mode = mode
        self._rng = rng if rng is not None else _random.Random()
        self._clock = clock
        self.backends: list[Backend] = []
        self.index = 0
        self.affinity_timeout: float | None = None
        self.affinity: dict[str, tuple[Backend, float]] = {}
        self._picks = 0
        self.update(backends, affinity_timeout)

    def update(self, backends: Sequence[Backend], affinity_timeout: float | None = None) -> bool:
        """Adopt a new endpoint list; reshuffle only if the set of addresses changed.

        Returns True when the set changed. A changed affinity timeout applies to
        existing entries too (their last-used time is kept).
        """
        if affinity_timeout is not None and affinity_timeout <= 0:
            affinity_timeout = DEFAULT_AFFINITY_TIMEOUT
        self.affinity_timeout = affinity_timeout
        if affinity_timeout is None:
            self.affinity.clear()
        new_keys = sorted(set(map(_key, backends)))
        old_keys = sorted(set(map(_key, self.backends)))
        by_key = {_key(b): b for b in backends}
        if new_keys == old_keys:
            # Same addresses; conditions (ready/node/...) may differ: refresh objects in place.
            self.backends = [by_key[_key(b)] for b in self.backends]
            self.affinity = {ip: (by_key[_key(b)], t) for ip, (b, t) in self.affinity.items()}
            return False
        fresh = [by_key[k] for k in new_keys]
        self._rng.shuffle(fresh)
        self.backends = fresh
        self.index = 0
        live = set(new_keys)
        self.affinity = {ip: (b, t) for ip, (b, t) in self.affinity.items() if _key(b) in live}
        return True

    def pick(self, client_ip: str, reset_affinity: bool = False) -> Backend | None:
        backends = self.backends
        if not backends:
            return None
        ttl = self.affinity_timeout
        if ttl is None:
            if self.mode == "random":
                return backends[self._rng.randrange(len(backends))]
            i = self.index
            if i >= len(backends):
                i = 0
            self.index = i + 1
            return backends[i]
        now = self._clock()
        if not reset_affinity:
            entry = self.affinity.get(client_ip)
            if entry is not None and now - entry[1] < ttl:
                self.affinity[client_ip] = (entry[0], now)
                return entry[0]
        if self.mode == "random":
            backend = backends[self._rng.randrange(len(backends))]
        else:
            i = self.index
            if i >= len(backends):
                i = 0
            self.index = i + 1
            backend = backends[i]
        self.affinity[client_ip] = (backend, now)
        self._picks += 1
        if self._picks >= 1024:
            self._picks = 0
            self.sweep(now)
        return backend

    def sweep(self, now: float | None = None) -> int:
        """Forget expired affinity entries; returns how many were removed."""
        ttl = self.affinity_timeout
        if ttl is None:
            n = len(self.affinity)
            self.affinity.clear()
            return n
        now = self._clock() if now is None else now
        stale = [ip for ip, (_, t) in self.affinity.items() if now - t >= ttl]
        for ip in stale:
            del self.affinity[ip]
        return len(stale)
