"""The nftables compiler: rules follow the allow sets, exemptions and provenance comments."""

from __future__ import annotations

from kubelab.controller.netpol import build_policy_table
from kubelab.controller.netpol_nft import pod_ruleset, rulesets
from kubelab.proxy.policy import Acl, AclEntry, IPBlock, PodRules, PolicyTable
from tests.helpers import load_netpol_cases, netpol_cluster


def table_with(ingress: Acl | None = None, egress: Acl | None = None) -> PolicyTable:
    return PolicyTable(pods={"10.244.0.1": PodRules("x/a", "n1", ("172.18.0.2",), ingress, egress)})


def test_unisolated_pod_gets_an_empty_table_that_replaces_old_rules():
    text = pod_ruleset(table_with(), "10.244.0.1")
    assert text.splitlines() == [
        "table inet kubelab_netpol",
        "delete table inet kubelab_netpol",
        "table inet kubelab_netpol {",
        "}",
    ]
    assert pod_ruleset(table_with(), "10.9.9.9") == text  # unknown pod: nothing enforced


def test_ingress_chain_order_and_contents():
    acl = Acl(
        isolated_by=("x/p", "x/q"),
        grants=(("x/p", "ingress[0].from[0]"), ("x/p", "ingress[0].from[1]"), ("x/q", "ingress[0]")),
        entries=(
            AclEntry(0, frozenset({"10.244.0.2", "10.244.0.3", "fd00::2"}), (("TCP", 80, 80), ("UDP", 1, 65535))),
            AclEntry(1, IPBlock("192.0.2.0/24", ("192.0.2.128/25",)), (("TCP", 8000, 8100),)),
            AclEntry(2, None, None),
        ),
    )
    lines = pod_ruleset(table_with(ingress=acl), "10.244.0.1").splitlines()
    body = [l.strip() for l in lines]
    assert "set peers0_v4 { type ipv4_addr; elements = { 10.244.0.2, 10.244.0.3 } }" in body
    assert "set peers1_v6 { type ipv6_addr; elements = { fd00::2 } }" in body
    chain = body[body.index("chain ingress {") :]
    assert chain[1] == "type filter hook input priority filter; policy accept;"
    assert chain[2] == "ct state established,related accept"
    assert chain[4] == 'iifname "lo" accept comment "loopback (R24)"'
    assert chain[6] == 'ip saddr { 172.18.0.2 } accept comment "own node n1 (R23)"'
    assert chain[7:13] == [
        'ip saddr @peers0_v4 meta l4proto tcp th dport 80 accept comment "x/p ingress[0].from[0]"',
        'ip saddr @peers0_v4 meta l4proto udp accept comment "x/p ingress[0].from[0]"',
        'ip6 saddr @peers1_v6 meta l4proto tcp th dport 80 accept comment "x/p ingress[0].from[0]"',
        'ip6 saddr @peers1_v6 meta l4proto udp accept comment "x/p ingress[0].from[0]"',
        'ip saddr 192.0.2.0/24 ip saddr != { 192.0.2.128/25 } meta l4proto tcp th dport 8000-8100 accept '
        'comment "x/p ingress[0].from[1]"',
        'accept comment "x/q ingress[0]"',
    ]
    assert chain[13] == 'meta l4proto tcp counter reject with tcp reset comment "x/a ingress isolated by x/p, x/q"'
    assert chain[14] == 'counter reject comment "x/a ingress isolated by x/p, x/q"'
    assert "chain egress {" not in body


def test_egress_chain_matches_destinations():
    acl = Acl(("x/p",), (("x/p", "egress[0].to[0]"),), (AclEntry(0, IPBlock("0.0.0.0/0", ("10.0.0.0/8",)), None),))
    body = [l.strip() for l in pod_ruleset(table_with(egress=acl), "10.244.0.1").splitlines()]
    chain = body[body.index("chain egress {") :]
    assert chain[1] == "type filter hook output priority filter; policy accept;"
    assert 'oifname "lo" accept comment "loopback (R24)"' in chain
    assert 'ip daddr { 172.18.0.2 } accept comment "own node n1 (R23)"' in chain
    assert 'ip daddr 0.0.0.0/0 ip daddr != { 10.0.0.0/8 } accept comment "x/p egress[0].to[0]"' in chain
    assert "chain ingress {" not in body


def test_empty_peer_set_never_matches():
    acl = Acl(("x/p",), (("x/p", "ingress[0].from[0]"),), (AclEntry(0, frozenset(), None),))
    body = pod_ruleset(table_with(ingress=acl), "10.244.0.1")
    assert "x/p ingress[0].from[0]" not in body  # no accept rule at all
    assert "reject with tcp reset" in body


def test_rulesets_cover_every_pod_of_a_case():
    data = load_netpol_cases()
    case = next(c for c in data["cases"] if c["id"] == "deny-all-egress-x")
    table = build_policy_table(netpol_cluster(data, case))
    out = rulesets(table)
    assert sorted(out) == [f"{n}/{p}" for n in "xyz" for p in "abc"]
    assert "chain egress" in out["x/a"] and "chain ingress" not in out["x/a"]
    assert "chain" not in out["y/a"]


def test_service_vips_pass_the_egress_chain_for_the_proxy_to_decide():
    acl = Acl(("x/p",), (), ())
    text = pod_ruleset(table_with(ingress=acl, egress=acl), "10.244.0.1", proxied=["10.96.0.0/12", "fd00:96::/108"])
    body = [l.strip() for l in text.splitlines()]
    egress = body[body.index("chain egress {") :]
    ingress = body[body.index("chain ingress {") : body.index("chain egress {")]
    vip = 'ip daddr { 10.96.0.0/12 } accept comment "Service VIPs: the proxy enforces on the backend (R22)"'
    assert vip in egress
    assert any(l.startswith("ip6 daddr { fd00:96::/108 } accept") for l in egress)
    assert not any("Service VIPs" in l for l in ingress)
    assert egress.index(vip) < egress.index('meta l4proto tcp counter reject with tcp reset comment "x/a egress isolated by x/p"')


def test_address_families_come_from_the_text():
    """IPv6 blocks and peers use ``ip6``, IPv4 ones ``ip`` (the family is read off the text)."""
    acl = Acl(
        ("x/p",),
        (("x/p", "ingress[0].from[0]"), ("x/p", "ingress[0].from[1]")),
        (
            AclEntry(0, IPBlock("fd00:10::/64", ("fd00:10::1/128",)), None),
            AclEntry(1, frozenset({"10.244.0.9", "fd00::9"}), None),
        ),
    )
    body = [l.strip() for l in pod_ruleset(table_with(ingress=acl), "10.244.0.1").splitlines()]
    assert 'ip6 saddr fd00:10::/64 ip6 saddr != { fd00:10::1/128 } accept comment "x/p ingress[0].from[0]"' in body
    assert 'ip saddr @peers0_v4 accept comment "x/p ingress[0].from[1]"' in body
    assert 'ip6 saddr @peers1_v6 accept comment "x/p ingress[0].from[1]"' in body
