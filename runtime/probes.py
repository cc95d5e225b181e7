"""Container probes with the kubelet's semantics: a pure state machine plus thin checkers.

What the kubelet does (pkg/kubelet/prober/worker.go), and so what this does:

- defaults: ``initialDelaySeconds`` 0, ``periodSeconds`` 10, ``timeoutSeconds`` 1,
  ``successThreshold`` 1, ``failureThreshold`` 3;
- a readiness probe starts out *failing* (a pod is not ready until a probe succeeded), a
  liveness probe *succeeding*, a startup probe *unknown* (``ok is None``: the container
  is not started until it succeeds, and is killed once it fails);
- no probe runs before ``initialDelaySeconds`` has passed since the container started;
- the result flips to success after ``successThreshold`` consecutive successes and to
  failure after ``failureThreshold`` consecutive failures; anything in between keeps the
  last result;
- a check that takes longer than ``timeoutSeconds`` is a failure;
- ``httpGet`` succeeds on a status in [200, 400), ``tcpSocket`` when a connection opens,
  ``exec`` when the command exits 0.

The state machine (``ProbeState``/``step``) is pure and table-tested; ``check`` does the
I/O for one attempt, and ``ProbeWorker`` is the loop the runtime runs per probe.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

log = logging.getLogger(__name__)

KINDS = ("readiness", "liveness", "startup")


class ProbeError(ValueError):
    """A probe the runtime cannot run (bad handler, unknown named port)."""


@dataclass(frozen=True)
class ProbeSpec:
    """One probe, resolved against its container (named ports are numbers here)."""

    handler: str  # tcpSocket | httpGet | exec
    port: int = 0
    host: str | None = None  # None: the pod IP
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_k8s(cls, probe: Mapping[str, Any], container: Mapping[str, Any]) -> "ProbeSpec":
        """Build from a Kubernetes Probe object; named ports resolve against the container."""
        timing = dict(
            initial_delay=float(probe.get("initialDelaySeconds", 0) or 0),
            period=float(probe.get("periodSeconds", 10) or 10),
            timeout=float(probe.get("timeoutSeconds", 1) or 1),
            success_threshold=int(probe.get("successThreshold", 1) or 1),
            failure_threshold=int(probe.get("failureThreshold", 3) or 3),
        )
        if "tcpSocket" in probe:
            h = probe["tcpSocket"] or {}
            return cls("tcpSocket", port=resolve_port(h.get("port"), container), host=h.get("host"), **timing)
        if "httpGet" in probe:
            h = probe["httpGet"] or {}
            headers = tuple((x["name"], x["value"]) for x in h.get("httpHeaders", []) or [])
            return cls("httpGet", port=resolve_port(h.get("port"), container), host=h.get("host"),
                       path=h.get("path") or "/", scheme=(h.get("scheme") or "HTTP").upper(),
                       headers=headers, **timing)
        if "exec" in probe:
            command = tuple(str(c) for c in (probe["exec"] or {}).get("command") or ())
            if not command:
                raise ProbeError("exec probe without a command")
            return cls("exec", command=command, **timing)
        raise ProbeError("probe needs one of tcpSocket, httpGet, exec (grpc is not supported)")


def resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    """A probe port is a number or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports", []) or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ProbeError(f"port {port!r} is not a containerPort name of container {container.get('name')!r}")


@dataclass(frozen=True)
class ProbeState:
    ok: bool | None  # None: unknown (a startup probe before its verdict)
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive

    @classmethod
    def initial(cls, kind: str) -> "ProbeState":
        """Readiness starts failed, liveness succeeded, startup unknown (kubelet's worker.go)."""
        if kind not in KINDS:
            raise ValueError(kind)
        return cls(ok={"readiness": False, "liveness": True, "startup": None}[kind])


def step(spec: ProbeSpec, state: ProbeState, success: bool) -> ProbeState:
    """Fold one check result into the state (thresholds count consecutive results)."""
    if success:
        successes = state.successes + 1
        ok = True if successes >= spec.success_threshold else state.ok
        return ProbeState(ok, successes, 0)
    failures = state.failures + 1
    ok = False if failures >= spec.failure_threshold else state.ok
    return ProbeState(ok, 0, failures)


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class CheckTarget:
    """Where a pod's probes go: its IP, env and (netns mode) its namespace."""

    pod_ip: str
    env: Mapping[str, str] = field(default_factory=dict)
    netns: str | None = None
    cwd: str | None = None


