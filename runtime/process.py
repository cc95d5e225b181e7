"""A container as a process group: its environment, its log files, restarts, graceful stop.

The decisions are pure functions (``container_env``, ``service_env``, ``expand``,
``restart_delay``); ``Supervisor`` is the thin asyncio part that starts the process,
waits for it and restarts it as ``restartPolicy`` says, reporting each transition to
the pod runtime through ``on_event``.

Kubelet behaviour kept here:

- environment: the Kubernetes service-link variables of every Service with a cluster IP
  in the pod's namespace (``<SVC>_SERVICE_HOST``, ``<SVC>_SERVICE_PORT``,
  ``<SVC>_SERVICE_PORT_<NAME>`` and the Docker-link style ``<SVC>_PORT...``), then
  ``POD_IP``/``POD_NAME``/``POD_NAMESPACE``/``HOSTNAME``, then the container's own ``env``
  (``value`` with ``$(VAR)`` expansion, ``valueFrom.fieldRef``), which wins;
- ``$(VAR)`` in ``command``/``args`` is expanded from that environment, ``$$`` escapes;
- restarts back off 0 s, then base, 2*base, ... up to the cap (kubelet: 10 s to 5 min),
  and the back-off resets once a container ran for ``reset_after`` (kubelet: 10 min);
- stop is SIGTERM to the whole process group, the grace period, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- environment


def env_name(service_name: str) -> str:
    """``my-service`` -> ``MY_SERVICE`` (kubelet's makeEnvVariableName)."""
    return service_name.upper().replace("-", "_").replace(".", "_")


def has_cluster_ip(svc: Mapping[str, Any]) -> bool:
    ip = (svc.get("spec") or {}).get("clusterIP")
    return bool(ip) and ip != "None"


def service_env(services: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The service-link variables for the given Services (already filtered by namespace).

    Headless and ExternalName services, and services without ports, get none (kubelet).
    """
    env: dict[str, str] = {}
    for svc in sorted(services, key=lambda s: s["metadata"]["name"]):
        spec = svc.get("spec") or {}
        ports = spec.get("ports") or []
        if not has_cluster_ip(svc) or spec.get("type") == "ExternalName" or not ports:
            continue
        name = env_name(svc["metadata"]["name"])
        ip = spec["clusterIP"]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                env[f"{name}_SERVICE_PORT_{env_name(p['name'])}"] = str(p["port"])
        first = ports[0]
        proto = (first.get("protocol") or "TCP").lower()
        host = f"[{ip}]" if ":" in ip else ip
        env[f"{name}_PORT"] = f"{proto}://{host}:{first['port']}"
        for p in ports:
            proto = (p.get("protocol") or "TCP")
            prefix = f"{name}_PORT_{p['port']}_{proto.upper()}"
            env[prefix] = f"{proto.lower()}://{host}:{p['port']}"
            env[f"{prefix}_PROTO"] = proto.lower()
            env[f"{prefix}_PORT"] = str(p["port"])
            env[f"{prefix}_ADDR"] = ip
    return env


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown references stay as written, ``$$`` is ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


def field_ref(pod: Mapping[str, Any], path: str, *, pod_ip: str, host_ip: str) -> str:
    """The downward API fields a lab pod can ask for."""
    meta = pod.get("metadata") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName", ""),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ValueError(f"unsupported fieldRef fieldPath {path!r}")


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], services: Iterable[Mapping[str, Any]],
                  *, pod_ip: str, host_ip: str) -> dict[str, str]:
    """The environment a container starts with (see the module docstring for the order)."""
    meta = pod["metadata"]
    spec = pod.get("spec") or {}
    env: dict[str, str] = {}
    if spec.get("enableServiceLinks", True):
        env.update(service_env(services))
    hostname = spec.get("hostname") or meta["name"]
    env.update(POD_IP=pod_ip, POD_NAME=meta["name"], POD_NAMESPACE=meta.get("namespace", "default"),
               HOSTNAME=hostname, NODE_NAME=spec.get("nodeName") or "", HOST_IP=host_ip)
    for var in container.get("env") or []:
        if "valueFrom" in var:
            ref = (var["valueFrom"] or {}).get("fieldRef")
            if ref is None:
                raise ValueError(f"env {var['name']}: only valueFrom.fieldRef is supported")
            env[var["name"]] = field_ref(pod, ref["fieldPath"], pod_ip=pod_ip, host_ip=host_ip)
        else:
            env[var["name"]] = expand(str(var.get("value", "")), env)
    return env


# --------------------------------------------------------------------------- restarts


@dataclass(frozen=True)
class RestartConfig:
    """Kubelet's crash-loop back-off; ``backoff_base`` is small in tests."""

    policy: str = "Always"  # Always | OnFailure | Never
    backoff_base: float = 10.0
    backoff_cap: float = 300.0
    reset_after: float = 600.0


def should_restart(policy: str, exit_code: int) -> bool:
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return exit_code != 0
    return False


def restart_delay(backoff_step: int, config: RestartConfig) -> float:
    """Delay before restart number ``backoff_step + 1``: 0, base, 2*base, ... capped."""
    if backoff_step <= 0:
        return 0.0
    return min(config.backoff_cap, config.backoff_base * 2 ** (backoff_step - 1))


# --------------------------------------------------------------------------- supervisor


@dataclass(frozen=True)
class ProcessSpec:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    log_dir: Path  # one file per run: <restartCount>.log
    netns: str | None = None
    cwd: str | None = None


@dataclass(frozen=True)
class ContainerEvent:
    """What the supervisor tells the runtime. ``kind``: started | exited | waiting | failed."""

    kind: str
    restart_count: int
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    reason: str = ""
    message: str = ""
    delay: float = 0.0


def exit_reason(exit_code: int, sig: int | None) -> str:
    """containerStatuses[].state.terminated.reason as Kubernetes writes it."""
    if sig == signal.SIGKILL:
        return "Error"  # OOMKilled is the kernel's word; a plain SIGKILL is "Error" (137)
    return "Completed" if exit_code == 0 else "Error"


class Supervisor:
    """Runs one container: start, wait, restart per policy with back-off, stop gracefully."""

    def __init__(self, spec: ProcessSpec, restart: RestartConfig,
                 on_event: Callable[[ContainerEvent], Awaitable[None] | None], *, name: str = "container"):
        self.spec = spec
        self.restart = restart
        self.name = name
        self.restart_count = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._on_event = on_event
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._backoff_step = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def log_path(self, restart_count: int | None = None) -> Path:
        return self.spec.log_dir / f"{self.restart_count if restart_count is None else restart_count}.log"

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"container-{self.name}")

    async def restart_now(self, reason: str = "") -> None:
        """Kill the running process (liveness failure); the restart policy decides what next."""
        if self.proc is not None and self.proc.returncode is None:
            log.info("%s: killing container: %s", self.name, reason)
            await self._terminate(grace=self._grace_for_restart)

    _grace_for_restart = 2.0

    async def stop(self, grace: float) -> None:
        """SIGTERM the process group, wait ``grace`` seconds, SIGKILL; no more restarts."""
        self._stopping = True
        if self.proc is not None and self.proc.returncode is None:
            await self._terminate(grace)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _terminate(self, grace: float) -> None:
        proc = self.proc
        assert proc is not None
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            log.info("%s: grace period %.1fs over, SIGKILL", self.name, grace)
        _signal_group(proc.pid, signal.SIGKILL)  # also reaps children left in the group
        await proc.wait()

    async def _emit(self, event: ContainerEvent) -> None:
        result = self._on_event(event)
        if result is not None:
            await result

    async def _run(self) -> None:
        while not self._stopping:
            started = time.time()
            try:
                self.proc = await self._spawn()
            except OSError as exc:
                msg = f'exec: "{self.spec.argv[0]}": {exc.strerror or exc}'
                await self._emit(ContainerEvent("failed", self.restart_count, reason="StartError", message=msg))
                code, sig = 128, None
                finished = time.time()
            else:
                await self._emit(ContainerEvent("started", self.restart_count, pid=self.proc.pid, started_at=started))
                rc = await self.proc.wait()
                finished = time.time()
                code, sig = (128 - rc, -rc) if rc < 0 else (rc, None)
                if self._stopping:
                    return
                await self._emit(ContainerEvent("exited", self.restart_count, exit_code=code, signal=sig,
                                                started_at=started, finished_at=finished,
                                                reason=exit_reason(code, sig)))
            if not should_restart(self.restart.policy, code):
                return
            if finished - started >= self.restart.reset_after:
                self._backoff_step = 0
            delay = restart_delay(self._backoff_step, self.restart)
            self._backoff_step += 1
            if delay > 0:
                await self._emit(ContainerEvent(
                    "waiting", self.restart_count, exit_code=code, reason="CrashLoopBackOff", delay=delay,
                    message=f"back-off {delay:g}s restarting failed container={self.name}"))
                await asyncio.sleep(delay)
            self.restart_count += 1  # restartCount counts starts after the first, as the kubelet's

    async def _spawn(self) -> asyncio.subprocess.Process:
        self.spec.log_dir.mkdir(parents=True, exist_ok=True)
        argv = list(self.spec.argv)
        if shutil.which(argv[0], path=self.spec.env.get("PATH", os.defpath)) is None:
            # checked here, not by exec: inside `ip netns exec` the error would be ip's exit 255
            raise FileNotFoundError(2, "executable file not found in $PATH")
        if self.spec.netns:
            argv = ["ip", "netns", "exec", self.spec.netns, *argv]
        with open(self.log_path(), "ab", buffering=0) as out:
            return await asyncio.create_subprocess_exec(
                *argv, env=dict(self.spec.env), cwd=self.spec.cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent())


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGKILL the container if the lab process dies,
    so a crashed ``kubelab up`` leaves no pod processes behind (Linux PR_SET_PDEATHSIG)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def base_env(extra: Mapping[str, str], *, inherit: Sequence[str] = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH",
                                                                     "VIRTUAL_ENV", "HOME", "TERM")) -> dict[str, str]:
    """A container sees a small, predictable environment: a few host variables plus its own."""
    env = {k: os.environ[k] for k in inherit if k in os.environ}
    env.update(extra)
    return env
