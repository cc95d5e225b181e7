"""netns mode's naming, files and command lists (pure; the e2e test runs them)."""

import ipaddress
import json

from kubelab.runtime.netns import (
    NetnsConfig,
    bridge_commands,
    forward_rule_needed,
    hosts_file,
    local_route_commands,
    netns_name,
    pod_commands,
    pod_resolv_conf,
    pod_teardown_commands,
    resolv_conf,
    rules_with_comment,
    veth_name,
)

CFG = NetnsConfig(pod_cidr=ipaddress.ip_network("10.244.0.0/16"), dns_ip="10.96.0.10")


def test_names_are_prefixed_unambiguous_and_short():
    assert netns_name("kl-", "default", "web-0") == "kl-default_web-0"
    assert netns_name("kl-", "a-b", "c") != netns_name("kl-", "a", "b-c")
    v = veth_name("kl-", "default", "a-very-long-pod-name-that-goes-on")
    assert v.startswith("kl-") and len(v) <= 15
    assert veth_name("kl-t12345-", "default", "x").startswith("kl-t12345-")
    assert len(veth_name("kl-t12345-", "default", "x")) <= 15
    assert veth_name("kl-", "default", "a") != veth_name("kl-", "default", "b")
    assert CFG.bridge == "kl-br0" and CFG.gateway == "10.244.0.1"


def test_resolv_conf_is_kubelets():
    assert resolv_conf("shop", "10.96.0.10", "cluster.local") == (
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n")


def test_hosts_file():
    text = hosts_file("10.244.0.5", "web-0", "web-0.web.default.svc.cluster.local")
    assert "10.244.0.5\tweb-0.web.default.svc.cluster.local\tweb-0\n" in text
    assert "127.0.0.1\tlocalhost" in text
    assert hosts_file("10.244.0.5", "p", None).endswith("10.244.0.5\tp\n")


def test_commands():
    assert ["ip", "addr", "add", "10.244.0.1/16", "dev", "kl-br0"] in bridge_commands(CFG)
    cmds = pod_commands(CFG, "default", "web-0", "10.244.0.5")
    ns, veth = "kl-default_web-0", veth_name("kl-", "default", "web-0")
    assert cmds[0] == ["ip", "netns", "add", ns]
    assert ["ip", "-n", ns, "addr", "add", "10.244.0.5/16", "dev", "eth0"] in cmds
    assert ["ip", "-n", ns, "route", "add", "default", "via", "10.244.0.1", "dev", "eth0"] in cmds
    assert ["ip", "link", "set", veth, "master", "kl-br0", "up"] in cmds
    assert pod_teardown_commands(CFG, "default", "web-0")[-1] == ["ip", "netns", "del", ns]


def ruleset(*items):
    return json.dumps({"nftables": [{"metainfo": {}}, *items]})


def test_forward_rule_needed_only_with_a_drop_policy():
    drop = {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "policy": "drop"}}
    accept = {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "policy": "accept"}}
    assert forward_rule_needed(ruleset(drop))
    assert not forward_rule_needed(ruleset(accept))
    assert not forward_rule_needed(ruleset())
    assert not forward_rule_needed("not json")


def test_rules_with_comment():
    rules = ruleset(
        {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 7, "comment": "kl-lab"}},
        {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 8, "comment": "docker"}},
        {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 9}},
    )
    assert rules_with_comment(rules, "kl-lab") == [("ip", "filter", "FORWARD", 7)]
    assert rules_with_comment("", "kl-lab") == []


def test_local_routes_carry_the_cleanup_protocol():
    cfg = NetnsConfig(pod_cidr=ipaddress.ip_network("10.244.0.0/16"), dns_ip="10.96.0.10",
                      local_cidrs=("10.96.0.0/16",))
    assert local_route_commands(cfg) == [
        ["ip", "route", "replace", "local", "10.96.0.0/16", "dev", "lo", "table", "local", "proto", "252"]]
    assert local_route_commands(cfg, "del")[0][2] == "del"


def test_pod_resolv_conf_follows_dns_policy():
    cluster_first = pod_resolv_conf({}, "shop", "10.96.0.10", "cluster.local")
    assert cluster_first == resolv_conf("shop", "10.96.0.10", "cluster.local")
    assert pod_resolv_conf({"dnsPolicy": "Default"}, "shop", "10.96.0.10", "cluster.local") is None
    custom = pod_resolv_conf({"dnsPolicy": "ClusterFirst", "dnsConfig": {
        "nameservers": ["1.1.1.1"], "searches": ["corp.example"],
        "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}, "shop", "10.96.0.10", "cluster.local")
    assert custom == ("search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n"
                      "nameserver 10.96.0.10\nnameserver 1.1.1.1\noptions ndots:2 edns0\n")
    none = pod_resolv_conf({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["9.9.9.9"]}}, "shop", "x", "cluster.local")
    assert none == "nameserver 9.9.9.9\n"
