"""docker-compose.yml against the components it runs, without docker.

The compose file is a contract with four command lines written elsewhere (kubelab up,
kubelab-dns, kubelab-proxy, the echo server). Each service's command is fed to that
component's own argument parser, so a renamed flag fails here, in a second, instead of in
the compose lab in CI. Address plan and manifests are checked the same way.
"""

from __future__ import annotations

import ipaddress
import os

import pytest
import yaml

from tests.helpers import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
NET = COMPOSE["networks"]["lab"]["ipam"]["config"][0]
SUBNET = ipaddress.ip_network(NET["subnet"])
POD_RANGE = ipaddress.ip_network(NET["ip_range"])
# Paths inside the image -> where the Dockerfile copies them from.
IMAGE_PATHS = {"/etc/kubelab/manifests": str(ROOT / "docker" / "manifests")}


def flags(service: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in SERVICES[service]["command"]:
        if arg.startswith("--") and "=" in arg:
            key, _, value = arg.partition("=")
            out.setdefault(key, value)
    return out


def static_ip(service: str) -> ipaddress.IPv4Address:
    return ipaddress.ip_address(SERVICES[service]["networks"]["lab"]["ipv4_address"])


def test_controller_command_parses_with_kubelab_up():
    up = pytest.importorskip("kubelab.controller.up")
    from kubelab.controller.cli import build_parser

    cmd = [IMAGE_PATHS.get(a, a) for a in SERVICES["controller"]["command"]]
    assert cmd[:2] == ["kubelab", "up"]
    args = build_parser().parse_args(cmd[1:])
    cfg = up.config_from_args(args)
    assert cfg.disabled == {"dns", "proxy", "runtime"}
    assert cfg.api_addr == ("0.0.0.0", 6443)
    assert args.zone_sink == ["http://dns:8080"] and args.routes_sink == ["http://proxy:10256"]
    for net in (*cfg.service_cidrs, cfg.lb_pool):
        assert net.subnet_of(SUBNET) and not net.overlaps(POD_RANGE), net
    assert ipaddress.ip_address(cfg.node_ip) == static_ip("proxy")  # NodePorts live on the proxy


def test_dns_command_parses_with_kubelab_dns():
    dns_main = pytest.importorskip("kubelab.dns.__main__")
    cmd = SERVICES["dns"]["command"]
    assert cmd[0] == "kubelab-dns"
    cfg = dns_main.config_from_args(dns_main.build_parser().parse_args(cmd[1:]))
    assert cfg.addr == ("0.0.0.0", 53)  # the client's `dns:` points here
    assert cfg.admin_addr == ("0.0.0.0", 8080)  # the controller's --zone-sink
    assert flags("dns")["--service-cidr"] == flags("controller")["--service-cidr"]
    assert SERVICES["client"]["dns"] == [str(static_ip("dns"))]


def test_proxy_command_parses_with_kubelab_proxy():
    proxy_main = pytest.importorskip("kubelab.proxy.__main__")
    cmd = SERVICES["proxy"]["command"]
    assert cmd[0] == "kubelab-proxy"
    args = proxy_main.build_parser().parse_args(cmd[1:])
    cfg = proxy_main.config_from_args(args)
    assert args.admin_addr == ("0.0.0.0", 10256)  # the controller's --routes-sink
    assert cfg.vip_mode == "compose" and "NET_ADMIN" in SERVICES["proxy"]["cap_add"]
    assert cfg.node_ips == (str(static_ip("proxy")),)


def test_echo_pods_register_with_labels_the_service_selects():
    from kubelab.runtime.register import config_from_args

    from kubelab.controller.manifests import load_paths

    services = [o for o in load_paths([IMAGE_PATHS["/etc/kubelab/manifests"]]) if o["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"echo", "echo-nodeport"}
    pods = [name for name in SERVICES if name.startswith("echo-")]
    assert len(pods) >= 2
    names = set()
    for name in pods:
        env = SERVICES[name]["environment"]
        # What docker/pod-entrypoint.sh passes to the sidecar.
        cfg = config_from_args(
            ["--server", env["KUBELAB_SERVER"], "--port", env["POD_PORT"], "--ip", "auto",
             "--kubeconfig", env["KUBELAB_KUBECONFIG"]],
            {k: str(v) for k, v in env.items()},
        )
        names.add(cfg.name)
        for svc in services:
            assert svc["spec"]["selector"].items() <= cfg.labels.items()
            target = svc["spec"]["ports"][0]["targetPort"]
            assert target in (cfg.port, "http")  # "http" is the port name the sidecar registers
    assert len(names) == len(pods)  # every pod registers under its own name


def test_echo_server_takes_the_entrypoint_flags():
    echo = pytest.importorskip("kubelab.runtime.echo")
    cfg = echo.EchoConfig.from_args(["--host", "0.0.0.0", "--port", "8080"], {"POD_NAME": "echo-1"})
    assert cfg.host == "0.0.0.0" and cfg.ports == ((8080, "TCP"),) and cfg.pod_name == "echo-1"


def test_address_plan():
    statics = {name: static_ip(name) for name, svc in SERVICES.items() if isinstance(svc.get("networks"), dict)}
    assert len(set(statics.values())) == len(statics)
    for name, ip in statics.items():
        assert ip in SUBNET and ip not in POD_RANGE, name  # dynamic pod addresses never collide
    assert COMPOSE["networks"]["lab"]["internal"] is True  # no route off the machine


def test_shell_helpers_are_executable():
    for rel in [".ci/docker-lab.sh", "docker/engine.sh", "docker/lab.sh", "docker/base-image.sh",
                "docker/wheels.sh", "docker/pod-entrypoint.sh", "bench/lab/compose_time.sh"]:
        assert os.access(ROOT / rel, os.X_OK), rel
