"""The netns enforcer's decisions: which namespace gets which ruleset, and when it is rewritten.

The effects (``nft`` in a namespace, the namespace's inode) are replaced by fakes, so
these run without root; the real thing is tests/integration/test_netpol_netns_lab.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from kubelab.controller.netpol_nft import pod_ruleset
from kubelab.proxy.policy import Acl, AclEntry, PodRules, PolicyTable
from kubelab.proxy.table import RouteTable
from kubelab.runtime.netpol_enforce import (
    EnforceError,
    NetnsPolicyEnforcer,
    empty_ruleset,
    plan,
    pod_owns_netns,
    proxied_cidrs,
    ruleset_for,
    targets,
)

PROXIED = ("10.96.0.0/16", "10.240.0.0/24")
A, B, C = "10.244.0.2", "10.244.0.3", "10.244.0.4"
NS = {A: "kl-x_a", B: "kl-x_b", C: "kl-y_a"}
DENY_ALL = Acl(("x/deny",), (), ())
FROM_B = Acl(("x/web",), (("x/web", "ingress[0].from[0]"),), (AclEntry(0, frozenset({B}), (("TCP", 80, 80),)),))


def table(**ingress: Acl | None) -> PolicyTable:
    """Pods x/a, x/b, y/a on node n1 (10.244.0.1); keyword = pod name under x/ -> its ingress ACL."""
    pods = {
        A: PodRules("x/a", "n1", ("10.244.0.1",), ingress.get("a")),
        B: PodRules("x/b", "n1", ("10.244.0.1",), ingress.get("b")),
        C: PodRules("y/a", "n1", ("10.244.0.1",)),
    }
    return PolicyTable(pods=pods, nodes={"10.244.0.1": "n1"})


def routes(policy: PolicyTable, generation: int = 1) -> RouteTable:
    return RouteTable(generation, {}, policy)


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    "pod, netns, owns",
    [
        ("x/a", "kl-x_a", True),
        ("x/a", "kl-l1234-x_a", True),
        ("x/a", "kl-x_b", False),
        ("x/a", "kl-y_a", False),
        ("default/web-0", "kl-default_web-0", True),
        ("default/web-0", "kl-default_web-01", False),
    ],
)
def test_pod_owns_netns(pod, netns, owns):
    assert pod_owns_netns(pod, netns) is owns


def test_empty_ruleset_is_what_an_unselected_pod_compiles_to():
    assert empty_ruleset() == pod_ruleset(table(), A)
    assert empty_ruleset().startswith("table inet kubelab_netpol\ndelete table inet kubelab_netpol\n")


def test_ruleset_for_unknown_pods_is_none():
    t = table(a=DENY_ALL)
    assert ruleset_for(None, "kl-x_a", A, PROXIED) is None  # no table yet
    assert ruleset_for(t, "kl-x_z", "10.244.0.99", PROXIED) is None  # IP not in the table yet
    assert ruleset_for(t, "kl-x_z", A, PROXIED) is None  # A still belongs to x/a in this table
    text = ruleset_for(t, "kl-x_a", A, PROXIED)
    assert text == pod_ruleset(t, A, proxied=PROXIED)
    assert "chain ingress" in text
    egress = PolicyTable(pods={A: PodRules("x/a", "n1", ("10.244.0.1",), None, DENY_ALL)})
    text = ruleset_for(egress, "kl-x_a", A, PROXIED)
    assert 'ip daddr { 10.240.0.0/24, 10.96.0.0/16 } accept comment "Service VIPs' in text  # the proxy enforces those


def test_targets_use_the_runtime_index_then_pods_being_started():
    t = table()
    got = targets(t, lambda ip: NS.get(ip) if ip != C else None, {C: "kl-y_a", "10.9.9.9": "kl-z_z"})
    assert got == {"kl-x_a": A, "kl-x_b": B, "kl-y_a": C}  # 10.9.9.9 isn't in the table


def test_targets_survive_a_broken_index():
    def boom(ip: str) -> str | None:
        raise KeyError(ip)

    assert targets(table(), boom, {A: "kl-x_a"}) == {"kl-x_a": A}


@pytest.mark.parametrize(
    "desired, applied, write, forget",
    [
        ({}, {}, {}, ()),
        ({("n", 1): "r1"}, {}, {("n", 1): "r1"}, ()),
        ({("n", 1): "r1"}, {("n", 1): "r1"}, {}, ()),  # unchanged: nothing to do
        ({("n", 1): "r2"}, {("n", 1): "r1"}, {("n", 1): "r2"}, ()),  # changed
        ({("n", 2): "r1"}, {("n", 1): "r1"}, {("n", 2): "r1"}, (("n", 1),)),  # recreated netns
        ({}, {("n", 1): "r1"}, {}, (("n", 1),)),  # pod gone
        ({("a", 1): "x", ("b", 1): "y"}, {("a", 1): "x", ("b", 1): "z"}, {("b", 1): "y"}, ()),
    ],
)
def test_plan(desired, applied, write, forget):
    p = plan(desired, applied)
    assert p.write == write and p.forget == forget


def test_proxied_cidrs():
    import ipaddress

    assert proxied_cidrs([ipaddress.ip_network("10.96.0.0/12")], ipaddress.ip_network("10.240.0.0/24")) == (
        "10.96.0.0/12", "10.240.0.0/24")
    assert proxied_cidrs(["10.96.0.0/12"], None) == ("10.96.0.0/12",)


# --------------------------------------------------------------------------- the enforcer, with fake effects


@dataclass
class FakeNamespaces:
    """Namespaces that exist (name -> inode) and what ``nft -f`` was given in each."""

    inodes: dict[str, int] = field(default_factory=lambda: {ns: i + 100 for i, ns in enumerate(NS.values())})
    held: dict[str, str] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)
    gate: asyncio.Event | None = None
    in_flight: int = 0
    max_in_flight: int = 0

    async def load(self, netns: str, text: str) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if netns in self.fail:
                raise EnforceError(f"nft in {netns}: Error: boom")
            self.held[netns] = text
            self.writes.append(netns)
        finally:
            self.in_flight -= 1

    def inode(self, netns: str) -> int | None:
        return self.inodes.get(netns)


def enforcer(fake: FakeNamespaces, index: dict[str, str] | None = None, **kw) -> NetnsPolicyEnforcer:
    index = NS if index is None else index
    kw.setdefault("retry_interval", 3600)  # no background retry unless a test wants one
    return NetnsPolicyEnforcer(index.get, PROXIED, load=fake.load, inode=fake.inode, **kw)


async def test_apply_writes_every_pod_then_only_what_changed():
    fake = FakeNamespaces()
    e = enforcer(fake)
    await e.apply(routes(table()))
    # no pod is selected: fresh namespaces hold no kubelab table, which is default allow already
    assert fake.writes == [] and e.applied() == {ns: empty_ruleset() for ns in NS.values()}
    await e.apply(routes(table(b=DENY_ALL), 2))
    assert fake.writes == ["kl-x_b"]
    fake.writes.clear()
    await e.apply(routes(table(b=DENY_ALL), 3))  # routes changed, policy didn't
    assert fake.writes == []
    await e.apply(routes(table(a=FROM_B, b=DENY_ALL), 3))
    assert fake.writes == ["kl-x_a"]
    assert fake.held["kl-x_a"] == pod_ruleset(table(a=FROM_B), A, proxied=PROXIED)
    assert 'ip saddr @peers0_v4 meta l4proto tcp th dport 80 accept comment "x/web ingress[0].from[0]"' in fake.held["kl-x_a"]
    fake.writes.clear()
    await e.apply(routes(table(), 4))  # the policies are deleted: x/a and x/b are opened again
    assert sorted(fake.writes) == ["kl-x_a", "kl-x_b"]
    assert fake.held == {"kl-x_a": empty_ruleset(), "kl-x_b": empty_ruleset()}
    assert e.applied() == {ns: empty_ruleset() for ns in NS.values()}
    await e.close()


async def test_pods_without_a_namespace_are_skipped():
    fake = FakeNamespaces()
    e = enforcer(fake, {A: "kl-x_a"})  # x/b and y/a are simulated pods (no netns)
    await e.apply(routes(table(a=DENY_ALL, b=DENY_ALL)))
    assert fake.writes == ["kl-x_a"]
    await e.close()


async def test_a_namespace_that_vanished_is_skipped():
    fake = FakeNamespaces()
    del fake.inodes["kl-x_b"]  # the runtime removed it between the index and the write
    e = enforcer(fake)
    await e.apply(routes(table(a=DENY_ALL, b=DENY_ALL)))
    assert fake.writes == ["kl-x_a"]
    await e.close()


async def test_failure_is_logged_not_raised_and_retried_on_the_next_apply(caplog):
    fake = FakeNamespaces(fail={"kl-x_a"})
    e = enforcer(fake)
    await e.apply(routes(table(a=DENY_ALL, b=DENY_ALL)))  # must not raise into the controller
    assert fake.writes == ["kl-x_b"] and e.failures == 1
    assert "kl-x_a" in caplog.text and "will retry" in caplog.text
    fake.fail.clear()
    await e.apply(routes(table(a=DENY_ALL, b=DENY_ALL), 2))  # same policy: x/a is retried, x/b not rewritten
    assert fake.writes == ["kl-x_b", "kl-x_a"]
    assert "chain ingress" in fake.held["kl-x_a"]
    await e.close()


async def test_failure_is_retried_without_a_new_table():
    fake = FakeNamespaces(fail={"kl-x_a"})
    e = enforcer(fake, retry_interval=0.01)
    await e.apply(routes(table(a=DENY_ALL)))
    fake.fail.clear()
    async with asyncio.timeout(5):
        while "kl-x_a" not in fake.held:
            await asyncio.sleep(0.005)
    assert "chain ingress" in fake.held["kl-x_a"]
    await e.close()


async def test_a_recreated_namespace_gets_its_rules_again():
    fake = FakeNamespaces()
    e = enforcer(fake)
    await e.apply(routes(table(a=DENY_ALL)))
    fake.writes.clear()
    fake.inodes["kl-x_a"] = 999  # pod deleted and created again under the same name
    fake.held.pop("kl-x_a")
    await e.apply(routes(table(a=DENY_ALL), 2))
    assert fake.writes == ["kl-x_a"] and "chain ingress" in fake.held["kl-x_a"]
    await e.close()


async def test_writes_run_concurrently_but_bounded():
    many = {f"10.244.1.{i}": f"kl-x_p{i}" for i in range(10)}
    policy = PolicyTable(pods={ip: PodRules(f"x/p{i}", "n1", (), DENY_ALL) for i, ip in enumerate(many)})
    fake = FakeNamespaces(inodes={ns: i for i, ns in enumerate(many.values())}, gate=asyncio.Event())
    e = enforcer(fake, many, concurrency=3)
    task = asyncio.create_task(e.apply(routes(policy)))
    async with asyncio.timeout(5):
        while fake.in_flight < 3:
            await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)  # give a fourth write every chance to start
    assert fake.in_flight == 3
    fake.gate.set()
    await task
    assert fake.max_in_flight == 3 and len(fake.writes) == 10
    await e.close()


async def test_the_latest_table_wins_when_applies_overlap():
    fake = FakeNamespaces(gate=asyncio.Event())
    e = enforcer(fake, {A: "kl-x_a"})
    first = asyncio.create_task(e.apply(routes(table(a=DENY_ALL), 1)))
    async with asyncio.timeout(5):
        while fake.in_flight < 1:
            await asyncio.sleep(0)
    second = asyncio.create_task(e.apply(routes(table(a=FROM_B), 2)))
    await asyncio.sleep(0)
    fake.gate.set()
    await asyncio.gather(first, second)
    assert fake.held["kl-x_a"] == pod_ruleset(table(a=FROM_B), A, proxied=PROXIED)
    await e.close()


async def test_ip_reused_by_a_new_pod_gets_no_rules_of_the_old_one():
    fake = FakeNamespaces(inodes={"kl-x_new": 7})
    e = enforcer(fake, {A: "kl-x_new"})
    await e.apply(routes(table(a=DENY_ALL)))  # the table still says A is x/a
    assert fake.writes == []
    await e.close()


# -- pod_network_ready


async def test_pod_network_ready_writes_the_known_rules_before_returning():
    fake = FakeNamespaces()
    e = enforcer(fake, {})
    await e.apply(routes(table(a=DENY_ALL)))
    assert fake.writes == []  # no pod has a namespace in the runtime's index
    await e.pod_network_ready("kl-x_a", A)
    assert fake.writes == ["kl-x_a"] and "chain ingress" in fake.held["kl-x_a"]
    await e.close()


async def test_pod_network_ready_without_any_table_is_default_allow():
    fake = FakeNamespaces()
    e = enforcer(fake)
    await e.pod_network_ready("kl-x_a", A)
    assert fake.held == {} and e.applied() == {"kl-x_a": empty_ruleset()}  # nothing to write in a fresh netns
    await e.apply(routes(table(a=DENY_ALL)))  # the first table isolates it
    assert "chain ingress" in fake.held["kl-x_a"]
    await e.close()


async def test_pod_network_ready_waits_for_a_table_that_knows_the_pod():
    fake = FakeNamespaces()
    e = enforcer(fake, {}, settle_timeout=30)
    only_b = PolicyTable(pods={B: table().pods[B]})
    await e.apply(routes(only_b))  # x/a has no IP in the registry yet
    ready = asyncio.create_task(e.pod_network_ready("kl-x_a", A))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not ready.done() and "kl-x_a" not in fake.held
    await e.apply(routes(table(a=DENY_ALL), 2))  # the runtime published status.podIP
    async with asyncio.timeout(5):
        await ready
    assert fake.writes.count("kl-x_a") == 1 and "chain ingress" in fake.held["kl-x_a"]
    await e.close()


async def test_pod_network_ready_gives_up_waiting_with_default_allow(caplog):
    fake = FakeNamespaces()
    e = enforcer(fake, {}, settle_timeout=0.01)
    await e.apply(routes(PolicyTable()))
    await e.pod_network_ready("kl-x_a", A)
    assert fake.held == {} and e.applied() == {"kl-x_a": empty_ruleset()}
    assert "starts non-isolated" in caplog.text
    await e.close()


async def test_pod_network_ready_refuses_to_start_an_isolated_pod_unprotected():
    fake = FakeNamespaces(fail={"kl-x_a", "kl-x_b"})
    e = enforcer(fake, {})
    await e.apply(routes(table(a=DENY_ALL)))
    with pytest.raises(EnforceError, match="unprotected"):
        await e.pod_network_ready("kl-x_a", A)
    await e.pod_network_ready("kl-x_b", B)  # not selected: nothing to enforce, it may start
    await e.close()


async def test_closed_enforcer_does_nothing():
    fake = FakeNamespaces()
    e = enforcer(fake)
    await e.close()
    await e.apply(routes(table(a=DENY_ALL)))
    await e.pod_network_ready("kl-x_a", A)
    assert fake.writes == []


def test_it_is_a_route_sink():
    from kubelab.controller.config import LabConfig
    from kubelab.controller.manager import ControllerManager
    from kubelab.controller.sinks import Sink

    e = NetnsPolicyEnforcer(lambda ip: None, PROXIED)
    assert isinstance(e, Sink) and e.what == "routes"
    ControllerManager(None, LabConfig(state_dir=None), [e])  # raises for a sink it can't route


async def test_rulesets_are_compiled_again_only_for_pods_whose_rules_changed(monkeypatch):
    import kubelab.runtime.netpol_enforce as mod

    compiled: list[str] = []
    real = mod.ruleset_for

    def counting(policy, netns, ip, proxied, name=mod.TABLE):
        compiled.append(netns)
        return real(policy, netns, ip, proxied, name)

    monkeypatch.setattr(mod, "ruleset_for", counting)
    fake = FakeNamespaces()
    e = enforcer(fake)
    await e.apply(routes(table(a=DENY_ALL)))
    assert sorted(compiled) == ["kl-x_a", "kl-x_b", "kl-y_a"]
    compiled.clear()
    await e.apply(routes(table(a=DENY_ALL), 2))  # a new, equal table (the controller compiled again)
    assert compiled == []
    await e.apply(routes(table(a=DENY_ALL, b=FROM_B), 3))
    assert compiled == ["kl-x_b"] and fake.writes == ["kl-x_a", "kl-x_b"]
    await e.close()


async def test_a_namespace_nft_ran_in_is_emptied_explicitly():
    """Default allow is free only where nft never ran: after a failed (or any) write the
    enforcer can't assume the namespace is empty, and writes the empty table."""
    fake = FakeNamespaces(fail={"kl-x_a"})
    e = enforcer(fake)
    await e.apply(routes(table(a=DENY_ALL)))
    fake.fail.clear()
    await e.apply(routes(table(), 2))
    assert fake.writes == ["kl-x_a"] and fake.held["kl-x_a"] == empty_ruleset()
    await e.close()


async def test_retries_back_off():
    fake = FakeNamespaces(fail={"kl-x_a"})
    e = enforcer(fake, retry_interval=1.0)
    await e.apply(routes(table(a=DENY_ALL)))
    assert e._retry is not None and e._retry_delay == 2.0  # the next retry waits 2 s, then 4 s ...
    fake.fail.clear()
    await e.apply(routes(table(a=DENY_ALL), 2))
    assert e._retry_delay == 1.0  # success resets it
    await e.close()
