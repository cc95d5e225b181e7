from __future__ import annotations

import dataclasses

import pytest

from kubelab.proxy.config import ProxyConfig
from kubelab.proxy.table import Backend, Frontend, Route, RouteTable


def test_defaults_follow_kube_proxy() -> None:
    c = ProxyConfig()
    assert c.connect_schedule == (0.25, 0.5, 1.0, 2.0)
    assert c.balancer == "roundrobin"
    assert c.vip_mode == "local"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.idle_timeout = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "kw",
    [
        {"connect_schedule": ()},
        {"connect_schedule": (0.25, 0)},
        {"balancer": "leastconn"},
        {"vip_mode": "bgp"},
        {"low_water": 10, "high_water": 5},
        {"idle_timeout": 0},
        {"max_connections": 0},
    ],
)
def test_invalid(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ProxyConfig(**kw)  # type: ignore[arg-type]


def test_from_env() -> None:
    c = ProxyConfig.from_env(
        {
            "KUBELAB_PROXY_CONNECT_SCHEDULE": "0.1, 0.2",
            "KUBELAB_PROXY_NODE_IPS": "127.0.0.1,127.0.0.2",
            "KUBELAB_PROXY_MAX_CONNECTIONS": "10",
            "KUBELAB_PROXY_IDLE_TIMEOUT": "5",
            "KUBELAB_PROXY_NODE_NAME": "n2",
        }
    )
    assert c.connect_schedule == (0.1, 0.2)
    assert c.node_ips == ("127.0.0.1", "127.0.0.2")
    assert c.max_connections == 10 and c.idle_timeout == 5.0 and c.node_name == "n2"


def test_route_table_json_round_trip() -> None:
    t = RouteTable(
        7,
        {
            Frontend("127.96.0.10", 53, "UDP"): Route("kube-system/dns", "dns", "ClusterIP",
                                                      (Backend("127.244.0.5", 53, "kube-system/dns-1", "n1"),)),
            Frontend("127.0.0.1", 30080): Route("default/web", "http", "NodePort",
                                                (Backend("127.244.0.6", 80, ready=False, serving=True,
                                                         terminating=True),), 60, "Local"),
        },
    )
    assert RouteTable.from_json(t.to_json()) == t


def test_for_lab() -> None:
    c = ProxyConfig.for_lab(node_name="n1", node_ips=("127.0.0.1",), admin=("127.0.0.1", 0), drain_timeout=3)
    assert c.node_name == "n1" and c.admin_addr == ("127.0.0.1", 0) and c.drain_timeout == 3
    assert ProxyConfig.for_lab().admin_addr is None


def test_tcp_relay_choice() -> None:
    assert ProxyConfig().tcp_relay == "auto"
    assert ProxyConfig.from_env({"KUBELAB_PROXY_TCP_RELAY": "transport"}).tcp_relay == "transport"
    with pytest.raises(ValueError, match="tcp_relay"):
        ProxyConfig(tcp_relay="sendfile")
