"""Container environment, $(VAR) expansion, restart policy and back-off (pure)."""

import pytest

from kubelab.runtime.process import (
    RestartConfig,
    container_env,
    env_name,
    exit_reason,
    expand,
    field_ref,
    restart_delay,
    service_env,
    should_restart,
)


def svc(name, ip, ports, type_="ClusterIP"):
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"type": type_, "clusterIP": ip, "ports": ports}}


POD = {"metadata": {"name": "web-0", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}},
       "spec": {"nodeName": "lab-node", "containers": []}}


def test_env_name():
    assert env_name("my-service") == "MY_SERVICE"


def test_service_env_matches_kubelet():
    env = service_env([svc("my-service", "127.96.0.10", [{"name": "http", "port": 80, "protocol": "TCP"},
                                                         {"name": "dns-udp", "port": 53, "protocol": "UDP"}])])
    assert env == {
        "MY_SERVICE_SERVICE_HOST": "127.96.0.10",
        "MY_SERVICE_SERVICE_PORT": "80",
        "MY_SERVICE_SERVICE_PORT_HTTP": "80",
        "MY_SERVICE_SERVICE_PORT_DNS_UDP": "53",
        "MY_SERVICE_PORT": "tcp://127.96.0.10:80",
        "MY_SERVICE_PORT_80_TCP": "tcp://127.96.0.10:80",
        "MY_SERVICE_PORT_80_TCP_PROTO": "tcp",
        "MY_SERVICE_PORT_80_TCP_PORT": "80",
        "MY_SERVICE_PORT_80_TCP_ADDR": "127.96.0.10",
        "MY_SERVICE_PORT_53_UDP": "udp://127.96.0.10:53",
        "MY_SERVICE_PORT_53_UDP_PROTO": "udp",
        "MY_SERVICE_PORT_53_UDP_PORT": "53",
        "MY_SERVICE_PORT_53_UDP_ADDR": "127.96.0.10",
    }


def test_service_env_skips_headless_externalname_and_portless():
    services = [svc("headless", "None", [{"port": 80}]), svc("ext", "", [{"port": 80}], "ExternalName"),
                svc("noports", "127.96.0.3", []), svc("ok", "127.96.0.4", [{"port": 81}])]
    env = service_env(services)
    assert "OK_SERVICE_HOST" in env
    assert not [k for k in env if k.startswith(("HEADLESS", "EXT", "NOPORTS"))]
    assert [k for k in env if k.startswith("OK_SERVICE_PORT_")] == []  # unnamed port: no _PORT_<NAME>


@pytest.mark.parametrize("text, out", [
    ("$(A)-$(B)", "1-$(B)"),
    ("$$(A)", "$(A)"),
    ("no refs $A", "no refs $A"),
    ("$(POD_IP):8080", "127.55.0.2:8080"),
])
def test_expand(text, out):
    assert expand(text, {"A": "1", "POD_IP": "127.55.0.2"}) == out


def test_container_env_order_and_overrides():
    container = {"name": "c", "env": [
        {"name": "GREETING", "value": "hi $(POD_NAME)"},
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "WEB_SERVICE_HOST", "value": "overridden"},
    ]}
    env = container_env(POD, container, [svc("web", "127.96.0.9", [{"port": 80}])],
                        pod_ip="127.55.0.2", host_ip="127.0.0.1")
    assert env["POD_IP"] == "127.55.0.2" and env["POD_NAME"] == "web-0" and env["POD_NAMESPACE"] == "shop"
    assert env["HOSTNAME"] == "web-0"
    assert env["GREETING"] == "hi web-0"
    assert env["MY_IP"] == "127.55.0.2" and env["APP"] == "web"
    assert env["WEB_SERVICE_HOST"] == "overridden"  # the container's env wins
    assert env["WEB_SERVICE_PORT"] == "80"


def test_container_env_hostname_and_service_links_off():
    pod = {**POD, "spec": {"hostname": "db-0", "enableServiceLinks": False}}
    env = container_env(pod, {"name": "c"}, [svc("web", "127.96.0.9", [{"port": 80}])],
                        pod_ip="127.55.0.2", host_ip="127.0.0.1")
    assert env["HOSTNAME"] == "db-0" and "WEB_SERVICE_HOST" not in env


def test_field_ref():
    assert field_ref(POD, "metadata.namespace", pod_ip="x", host_ip="y") == "shop"
    assert field_ref(POD, "status.hostIP", pod_ip="x", host_ip="y") == "y"
    assert field_ref(POD, "spec.nodeName", pod_ip="x", host_ip="y") == "lab-node"
    with pytest.raises(ValueError):
        field_ref(POD, "spec.containers", pod_ip="x", host_ip="y")


@pytest.mark.parametrize("policy, code, restart", [
    ("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False), ("OnFailure", 2, True),
    ("Never", 1, False), ("Never", 0, False),
])
def test_should_restart(policy, code, restart):
    assert should_restart(policy, code) is restart


def test_backoff_is_kubelets():
    cfg = RestartConfig()
    assert [restart_delay(n, cfg) for n in range(8)] == [0, 10, 20, 40, 80, 160, 300, 300]
    fast = RestartConfig(backoff_base=0.1, backoff_cap=0.4)
    assert [restart_delay(n, fast) for n in range(5)] == [0, 0.1, 0.2, 0.4, 0.4]


def test_exit_reason():
    assert exit_reason(0, None) == "Completed"
    assert exit_reason(1, None) == "Error"
    assert exit_reason(137, 9) == "Error"
