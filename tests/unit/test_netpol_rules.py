"""The subtle NetworkPolicy rules, one test per "common mistake" of reference/netpol-spec.md §3.

Every verdict is taken from the reference engine AND the compiled table (``decide``
asserts they agree), so each test pins both implementations.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubelab.controller.netpol import (
    Cluster,
    Verdict,
    build_policy_table,
    default_network_policy,
    evaluate,
    selector_matches,
    validate_network_policy,
)
from tests.helpers import namespace, node

NODE_IP = "172.18.0.2"
OTHER_NODE_IP = "172.18.0.3"
EXTERNAL = "192.0.2.10"


def ns(name: str, **labels: str) -> dict[str, Any]:
    return namespace(name, labels)


def pod(
    namespace: str,
    name: str,
    ip: str,
    labels: dict[str, str] | None = None,
    ports: tuple[tuple[str, int, str], ...] = (("serve-80-tcp", 80, "TCP"),),
    node_name: str = "node-1",
    host_network: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": node_name,
        "containers": [
            {"name": "c", "ports": [{"name": n, "containerPort": p, "protocol": pr} for n, p, pr in ports]}
        ],
    }
    if host_network:
        spec["hostNetwork"] = True
    return {
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": {"pod": name, **(labels or {})}},
        "spec": spec,
        "status": {"podIP": ip},
    }


def netpol(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("podSelector", {})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    }


def world(*policies: dict[str, Any], extra_pods: tuple[dict[str, Any], ...] = (), namespaces=None) -> Cluster:
    """x/a x/b y/a y/b, x labelled team=red, one node; plus the given policies."""
    nss = namespaces if namespaces is not None else [ns("x", team="red"), ns("y", team="blue")]
    pods = [
        pod("x", "a", "10.244.1.10", {"tier": "frontend"}),
        pod("x", "b", "10.244.1.11", {"tier": "backend"}),
        pod("y", "a", "10.244.2.10", {"tier": "frontend"}),
        pod("y", "b", "10.244.2.11"),
        *extra_pods,
    ]
    for p in policies:
        assert validate_network_policy(p) == [], p
    return Cluster(nss, [node("node-1", NODE_IP), node("node-2", OTHER_NODE_IP)], pods, list(policies))


def decide(cluster: Cluster, src: str, dst: str, port: int = 80, proto: str = "TCP") -> Verdict:
    """The engine's verdict, after checking the compiled table says the same."""
    v = evaluate(cluster, cluster.endpoint(src), cluster.endpoint(dst), port, proto)
    table = build_policy_table(cluster)

    def ip(name: str) -> str:
        return name[3:] if name.startswith("ip:") else cluster.pod_by_key[name].ip  # type: ignore[return-value]

    assert table.allows(ip(src), ip(dst), port, proto) == v.allowed, v.because
    assert table.check(ip(src), ip(dst), port, proto) == (v.allowed, v.because)
    return v


def allowed(cluster: Cluster, src: str, dst: str, port: int = 80, proto: str = "TCP") -> bool:
    return decide(cluster, src, dst, port, proto).allowed


# 1. Isolation comes from a policy that selects the pod and lists the direction (R1, R4, R5).