async def check(spec: ProbeSpec, target: CheckTarget) -> tuple[bool, str]:
    """Run one attempt; returns (success, a short message for events and status)."""
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.handler == "tcpSocket":
                return await _check_tcp(spec.host or target.pod_ip, spec.port)
            if spec.handler == "httpGet":
                return await _check_http(spec, spec.host or target.pod_ip)
            return await _check_exec(spec.command, target)
    except TimeoutError:
        return False, f"{spec.handler} probe timed out after {spec.timeout:g}s"
    except OSError as exc:
        return False, f"{spec.handler} probe failed: {exc.strerror or exc}"


async def _check_tcp(host: str, port: int) -> tuple[bool, str]:
    _reader, writer = await asyncio.open_connection(host, port)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True, ""


async def _check_http(spec: ProbeSpec, host: str) -> tuple[bool, str]:
    if spec.scheme != "HTTP":
        return False, f"httpGet scheme {spec.scheme} is not supported by kubelab"
    reader, writer = await asyncio.open_connection(host, spec.port)
    try:
        hostport = f"[{host}]:{spec.port}" if ":" in host else f"{host}:{spec.port}"
        headers = {"Host": hostport, "User-Agent": "kube-probe/1.32", "Accept": "*/*", "Connection": "close"}
        headers.update(dict(spec.headers))
        request = f"GET {spec.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(request.encode("latin-1"))
        line = await reader.readline()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    parts = line.decode("latin-1").split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, f"HTTP probe failed: malformed status line {line[:60]!r}"
    status = int(parts[1])
    if 200 <= status < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {status}"


async def _check_exec(command: Sequence[str], target: CheckTarget) -> tuple[bool, str]:
    argv = list(command)
    if target.netns:
        argv = ["ip", "netns", "exec", target.netns, *argv]
    env = {**os.environ, **target.env} if target.env else None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=target.cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except FileNotFoundError:
        return False, f'exec probe failed: executable file not found: "{command[0]}"'
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:  # timeout: kill the whole group
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        await proc.wait()
        raise
    if proc.returncode == 0:
        return True, ""
    text = out.decode(errors="replace").strip()[-200:]
    return False, f"command {list(command)!r} exited with {proc.returncode}" + (f": {text}" if text else "")


# --------------------------------------------------------------------------- worker


class ProbeWorker:
    """Runs one probe for one container run: initial delay, then a check every period.

    ``on_change(ok, message)`` is called on every change of the folded result (and not
    otherwise); the first call for a readiness probe is its first success. A startup
    probe stops after its first success (kubelet).
    """

    def __init__(self, kind: str, spec: ProbeSpec, target: CheckTarget,
                 on_change: Callable[[bool, str], Awaitable[None] | None],
                 *, checker: Callable[[ProbeSpec, CheckTarget], Awaitable[tuple[bool, str]]] = check,
                 before_first: Callable[[], Awaitable[None]] | None = None):
        self.kind = kind
        self.spec = spec
        self.target = target
        self.state = ProbeState.initial(kind)
        self.last_message = ""
        self._on_change = on_change
        self._checker = checker
        self._before_first = before_first  # e.g. "the server said it listens" (kubelab/echo)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"probe-{self.kind}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        await asyncio.sleep(self.spec.initial_delay)
        if self._before_first is not None:
            await self._before_first()
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            ok, message = await self._checker(self.spec, self.target)
            before = self.state.ok
            self.state = step(self.spec, self.state, ok)
            if message:
                self.last_message = message
            if self.state.ok != before:
                log.debug("%s probe now %s: %s", self.kind, "ok" if self.state.ok else "failing", message)
                result = self._on_change(bool(self.state.ok), message)
                if result is not None:
                    await result
                if self.kind == "startup" and self.state.ok:
                    return
            await asyncio.sleep(max(0.0, self.spec.period - (loop.time() - started)))
