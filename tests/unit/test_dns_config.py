import ipaddress

import pytest

from kubelab.dns.config import DnsConfig, parse_upstreams, resolv_conf_nameservers, reverse_zone_for


@pytest.mark.parametrize("cidr, zone", [
    ("10.96.0.0/12", "10.in-addr.arpa."),
    ("127.244.0.0/16", "244.127.in-addr.arpa."),
    ("10.1.2.0/24", "2.1.10.in-addr.arpa."),
    ("fd00:10:96::/112", "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."),
    ("fd00:10:96::/48", "6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."),
])
def test_reverse_zone_for(cidr, zone):
    assert reverse_zone_for(ipaddress.ip_network(cidr)) == zone


def test_default_reverse_zones_cover_lab_cidrs():
    assert DnsConfig().effective_reverse_zones == ("96.127.in-addr.arpa.", "244.127.in-addr.arpa.")


@pytest.mark.parametrize("text, want", [
    ("none", ()), ("", ()), ("resolv.conf", None),
    ("1.1.1.1", (("1.1.1.1", 53),)),
    ("1.1.1.1:5353,[::1]:53,8.8.8.8", (("1.1.1.1", 5353), ("::1", 53), ("8.8.8.8", 53))),
])
def test_parse_upstreams(text, want):
    assert parse_upstreams(text) == want


def test_parse_upstreams_rejects_junk():
    with pytest.raises(ValueError):
        parse_upstreams("not-an-ip")


def test_config_validation_and_normalisation():
    c = DnsConfig(zone="Cluster.Local", reverse_zones=("10.IN-ADDR.arpa",))
    assert c.zone == "cluster.local." and c.reverse_zones == ("10.in-addr.arpa.",)
    assert c.mname == "ns.dns.cluster.local." and c.rname == "hostmaster.cluster.local."
    with pytest.raises(ValueError):
        DnsConfig(pods_mode="sometimes")
    with pytest.raises(ValueError):
        DnsConfig(ttl=-1)


def test_for_lab_maps_cli_values():
    c = DnsConfig.for_lab(cluster_domain="lab.test", ttl=30, upstreams=["10.0.0.1", "10.0.0.2:5300"],
                          host="127.0.0.2", port=53, pod_cidr="127.244.0.0/16", admin=("127.0.0.1", 0))
    assert c.zone == "lab.test." and c.ttl == 30 and c.addr == ("127.0.0.2", 53)
    assert c.upstreams == (("10.0.0.1", 53), ("10.0.0.2", 5300))
    assert ipaddress.ip_network("127.244.0.0/16") in c.recursion_clients
    assert DnsConfig.for_lab(upstreams=()).upstreams == ()
    assert DnsConfig.for_lab(upstreams=None).upstreams is None


def test_resolv_conf(tmp_path):
    p = tmp_path / "resolv.conf"
    p.write_text("# c\nsearch x\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nnameserver junk\n")
    assert resolv_conf_nameservers(p) == (("10.0.0.53", 53), ("fe80::1%eth0", 53))
    assert resolv_conf_nameservers(tmp_path / "missing") == ()
