"""Every public NetworkPolicy case (tests/data/netpol-cases.json) through the engine and the table.

Each probe is checked three ways: the reference engine's verdict (and, for node and
loopback probes, its plain-rule verdict ``rules_verdict``), the compiled PolicyTable's
``allows`` (what the proxy enforces), and the table's explanation, which must name the
same policy and rule as the engine. The invalid policies must be refused with the
field the reason talks about.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from kubelab.controller.netpol import Cluster, build_policy_table, evaluate, validate_network_policy
from kubelab.controller.netpol_cli import endpoints, write_tables
from kubelab.proxy.policy import PolicyTable
from tests.helpers import load_netpol_cases, netpol_cluster, netpol_topology

DATA = load_netpol_cases()
CASES = {c["id"]: c for c in DATA["cases"]}


def case_objects(case: dict[str, Any]) -> list[dict[str, Any]]:
    """The case's topology and policies as the Kubernetes objects a user would apply."""
    return [*netpol_topology(DATA), *case["policies"]]


def cluster_for(case: dict[str, Any]) -> Cluster:
    return netpol_cluster(DATA, case)


def ip_of(cluster: Cluster, name: str) -> str:
    if name.startswith("ip:"):
        return name[3:]
    ip = cluster.pod_by_key[name].ip
    assert ip is not None
    return ip


def test_the_suite_is_what_we_think_it_is():
    assert len(DATA["cases"]) == DATA["stats"]["cases"]
    assert sum(len(c["probes"]) for c in DATA["cases"]) == DATA["stats"]["probes"]
    assert len(DATA["invalid_policies"]) >= 14


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_engine_matches_every_probe(case_id):
    case = CASES[case_id]
    cluster = cluster_for(case)
    wrong = []
    for p in case["probes"]:
        v = evaluate(cluster, cluster.endpoint(p["from"]), cluster.endpoint(p["to"]), p["port"], p["protocol"])
        if v.allowed != p["allowed"]:
            wrong.append((p, v.because))
        if "rules_verdict" in p and v.rules_allowed != p["rules_verdict"]:
            wrong.append((p, "rules_verdict", v.because))
        if p.get("note") and v.exemption != p["note"]:
            wrong.append((p, "exemption", v.exemption))
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_compiled_table_matches_every_probe_and_names_the_same_rule(case_id):
    case = CASES[case_id]
    cluster = cluster_for(case)
    table = build_policy_table(cluster)
    wrong = []
    for p in case["probes"]:
        src, dst = ip_of(cluster, p["from"]), ip_of(cluster, p["to"])
        allowed = table.allows(src, dst, p["port"], p["protocol"])
        ok, because = table.check(src, dst, p["port"], p["protocol"])
        v = evaluate(cluster, cluster.endpoint(p["from"]), cluster.endpoint(p["to"]), p["port"], p["protocol"])
        if allowed != p["allowed"] or ok != allowed:
            wrong.append((p, allowed, because))
        if because != v.because:
            wrong.append((p, because, v.because))
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_table_survives_json_round_trip(case_id):
    case = CASES[case_id]
    cluster = cluster_for(case)
    table = build_policy_table(cluster)
    wire = json.loads(json.dumps(table.to_json()))
    again = PolicyTable.from_json(wire)
    assert again == table
    for p in case["probes"]:
        src, dst = ip_of(cluster, p["from"]), ip_of(cluster, p["to"])
        assert again.check(src, dst, p["port"], p["protocol"]) == table.check(src, dst, p["port"], p["protocol"])


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_truth_tables_printed_like_upstream(case_id):
    case = CASES[case_id]
    cluster = cluster_for(case)
    table = build_policy_table(cluster)
    for key, expected in case["truth_tables"].items():
        proto, port = key.split("/")
        out = io.StringIO()
        write_tables(out, table, endpoints(cluster, table), [], [(int(port), proto)])
        lines = out.getvalue().splitlines()
        assert lines[0] == f"{proto}/{port}:"
        assert lines[1 : 1 + len(expected)] == expected


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_case_policies_are_valid(case_id):
    for pol in CASES[case_id]["policies"]:
        assert validate_network_policy(pol) == [], pol["metadata"]["name"]


# The field each invalid case must be refused on, and a word its message must contain.
INVALID_FIELDS = {
    "endport-with-named-port": ("spec.ingress[0].ports[0].endPort", "non-numeric"),
    "endport-without-port": ("spec.ingress[0].ports[0].endPort", "not specified"),
    "endport-below-port": ("spec.ingress[0].ports[0].endPort", "greater than or equal"),
    "port-out-of-range": ("spec.ingress[0].ports[0].port", "between 1 and 65535"),
    "bad-protocol": ("spec.ingress[0].ports[0].protocol", "Unsupported value"),
    "bad-named-port": ("spec.ingress[0].ports[0].port", "at least one letter"),
    "empty-peer": ("spec.ingress[0].from[0]", "must specify a peer"),
    "ipblock-with-selector": ("spec.ingress[0].from[0]", "may not specify both ipBlock"),
    "except-not-subset": ("spec.egress[0].to[0].ipBlock.except[0]", "strict subset"),
    "except-equal-to-cidr": ("spec.egress[0].to[0].ipBlock.except[0]", "strict subset"),
    "bad-policy-type": ("spec.policyTypes[1]", "Unsupported value"),
    "too-many-policy-types": ("spec.policyTypes", "more than two"),
    "in-without-values": ("spec.podSelector.matchExpressions[0].values", "Required value"),
    "exists-with-values": ("spec.podSelector.matchExpressions[0].values", "Forbidden"),
}


@pytest.mark.parametrize("item", DATA["invalid_policies"], ids=lambda i: i["id"])
def test_invalid_policies_are_refused_with_field_errors(item):
    errors = validate_network_policy(item["policy"])
    assert errors, item["reason"]
    field, word = INVALID_FIELDS[item["id"]]
    assert [e.field for e in errors] == [field]
    assert word in errors[0].message()
    assert errors[0].message().startswith(field + ": ")
