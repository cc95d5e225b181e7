"""The compiled PolicyTable agrees with the reference engine, and ``allows`` is a cheap lookup.

Hypothesis builds random topologies and valid policies (every selector operator, one
and two-selector peers, ipBlocks with excepts over pod IPs, numeric, ranged, named and
protocol-only ports, defaulted and explicit policyTypes); for every pod pair and a few
outside addresses, the table's verdict and explanation must equal the engine's.
"""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kubelab.controller.netpol import Cluster, build_policy_table, evaluate, validate_network_policy
from kubelab.controller.netpol_cli import synthetic_objects
from kubelab.proxy.policy import Acl, AclEntry, IPBlock, PodRules, PolicyTable

NODE_IP = "10.0.0.1"
OUTSIDE = ("192.0.2.10", "192.0.2.200", NODE_IP, "10.0.0.2")
PORTS = ((80, "TCP"), (81, "TCP"), (80, "UDP"), (8080, "TCP"), (53, "SCTP"))
KEYS = ("app", "tier", "team")
VALUES = ("a", "b", "c")
PORT_NAMES = ("http", "dns", "alt")

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)


@st.composite
def selectors(draw: Any) -> dict[str, Any]:
    sel: dict[str, Any] = {}
    if draw(st.booleans()):
        sel["matchLabels"] = draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2))
    if draw(st.booleans()):
        exprs = []
        for _ in range(draw(st.integers(0, 2))):
            op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
            e: dict[str, Any] = {"key": draw(st.sampled_from(KEYS)), "operator": op}
            if op in ("In", "NotIn"):
                e["values"] = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True))
            exprs.append(e)
        sel["matchExpressions"] = exprs
    return sel


@st.composite
def peers(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["pod", "ns", "both", "ip"]))
    if kind == "ip":
        cidr = draw(st.sampled_from(["10.244.0.0/16", "10.244.1.0/24", "0.0.0.0/0", "192.0.2.0/24", "10.244.2.11/32"]))
        block: dict[str, Any] = {"cidr": cidr}
        if draw(st.booleans()):
            exc = {
                "10.244.0.0/16": ["10.244.1.11/32", "10.244.2.0/24"],
                "10.244.1.0/24": ["10.244.1.10/31"],
                "0.0.0.0/0": ["10.244.0.0/16", "192.0.2.128/25"],
                "192.0.2.0/24": ["192.0.2.128/25"],
                "10.244.2.11/32": [],
            }[cidr]
            if exc:
                block["except"] = exc
        return {"ipBlock": block}
    peer: dict[str, Any] = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = draw(selectors())
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = draw(selectors())
    return peer


@st.composite
def port_entries(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["num", "range", "named", "proto"]))
    entry: dict[str, Any] = {}
    if draw(st.booleans()):
        entry["protocol"] = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
    if kind == "num":
        entry["port"] = draw(st.sampled_from([80, 81, 8080, 53]))
    elif kind == "range":
        entry["port"] = draw(st.sampled_from([79, 80, 81]))
        entry["endPort"] = draw(st.sampled_from([81, 8080, 65535]))
    elif kind == "named":
        entry["port"] = draw(st.sampled_from(PORT_NAMES))
    return entry


@st.composite
def rules(draw: Any, peers_key: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if draw(st.booleans()):
        rule["ports"] = draw(st.lists(port_entries(), max_size=2))
    if draw(st.booleans()):
        rule[peers_key] = draw(st.lists(peers(), max_size=3))
    return rule


@st.composite
def policies(draw: Any, namespaces: list[str], index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(selectors())}
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(rules("from"), max_size=2))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(rules("to"), max_size=2))
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"], ["Egress", "Ingress"]]))
    if types is not None:
        spec["policyTypes"] = types
    return {
        "kind": "NetworkPolicy",
        "metadata": {"namespace": draw(st.sampled_from(namespaces)), "name": f"p{index}"},
        "spec": spec,
    }


