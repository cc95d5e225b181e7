"""Pure endpoint selection and load-balancing decisions (no sockets)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kubelab.proxy.balancer import DEFAULT_AFFINITY_TIMEOUT, DROP, REJECT, SERVE, Balancer, select_endpoints
from kubelab.proxy.table import Backend, Route


def B(ip: str, port: int = 80, **kw: object) -> Backend:
    return Backend(ip, port, **kw)  # type: ignore[arg-type]


def R(*backends: Backend, policy: str = "Cluster", kind: str = "ClusterIP") -> Route:
    return Route("ns/svc", "http", kind, tuple(backends), None, policy)


TERM = dict(ready=False, serving=True, terminating=True)
DEAD = dict(ready=False, serving=False, terminating=True)


@pytest.mark.parametrize(
    "route, node, action, ips",
    [
        (R(), "n1", REJECT, []),
        (R(B("a")), "n1", SERVE, ["a"]),
        (R(B("a"), B("b", ready=False, serving=False)), "n1", SERVE, ["a"]),
        # no ready endpoint: serving+terminating ones are the fallback
        (R(B("a", **TERM), B("b", ready=False, serving=False)), "n1", SERVE, ["a"]),
        # ready ones win over terminating ones
        (R(B("a", **TERM), B("b")), "n1", SERVE, ["b"]),
        # terminating and not serving: unusable -> REJECT
        (R(B("a", **DEAD)), "n1", REJECT, []),
        # not ready, not terminating, serving (e.g. unready but probe says serving): not usable
        (R(B("a", ready=False, serving=True)), "n1", REJECT, []),
        # Local: only this node's endpoints
        (R(B("a", node="n1"), B("b", node="n2"), policy="Local"), "n1", SERVE, ["a"]),
        # Local with endpoints elsewhere only: DROP, not REJECT
        (R(B("b", node="n2"), policy="Local", kind="NodePort"), "n1", DROP, []),
        # Local and nothing anywhere: REJECT
        (R(policy="Local"), "n1", REJECT, []),
        # Local: a local terminating endpoint is the fallback even if remote ready ones exist
        (R(B("a", node="n1", **TERM), B("b", node="n2"), policy="Local"), "n1", SERVE, ["a"]),
        # Cluster ignores nodes
        (R(B("a", node="n2"), B("b", node="n3")), "n1", SERVE, ["a", "b"]),
    ],
)
def test_select_endpoints(route: Route, node: str, action: str, ips: list[str]) -> None:
    sel = select_endpoints(route, node)
    assert sel.action == action
    assert sorted(b.ip for b in sel.backends) == ips
    assert sel.reason


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_round_robin_visits_every_backend_once_per_cycle() -> None:
    bs = [B("a"), B("b"), B("c")]
    bal = Balancer(bs, rng=random.Random(1))
    picks = [bal.pick("1.1.1.1").ip for _ in range(9)]  # type: ignore[union-attr]
    assert picks[:3] == picks[3:6] == picks[6:]
    assert sorted(picks[:3]) == ["a", "b", "c"]


def test_list_is_shuffled_on_change_and_only_on_change() -> None:
    orders = set()
    for seed in range(20):
        bal = Balancer([B(x) for x in "abcdef"], rng=random.Random(seed))
        orders.add(tuple(b.ip for b in bal.backends))
    assert len(orders) > 1  # shuffled, not sorted
    bal = Balancer([B(x) for x in "abcdef"], rng=random.Random(3))
    before = list(bal.backends)
    bal.pick("c")
    bal.pick("c")
    # same set in another order, and changed conditions: no reshuffle, index kept
    assert bal.update([B(x, node="n") for x in "fedcba"]) is False
    assert [b.ip for b in bal.backends] == [b.ip for b in before]
    assert bal.index == 2
    assert all(b.node == "n" for b in bal.backends)
    assert bal.update([B(x) for x in "abcdefg"]) is True
    assert bal.index == 0


def test_empty_balancer_picks_none() -> None:
    assert Balancer([]).pick("c") is None
    assert Balancer([], affinity_timeout=5).pick("c") is None


def test_random_mode_spreads() -> None:
    bal = Balancer([B("a"), B("b"), B("c")], mode="random", rng=random.Random(7))
    counts = Counter(bal.pick("c").ip for _ in range(3000))  # type: ignore[union-attr]
    assert set(counts) == {"a", "b", "c"} and min(counts.values()) > 800


def test_client_ip_affinity_sticks_refreshes_and_expires() -> None:
    clock = Clock()
    bal = Balancer([B("a"), B("b"), B("c")], affinity_timeout=10, rng=random.Random(0), clock=clock)
    first = bal.pick("10.0.0.1")
    for _ in range(5):
        clock.now += 9  # each hit refreshes lastUsed
        assert bal.pick("10.0.0.1") == first
    other = bal.pick("10.0.0.2")
    assert other != first  # round-robin moved on for a new client
    clock.now += 10  # expired
    assert bal.sweep() == 2
    assert bal.affinity == {}


def test_affinity_reset_skips_the_sticky_endpoint() -> None:
    bal = Balancer([B("a"), B("b")], affinity_timeout=100, rng=random.Random(0), clock=Clock())
    first = bal.pick("x")
    second = bal.pick("x", reset_affinity=True)
    assert second != first
    assert bal.pick("x") == second  # the new choice is the sticky one now


def test_affinity_dropped_for_removed_endpoint_and_default_timeout() -> None:
    bal = Balancer([B("a"), B("b")], affinity_timeout=0, rng=random.Random(0), clock=Clock())
    assert bal.affinity_timeout == DEFAULT_AFFINITY_TIMEOUT
    chosen = bal.pick("x")
    assert chosen is not None
    keep = [b for b in (B("a"), B("b")) if b.ip != chosen.ip]
    bal.update(keep, 0)
    assert "x" not in bal.affinity
    assert bal.pick("x") == keep[0]


def test_affinity_off_clears_table() -> None:
    bal = Balancer([B("a")], affinity_timeout=100, clock=Clock())
    bal.pick("x")
    bal.update([B("a")], None)
    assert bal.affinity == {}


def test_bad_mode() -> None:
    with pytest.raises(ValueError):
        Balancer([], mode="leastconn")