def test_pods_not_selected_stay_open():
    c = world(netpol("x", "only-a", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Ingress"]))
    assert not allowed(c, "y/a", "x/a")
    assert allowed(c, "y/a", "x/b")


def test_policy_in_other_namespace_has_no_effect_even_if_labels_match():
    c = world(netpol("y", "deny-pod-a", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Ingress"]))
    assert allowed(c, "x/b", "x/a")
    assert not allowed(c, "x/b", "y/a")


def test_deny_reason_names_every_isolating_policy():
    c = world(
        netpol("x", "deny-1", policyTypes=["Ingress"]),
        netpol("x", "deny-2", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Ingress"]),
    )
    v = decide(c, "y/a", "x/a")
    assert not v.allowed
    assert v.ingress is not None and v.ingress.isolated_by == ("x/deny-1", "x/deny-2")
    assert "isolated by x/deny-1, x/deny-2" in v.because


# 2. policyTypes defaulting (R3) and direction gating (R4).


def test_egress_rules_without_policy_types_also_deny_ingress():
    c = world(netpol("x", "p", podSelector={"matchLabels": {"pod": "a"}}, egress=[{"to": [{"podSelector": {}}]}]))
    assert not allowed(c, "x/b", "x/a")  # Ingress defaulted in, no ingress rules
    assert allowed(c, "x/a", "x/b")  # egress to its own namespace
    assert not allowed(c, "x/a", "y/a")


def test_empty_egress_list_does_not_add_egress():
    c = world(netpol("x", "p", egress=[]))
    assert allowed(c, "x/a", "y/a")  # no egress isolation
    assert not allowed(c, "y/a", "x/a")  # but Ingress was defaulted: deny all ingress


def test_rules_for_an_unlisted_direction_are_ignored():
    c = world(
        netpol(
            "x",
            "p",
            podSelector={"matchLabels": {"pod": "a"}},
            policyTypes=["Egress"],
            ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
            egress=[{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}],
        )
    )
    assert allowed(c, "y/b", "x/a")  # ingress not isolated, the ingress list is ignored
    assert not allowed(c, "x/a", "x/b")


@pytest.mark.parametrize(
    "spec, types",
    [
        ({}, ["Ingress"]),
        ({"egress": []}, ["Ingress"]),
        ({"egress": [{}]}, ["Ingress", "Egress"]),
        ({"policyTypes": []}, ["Ingress"]),
        ({"policyTypes": ["Egress"], "egress": [{}]}, ["Egress"]),
        ({"ingress": [{}], "policyTypes": ["Egress", "Ingress"]}, ["Egress", "Ingress"]),
    ],
)
def test_default_policy_types(spec, types):
    out = default_network_policy({"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"}, "spec": spec})
    assert out["spec"]["policyTypes"] == types
    assert out["spec"]["podSelector"] == {}
    assert "policyTypes" not in spec or spec["policyTypes"] is not out["spec"]["policyTypes"]  # a copy


def test_default_port_protocol_is_tcp_and_input_is_not_changed():
    obj = netpol("x", "p", ingress=[{"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}])
    out = default_network_policy(obj)
    assert [p["protocol"] for p in out["spec"]["ingress"][0]["ports"]] == ["TCP", "UDP"]
    assert "protocol" not in obj["spec"]["ingress"][0]["ports"][0]


# 3. One peer ANDs namespaceSelector and podSelector; two peers OR them (R11).


def test_namespace_and_pod_selector_in_one_peer_are_anded():
    c = world(
        netpol(
            "x",
            "p",
            podSelector={"matchLabels": {"pod": "a"}},
            ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}],
        )
    )
    assert allowed(c, "y/b", "x/a")
    assert not allowed(c, "y/a", "x/a")  # right namespace, wrong pod
    assert not allowed(c, "x/b", "x/a")  # right pod, wrong namespace


def test_namespace_and_pod_selector_in_two_peers_are_ored():
    c = world(
        netpol(
            "x",
            "p",
            podSelector={"matchLabels": {"pod": "a"}},
            ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}],
        )
    )
    assert allowed(c, "y/a", "x/a")  # any pod of y
    assert allowed(c, "x/b", "x/a")  # pod b of the policy namespace
    v = decide(c, "x/b", "x/a")
    assert v.ingress is not None and v.ingress.allowed_by == ("x/p", "ingress[0].from[1]")


# 4. A podSelector-only peer means pods in the POLICY's namespace (R9).


def test_pod_selector_peer_is_the_policy_namespace_for_ingress():
    c = world(netpol("x", "p", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]))
    assert allowed(c, "x/b", "x/a")
    assert not allowed(c, "y/b", "x/a")


def test_pod_selector_peer_is_the_policy_namespace_for_egress():
    c = world(
        netpol("x", "p", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Egress"], egress=[{"to": [{"podSelector": {}}]}])
    )
    assert allowed(c, "x/a", "x/b")
    assert not allowed(c, "x/a", "y/b")


# 5. Selectors, even empty ones, never match non-pod addresses (R7, R12).


@pytest.mark.parametrize(
    "peer",
    [{"namespaceSelector": {}}, {"podSelector": {}}, {"namespaceSelector": {}, "podSelector": {}}],
)
def test_empty_selectors_do_not_match_external_addresses(peer):
    c = world(netpol("x", "p", ingress=[{"from": [peer]}]))
    assert not allowed(c, f"ip:{EXTERNAL}", "x/a")
    assert not allowed(c, f"ip:{OTHER_NODE_IP}", "x/a")  # another node is an ordinary address
    assert allowed(c, "x/b", "x/a")


@pytest.mark.parametrize("rule", [{}, {"from": []}, {"ports": []}, {"from": [], "ports": []}])
def test_empty_rule_or_empty_lists_allow_everything(rule):
    c = world(netpol("x", "p", ingress=[rule]))
    assert allowed(c, f"ip:{EXTERNAL}", "x/a")
    assert allowed(c, "y/b", "x/a", 81, "UDP")


def test_no_rules_means_deny_all():
    c = world(netpol("x", "p", ingress=[]))
    assert not allowed(c, "y/a", "x/a")


# 6. NotIn / DoesNotExist match a missing key (R13).


@pytest.mark.parametrize(
    "selector, labels, expected",
    [
        (None, {}, True),
        ({}, {}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {}, False),
        ({"matchLabels": {"a": ""}}, {"a": ""}, True),
        ({"matchLabels": {"a": ""}}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "3"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}, {"a": "1"}, False),
        (
            {"matchLabels": {"b": "2"}, "matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "1", "b": "2"},
            False,
        ),
    ],
)
def test_selector_matches(selector, labels, expected):
    assert selector_matches(selector, labels) is expected


def test_notin_on_missing_key_selects_pods_without_the_label():
    c = world(
        netpol(
            "x",
            "p",
            podSelector={"matchLabels": {"pod": "a"}},
            ingress=[{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["frontend"]}]}}]}],
        )
    )
    assert allowed(c, "y/b", "x/a")  # no tier label at all
    assert allowed(c, "x/b", "x/a")  # tier=backend
    assert not allowed(c, "y/a", "x/a")  # tier=frontend


