"""LabConfig's mode fields, the per-mode flag defaults of ``kubelab up`` and its checks."""

from __future__ import annotations

import ipaddress

import pytest

from kubelab.controller.api_tables import pod_status_reason
from kubelab.controller.cli import build_parser
from kubelab.controller.config import (
    ConfigError,
    LabConfig,
    check_mode_supported,
    mode_defaults,
    validate_lab,
)
from kubelab.controller.cluster_objects import (
    api_endpoint,
    first_service_ip,
    kube_dns_objects,
    kubernetes_service_objects,
    node_addresses,
    without_frontends,
)
from kubelab.controller.up import config_from_args
from kubelab.proxy.table import Frontend, Route, RouteTable


def test_labconfig_defaults_are_local():
    c = LabConfig()
    assert (c.mode, c.dns_service_ip, c.netns_prefix, c.bridge_ip) == ("local", None, "kl-", None)


def test_netns_defaults_are_kubeadms():
    assert mode_defaults("netns", {}) == {
        "pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/16", "lb_pool": "10.97.0.0/24",
        "node_ip": "10.244.0.1", "dns_service_ip": "10.96.0.10", "dns_addr": "10.96.0.10:53"}


@pytest.mark.parametrize("given, key, want", [
    ({"pod_cidr": "10.250.0.0/24"}, "node_ip", "10.250.0.1"),  # node IP follows the pod CIDR (bridge)
    ({"service_cidr": "10.251.3.0/24"}, "dns_service_ip", "10.251.3.10"),  # kube-dns follows the services
    ({"service_cidr": "10.251.3.0/24"}, "dns_addr", "10.251.3.10:53"),
    ({"dns_service_ip": "10.96.0.53"}, "dns_addr", "10.96.0.53:53"),
    ({"dns_addr": "127.0.0.1:5353"}, "dns_service_ip", "10.96.0.10"),  # a given DNS address is kept
    ({"dns_addr": "127.0.0.1:5353"}, "dns_addr", "127.0.0.1:5353"),
    ({"node_ip": "10.244.9.9"}, "node_ip", "10.244.9.9"),
    ({"lb_pool": "10.98.0.0/24"}, "lb_pool", "10.98.0.0/24"),
    ({"pod_cidr": None}, "pod_cidr", "10.244.0.0/16"),  # None = not given
])
def test_netns_defaults_keep_every_given_flag(given, key, want):
    assert mode_defaults("netns", given)[key] == want


def test_local_defaults_are_loopback():
    d = mode_defaults("local", {})
    assert d == {"pod_cidr": "127.244.0.0/16", "service_cidr": "127.96.0.0/16", "lb_pool": "127.240.0.0/24",
                 "node_ip": "127.0.0.1", "dns_service_ip": None, "dns_addr": "127.0.0.1:5353"}
    assert mode_defaults("local", {"dns_service_ip": "127.96.0.10"})["dns_service_ip"] == "127.96.0.10"


def test_unknown_mode_and_v6_only_netns_are_errors():
    with pytest.raises(ConfigError, match="--mode compose"):
        mode_defaults("compose", {})
    with pytest.raises(ConfigError, match="IPv4"):
        mode_defaults("netns", {"pod_cidr": "fd00::/64"})


def test_check_mode_supported():
    assert check_mode_supported("local", (False, "netns mode needs root")) is None
    assert check_mode_supported("netns", (True, "")) is None
    msg = check_mode_supported("netns", (False, "netns mode needs root"))
    assert msg == "--mode netns: netns mode needs root (use --mode local)"
    assert "\n" not in msg


def parse(*argv):
    return config_from_args(build_parser().parse_args(["up", *argv]))


def test_up_flags_local_unchanged():
    c = parse()
    assert c.mode == "local" and c.service_cidrs == (ipaddress.ip_network("127.96.0.0/16"),)
    assert c.pod_cidr == ipaddress.ip_network("127.244.0.0/16") and c.node_ip == "127.0.0.1"
    assert c.dns_addr == ("127.0.0.1", 5353) and c.dns_service_ip is None


def test_up_flags_netns():
    c = parse("--mode", "netns", "--service-cidr", "10.231.0.0/24", "--pod-cidr", "10.232.0.0/24",
              "--netns-prefix", "klt-")
    assert c.mode == "netns" and c.netns_prefix == "klt-"
    assert c.dns_service_ip == "10.231.0.10" and c.dns_addr == ("10.231.0.10", 53)
    assert c.node_ip == "10.232.0.1" == c.bridge_ip
    assert c.lb_pool == ipaddress.ip_network("10.97.0.0/24")
    c = parse("--mode", "netns", "--dns-service-ip", "10.96.0.53")
    assert c.dns_addr == ("10.96.0.53", 53) and c.pod_cidr == ipaddress.ip_network("10.244.0.0/16")