@st.composite
def clusters(draw: Any) -> Cluster:
    namespaces = ["x", "y", "z"]
    nss = [{"kind": "Namespace", "metadata": {"name": n, "labels": draw(labels_st)}} for n in namespaces]
    pods = []
    for i, n in enumerate(namespaces):
        for j in range(draw(st.integers(1, 3))):
            ports = draw(
                st.lists(
                    st.tuples(st.sampled_from(PORT_NAMES), st.sampled_from([80, 81, 53, 8080]), st.sampled_from(["TCP", "UDP"])),
                    max_size=3,
                    unique_by=lambda t: t[0],
                )
            )
            pods.append(
                {
                    "kind": "Pod",
                    "metadata": {"namespace": n, "name": f"p{j}", "labels": draw(labels_st)},
                    "spec": {
                        "nodeName": "node-1",
                        "containers": [{"name": "c", "ports": [{"name": a, "containerPort": b, "protocol": c} for a, b, c in ports]}],
                    },
                    "status": {"podIP": f"10.244.{i + 1}.{10 + j}"},
                }
            )
    pols = [draw(policies(namespaces, k)) for k in range(draw(st.integers(0, 4)))]
    for p in pols:
        assume(validate_network_policy(p) == [])
    nodes = [{"kind": "Node", "metadata": {"name": "node-1"}, "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}}]
    return Cluster(nss, nodes, pods, pols)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(clusters())
def test_table_equals_engine_on_random_clusters(cluster):
    table = build_policy_table(cluster)
    wire = PolicyTable.from_json(json.loads(json.dumps(table.to_json())))
    ends: list[tuple[Any, str]] = [(p, p.ip) for p in cluster.pods] + [(ip, ip) for ip in OUTSIDE]
    for src, sip in ends:
        for dst, dip in ends:
            if isinstance(src, str) and isinstance(dst, str):
                continue
            for port, proto in PORTS:
                v = evaluate(cluster, src, dst, port, proto)
                assert table.allows(sip, dip, port, proto) == v.allowed, v
                assert table.check(sip, dip, port, proto) == (v.allowed, v.because)
                assert wire.allows(sip, dip, port, proto) == v.allowed
    ips = [ip for _, ip in ends]
    for port, proto in PORTS:
        for s, d, ok, because in table.check_many(ips, ips, port, proto):
            assert (ok, because) == table.check(s, d, port, proto)


def test_empty_table_allows_everything():
    t = PolicyTable()
    assert t.allows("10.0.0.1", "10.0.0.2", 80, "TCP")
    assert t.explain("10.0.0.1", "10.0.0.2", 80, "TCP").startswith("allowed")
    assert t.to_json() == {}
    assert PolicyTable.from_json({}) == t


def _table() -> PolicyTable:
    block = IPBlock("192.0.2.0/24", ("192.0.2.128/25",))
    ing = Acl(
        isolated_by=("x/p",),
        grants=(("x/p", "ingress[0].from[0]"), ("x/p", "ingress[1].from[0]"), ("x/p", "ingress[2]")),
        entries=(
            AclEntry(0, frozenset({"10.244.0.2"}), (("TCP", 80, 80),)),
            AclEntry(1, block, None),
            AclEntry(2, None, (("UDP", 1000, 2000),)),
        ),
    )
    return PolicyTable(
        pods={
            "10.244.0.1": PodRules("x/a", "n1", ("10.0.0.1",), ingress=ing),
            "10.244.0.2": PodRules("x/b", "n1", ("10.0.0.1",)),
        },
        nodes={"10.0.0.1": "n1"},
    )


def test_hand_built_table_lookups_and_explanations():
    t = _table()
    assert t.allows("10.244.0.2", "10.244.0.1", 80, "TCP")
    assert not t.allows("10.244.0.2", "10.244.0.1", 81, "TCP")
    assert t.allows("192.0.2.5", "10.244.0.1", 81, "TCP")
    assert not t.allows("192.0.2.130", "10.244.0.1", 81, "TCP")
    assert t.allows("203.0.113.1", "10.244.0.1", 1500, "UDP")
    assert not t.allows("203.0.113.1", "10.244.0.1", 2001, "UDP")
    assert t.allows("10.0.0.1", "10.244.0.1", 9, "TCP")  # its node
    assert t.allows("10.244.0.1", "10.244.0.1", 9, "TCP")  # itself
    assert t.explain("10.244.0.2", "10.244.0.1", 80, "TCP") == (
        "allowed: x/b egress: not isolated; x/a ingress: allowed by x/p ingress[0].from[0]"
    )
    assert t.explain("192.0.2.130", "10.244.0.1", 81, "TCP") == (
        "denied: x/a ingress: denied, isolated by x/p and no rule allows TCP/81 from ip:192.0.2.130"
    )
    assert t.explain("10.0.0.1", "10.244.0.1", 9, "TCP").startswith("allowed: node: ")
    assert t.isolated() == {"x/a": (True, False), "x/b": (False, False)}
    assert PolicyTable.from_json(json.loads(json.dumps(t.to_json()))) == t


def test_allows_is_a_cheap_lookup():
    """Report ns per call; the bound is generous (a shared 2-core CI box)."""
    objs = synthetic_objects(pods=1000, policies=200)
    by = lambda k: [o for o in objs if o["kind"] == k]  # noqa: E731
    cluster = Cluster(by("Namespace"), by("Node"), by("Pod"), by("NetworkPolicy"))
    table = build_policy_table(cluster)
    ips = [p.ip for p in cluster.pods]
    pairs = [(ips[i], ips[(i * 7919) % len(ips)]) for i in range(len(ips))]
    pairs += [(ip, "198.51.100.20") for ip in ips[:200]] + [("192.0.2.10", ip) for ip in ips[:200]]
    start = time.perf_counter()
    first = [table.allows(s, d, 8080, "TCP") for s, d in pairs]  # builds each ACL's per-port look-up
    warm = (time.perf_counter() - start) / len(pairs) * 1e9
    n = 0
    start = time.perf_counter()
    for _ in range(20):
        for s, d in pairs:
            table.allows(s, d, 8080, "TCP")
            n += 1
    per_call = (time.perf_counter() - start) / n * 1e9
    assert [table.allows(s, d, 8080, "TCP") for s, d in pairs] == first
    print(f"allows(): {per_call:.0f} ns per call over {n} calls, first pass {warm:.0f} ns (1,000 pods, 200 policies)")
    assert per_call < 20_000