def test_doesnotexist_namespace_selector():
    c = world(
        netpol("x", "p", ingress=[{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}}]}]),
        namespaces=[ns("x", team="red"), ns("y")],
    )
    assert allowed(c, "y/a", "x/a")
    assert not allowed(c, "x/b", "x/a")


# 7. The protocol default and SCTP (R18), ports without a number (R19), ranges (R20).


def test_port_without_protocol_is_tcp_only():
    c = world(netpol("x", "p", ingress=[{"ports": [{"port": 80}]}]))
    assert allowed(c, "y/a", "x/a", 80, "TCP")
    assert not allowed(c, "y/a", "x/a", 80, "UDP")
    assert not allowed(c, "y/a", "x/a", 81, "TCP")


def test_sctp_only_rule_does_not_open_tcp_but_isolates():
    c = world(netpol("x", "p", ingress=[{"ports": [{"port": 81, "protocol": "SCTP"}]}]))
    assert not allowed(c, "y/a", "x/a", 81, "TCP")
    assert allowed(c, "y/a", "x/a", 81, "SCTP")


def test_protocol_only_port_entry_matches_every_port_of_that_protocol():
    c = world(netpol("x", "p", ingress=[{"ports": [{"protocol": "UDP"}]}]))
    assert allowed(c, "y/a", "x/a", 53, "UDP")
    assert allowed(c, "y/a", "x/a", 65535, "UDP")
    assert not allowed(c, "y/a", "x/a", 53, "TCP")


@pytest.mark.parametrize("port, expected", [(7999, False), (8000, True), (8050, True), (8100, True), (8101, False)])
def test_end_port_is_an_inclusive_range(port, expected):
    c = world(netpol("x", "p", ingress=[{"ports": [{"port": 8000, "endPort": 8100}]}]))
    assert allowed(c, "y/a", "x/a", port) is expected


# 8. Named ports: resolved on the destination pod, with protocol; never for non-pods (R21).

