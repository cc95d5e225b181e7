"""What several test files need alike: waiting on a condition, Kubernetes object
builders, stand-in admission, running a command, free ports, a registry or the
in-process lab, the public NetworkPolicy case data, and for the netns tests (root) the
module skip, per-run name prefixes, free 10.x ranges and the leftover check.

One copy, so that every test fails the same way (naming what it waited for) and
builds the same object shapes. Import it as ``from tests.helpers import ...``
(pyproject's ``[tool.pytest.ini_options] pythonpath = ["."]`` puts the repo root on
``sys.path``; ``tests/`` stays a namespace package, like the component folders).

Nothing here sleeps to synchronise: the waits poll a condition and fail at a deadline.
The lab, registry and runtime are imported inside the helpers that need them, so that
the pure unit tests importing the builders stay light.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]  # the repository (examples/, docker/, ...)
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


def is_ready(pod: Mapping[str, Any] | None) -> bool:
    """The pod exists and its Ready condition is True (what ``kubectl wait --for=condition=Ready`` checks)."""
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def pod_status(registry: Any, name: str, ns: str = "default") -> dict[str, Any]:
    """The stored pod's ``status`` as the registry holds it now; ``{}`` while the pod
    or its status does not exist (so a wait on it keeps waiting instead of crashing)."""
    return (registry.store.snapshot().get("Pod", ns, name) or {}).get("status") or {}


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


def netpol_cluster(data: Mapping[str, Any], case: Mapping[str, Any]) -> Any:
    """The reference engine's ``Cluster`` for one public case: the cases' topology plus the case's policies."""
    from kubelab.controller.netpol import Cluster

    objs = [*netpol_topology(data), *case["policies"]]
    return Cluster(*([o for o in objs if o["kind"] == kind] for kind in ("Namespace", "Node", "Pod", "NetworkPolicy")))


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


