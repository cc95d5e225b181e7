"""Self-registration for pods the lab does not run itself (the docker-compose lab).

In the compose lab each echo "pod" is a container that docker started, so the lab's pod
runtime never sees it. This sidecar makes the container a Pod anyway, the way a kubelet
would report it: it creates a *simulated* Pod (one created with ``status.podIP``, see
admission) carrying the container's address, its labels and a Ready condition that follows
an HTTP probe of the workload on 127.0.0.1, and deletes the Pod on SIGTERM so the Service
drops this backend before the container goes away.

    python -m kubelab.runtime.register --server http://controller:6443 --name echo-1 \\
        --namespace default --labels app=echo --ip auto --port 8080

It talks to the registry with plain HTTP on the Kubernetes REST paths (no kubelab
controller import: a pod needs nothing but the API). Level-triggered like the rest of
the lab: every period it probes, and when readiness changed, or every ``--resync``
seconds, it reads the Pod back and re-creates or updates it -- so a controller that
restarted with an empty (``--ephemeral``) registry gets its pods back within seconds. (A
Pod deleted by hand comes back the same way, as a kubelet's mirror pod of a static pod
does: the container, not the API object, is the truth; stop the container to remove it.)

Credentials: ``--token``/``$KUBELAB_TOKEN``, or ``--token-file``/``--kubeconfig`` (the
file ``kubelab up`` writes; re-read on 401 because a restarted controller mints a new token).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp

log = logging.getLogger(__name__)

SIMULATED_ANNOTATION = "kubelab.dev/simulated"
REGISTERED_BY_ANNOTATION = "kubelab.dev/registered-by"


class RegisterError(Exception):
    """A bad flag, or an answer from the registry this sidecar cannot act on."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RegisterConfig:
    """Everything the sidecar needs; built once from flags and environment."""

    server: str = "http://127.0.0.1:6443"
    name: str = ""
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = "auto"  # an address, or "auto": the local address that routes to --server
    port: int = 8080
    protocol: str = "TCP"
    ready_path: str = "/healthz"  # "" or "-": TCP connect probe instead of HTTP GET
    period: float = 1.0  # readiness probe period (Kubernetes periodSeconds)
    failure_threshold: int = 3  # consecutive failures before Ready turns False
    resync: float = 5.0  # re-read the Pod at least this often
    timeout: float = 2.0  # per HTTP request (probe and API)
    node_name: str = "lab-node"
    container_name: str = "echo"
    image: str = "kubelab/echo"
    token: str | None = None
    token_file: Path | None = None
    kubeconfig: Path | None = None
    verbose: int = 0  # 0: info (registrations are rare and worth a line), 1+: debug