NAMED_PODS = (
    pod("y", "web1", "10.244.2.20", {"app": "web"}, ports=(("http", 8080, "TCP"),)),
    pod("y", "web2", "10.244.2.21", {"app": "web"}, ports=(("http", 9090, "TCP"),)),
    pod("y", "dns", "10.244.2.22", {"app": "dns"}, ports=(("http", 53, "UDP"),)),
)


def test_named_port_in_egress_is_resolved_on_each_destination_pod():
    c = world(netpol("x", "p", policyTypes=["Egress"], egress=[{"ports": [{"port": "http"}]}]), extra_pods=NAMED_PODS)
    assert allowed(c, "x/a", "y/web1", 8080)
    assert not allowed(c, "x/a", "y/web1", 9090)
    assert allowed(c, "x/a", "y/web2", 9090)
    assert not allowed(c, "x/a", "y/web2", 8080)
    # the source's own declaration of "http" (none here) is irrelevant; x/a serves serve-80-tcp only
    assert not allowed(c, "x/a", "y/a", 80)


def test_named_port_with_the_wrong_protocol_matches_nothing():
    c = world(netpol("x", "p", policyTypes=["Egress"], egress=[{"ports": [{"port": "http"}]}]), extra_pods=NAMED_PODS)
    assert not allowed(c, "x/a", "y/dns", 53, "UDP")  # http is UDP on y/dns, the rule means TCP
    assert not allowed(c, "x/a", "y/dns", 53, "TCP")
    c2 = world(
        netpol("x", "p", policyTypes=["Egress"], egress=[{"ports": [{"port": "http", "protocol": "UDP"}]}]), extra_pods=NAMED_PODS
    )
    assert allowed(c2, "x/a", "y/dns", 53, "UDP")


def test_named_port_never_matches_an_external_destination():
    c = world(netpol("x", "p", policyTypes=["Egress"], egress=[{"ports": [{"port": "http"}]}]), extra_pods=NAMED_PODS)
    for port in (80, 8080, 9090):
        assert not allowed(c, "x/a", "ip:198.51.100.20", port)


def test_named_port_in_ingress_is_resolved_on_the_selected_pod():
    c = world(netpol("y", "p", podSelector={"matchLabels": {"app": "web"}}, ingress=[{"ports": [{"port": "http"}]}]), extra_pods=NAMED_PODS)
    assert allowed(c, "x/a", "y/web1", 8080)
    assert not allowed(c, "x/a", "y/web1", 9090)
    assert allowed(c, f"ip:{EXTERNAL}", "y/web2", 9090)  # ingress from anywhere on the named port


def test_named_port_with_ipblock_egress_peer_uses_pod_ips():
    c = world(
        netpol("x", "p", policyTypes=["Egress"], egress=[{"to": [{"ipBlock": {"cidr": "10.244.2.0/24"}}], "ports": [{"port": "http"}]}]),
        extra_pods=NAMED_PODS,
    )
    assert allowed(c, "x/a", "y/web1", 8080)
    assert not allowed(c, "x/a", "x/b", 80)


# 9. Both ends must allow (R6).


def test_egress_of_the_client_can_deny_despite_ingress_allow():
    c = world(
        netpol("x", "client", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Egress"], egress=[{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]),
        netpol("y", "server", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"namespaceSelector": {}}]}]),
    )
    v = decide(c, "x/a", "y/a")
    assert not v.allowed
    assert v.ingress is not None and v.ingress.allowed
    assert v.egress is not None and not v.egress.allowed
    assert v.because.startswith("x/a egress: denied, isolated by x/client")


def test_ingress_of_the_server_can_deny_despite_egress_allow():
    c = world(
        netpol("x", "client", policyTypes=["Egress"], egress=[{}]),
        netpol("y", "server", podSelector={"matchLabels": {"pod": "a"}}, ingress=[]),
    )
    v = decide(c, "x/a", "y/a")
    assert not v.allowed and v.egress is not None and v.egress.allowed_by == ("x/client", "egress[0]")


# 10. Policy is about the backend pod and its port, never the Service VIP (R22).


def test_ipblock_on_the_service_cidr_does_not_allow_the_backend():
    c = world(netpol("x", "p", policyTypes=["Egress"], egress=[{"to": [{"ipBlock": {"cidr": "10.96.0.0/12"}}]}]))
    assert not allowed(c, "x/a", "y/a")  # the proxy asks with the backend pod IP
    assert allowed(c, "x/a", "ip:10.96.0.10")  # the VIP itself would match, which is why it must not be asked


