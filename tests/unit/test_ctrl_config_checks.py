"""``kubelab up``'s cross-flag checks added for netns mode, the state-dir check and the nft warning (pure)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from kubelab.controller.config import ConfigError, LabConfig, check_mode_supported, overlapping_ranges, validate_lab
from kubelab.controller.cluster_objects import services_outside, state_services_problem
from kubelab.controller.up import netns_warning

net = ipaddress.ip_network


def netns(**kw) -> LabConfig:
    base = dict(mode="netns", pod_cidr=net("10.244.0.0/16"), service_cidrs=(net("10.96.0.0/16"),),
                lb_pool=net("10.97.0.0/24"), node_ip="10.244.0.1", dns_service_ip="10.96.0.10",
                dns_addr=("10.96.0.10", 53))
    return LabConfig(**{**base, **kw})


def test_the_kubeadm_like_defaults_pass():
    validate_lab(netns())


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"dns_service_ip": "10.96.0.1"}, "default/kubernetes"),
        ({"pod_cidr": net("10.96.0.0/12")}, "--pod-cidr 10.96.0.0/12 and --service-cidr 10.96.0.0/16 overlap"),
        ({"lb_pool": net("10.96.5.0/24")}, "--service-cidr 10.96.0.0/16 and --lb-pool 10.96.5.0/24 overlap"),
        ({"lb_pool": net("10.244.9.0/24")}, "--pod-cidr 10.244.0.0/16 and --lb-pool 10.244.9.0/24 overlap"),
        ({"netns_prefix": "e"}, "--netns-prefix 'e'"),
        ({"netns_prefix": "br-"}, "another tool"),
    ],
)
def test_refused(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate_lab(netns(**kw))


def test_dns_on_the_kubernetes_address_is_refused_in_local_mode_too():
    with pytest.raises(ConfigError, match="default/kubernetes"):
        validate_lab(LabConfig(dns_service_ip="127.96.0.1"))
    validate_lab(LabConfig(dns_service_ip="127.96.0.10"))


def test_local_mode_ranges_may_overlap_as_before():
    validate_lab(LabConfig(pod_cidr=net("127.0.0.0/8")))  # loopback: everything is local anyway
    assert overlapping_ranges(LabConfig(pod_cidr=net("127.0.0.0/8"))) is not None  # but it is an overlap


def test_dual_stack_service_ranges_are_compared_per_family():
    assert overlapping_ranges(netns(service_cidrs=(net("10.96.0.0/16"), net("fd00:10:96::/112")))) is None


def test_check_mode_supported_calls_the_probe_only_for_netns():
    def probe() -> tuple[bool, str]:
        raise AssertionError("probed in local mode")

    assert check_mode_supported("local", probe) is None
    assert check_mode_supported("netns", lambda: (False, "needs root")) == "--mode netns: needs root (use --mode local)"
    assert check_mode_supported("netns", (True, "")) is None


def test_nft_warning():
    assert netns_warning(LabConfig(), have_nft=False) is None
    assert netns_warning(netns(), have_nft=True) is None
    assert netns_warning(netns(disabled=frozenset({"runtime"})), have_nft=False) is None
    warning = netns_warning(netns(), have_nft=False)
    assert warning and "nftables" in warning and "\n" not in warning


def svc(ns: str, name: str, ip: str | None, ips: list[str] | None = None) -> dict:
    spec: dict = {} if ip is None else {"clusterIP": ip}
    if ips:
        spec["clusterIPs"] = ips
    return {"kind": "Service", "metadata": {"namespace": ns, "name": name}, "spec": spec}


def test_services_outside_the_service_cidr():
    stored = [
        svc("default", "kubernetes", "127.96.0.1"),  # a built-in: re-created, not a reason to refuse
        svc("kube-system", "kube-dns", "127.96.0.10"),
        svc("default", "web", "127.96.3.4"),
        svc("default", "inside", "10.96.3.4"),
        svc("default", "headless", "None"),
        svc("default", "external", None),  # ExternalName: no ClusterIP
        svc("default", "dual", "10.96.0.7", ["10.96.0.7", "fd00::7"]),
    ]
    assert services_outside(stored, [net("10.96.0.0/16")]) == ["default/web (127.96.3.4)", "default/dual (fd00::7)"]
    assert services_outside(stored[3:], [net("10.96.0.0/16"), net("fd00::/112")]) == []


def test_a_state_dir_from_another_mode_is_refused_on_one_line():
    cfg = netns(state_dir=Path("/tmp/lab-state"))
    assert state_services_problem(cfg, [svc("default", "kubernetes", "127.96.0.1")]) is None  # built-ins only
    text = state_services_problem(cfg, [svc("default", f"s{i}", f"127.96.0.{i + 2}") for i in range(5)])
    assert "\n" not in text and "--state-dir" in text and "--ephemeral" in text and "/tmp/lab-state" in text
    assert "default/s0 (127.96.0.2)" in text and "and 2 more" in text