def parse_labels(text: str) -> dict[str, str]:
    """``app=echo,tier=web`` -> dict; empty text -> {} (the API validates the values)."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RegisterError(f"--labels {item!r}: expected KEY=VALUE")
        if key in labels:
            raise RegisterError(f"--labels: {key!r} given twice")
        labels[key] = value.strip()
    return labels


def config_from_args(argv: Sequence[str], env: Mapping[str, str]) -> RegisterConfig:
    p = argparse.ArgumentParser(
        prog="python -m kubelab.runtime.register",
        description="Register this container as a (simulated) Pod in a kubelab registry; delete it on SIGTERM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--server", default=env.get("KUBELAB_SERVER", "http://127.0.0.1:6443"), help="registry API URL")
    p.add_argument("--name", default=env.get("POD_NAME") or socket.gethostname(), help="Pod name")
    p.add_argument("--namespace", default=env.get("POD_NAMESPACE", "default"))
    p.add_argument("--labels", default=env.get("POD_LABELS", ""), help="KEY=VALUE,...")
    p.add_argument("--ip", default=env.get("POD_IP", "auto"), help="pod IP, or 'auto' (address routing to --server)")
    p.add_argument("--port", default="8080", help="container port PORT[/TCP|/UDP], probed for readiness")
    p.add_argument("--ready-path", default="/healthz", help="HTTP readiness path; '-' for a TCP connect probe")
    p.add_argument("--period", type=float, default=1.0, help="probe period, seconds")
    p.add_argument("--failure-threshold", type=int, default=3)
    p.add_argument("--resync", type=float, default=5.0, help="re-read the Pod at least this often, seconds")
    p.add_argument("--timeout", type=float, default=2.0, help="per-request timeout, seconds")
    p.add_argument("--node-name", default=env.get("NODE_NAME", "lab-node"))
    p.add_argument("--container-name", default="echo")
    p.add_argument("--image", default="kubelab/echo")
    p.add_argument("--token", default=env.get("KUBELAB_TOKEN") or None, help="bearer token")
    p.add_argument("--token-file", type=Path, default=None, help="file holding the bearer token")
    p.add_argument("--kubeconfig", type=Path, default=None, help="kubeconfig written by `kubelab up` (token)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    a = p.parse_args(list(argv))
    number, _, proto = a.port.partition("/")
    try:
        port = int(number)
    except ValueError:
        raise RegisterError(f"--port {a.port!r}: expected PORT[/TCP|/UDP]") from None
    proto = (proto or "TCP").upper()
    if not 1 <= port <= 65535 or proto not in ("TCP", "UDP"):
        raise RegisterError(f"--port {a.port!r}: expected PORT (1-65535) [/TCP|/UDP]")
    if not a.name:
        raise RegisterError("--name is empty")
    if a.period <= 0 or a.resync <= 0 or a.timeout <= 0 or a.failure_threshold < 1:
        raise RegisterError("--period, --resync, --timeout must be > 0 and --failure-threshold >= 1")
    if urlsplit(a.server).scheme not in ("http", "https"):
        raise RegisterError(f"--server {a.server!r}: expected an http:// or https:// URL")
    return RegisterConfig(
        server=a.server.rstrip("/"),
        name=a.name,
        namespace=a.namespace,
        labels=parse_labels(a.labels),
        ip=a.ip,
        port=port,
        protocol=proto,
        ready_path="" if a.ready_path in ("", "-") else a.ready_path,
        period=a.period,
        failure_threshold=a.failure_threshold,
        resync=a.resync,
        timeout=a.timeout,
        node_name=a.node_name,
        container_name=a.container_name,
        image=a.image,
        token=a.token,
        token_file=a.token_file,
        kubeconfig=a.kubeconfig,
        verbose=a.verbose,
    )


# --------------------------------------------------------------------------- pure decisions


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def pod_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/pods"
    return base if name is None else f"{base}/{name}"


def desired_status(cfg: RegisterConfig, ip: str, ready: bool, started: float, changed: float) -> dict[str, Any]:
    """The Pod status a kubelet would report for this container."""
    flag = "True" if ready else "False"
    return {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": rfc3339(started),
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(started)},
            {"type": "Initialized", "status": "True", "lastTransitionTime": rfc3339(started)},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": rfc3339(changed)},
            {"type": "Ready", "status": flag, "lastTransitionTime": rfc3339(changed)},
        ],
        "containerStatuses": [
            {
                "name": cfg.container_name,
                "image": cfg.image,
                "ready": ready,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": rfc3339(started)}},
            }
        ],
    }


def pod_manifest(cfg: RegisterConfig, ip: str, ready: bool, started: float, changed: float) -> dict[str, Any]:
    """The whole Pod object to create: spec describes the container, status its address."""
    port: dict[str, Any] = {"containerPort": cfg.port, "protocol": cfg.protocol}
    if cfg.protocol == "TCP":
        port["name"] = "http"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": cfg.name,
            "namespace": cfg.namespace,
            "labels": dict(cfg.labels),
            "annotations": {REGISTERED_BY_ANNOTATION: "kubelab.runtime.register"},
        },
        "spec": {
            "nodeName": cfg.node_name,
            "containers": [{"name": cfg.container_name, "image": cfg.image, "ports": [port]}],
        },
        "status": desired_status(cfg, ip, ready, started, changed),
    }


def _condition(status: Mapping[str, Any] | None, kind: str) -> str | None:
    for cond in (status or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return cond.get("status")
    return None


def needs_update(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Does the stored Pod differ from ours in anything a Service or DNS looks at?"""
    cur_status, want_status = current.get("status") or {}, desired.get("status") or {}
    return (
        (current.get("metadata") or {}).get("labels", {}) != desired["metadata"]["labels"]
        or cur_status.get("podIP") != want_status.get("podIP")
        or cur_status.get("phase") != want_status.get("phase")
        or _condition(cur_status, "Ready") != _condition(want_status, "Ready")
    )