# 11. ipBlock matches pod IPs too, and except is not a global deny (R15, R16).


def test_ipblock_matches_pod_ips_and_except_is_not_global():
    c = world(
        netpol("x", "cidr", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Egress"], egress=[{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.11/32"]}}]}]),
    )
    assert allowed(c, "x/a", "y/a")
    assert not allowed(c, "x/a", "y/b")
    c2 = world(
        netpol("x", "cidr", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Egress"], egress=[{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.11/32"]}}]}]),
        netpol("x", "exact", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Egress"], egress=[{"to": [{"ipBlock": {"cidr": "10.244.2.11/32"}}]}]),
    )
    v = decide(c2, "x/a", "y/b")
    assert v.allowed and v.egress is not None and v.egress.allowed_by == ("x/exact", "egress[0].to[0]")


def test_ipblock_ingress_from_external_with_except():
    c = world(netpol("x", "p", ingress=[{"from": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}]))
    assert allowed(c, "ip:192.0.2.10", "x/a")
    assert not allowed(c, "ip:192.0.2.200", "x/a")
    assert not allowed(c, "ip:198.51.100.1", "x/a")


def test_ipblock_host_bits_are_masked_and_families_never_mix():
    c = world(netpol("x", "p", ingress=[{"from": [{"ipBlock": {"cidr": "192.0.2.77/24"}}, {"ipBlock": {"cidr": "::/0"}}]}]))
    assert allowed(c, "ip:192.0.2.10", "x/a")
    assert allowed(c, "ip:2001:db8::1", "x/a")
    assert not allowed(c, "ip:198.51.100.1", "x/a")


# 12. The node and loopback exemptions (R23, R24), hostNetwork pods (R28).


def test_node_and_loopback_are_exempt_but_report_the_rules_verdict():
    c = world(netpol("x", "deny", policyTypes=["Ingress", "Egress"]))
    v = decide(c, f"ip:{NODE_IP}", "x/a")
    assert v.allowed and v.exemption == "node" and not v.rules_allowed
    v = decide(c, "x/a", f"ip:{NODE_IP}")
    assert v.allowed and v.exemption == "node" and not v.rules_allowed
    v = decide(c, "x/a", "x/a")
    assert v.allowed and v.exemption == "loopback" and not v.rules_allowed
    assert not allowed(c, f"ip:{OTHER_NODE_IP}", "x/a")  # not x/a's node: an ordinary address
    assert not allowed(c, "x/a", "x/b")


def test_host_network_pod_is_its_node_and_is_never_selected():
    hn = pod("x", "hn", NODE_IP, {"tier": "frontend"}, host_network=True)
    c = world(
        netpol("x", "p", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"podSelector": {"matchLabels": {"tier": "frontend"}}}]}]),
        netpol("x", "deny-hn", podSelector={"matchLabels": {"pod": "hn"}}, policyTypes=["Ingress", "Egress"]),
        extra_pods=(hn,),
    )
    assert "x/hn" not in c.pod_by_key
    v = decide(c, f"ip:{NODE_IP}", "x/a")
    assert v.allowed and v.exemption == "node"
    assert allowed(c, f"ip:{NODE_IP}", "y/a")  # the deny-hn policy selects nothing


# 13. kubernetes.io/metadata.name is always there (R14).


def test_metadata_name_label_is_synthesized():
    sel = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}
    c = world(netpol("x", "p", ingress=[{"from": [sel]}]), namespaces=[ns("x"), {"kind": "Namespace", "metadata": {"name": "y"}}])
    assert allowed(c, "y/a", "x/a")
    c2 = world(netpol("x", "p", ingress=[{"from": [sel]}]), namespaces=[])  # no Namespace objects at all
    assert allowed(c2, "y/a", "x/a")
    assert not allowed(c2, "x/b", "x/a")