# The API on a SqliteStore with PassThrough admission, as a process of its own (argv[1]:
# the state dir); it prints its URL once it listens. Run from ROOT so ``tests`` imports.
_SQLITE_API = r"""
import asyncio, sys
from kubelab.controller.sqlite_store import SqliteStore
from kubelab.controller.registry import Registry
from kubelab.controller.api import make_app, serve
from tests.helpers import PassThrough

async def main():
    store = SqliteStore(sys.argv[1])
    runner, url = await serve(make_app(Registry(store, PassThrough())), "127.0.0.1", 0)
    print(url, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def start_sqlite_api(state_dir: Path, log: Any, timeout: float = 20.0) -> tuple[asyncio.subprocess.Process, str]:
    """The registry API over SQLite in ``state_dir`` (admitting everything) as its own
    process, stderr to ``log``; returns (process, URL) once it listens. The caller kills
    it (a crash test SIGKILLs it mid-write); killed here if it is not up in ``timeout`` s."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SQLITE_API, str(state_dir), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(timeout):
            line = await proc.stdout.readline()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert line.startswith(b"http://"), line
    return proc, line.decode().strip()


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

    fields: dict[str, Any] = dict(
        api_addr=("127.0.0.1", 0),
        dns_addr=("127.0.0.1", 0),
        service_cidrs=(ipaddress.ip_network(service_cidr),),
        node_ip=node_ip,
        state_dir=None,
        disabled=frozenset({"runtime"}),
    )
    config = LabConfig(**{**fields, **overrides})
    async with started_lab(config, kubeconfig_path=tmp_path / "kubeconfig") as lab:
        await lab.wait_ready(10)
        yield lab


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream and wait for it, ignoring a peer that already reset or went away."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port on ``ip`` that nothing listens on right now (bound, then released): for a
    server started in another process, or a connection that must be refused."""
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def memory_registry(config: Any) -> AsyncIterator[Any]:
    """A started ``Registry`` on a ``MemoryStore`` with the real admission for ``config``;
    its store is closed on exit."""
    from kubelab.controller.admission import Admission
    from kubelab.controller.registry import Registry
    from kubelab.controller.store import MemoryStore

    registry = Registry(MemoryStore(), Admission(config))
    await registry.start()
    try:
        yield registry
    finally:
        await registry.store.close()


@contextlib.asynccontextmanager
async def started_lab(config: Any, **lab_kwargs: Any) -> AsyncIterator[Any]:
    """``Lab(config, **lab_kwargs)`` started (not waited ready) and closed on exit, even
    after a failed start. In netns mode everything named with ``config.netns_prefix`` is
    removed afterwards too, so a test that dies midway leaves no namespace behind."""
    from kubelab.controller.lab import Lab

    lab = Lab(config, **lab_kwargs)
    try:
        await lab.start()
        yield lab
    finally:
        await lab.close()
        if config.mode == "netns":
            from kubelab.runtime.netns import cleanup

            cleanup(config.netns_prefix)


# --- network namespaces (root only) ----------------------------------------------------


def require_netns(*tools: str) -> None:
    """Skip the calling test module (call it at module level) unless this machine can run
    netns mode (root, ``ip netns``: ``kubelab.runtime.netns.supported``) and has ``tools``."""
    from kubelab.runtime.netns import supported

    ok, why = supported()
    if not ok:
        pytest.skip(why, allow_module_level=True)
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install)", allow_module_level=True)


def netns_prefix(tag: str) -> str:
    """This run's name prefix (``<tag><pid>-``) for a test's namespaces, links and bridge:
    two runs never share names, and ``cleanup(prefix)`` finds everything a test made."""
    return f"{tag}{os.getpid() % 10000:04d}-"


def free_octet(*second_octets: int) -> int:
    """An X such that no route on this machine mentions ``10.<b>.X.`` for any ``b`` given:
    the test's own 10.<b>.X.0/24 ranges then clash with nothing (each netns test file has
    its own ``b``s). Skips the test when 50 random tries find none."""
    routes = subprocess.run(["ip", "-j", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    used = " ".join(r.get("dst", "") for r in json.loads(routes or "[]"))
    for _ in range(50):
        x = random.randint(1, 254)
        if all(f"10.{b}.{x}." not in used for b in second_octets):
            return x
    pytest.skip(f"no free test subnets 10.{{{','.join(map(str, second_octets))}}}.X.0/24")


def netns_lab_config(x: int, prefix: str, api_port: int, *, services: int, pods: int, lb_pool: int,
                     **overrides: Any) -> Any:
    """A netns-mode ``LabConfig`` on the test's own ranges: services 10.<services>.X.0/24
    (DNS on .10), pods 10.<pods>.X.0/24 (node on .1), LB pool 10.<lb_pool>.X.0/24; the API
    on 127.0.0.1:``api_port``, no DNS upstream, no state. ``overrides``: further fields."""
    from kubelab.controller.config import LabConfig

    fields: dict[str, Any] = dict(
        api_addr=("127.0.0.1", api_port), dns_addr=(f"10.{services}.{x}.10", 53),
        service_cidrs=(ipaddress.ip_network(f"10.{services}.{x}.0/24"),),
        pod_cidr=ipaddress.ip_network(f"10.{pods}.{x}.0/24"), lb_pool=ipaddress.ip_network(f"10.{lb_pool}.{x}.0/24"),
        node_ip=f"10.{pods}.{x}.1", state_dir=None, dns_upstream=(),
        mode="netns", dns_service_ip=f"10.{services}.{x}.10", netns_prefix=prefix,
    )
    return LabConfig(**{**fields, **overrides})


def netns_leftovers(prefix: str, *, links: bool = True) -> list[str]:
    """What is left named with ``prefix``: network namespaces, ``/etc/netns`` dirs and
    (``links``) any ``ip -o link`` line mentioning it. ``[]`` once a test cleaned up."""
    from kubelab.runtime.netns import NETNS_ETC_DIR

    found = [line for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
             .splitlines() if line.startswith(prefix)]
    if links:
        found += [line for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
                  .splitlines() if prefix in line]
    if NETNS_ETC_DIR.is_dir():
        found += [str(d) for d in NETNS_ETC_DIR.glob(f"{prefix}*")]
    return found