def merged_update(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The object to PUT: the stored one (keeps uid, resourceVersion, annotations other
    writers added) with our labels, spec ports and status."""
    obj = copy.deepcopy(dict(current))
    meta = obj.setdefault("metadata", {})
    meta["labels"] = dict(desired["metadata"]["labels"])
    meta.setdefault("annotations", {}).update(desired["metadata"]["annotations"])
    obj["status"] = copy.deepcopy(desired["status"])
    return obj


def token_from_kubeconfig(text: str) -> str | None:
    """The bearer token of the current context's user (or of the only user)."""
    import yaml

    doc = yaml.safe_load(text) or {}
    users = {u.get("name"): (u.get("user") or {}) for u in doc.get("users") or ()}
    current = doc.get("current-context")
    for ctx in doc.get("contexts") or ():
        if ctx.get("name") == current:
            user = users.get((ctx.get("context") or {}).get("user"))
            if user and user.get("token"):
                return str(user["token"])
    tokens = [u["token"] for u in users.values() if u.get("token")]
    return str(tokens[0]) if len(tokens) == 1 else None


def local_address_for(server: str) -> str:
    """The source address this host uses to reach ``server`` (a UDP connect sends nothing)."""
    parts = urlsplit(server)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(sockaddr)
        return str(s.getsockname()[0])


# --------------------------------------------------------------------------- the sidecar


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class Registrar:
    """Keeps one Pod in the registry true to this container until ``close()`` deletes it."""

    def __init__(self, cfg: RegisterConfig) -> None:
        self.cfg = cfg
        self.ip: str | None = None if cfg.ip == "auto" else cfg.ip
        self.ready = False
        self.registered = asyncio.Event()  # set after the first successful create/update
        self.api_errors = 0  # failed registry round trips so far (each one is retried)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._token: str | None = cfg.token
        self._failures = 0
        self._started = time.time()
        self._changed = self._started
        self._last_sync = float("-inf")
        self._synced_ready: bool | None = None

    async def start(self) -> None:
        self._token = self._token or self._read_token()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout))
        self._task = asyncio.create_task(self._run(), name=f"register-{self.cfg.name}")

    async def wait(self) -> None:
        """Returns only if the loop died (it retries everything it can)."""
        assert self._task is not None
        await self._task

    async def close(self, delete: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # the loop's failure was reported by whoever awaited wait()
                log.debug("register loop ended with an error", exc_info=True)
            self._task = None
        if self._session is not None:
            try:
                if delete:
                    await self._delete()
            finally:
                await self._session.close()
                self._session = None

    # -- loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.cfg.period
        while True:
            tick = loop.time()
            await self._probe()
            try:
                if self.ip is None:
                    self.ip = await loop.run_in_executor(None, local_address_for, self.cfg.server)
                    log.info("pod IP %s", self.ip)
                if self._synced_ready != self.ready or time.monotonic() - self._last_sync >= self.cfg.resync:
                    await self._sync()
                backoff = self.cfg.period
            except (OSError, aiohttp.ClientError, asyncio.TimeoutError, ApiError) as exc:
                self.api_errors += 1
                log.warning("registry %s: %s (retrying)", self.cfg.server, exc)
                self._synced_ready = None
                backoff = min(backoff * 2, 2.0)
                await asyncio.sleep(backoff)
                continue
            await asyncio.sleep(max(0.0, self.cfg.period - (loop.time() - tick)))

    async def _probe(self) -> None:
        ok = await self._probe_once()
        self._failures = 0 if ok else self._failures + 1
        ready = ok or (self.ready and self._failures < self.cfg.failure_threshold)
        if ready != self.ready:
            log.info("readiness %s -> %s", self.ready, ready)
            self.ready = ready
            self._changed = time.time()

    async def _probe_once(self) -> bool:
        if self.cfg.protocol != "TCP":
            return True  # nothing to probe on UDP without a protocol: trust the process
        if not self.cfg.ready_path:
            try:
                async with asyncio.timeout(self.cfg.timeout):
                    _, writer = await asyncio.open_connection("127.0.0.1", self.cfg.port)
                writer.close()
                await writer.wait_closed()
                return True
            except (OSError, TimeoutError):
                return False
        assert self._session is not None
        try:
            async with self._session.get(f"http://127.0.0.1:{self.cfg.port}{self.cfg.ready_path}") as resp:
                await resp.read()
                return 200 <= resp.status < 400
        except (OSError, aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def _sync(self) -> None:
        assert self.ip is not None
        desired = pod_manifest(self.cfg, self.ip, self.ready, self._started, self._changed)
        path = pod_path(self.cfg.namespace, self.cfg.name)
        status, current = await self._request("GET", path)
        if status == 404:
            status, body = await self._request("POST", pod_path(self.cfg.namespace), desired)
            if status == 409:  # raced with ourselves or a leftover: next tick updates it
                raise ApiError(status, str(body))
            self._check(status, body, "create")
            log.info("created Pod %s/%s ip=%s ready=%s", self.cfg.namespace, self.cfg.name, self.ip, self.ready)
        else:
            self._check(status, current, "get")
            if needs_update(current, desired):
                await self._update(current, desired)
                log.info("updated Pod %s/%s ip=%s ready=%s", self.cfg.namespace, self.cfg.name, self.ip, self.ready)
        self._synced_ready = self.ready
        self._last_sync = time.monotonic()
        self.registered.set()

    async def _update(self, current: dict[str, Any], desired: dict[str, Any]) -> None:
        path = pod_path(self.cfg.namespace, self.cfg.name)
        obj = merged_update(current, desired)
        status, body = await self._request("PUT", path, obj)
        self._check(status, body, "update")
        if needs_update(body, desired):
            # The registry kept the old status on the main resource: use the subresource.
            status, body = await self._request("PUT", path + "/status", merged_update(body, desired))
            self._check(status, body, "update status")

    async def _delete(self) -> None:
        try:
            status, body = await self._request("DELETE", pod_path(self.cfg.namespace, self.cfg.name))
        except (OSError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("could not delete Pod %s/%s: %s", self.cfg.namespace, self.cfg.name, exc)
            return
        if status in (200, 202, 404):
            log.info("deleted Pod %s/%s", self.cfg.namespace, self.cfg.name)
        else:
            log.warning("could not delete Pod %s/%s: HTTP %s %s", self.cfg.namespace, self.cfg.name, status, body)

    # -- HTTP ----------------------------------------------------------------------------

    def _read_token(self) -> str | None:
        try:
            if self.cfg.token_file is not None:
                return self.cfg.token_file.read_text().strip() or None
            if self.cfg.kubeconfig is not None:
                return token_from_kubeconfig(self.cfg.kubeconfig.read_text())
        except OSError as exc:
            log.warning("cannot read credentials: %s", exc)
        return None

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        for attempt in (0, 1):
            headers = {"Accept": "application/json"}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            assert self._session is not None
            async with self._session.request(method, self.cfg.server + path, json=body, headers=headers) as resp:
                try:
                    data: Any = await resp.json(content_type=None)
                except ValueError:
                    data = await resp.text()
                if resp.status == 401 and attempt == 0 and self.cfg.token is None:
                    fresh = self._read_token()  # the controller restarted with a new token?
                    if fresh and fresh != self._token:
                        self._token = fresh
                        continue
                return resp.status, data
        raise AssertionError("unreachable")

    @staticmethod
    def _check(status: int, body: Any, what: str) -> None:
        if not 200 <= status < 300:
            raise ApiError(status, f"{what}: {body}")
        if not isinstance(body, dict):
            raise ApiError(status, f"{what}: expected a JSON object, got {body!r}")


# --------------------------------------------------------------------------- entry point


async def serve(cfg: RegisterConfig) -> int:
    registrar = Registrar(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await registrar.start()
    waiter = asyncio.ensure_future(stop.wait())
    runner = asyncio.ensure_future(registrar.wait())
    try:
        done, _ = await asyncio.wait([waiter, runner], return_when=asyncio.FIRST_COMPLETED)
        if runner in done and not runner.cancelled() and runner.exception():
            log.error("register loop failed: %r", runner.exception())
            return 1
        return 0
    finally:
        waiter.cancel()
        runner.cancel()
        await registrar.close(delete=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = config_from_args(sys.argv[1:] if argv is None else argv, os.environ)
    except RegisterError as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if cfg.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s register[{cfg.name}]: %(message)s",
    )
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