def test_a_user_cannot_fake_the_metadata_name_label():
    c = world(
        netpol("x", "p", ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}]}]),
        namespaces=[ns("x"), ns("y", **{"kubernetes.io/metadata.name": "x"})],
    )
    assert not allowed(c, "y/a", "x/a")


# Union and explanations (R5).


def test_union_of_policies_and_first_rule_is_reported():
    c = world(
        netpol("x", "a-81", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"ports": [{"port": 81}]}]),
        netpol("x", "b-80", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"ports": [{"port": 80}]}, {}]),
    )
    assert decide(c, "y/a", "x/a", 81).ingress.allowed_by == ("x/a-81", "ingress[0]")  # type: ignore[union-attr]
    assert decide(c, "y/a", "x/a", 80).ingress.allowed_by == ("x/b-80", "ingress[0]")  # type: ignore[union-attr]
    assert decide(c, "y/a", "x/a", 82).ingress.allowed_by == ("x/b-80", "ingress[1]")  # type: ignore[union-attr]


def test_terminated_pods_are_ignored():
    done = pod("x", "done", "10.244.1.99")
    done["status"]["phase"] = "Succeeded"
    c = world(extra_pods=(done,))
    assert "x/done" not in c.pod_by_key


# Validation beyond the suite (R29).


@pytest.mark.parametrize(
    "spec",
    [
        {"policyTypes": ["Ingress", "Ingress"]},
        {"policyTypes": ["Egress"], "ingress": [{}]},
        {"ingress": []},
        {"ingress": [{"ports": [{"port": "serve-80-tcp"}, {"port": 1, "endPort": 65535}, {"protocol": "SCTP"}]}]},
        {"egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}}]}]},
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "web", "empty": ""}}},
    ],
)
def test_accepted_specs(spec):
    assert validate_network_policy(netpol("x", "ok", **spec)) == []


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"ingress": [{"ports": [{"port": 70000}]}]}, "spec.ingress[0].ports[0].port"),
        ({"ingress": [{"ports": [{"port": 80, "endPort": 70000}]}]}, "spec.ingress[0].ports[0].endPort"),
        ({"ingress": [{"ports": [{"port": "a-very-long-port-name"}]}]}, "spec.ingress[0].ports[0].port"),
        ({"ingress": [{"ports": [{"port": "web--x"}]}]}, "spec.ingress[0].ports[0].port"),
        ({"ingress": [{"ports": [{"port": "-web"}]}]}, "spec.ingress[0].ports[0].port"),
        ({"ingress": [{"ports": [{"port": "Web"}]}]}, "spec.ingress[0].ports[0].port"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "not-a-cidr"}}]}]}, "spec.egress[0].to[0].ipBlock.cidr"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["nope"]}}]}]}, "spec.egress[0].to[0].ipBlock.except[0]"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["::/64"]}}]}]}, "spec.egress[0].to[0].ipBlock.except[0]"),
        ({"egress": [{"to": [{"ipBlock": {}}]}]}, "spec.egress[0].to[0].ipBlock.cidr"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}]}]}, "spec.egress[0].to[0]"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["1"]}]}}, "spec.podSelector.matchExpressions[0].operator"),
        ({"podSelector": {"matchLabels": {"bad key!": "v"}}}, "spec.podSelector.matchLabels"),
        ({"ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "k", "operator": "NotIn"}]}}]}]}, "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values"),
    ],
)
def test_refused_specs(spec, field):
    errors = validate_network_policy(netpol("x", "bad", **spec))
    assert field in [e.field for e in errors], [e.message() for e in errors]


def test_pod_without_node_name_is_on_the_only_node():
    lone = pod("x", "lone", "10.244.1.50", node_name="")
    c = Cluster([ns("x")], [node("lab-node", "127.0.0.1")], [lone], [netpol("x", "deny", policyTypes=["Ingress", "Egress"])])
    v = decide(c, "ip:127.0.0.1", "x/lone")
    assert v.allowed and v.exemption == "node" and "lab-node" in v.because
    c2 = world(netpol("x", "deny", policyTypes=["Ingress"]), extra_pods=(pod("x", "lone", "10.244.1.50", node_name=""),))
    assert not allowed(c2, f"ip:{NODE_IP}", "x/lone")  # two nodes: which one is unknown, no exemption