@pytest.mark.parametrize("argv, match", [
    (["--dns-service-ip", "10.0.0.10"], "not inside the service CIDR"),
    (["--dns-service-ip", "nope"], "not an IP address"),
    (["--mode", "netns", "--netns-prefix", "much-too-long-"], "1 to 8 characters"),
    (["--mode", "netns", "--pod-cidr", "10.244.0.0/31"], "at least /30"),
])
def test_up_flag_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse(*argv)


def test_up_mode_flag_refuses_unknown(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--mode", "docker"])


def test_validate_lab_accepts_the_defaults():
    validate_lab(LabConfig())
    validate_lab(parse("--mode", "netns"))


# -- the built-in Services (pure parts of controller/lab.py) -------------------------------


def test_kubernetes_service_and_slice():
    c = parse("--mode", "netns", "--service-cidr", "10.231.0.0/24", "--pod-cidr", "10.232.0.0/24")
    assert first_service_ip(c) == "10.231.0.1"
    assert api_endpoint(c, ("127.0.0.1", 6443)) == ("10.232.0.1", 6443)  # netns: the bridge
    assert api_endpoint(LabConfig(), ("127.0.0.1", 6443)) == ("127.0.0.1", 6443)
    assert api_endpoint(LabConfig(node_ip="127.9.0.1"), ("0.0.0.0", 7443)) == ("127.9.0.1", 7443)
    svc, es = kubernetes_service_objects(c, ("10.232.0.1", 6443))
    assert svc["spec"]["clusterIP"] == "10.231.0.1" and "selector" not in svc["spec"]
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]
    labels = es["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == "kubernetes"
    assert labels["endpointslice.kubernetes.io/managed-by"] != "lab-controller"  # the controller leaves it alone
    assert es["endpoints"][0]["addresses"] == ["10.232.0.1"] and es["ports"][0]["port"] == 6443


def test_kube_dns_service_reserves_or_routes():
    c = parse("--mode", "netns", "--service-cidr", "10.231.0.0/24", "--pod-cidr", "10.232.0.0/24")
    objs = kube_dns_objects(c, ("10.231.0.10", 53))  # DNS serves the VIP itself: no slice
    assert [o["kind"] for o in objs] == ["Service"]
    spec = objs[0]["spec"]
    assert spec["clusterIP"] == "10.231.0.10" and "selector" not in spec
    assert [(p["name"], p["port"], p["protocol"]) for p in spec["ports"]] == [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]
    local = parse("--dns-service-ip", "127.96.0.10")
    svc, es = kube_dns_objects(local, ("127.0.0.1", 5353))  # elsewhere: through the proxy
    assert svc["spec"]["ports"][0]["targetPort"] == 5353
    assert es["endpoints"][0]["addresses"] == ["127.0.0.1"] and {p["port"] for p in es["ports"]} == {5353}


def test_without_frontends_drops_only_the_dns_vip():
    route = Route("kube-system/kube-dns", "dns", "ClusterIP", ())
    other = Route("default/web", "http", "ClusterIP", ())
    table = RouteTable(7, {Frontend("10.96.0.10", 53, "UDP"): route, Frontend("10.96.0.10", 53, "TCP"): route,
                           Frontend("10.96.0.11", 80, "TCP"): other})
    out = without_frontends(table, frozenset({("10.96.0.10", 53)}))
    assert list(out.routes) == [Frontend("10.96.0.11", 80, "TCP")] and out.generation == 7
    assert without_frontends(table, frozenset()) is table


def test_node_addresses_include_the_bridge():
    c = parse("--mode", "netns", "--pod-cidr", "10.232.0.0/24", "--node-ip", "10.232.0.1")
    assert [a["address"] for a in node_addresses(c) if a["type"] == "InternalIP"] == ["10.232.0.1"]
    c = parse("--mode", "netns", "--pod-cidr", "10.232.0.0/24", "--node-ip", "192.0.2.7")
    assert [a["address"] for a in node_addresses(c) if a["type"] == "InternalIP"] == ["192.0.2.7", "10.232.0.1"]
    assert node_addresses(LabConfig())[0] == {"type": "InternalIP", "address": "127.0.0.1"}


@pytest.mark.parametrize("status, want", [
    ({"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]},
     "Completed"),
    ({"phase": "Succeeded"}, "Completed"),
    ({"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"exitCode": 0}}}]}, "Completed"),
    ({"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]},
     "Error"),
    ({"phase": "Running", "containerStatuses": [{"state": {"terminated": {"exitCode": 2}}}]}, "ExitCode:2"),
    ({"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}, "Running"),
    ({"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]}, "ErrImagePull"),
    ({}, "Unknown"),
])
def test_pod_status_column(status, want):
    assert pod_status_reason(status) == want
