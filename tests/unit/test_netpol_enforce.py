"""The netns enforcer with namespaces keyed by name (no inodes: the kernel reuses them),
exact ownership by the lab's prefix, and ``apply`` that hands the table to the enforcer's
own worker instead of writing rulesets while the controller waits.

The effect (``nft`` in a namespace) is a fake, so these run without root; the real thing is
tests/integration/test_netpol_enforce_recreate.py and test_netpol_netns_lab.py.
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
    "pod, netns, prefix, owns",
    [
        ("x/a", "kl-x_a", "kl-", True),
        ("x/a", "kl-yx_a", "kl-", False),  # suffix matching said yes: y x/a is not x/a
        ("x/a", "kl-l1234-x_a", "kl-", False),  # another lab's namespace
        ("x/a", "kl-l1234-x_a", "kl-l1234-", True),
        ("x/a", "kl-x_b", "kl-", False),
        ("x/a", "kl-y_a", "kl-", False),
        ("default/web-0", "kl-default_web-0", "kl-", True),
        ("default/web-0", "kl-default_web-01", "kl-", False),
        ("a/b", "kn-a_b", "kl-", False),
    ],
)
def test_pod_owns_netns_exactly(pod, netns, prefix, owns):
    assert pod_owns_netns(pod, netns, prefix) is owns


def test_ruleset_for_uses_the_prefix():
    t = table(a=DENY_ALL)
    assert ruleset_for(t, "kn-x_a", A, PROXIED, prefix="kn-") == pod_ruleset(t, A, proxied=PROXIED)
    assert ruleset_for(t, "kn-x_a", A, PROXIED) is None  # the default prefix is kl-
    assert ruleset_for(t, "kl-wx_a", A, PROXIED) is None


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


def test_targets_come_from_the_runtime_index_only():
    assert targets(table(), lambda ip: NS.get(ip) if ip != C else None) == {"kl-x_a": A, "kl-x_b": B}

    def boom(ip: str) -> str | None:
        raise KeyError(ip)

    assert targets(table(), boom) == {}


@pytest.mark.parametrize(
    "desired, applied, write, forget",
    [
        ({}, {}, {}, ()),
        ({"n": "r1"}, {}, {"n": "r1"}, ()),
        ({"n": "r1"}, {"n": "r1"}, {}, ()),
        ({"n": "r2"}, {"n": "r1"}, {"n": "r2"}, ()),
        ({}, {"n": "r1"}, {}, ("n",)),
        ({"a": "x", "b": "y"}, {"a": "x", "b": "z"}, {"b": "y"}, ()),
    ],
)
def test_plan_by_name(desired, applied, write, forget):
    p = plan(desired, applied)
    assert p.write == write and p.forget == forget


def test_proxied_cidrs_are_ipv4_only():
    import ipaddress

    assert proxied_cidrs([ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00::/108")],
                         ipaddress.ip_network("10.240.0.0/24")) == ("10.96.0.0/12", "10.240.0.0/24")
    assert proxied_cidrs(["10.96.0.0/12"], None) == ("10.96.0.0/12",)


# --------------------------------------------------------------------------- with a fake nft


@dataclass
class FakeNamespaces:
    """What ``nft -f`` was given in each namespace (a namespace re-created: ``held`` forgets it)."""

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


def enforcer(fake: FakeNamespaces, index: dict[str, str] | None = None, **kw) -> NetnsPolicyEnforcer:
    index = NS if index is None else index
    kw.setdefault("retry_interval", 3600)
    return NetnsPolicyEnforcer(index.get, PROXIED, load=fake.load, **kw)


async def apply(e: NetnsPolicyEnforcer, t: RouteTable) -> None:
    await e.apply(t)
    async with asyncio.timeout(5):
        await e.synced()


async def test_a_recreated_namespace_with_a_reused_inode_gets_its_rules_again():
    """The bug: keyed by (name, inode), a pod re-created under the same name whose new
    namespace got the old inode kept running without rules while applied() said they held."""
    fake = FakeNamespaces()
    e = enforcer(fake)
    await apply(e, routes(table(a=DENY_ALL)))
    assert "chain ingress" in fake.held["kl-x_a"]
    fake.held.pop("kl-x_a")  # pod deleted; the runtime builds kl-x_a afresh (same name, maybe same inode)
    fake.writes.clear()
    await e.pod_network_ready("kl-x_a", A)
    assert fake.writes == ["kl-x_a"] and "chain ingress" in fake.held["kl-x_a"]
    assert e.applied()["kl-x_a"] == fake.held["kl-x_a"]
    await e.close()


async def test_recreated_namespace_of_an_unselected_pod_that_had_rules_is_not_written():
    """A fresh namespace holds no table: default allow needs no nft run even if the old one had rules."""
    fake = FakeNamespaces()
    e = enforcer(fake)
    await apply(e, routes(table(a=DENY_ALL)))
    await apply(e, routes(table(), 2))  # policy gone: the old namespace was emptied explicitly
    assert fake.writes == ["kl-x_a", "kl-x_a"]
    fake.held.pop("kl-x_a")
    fake.writes.clear()
    await e.pod_network_ready("kl-x_a", A)
    assert fake.writes == [] and e.applied()["kl-x_a"] == empty_ruleset()
    await e.close()


async def test_apply_returns_before_the_writes():
    fake = FakeNamespaces(gate=asyncio.Event())
    e = enforcer(fake)
    async with asyncio.timeout(5):
        await e.apply(routes(table(a=DENY_ALL, b=DENY_ALL)))  # the controller does not wait for nft
    assert fake.writes == []
    fake.gate.set()
    async with asyncio.timeout(5):
        await e.synced()
    assert sorted(fake.writes) == ["kl-x_a", "kl-x_b"]
    await e.close()


async def test_a_burst_of_tables_is_coalesced():
    fake = FakeNamespaces(gate=asyncio.Event())
    e = enforcer(fake, {A: "kl-x_a"})
    await e.apply(routes(table(a=DENY_ALL), 1))
    async with asyncio.timeout(5):
        while fake.in_flight < 1:
            await asyncio.sleep(0)
    for g in range(2, 12):  # ten tables while the first write is in flight
        await e.apply(routes(table(a=FROM_B if g % 2 else DENY_ALL), g))
    fake.gate.set()
    async with asyncio.timeout(5):
        await e.synced()
    assert fake.writes == ["kl-x_a", "kl-x_a"]  # the first, then only the latest
    assert fake.held["kl-x_a"] == pod_ruleset(table(a=FROM_B), A, proxied=PROXIED)
    await e.close()


async def test_writes_run_concurrently_but_bounded():
    many = {f"10.244.1.{i}": f"kl-x_p{i}" for i in range(10)}
    policy = PolicyTable(pods={ip: PodRules(f"x/p{i}", "n1", (), DENY_ALL) for i, ip in enumerate(many)})
    fake = FakeNamespaces(gate=asyncio.Event())
    e = enforcer(fake, many, concurrency=3)
    await e.apply(routes(policy))
    async with asyncio.timeout(5):
        while fake.in_flight < 3:
            await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    assert fake.in_flight == 3
    fake.gate.set()
    async with asyncio.timeout(5):
        await e.synced()
    assert fake.max_in_flight == 3 and len(fake.writes) == 10
    await e.close()


async def test_pod_network_ready_does_not_queue_behind_a_full_pass():
    many = {f"10.244.1.{i}": f"kl-x_p{i}" for i in range(5)}
    pods = {ip: PodRules(f"x/p{i}", "n1", (), DENY_ALL) for i, ip in enumerate(many)}
    pods[A] = PodRules("x/a", "n1", (), DENY_ALL)
    gate = asyncio.Event()
    held: dict[str, str] = {}

    async def load(netns: str, text: str) -> None:
        if netns != "kl-x_a":
            await gate.wait()  # every slot of the pass hangs
        held[netns] = text

    e = NetnsPolicyEnforcer({**many, A: "kl-x_a"}.get, PROXIED, load=load, concurrency=1, retry_interval=3600)
    await e.apply(routes(PolicyTable(pods=pods)))
    for _ in range(5):
        await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await e.pod_network_ready("kl-x_a", A)
    assert "chain ingress" in held["kl-x_a"]
    gate.set()
    await e.close()


async def test_failures_are_retried_by_the_worker_with_back_off():
    fake = FakeNamespaces(fail={"kl-x_a"})
    e = enforcer(fake, retry_interval=0.01)
    await apply(e, routes(table(a=DENY_ALL)))
    assert e.failures >= 1
    fake.fail.clear()
    async with asyncio.timeout(5):
        while "kl-x_a" not in fake.held:
            await asyncio.sleep(0.005)
    assert "chain ingress" in fake.held["kl-x_a"]
    await e.close()


async def test_a_new_table_ends_the_back_off():
    fake = FakeNamespaces(fail={"kl-x_a"})
    e = enforcer(fake, retry_interval=3600)
    await apply(e, routes(table(a=DENY_ALL)))
    fake.fail.clear()
    await apply(e, routes(table(a=DENY_ALL), 2))  # the same policy: only the failed one is written
    assert fake.writes == ["kl-x_a"]
    await e.close()


async def test_pod_network_ready_waits_for_the_first_table():
    """After a restart with stored policies no table may have arrived yet: wait for one."""
    fake = FakeNamespaces()
    e = enforcer(fake, {}, settle_timeout=30)
    ready = asyncio.create_task(e.pod_network_ready("kl-x_a", A))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not ready.done()
    await e.apply(routes(table(a=DENY_ALL)))
    async with asyncio.timeout(5):
        await ready
    assert "chain ingress" in fake.held["kl-x_a"]
    await e.close()


async def test_pod_network_ready_without_any_table_times_out_to_default_allow(caplog):
    fake = FakeNamespaces()
    e = enforcer(fake, settle_timeout=0.01)
    await e.pod_network_ready("kl-x_a", A)
    assert fake.held == {} and e.applied() == {"kl-x_a": empty_ruleset()}
    assert "starts non-isolated" in caplog.text
    await e.close()


async def test_pod_network_ready_refuses_to_start_an_isolated_pod_unprotected():
    fake = FakeNamespaces(fail={"kl-x_a", "kl-x_b"})
    e = enforcer(fake, {})
    await apply(e, routes(table(a=DENY_ALL)))
    with pytest.raises(EnforceError, match="unprotected"):
        await e.pod_network_ready("kl-x_a", A)
    await e.pod_network_ready("kl-x_b", B)
    await e.close()


async def test_gone_pods_are_forgotten_with_their_locks():
    fake = FakeNamespaces()
    index = dict(NS)
    e = enforcer(fake, index)
    await apply(e, routes(table(a=DENY_ALL, b=DENY_ALL)))
    assert set(e._locks) >= {"kl-x_a", "kl-x_b"}
    del index[B]  # x/b deleted: the runtime dropped it from its index, the table follows
    await apply(e, routes(PolicyTable(pods={A: table(a=DENY_ALL).pods[A], C: table().pods[C]}), 2))
    assert "kl-x_b" not in e.applied() and "kl-x_b" not in e._locks and "kl-x_b" not in e._written
    await e.close()


async def test_closed_enforcer_does_nothing_and_its_worker_is_gone():
    fake = FakeNamespaces()
    e = enforcer(fake)
    await apply(e, routes(table()))
    worker = e._worker
    await e.close()
    assert worker is not None and worker.done() and e._worker is None
    await e.apply(routes(table(a=DENY_ALL)))
    with pytest.raises(EnforceError):  # a pod started now would run with no rules at all
        await e.pod_network_ready("kl-x_a", A)
    assert fake.writes == []


# -- the behaviour tests/unit/test_netpol_enforce.py checked, with the new API


async def test_apply_writes_every_pod_then_only_what_changed():
    fake = FakeNamespaces()
    e = enforcer(fake)
    await apply(e, routes(table()))
    # no pod is selected: fresh namespaces hold no kubelab table, which is default allow already
    assert fake.writes == [] and e.applied() == {ns: empty_ruleset() for ns in NS.values()}
    await apply(e, routes(table(b=DENY_ALL), 2))
    assert fake.writes == ["kl-x_b"]
    fake.writes.clear()
    await apply(e, routes(table(b=DENY_ALL), 3))  # routes changed, policy didn't
    assert fake.writes == []
    await apply(e, routes(table(a=FROM_B, b=DENY_ALL), 3))
    assert fake.writes == ["kl-x_a"]
    assert 'ip saddr @peers0_v4 meta l4proto tcp th dport 80 accept comment "x/web ingress[0].from[0]"' in fake.held["kl-x_a"]
    fake.writes.clear()
    await apply(e, routes(table(), 4))  # the policies are deleted: x/a and x/b are opened again
    assert sorted(fake.writes) == ["kl-x_a", "kl-x_b"]
    assert fake.held == {"kl-x_a": empty_ruleset(), "kl-x_b": empty_ruleset()}
    await e.close()


async def test_pods_without_a_namespace_are_skipped():
    fake = FakeNamespaces()
    e = enforcer(fake, {A: "kl-x_a"})  # x/b and y/a are simulated pods (no netns)
    await apply(e, routes(table(a=DENY_ALL, b=DENY_ALL)))
    assert fake.writes == ["kl-x_a"]
    await e.close()


async def test_failure_is_logged_not_raised_and_retried_on_the_next_table(caplog):
    fake = FakeNamespaces(fail={"kl-x_a"})
    e = enforcer(fake)
    await apply(e, routes(table(a=DENY_ALL, b=DENY_ALL)))
    assert fake.writes == ["kl-x_b"] and e.failures == 1
    assert "kl-x_a" in caplog.text and "will retry" in caplog.text
    fake.fail.clear()
    await apply(e, routes(table(a=DENY_ALL, b=DENY_ALL), 2))
    assert fake.writes == ["kl-x_b", "kl-x_a"]
    await e.close()


async def test_ip_reused_by_a_new_pod_gets_no_rules_of_the_old_one():
    fake = FakeNamespaces()
    e = enforcer(fake, {A: "kl-x_new"})
    await apply(e, routes(table(a=DENY_ALL)))  # the table still says A is x/a
    assert fake.writes == []
    await e.close()


async def test_pod_network_ready_writes_the_known_rules_before_returning():
    fake = FakeNamespaces()
    index: dict[str, str] = {}
    e = enforcer(fake, index)
    await apply(e, routes(table(a=DENY_ALL)))
    assert fake.writes == []
    index[A] = "kl-x_a"  # the runtime indexes the namespace, then calls the hook
    await e.pod_network_ready("kl-x_a", A)
    assert fake.writes == ["kl-x_a"] and "chain ingress" in fake.held["kl-x_a"]
    await e.close()


async def test_pod_network_ready_waits_for_a_table_that_knows_the_pod():
    fake = FakeNamespaces()
    e = enforcer(fake, {A: "kl-x_a"}, settle_timeout=30)
    await apply(e, routes(PolicyTable(pods={B: table().pods[B]})))  # x/a has no IP in the registry yet
    ready = asyncio.create_task(e.pod_network_ready("kl-x_a", A))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not ready.done() and "kl-x_a" not in fake.held
    await e.apply(routes(table(a=DENY_ALL), 2))
    async with asyncio.timeout(5):
        await ready
        await e.synced()
    assert fake.writes.count("kl-x_a") == 1 and "chain ingress" in fake.held["kl-x_a"]
    await e.close()


async def test_rulesets_are_compiled_again_only_for_pods_whose_rules_changed(monkeypatch):
    import kubelab.runtime.netpol_enforce as mod

    compiled: list[str] = []
    real = mod.ruleset_for

    def counting(policy, netns, ip, proxied, name=mod.TABLE, prefix="kl-"):
        compiled.append(netns)
        return real(policy, netns, ip, proxied, name, prefix)

    monkeypatch.setattr(mod, "ruleset_for", counting)
    fake = FakeNamespaces()
    e = enforcer(fake)
    await apply(e, routes(table(a=DENY_ALL)))
    assert sorted(compiled) == ["kl-x_a", "kl-x_b", "kl-y_a"]
    compiled.clear()
    await apply(e, routes(table(a=DENY_ALL), 2))
    assert compiled == []
    await apply(e, routes(table(a=DENY_ALL, b=FROM_B), 3))
    assert compiled == ["kl-x_b"] and fake.writes == ["kl-x_a", "kl-x_b"]
    await e.close()


async def test_a_namespace_nft_ran_in_is_emptied_explicitly():
    fake = FakeNamespaces(fail={"kl-x_a"})
    e = enforcer(fake)
    await apply(e, routes(table(a=DENY_ALL)))
    fake.fail.clear()
    await apply(e, routes(table(), 2))
    assert fake.writes == ["kl-x_a"] and fake.held["kl-x_a"] == empty_ruleset()
    await e.close()


async def test_retries_back_off_and_success_resets_it():
    fake = FakeNamespaces(fail={"kl-x_a"})
    e = enforcer(fake, retry_interval=1.0)
    await apply(e, routes(table(a=DENY_ALL)))
    assert e._retry_delay == 2.0  # the next retry waits 2 s, then 4 s ... 30 s
    fake.fail.clear()
    await apply(e, routes(table(a=DENY_ALL), 2))
    assert e._retry_delay == 1.0
    await e.close()
