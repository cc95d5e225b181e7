"""Name parsing (CoreDNS parse.go shapes, strict underscores) and address labels."""

import ipaddress

import pytest

from kubelab.dns.names import (
    Request,
    ip_to_label,
    label_to_ip,
    parse,
    reverse_name,
    reverse_to_ip,
    split_zone,
)

Z = "cluster.local."


@pytest.mark.parametrize(
    "qname, expected",
    [
        ("cluster.local.", Request("apex")),
        ("Cluster.LOCAL", Request("apex")),
        ("dns-version.cluster.local.", Request("dns-version")),
        ("svc.cluster.local.", Request("svc")),
        ("pod.cluster.local.", Request("pod")),
        ("prod.svc.cluster.local.", Request("svc", namespace="prod")),
        ("web.prod.svc.cluster.local.", Request("svc", namespace="prod", service="web")),
        ("WEB.Prod.SVC.cluster.local.", Request("svc", namespace="prod", service="web")),
        ("mysql-0.mysql.db.svc.cluster.local.", Request("svc", namespace="db", service="mysql", endpoint="mysql-0")),
        ("_http._tcp.web.prod.svc.cluster.local.",
         Request("svc", namespace="prod", service="web", port="http", protocol="tcp")),
        ("_tcp.web.prod.svc.cluster.local.", Request("svc", namespace="prod", service="web", protocol="tcp")),
        ("10-244-1-5.prod.pod.cluster.local.", Request("pod", namespace="prod", endpoint="10-244-1-5")),
        ("prod.pod.cluster.local.", Request("pod", namespace="prod")),
        # invalid shapes -> None (NXDOMAIN)
        ("foo.cluster.local.", None),
        ("a.b.c.web.prod.svc.cluster.local.", None),
        ("www.example.com.prod.svc.cluster.local.", None),
        ("http.tcp.web.prod.svc.cluster.local.", None),  # CoreDNS accepts it; we are strict
        ("_http.tcp.web.prod.svc.cluster.local.", None),
        ("a.b.prod.pod.cluster.local.", None),
        ("dns-version.foo.cluster.local.", None),
        ("example.com.", None),
        ("local.", None),
    ],
)
def test_parse_table(qname, expected):
    assert parse(qname, Z) == expected


def test_split_zone_requires_label_boundary():
    assert split_zone("xcluster.local.", Z) is None
    assert split_zone("a.cluster.local", Z) == ["a"]


@pytest.mark.parametrize(
    "ip, label",
    [("10.244.2.20", "10-244-2-20"), ("2001:db8::", "2001-db8--0"), ("::1", "0--1"),
     ("fd00:10:96::50", "fd00-10-96--50")],
)
def test_ip_label_roundtrip(ip, label):
    assert ip_to_label(ip) == label
    assert label_to_ip(label) == ipaddress.ip_address(ip)


@pytest.mark.parametrize("label", ["web-7d9f8b6c5-abcde", "10-244-1", "10-244-1-500", "abc", "1-2-3-4-5"])
def test_label_to_ip_rejects_non_ips(label):
    assert label_to_ip(label) is None


def test_reverse_names():
    assert reverse_name("10.96.10.10") == "10.10.96.10.in-addr.arpa."
    assert reverse_to_ip("10.10.96.10.IN-ADDR.arpa.") == ipaddress.ip_address("10.96.10.10")
    v6 = reverse_name("fd00:10:96::50")
    assert v6.startswith("0.5.0.0.") and v6.endswith(".6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.")
    assert reverse_to_ip(v6) == ipaddress.ip_address("fd00:10:96::50")
    # partial reverse names are empty non-terminals, not addresses
    assert reverse_to_ip("96.10.in-addr.arpa.") is None
    assert reverse_to_ip("6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.") is None
    assert reverse_to_ip("300.1.1.10.in-addr.arpa.") is None
