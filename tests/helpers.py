"""What several test files need alike: waiting on a condition, Kubernetes object
builders, stand-in admission, running a command, the in-process lab and the public
NetworkPolicy case data.

One copy, so that every test fails the same way (naming what it waited for) and
builds the same object shapes. Import it as ``from tests.helpers import ...``
(pyproject's ``[tool.pytest.ini_options] pythonpath = ["."]`` puts the repo root on
``sys.path``; ``tests/`` stays a namespace package, like the component folders).

Nothing here sleeps to synchronise: the waits poll a condition and fail at a deadline.
The lab is imported inside the helper that starts it, so that the
pure unit tests importing the builders stay light.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DATA_DIR = Path(__file__).resolve().parent / "data"
# The ``kubelab`` console script of this venv (the real entry point, as a user runs it).
KUBELAB = str(Path(sys.executable).with_name("kubelab"))


# --- waiting on a condition ---------------------------------------------------------


def _timed_out(what: str, timeout: float, last: object) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g} s waiting for {what} (last value: {last!r:.300})")


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 5.0,
    what: str = "condition",
    *,
    interval: float = 0.01,
) -> T:
    """Poll ``predicate`` every ``interval`` seconds until it returns something truthy; return that.

    ``predicate`` may be sync or return an awaitable (an ``async def`` called with no
    arguments). After ``timeout`` seconds it fails with an AssertionError naming ``what``
    and the last value seen; an awaitable still running then is cancelled. A
    ``TimeoutError`` raised by the predicate itself propagates unchanged.
    """
    last: object = None
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while True:
                value = predicate()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value  # type: ignore[return-value]
                last = value
                await asyncio.sleep(interval)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise _timed_out(what, timeout, last) from None


def wait_until_sync(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    what: str = "condition",
    *,
    interval: float = 0.01,
) -> T:
    """:func:`wait_until` for sync tests (no event loop): the predicate is tried at least
    once, and once more after the deadline, before it fails."""
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline
        value = predicate()
        if value:
            return value
        if expired:
            raise _timed_out(what, timeout, value)
        time.sleep(interval)


# --- Kubernetes objects (plain dicts, as the API takes them) ---------------------------


def _metadata(name: str, ns: str | None, labels: Mapping[str, str] | None) -> dict[str, Any]:
    """``metadata`` with the namespace and labels only when given (None: the server's choice)."""
    meta: dict[str, Any] = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    if labels is not None:
        meta["labels"] = dict(labels)
    return meta


def namespace(name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _metadata(name, None, labels)}


def node(name: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


def pod(
    name: str,
    ns: str | None = "default",
    labels: Mapping[str, str] | None = None,
    ip: str | None = None,
    ready: bool | None = None,
    ports: Iterable[Mapping[str, Any]] | None = None,
    *,
    node: str | None = None,
    image: str = "kubelab/echo",
) -> dict[str, Any]:
    """A Pod with one container ``c``.

    With ``ip`` it is a simulated pod (``status.podIP`` given, so admission keeps the
    status): phase Running, ``podIPs`` as admission would default it, and a Ready
    condition when ``ready`` is not None. Without ``ip`` it has no status (a run pod).
    ``ports`` are container ports (``{"containerPort": 8080, "name": "http"}``);
    ``ns=None`` leaves the namespace to the server.
    """
    container: dict[str, Any] = {"name": "c", "image": image}
    if ports is not None:
        container["ports"] = [dict(p) for p in ports]
    spec: dict[str, Any] = {"containers": [container]}
    if node is not None:
        spec["nodeName"] = node
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": _metadata(name, ns, labels), "spec": spec}
    if ip is not None:
        status: dict[str, Any] = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        if ready is not None:
            status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        obj["status"] = status
    return obj


def service(
    name: str,
    ns: str | None = "default",
    selector: Mapping[str, str] | None = None,
    ports: Iterable[int | Mapping[str, Any]] = (80,),
    type: str | None = None,  # noqa: A002 - the Kubernetes field name
    *,
    cluster_ip: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Service; a port given as an int is ``{"port": n}``. ``ns=None`` leaves the
    namespace to the server; ``type``/``cluster_ip``/``selector`` are left out unless given."""
    spec: dict[str, Any] = {}
    if type is not None:
        spec["type"] = type
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    if selector is not None:
        spec["selector"] = dict(selector)
    spec["ports"] = [{"port": p} if isinstance(p, int) else dict(p) for p in ports]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(name, ns, labels), "spec": spec}


def network_policy(
    name: str,
    ns: str,
    pod_selector: Mapping[str, str] | None = None,
    *,
    ingress: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
    policy_types: list[str] | None = None,
) -> dict[str, Any]:
    """A NetworkPolicy selecting pods by ``pod_selector`` labels (None: every pod in ``ns``);
    ``ingress``/``egress`` rules are Kubernetes dicts, left out unless given."""
    spec: dict[str, Any] = {"podSelector": {"matchLabels": dict(pod_selector)} if pod_selector else {}}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    if policy_types is not None:
        spec["policyTypes"] = list(policy_types)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


# --- the public NetworkPolicy cases (tests/data/netpol-cases.json) ----------------------


def load_netpol_cases() -> dict[str, Any]:
    return json.loads((DATA_DIR / "netpol-cases.json").read_text())


def netpol_topology(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cases' namespaces, nodes and pods as the Kubernetes objects a user would apply."""
    objs = [namespace(ns["name"], ns["labels"]) for ns in data["namespaces"]]
    objs += [node(n["name"], n["ip"]) for n in data["nodes"]]
    objs += [pod(p["name"], p["namespace"], p["labels"], p["ip"], ports=p["ports"], node=p["node"])
             for p in data["pods"]]
    return objs


# --- stand-in admission for registry tests (duck-typed like controller.admission) -------


class PassThrough:
    """Admission that admits every object as it is."""

    def admit(self, op: str, new: dict | None, old: dict | None, snap: Any) -> dict | None:
        return new


@dataclass(frozen=True)
class Cause:
    field: str
    type: str
    value: object
    detail: str

    def message(self) -> str:
        return f"{self.field}: Invalid value: {self.value}: {self.detail}"


class Invalid(Exception):
    def __init__(self, kind: str, name: str, causes: list[Cause]) -> None:
        self.kind, self.name, self.causes = kind, name, causes
        super().__init__(f'{kind} "{name}" is invalid: ' + causes[0].message())


class PortCheck(PassThrough):
    """Admission that refuses a Service port outside 1-65535, with the Kubernetes message."""

    def admit(self, op: str, new: dict | None, old: dict | None, snap: Any) -> dict | None:
        if new and new["kind"] == "Service":
            for i, p in enumerate(new.get("spec", {}).get("ports", [])):
                if not 1 <= p["port"] <= 65535:
                    raise Invalid("Service", new["metadata"]["name"], [
                        Cause(f"spec.ports[{i}].port", "FieldValueInvalid", p["port"], "must be between 1 and 65535, inclusive")])
        return new


# --- processes and servers -------------------------------------------------------------


async def run_command(
    *argv: str, env: Mapping[str, str] | None = None, stdin: bytes | None = None, timeout: float = 60.0
) -> tuple[int, str, str]:
    """Run ``argv`` to completion; returns (exit code, stdout, stderr). Killed, and the
    test failed, if it takes longer than ``timeout`` seconds."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{' '.join(argv)} did not finish in {timeout:g} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def start_http_responder(ip: str, port: int, answer: Callable[[asyncio.StreamWriter], str]) -> asyncio.Server:
    """A tiny HTTP/1.0 server standing in for a pod: reads one request, answers 200 with
    ``answer(writer)`` as the body (the caller closes the returned server)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = answer(writer).encode()
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, ip, port)


@contextlib.asynccontextmanager
async def local_lab(tmp_path: Path, *, node_ip: str, service_cidr: str, **overrides: Any) -> AsyncIterator[Any]:
    """The whole lab in this process (API and DNS on 127.0.0.1:0, no pod runtime, no
    state dir), ready, on the test's own node IP and service range; closed on exit.
    ``overrides`` are further ``LabConfig`` fields (e.g. ``disabled=frozenset()`` for the runtime)."""
    from kubelab.controller.config import LabConfig
    from kubelab.controller.lab import Lab

    fields: dict[str, Any] = dict(
        api_addr=("127.0.0.1", 0),
        dns_addr=("127.0.0.1", 0),
        service_cidrs=(ipaddress.ip_network(service_cidr),),
        node_ip=node_ip,
        state_dir=None,
        disabled=frozenset({"runtime"}),
    )
    config = LabConfig(**{**fields, **overrides})
    lab = Lab(config, kubeconfig_path=tmp_path / "kubeconfig")
    await lab.start()
    try:
        await lab.wait_ready(10)
        yield lab
    finally:
        await lab.close()
