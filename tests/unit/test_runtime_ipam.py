"""Pod IP allocation (host-local style)."""

import pytest

from kubelab.runtime.ipam import Ipam, IpamExhausted


def test_sequential_allocation_skips_network_and_gateway():
    ipam = Ipam("127.55.0.0/16")
    assert ipam.gateway == "127.55.0.1"
    assert [ipam.allocate(k) for k in ("a", "b", "c")] == ["127.55.0.2", "127.55.0.3", "127.55.0.4"]
    assert ipam.allocate("a") == "127.55.0.2"  # idempotent
    assert len(ipam) == 3


def test_observe_keeps_addresses_across_restarts():
    ipam = Ipam("127.55.0.0/24")
    assert ipam.observe("ns/a", "127.55.0.7")
    assert not ipam.observe("ns/b", "127.55.0.7")  # someone else's
    assert ipam.get("ns/a") == "127.55.0.7"
    assert ipam.allocate("ns/a") == "127.55.0.7"
    assert ipam.allocate("ns/b") == "127.55.0.2"


def test_released_address_is_not_reused_at_once():
    ipam = Ipam("127.55.0.0/24")
    a = ipam.allocate("a")
    ipam.allocate("b")
    ipam.release("a")
    assert ipam.allocate("c") == "127.55.0.4"
    assert ipam.get("a") is None and a == "127.55.0.2"


def test_wraps_and_exhausts():
    ipam = Ipam("127.55.0.0/29")  # .2 .. .6 usable
    got = [ipam.allocate(str(i)) for i in range(5)]
    assert got == [f"127.55.0.{i}" for i in range(2, 7)]
    with pytest.raises(IpamExhausted):
        ipam.allocate("x")
    ipam.release("1")
    assert ipam.allocate("y") == "127.55.0.3"  # wrapped around to the freed one


def test_reserved_and_contains():
    ipam = Ipam("10.0.0.0/29", reserved=["10.0.0.2"])
    assert ipam.allocate("a") == "10.0.0.3"
    assert ipam.contains("10.0.0.5") and not ipam.contains("10.0.1.1") and not ipam.contains("bogus")
    with pytest.raises(ValueError):
        Ipam("10.0.0.0/31")
