"""The docker-compose lab, end to end: containers for the controller, DNS, proxy, three
self-registering echo pods and a client; the checks are what a person types in the client.

Skipped (with the reason) unless a docker engine answers and `docker compose` exists. The
engine is found as the lab scripts find it: ``$DOCKER_HOST``, else the private engine that
``docker/engine.sh start`` runs, else docker's default socket. The images are (re)built
with ``docker/lab.sh build`` (cached: seconds when warm), the lab is brought up once for the
module and torn down after it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from tests.helpers import ROOT, wait_until_sync

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

LAB = ROOT / "docker" / "lab.sh"
PRIVATE_SOCKET = Path(os.environ.get("KUBELAB_DOCKER_RUN", "/run/kubelab-docker")) / "docker.sock"
SERVICE_CIDR = ipaddress.ip_network("172.28.96.0/20")
NODE_PORT_URL = "http://172.28.0.20:30080/hostname"
POD_NAME = re.compile(r"^echo-[0-9]+$")
T = TypeVar("T")


def docker_env() -> dict[str, str]:
    env = dict(os.environ)
    if "DOCKER_HOST" not in env and PRIVATE_SOCKET.exists():
        env["DOCKER_HOST"] = f"unix://{PRIVATE_SOCKET}"
    if "DOCKER_HOST" in env:
        env.setdefault("KUBELAB_DOCKER_HOST", env["DOCKER_HOST"])
    return env


def engine_skip_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI (bash .ci/docker-lab.sh installs and starts an engine)"
    env = docker_env()
    try:
        info = subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=15)
        compose = subprocess.run(["docker", "compose", "version"], env=env, capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker engine does not answer: {exc}"
    if info.returncode != 0:
        return f"no docker engine answers at {env.get('DOCKER_HOST', 'the default socket')} (docker/engine.sh start)"
    if compose.returncode != 0:
        return "docker compose v2 is missing (docker/engine.sh install)"
    return None


def lab(*args: str, timeout: float = 60, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(LAB), *args], env=docker_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        input=stdin if stdin is not None else "",
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"docker/lab.sh {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def client(*cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return lab("compose", "exec", "-T", "client", *cmd, timeout=timeout, check=False)


@dataclass(frozen=True)
class NotYet:
    """A falsy stand-in for a check's AssertionError, so the wait keeps polling and names it."""

    error: AssertionError

    def __bool__(self) -> bool:
        return False


def eventually(fn: Callable[[], T | None], what: str, timeout: float = 60.0, every: float = 0.5) -> T:
    """Poll ``fn`` until it returns something truthy (an AssertionError means "not yet")."""

    def attempt() -> T | NotYet | None:
        try:
            return fn()
        except AssertionError as exc:
            return NotYet(exc)

    return wait_until_sync(attempt, timeout, what, interval=every)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def compose_lab():
    reason = engine_skip_reason()
    if reason:
        pytest.skip(reason)
    lab("build", timeout=600)
    started = time.monotonic()
    try:
        lab("up", timeout=240)
        yield started
    except BaseException:
        print(lab("diag", check=False, timeout=60).stderr)
        raise
    finally:
        lab("down", timeout=120, check=False)


def api_get(path: str) -> dict:
    """GET on the registry API from inside the controller container (with its token)."""
    script = (
        "import json, sys, urllib.request, yaml\n"
        "cfg = yaml.safe_load(open('/var/run/kubelab/kubeconfig'))\n"
        "token = cfg['users'][0]['user'].get('token')\n"
        f"req = urllib.request.Request('http://127.0.0.1:6443{path}')\n"
        "token and req.add_header('Authorization', 'Bearer ' + token)\n"
        "print(urllib.request.urlopen(req, timeout=5).read().decode())\n"
    )
    proc = lab("compose", "exec", "-T", "controller", "python", "-c", script, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def cluster_ip() -> str:
    return api_get("/api/v1/namespaces/default/services/echo")["spec"]["clusterIP"]


def hostname(url: str) -> str | None:
    proc = client("curl", "-fsS", "--max-time", "3", url)
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and POD_NAME.match(name) else None


def test_dig_returns_the_cluster_ip(compose_lab):
    ip = eventually(cluster_ip, "Service default/echo has a ClusterIP")
    assert ipaddress.ip_address(ip) in SERVICE_CIDR

    def answer():
        out = client("dig", "+short", "+time=1", "+tries=1", "echo.default.svc.cluster.local", "A").stdout.strip()
        assert out == ip, out
        return out

    assert eventually(answer, "dig echo.default.svc.cluster.local") == ip


def test_curl_the_service_name_reaches_an_echo_pod(compose_lab):
    name = eventually(lambda: hostname("http://echo.default.svc.cluster.local/hostname"), "curl the FQDN")
    print(f"compose lab: first answer {time.monotonic() - compose_lab:.1f}s after `up` started")
    assert POD_NAME.match(name)


def test_short_name_resolves_through_the_search_path(compose_lab):
    assert eventually(lambda: hostname("http://echo/hostname"), "curl http://echo/hostname", timeout=30)


def test_node_port_on_the_node_address(compose_lab):
    assert eventually(lambda: hostname(NODE_PORT_URL), f"curl {NODE_PORT_URL}", timeout=30)


def test_requests_spread_over_the_pods(compose_lab):
    def spread():
        names = {hostname("http://echo/hostname") for _ in range(9)}
        names.discard(None)
        return names if len(names) >= 2 else None

    assert len(eventually(spread, "9 requests reach 2+ pods", timeout=30)) >= 2


def test_a_stopped_pod_leaves_the_service_and_comes_back(compose_lab):
    def pod_names() -> set[str]:
        items = api_get("/api/v1/namespaces/default/pods?labelSelector=app%3Decho")["items"]
        return {p["metadata"]["name"] for p in items}

    eventually(lambda: {"echo-1", "echo-2", "echo-3"} <= pod_names(), "three echo pods registered")
    lab("compose", "stop", "-t", "5", "echo-3", timeout=60)
    try:
        # SIGTERM -> the sidecar deletes its Pod before the server goes away.
        eventually(lambda: "echo-3" not in pod_names(), "echo-3 deregistered on stop", timeout=15)

        def only_live():
            names = {hostname("http://echo/hostname") for _ in range(6)}
            return names if names and None not in names and "echo-3" not in names else None

        eventually(only_live, "no request reaches the stopped pod", timeout=30)
    finally:
        lab("compose", "start", "echo-3", timeout=60)
    eventually(lambda: "echo-3" in pod_names(), "echo-3 registered again", timeout=30)


LB_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo-lb, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports: [{name: http, port: 8000, targetPort: 8080}]
"""


def test_load_balancer_ingress_ip_is_claimed_on_the_network(compose_lab):
    kubelab = ("compose", "exec", "-T", "controller", "kubelab")
    creds = ("--kubeconfig", "/var/run/kubelab/kubeconfig")
    lab(*kubelab, "apply", "-f", "-", *creds, stdin=LB_SERVICE)
    try:
        def ingress() -> str | None:
            svc = api_get("/api/v1/namespaces/default/services/echo-lb")
            found = (svc.get("status", {}).get("loadBalancer", {}).get("ingress") or [{}])[0].get("ip")
            return found

        ip = eventually(ingress, "echo-lb gets an ingress IP", timeout=30)
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("172.28.112.0/24")
        assert eventually(lambda: hostname(f"http://{ip}:8000/hostname"), f"curl the LoadBalancer IP {ip}", timeout=30)
    finally:
        lab(*kubelab, "delete", "service", "echo-lb", *creds, check=False)
