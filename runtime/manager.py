"""The pod runtime: the lab's kubelet. Runs every *run* Pod and keeps its status true.

Run pods are the Pods without the ``kubelab.dev/simulated`` annotation (admission sets
it on Pods created with a ``status.podIP``). For each one the runtime

1. gives it an address from the pod CIDR (``ipam``; kept across restarts because it
   lives in ``status.podIP``) and, in netns mode, a network namespace (``netns``);
2. starts each container as a process group (``process.Supervisor``) with the pod's
   environment, restarting it as ``restartPolicy`` says;
3. runs its startup/readiness/liveness probes (``probes``);
4. writes ``status`` through ``registry.update_status`` -- phase, podIP(s), hostIP(s),
   the four pod conditions and ``containerStatuses`` -- whenever something changes
   (writes are coalesced per pod);
5. on deletion: the registry's delete hook (installed by ``start``) turns ``DELETE``
   into a ``deletionTimestamp`` (so endpoints show the pod terminating), the runtime
   stops the containers (SIGTERM, grace period, SIGKILL) and then deletes the pod for
   real (``force=True``), as the kubelet does.

An image the runtime cannot run (anything but ``kubelab/echo`` without a ``command``)
is not an error of the runtime: the container waits with reason ``ErrImagePull`` and a
message saying what to do, as ``kubectl describe`` would show it.

The loop is level-triggered: events only name a pod; ``_sync_pod`` reads the current
snapshot and makes the world match it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

from kubelab.runtime import process as proc_mod
from kubelab.runtime.ipam import Ipam, IpamExhausted
from kubelab.runtime.probes import CheckTarget, ProbeError, ProbeSpec, ProbeWorker

log = logging.getLogger(__name__)

SIMULATED_ANNOTATION = "kubelab.dev/simulated"
ECHO_IMAGE = "kubelab/echo"
CONTAINER_ID_SCHEME = "kubelab://"
POD_UID_ENV = "KUBELAB_POD_UID"
ECHO_READY_MARKER = b" listening on "


def is_run_pod(pod: Mapping[str, Any]) -> bool:
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    return ann.get(SIMULATED_ANNOTATION) != "true"


def now_rfc3339(t: float | None = None) -> str:
    when = datetime.datetime.fromtimestamp(t, datetime.timezone.utc) if t else datetime.datetime.now(datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class RuntimeConfig:
    """How the runtime runs pods. ``from_lab`` derives it from the lab's config."""

    mode: str = "local"  # local | netns
    pod_cidr: str = "127.244.0.0/16"
    host_ip: str = "127.0.0.1"
    log_dir: Path | None = None  # None: a temporary directory
    remove_logs: bool = False  # remove log_dir on close (ephemeral labs)
    backoff_base: float = 10.0  # kubelet's crash-loop back-off: 10 s doubling ...
    backoff_cap: float = 300.0  # ... to 5 min
    sandbox_backoff_base: float = 1.0  # a failed pod network is retried after 1 s doubling ...
    sandbox_backoff_cap: float = 30.0  # ... to 30 s (``sandbox_backoff``)
    max_grace: float | None = None  # cap every grace period (tests; None: the pod's own)
    shutdown_grace: float = 5.0  # grace for pods still running when the runtime closes
    python: str = sys.executable  # runs kubelab/echo
    netns: Any = None  # kubelab.runtime.netns.NetnsConfig in netns mode

    @classmethod
    def from_lab(cls, config: Any) -> "RuntimeConfig":
        state_dir = getattr(config, "state_dir", None)
        mode = getattr(config, "mode", "local") or "local"
        netns_cfg = None
        if mode == "netns":
            from kubelab.runtime.netns import NetnsConfig

            from kubelab.runtime.netpol_enforce import proxied_cidrs

            local = proxied_cidrs(config.service_cidrs, config.lb_pool)
            netns_cfg = NetnsConfig(pod_cidr=config.pod_cidr, dns_ip=_dns_ip(config),
                                    cluster_domain=config.cluster_domain, local_cidrs=local,
                                    prefix=getattr(config, "netns_prefix", None) or "kl-")
        if state_dir is not None:
            log_dir = Path(state_dir) / "pods"
        elif config.api_addr[1]:  # --ephemeral: a temp dir the CLI can find from the API address
            from kubelab.runtime.cli import ephemeral_log_root

            log_dir = ephemeral_log_root(*config.api_addr)
        else:  # API on port 0 (tests): nothing to derive it from, a private temp dir
            log_dir = None
        return cls(mode=mode, pod_cidr=str(config.pod_cidr), host_ip=getattr(config, "node_ip", "127.0.0.1"),
                   log_dir=log_dir, remove_logs=state_dir is None, netns=netns_cfg)


def _dns_ip(config: Any) -> str:
    explicit = getattr(config, "dns_service_ip", None)
    if explicit:
        return str(explicit)
    return str(config.dns_addr[0])


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Launch:
    """How to start a container, or why it can't be started."""

    argv: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""  # non-empty: the container can't run (waiting reason)
    message: str = ""
    ready_marker: bytes = b""  # the process prints this once it serves (kubelab/echo)


def image_name(image: str) -> str:
    """``docker.io/kubelab/echo:1.0`` -> ``kubelab/echo`` (registry and tag/digest dropped)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name.rsplit(":", 1)[0]
    parts = name.split("/")
    if len(parts) > 2 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    return "/".join(parts)


def launch_for(container: Mapping[str, Any], env: Mapping[str, str], *, python: str) -> Launch:
    """Decide what process a container is (pure)."""
    command = [proc_mod.expand(str(c), env) for c in container.get("command") or []]
    args = [proc_mod.expand(str(a), env) for a in container.get("args") or []]
    image = str(container.get("image") or "")
    ports = ",".join(f"{p['containerPort']}/{(p.get('protocol') or 'TCP').upper()}"
                     for p in container.get("ports") or [] if p.get("containerPort"))
    echo_env = {"ECHO_PORTS": ports} if ports else {}
    if command:
        return Launch(tuple(command + args))
    name = image_name(image)
    if name == ECHO_IMAGE or name.endswith("/" + ECHO_IMAGE):
        return Launch((python, "-m", "kubelab.runtime.echo", *args), echo_env, ready_marker=ECHO_READY_MARKER)
    if name.endswith("agnhost") and args[:1] == ["netexec"]:
        return Launch((python, "-m", "kubelab.runtime.echo", *args[1:]), echo_env, ready_marker=ECHO_READY_MARKER)
    return Launch(reason="ErrImagePull", message=(
        f'kubelab runs containers as processes on this machine and cannot pull image "{image}": '
        f"use image {ECHO_IMAGE}, or set the container's command"))


# --------------------------------------------------------------------------- per pod state


@dataclass
class ContainerRun:
    """What the runtime knows about one container (the source of containerStatuses)."""

    spec: Mapping[str, Any]
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    final: bool = False  # terminated and will not restart
    pid: int | None = None
    supervisor: proc_mod.Supervisor | None = None
    probes: list[ProbeWorker] = field(default_factory=list)
    ready_marker: bytes = b""

    @property
    def name(self) -> str:
        return str(self.spec["name"])


@dataclass
class PodRun:
    namespace: str
    name: str
    uid: str
    ip: str
    start_time: str
    log_dir: Path
    containers: list[ContainerRun]
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.Task[None] | None = None
    grace: float = 30.0  # spec.terminationGracePeriodSeconds, for when the pod is gone already
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)  # cond type -> (status, time)
    sandbox_failed: bool = False  # the pod network failed: torn down, rebuilt after a back-off
    sandbox_retry: asyncio.TimerHandle | None = None  # pending until the back-off ends

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def sandbox_backoff(failures: int, base: float = 1.0, cap: float = 30.0) -> float:
    """Seconds before building a pod's network again after ``failures`` failed attempts
    in a row (1 s, 2 s, 4 s ... 30 s by default), as kubelet backs off sandbox creation."""
    return min(base * 2 ** max(0, failures - 1), cap)


# --------------------------------------------------------------------------- status (pure)


def container_status(c: ContainerRun, pod_ip: str) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": c.name,
        "image": c.spec.get("image", ""),
        "imageID": "",
        "ready": c.ready,
        "started": c.started,
        "restartCount": c.restart_count,
        "state": c.state,
        "lastState": c.last_state,
    }
    if c.pid is not None:
        status["containerID"] = f"{CONTAINER_ID_SCHEME}{c.pid}"
    return status


def delete_marked(pod: Mapping[str, Any], *, now: str) -> dict:
    """The pod as graceful deletion stores it: ``deletionTimestamp`` + grace period."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return pod  # type: ignore[return-value]  # already terminating: a second DELETE changes nothing
    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    marked = dict(pod)
    marked["metadata"] = {**meta, "deletionTimestamp": now,
                          "deletionGracePeriodSeconds": int(30 if grace is None else grace)}
    return marked


def pod_phase(containers: Sequence[ContainerRun]) -> str:
    # Pending: some container never started (image, config or sandbox problems, or just creating)
    if any("waiting" in c.state and c.restart_count == 0 and not c.last_state for c in containers):
        return "Pending"
    if containers and all(c.final for c in containers):
        ok = all(c.state.get("terminated", {}).get("exitCode", 1) == 0 for c in containers)
        return "Succeeded" if ok else "Failed"
    return "Running"


def pod_status(run: PodRun, host_ip: str, *, now: str) -> dict[str, Any]:
    """The Pod's ``status`` from what the runtime knows (pure, apart from ``now``)."""
    phase = pod_phase(run.containers)
    unready = [c.name for c in run.containers if not c.ready]
    # a terminating pod keeps probing: Ready stays what the probes say (KEP-1669), so its
    # endpoint is "serving" and "terminating" until the containers stop
    containers_ready = not unready
    conds: list[dict[str, Any]] = []

    def cond(ctype: str, ok: bool, reason: str = "", message: str = "") -> None:
        status = "True" if ok else "False"
        prev = run.transitions.get(ctype)
        when = prev[1] if prev and prev[0] == status else now
        run.transitions[ctype] = (status, when)
        c: dict[str, Any] = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": when}
        if reason:
            c["reason"] = reason
        if message:
            c["message"] = message
        conds.append(c)

    if phase in ("Succeeded", "Failed"):
        reason, msg = "PodCompleted", ""
    else:
        reason, msg = ("ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]") if unready else ("", "")
    cond("PodReadyToStartContainers", True)
    cond("Initialized", True)
    cond("Ready", containers_ready, reason, msg)
    cond("ContainersReady", containers_ready, reason, msg)
    cond("PodScheduled", True)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conds,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": run.ip,
        "podIPs": [{"ip": run.ip}],
        "startTime": run.start_time,
        "qosClass": "BestEffort",
        "containerStatuses": [container_status(c, run.ip) for c in run.containers],
    }
    return status


# --------------------------------------------------------------------------- the runtime


class PodRuntime:
    """Runs the lab's run pods. ``start()`` / ``close()``; one per lab.

    ``registry``: the kubelab Registry (needs ``store``, ``update_status``, ``delete`` and
    ``delete_hooks``). ``config``: the LabConfig. ``runtime_config``: overrides (tests).
    ``on_pod_network(netns, pod_ip)``: netns mode, awaited once a pod's namespace exists
    and before any of its containers starts (NetworkPolicy enforcement installs the pod's
    rules there, so no packet leaves the pod before its policy holds). If it raises, the
    pod's containers wait with reason ``CreatePodSandboxError``, as kubelet shows a CNI
    failure; the namespace is torn down and built again after a back-off
    (``sandbox_backoff``, per pod), until it works or the pod is deleted.
    """

    def __init__(self, registry: Any, config: Any, runtime_config: RuntimeConfig | None = None, *,
                 on_pod_network: Callable[[str, str], Awaitable[None]] | None = None):
        self.registry = registry
        self.on_pod_network = on_pod_network
        self._netns_by_ip: dict[str, str] = {}
        self.lab_config = config
        self.config = runtime_config or RuntimeConfig.from_lab(config)
        self.ipam = Ipam(self.config.pod_cidr)
        self.pods: dict[str, PodRun] = {}
        self.ready = False
        self._log_root: Path | None = None
        self._own_log_root = False
        self._log_dirs: set[Path] = set()
        self._netns: Any = None
        self._watch_task: asyncio.Task[None] | None = None
        self._pod_tasks: dict[str, asyncio.Task[None]] = {}
        self._pending: set[str] = set()
        self._sandbox_failures: dict[str, tuple[str, int]] = {}  # pod key -> (uid, failures in a row)
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self.config.log_dir is None:
            self._log_root = Path(tempfile.mkdtemp(prefix="kubelab-pods-"))
            self._own_log_root = True
        else:
            self._log_root = self.config.log_dir
            self._log_root.mkdir(parents=True, exist_ok=True)
            self._own_log_root = self.config.remove_logs
        await self.prepare()
        hooks = getattr(self.registry, "delete_hooks", None)
        if isinstance(hooks, dict):
            hooks["Pod"] = self.delete_hook
        snap = self.registry.store.snapshot()
        for pod in snap.list("Pod"):
            ip = (pod.get("status") or {}).get("podIP")
            key = _key(pod)
            if ip and self.ipam.contains(ip):
                self.ipam.observe(key, ip)
            if is_run_pod(pod):
                _kill_leftovers(pod)
        for pod in snap.list("Pod"):
            if is_run_pod(pod):
                self._schedule(_key(pod))
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch(snap.resource_version), name="pod-runtime-watch")
        self.ready = True

    async def prepare(self) -> None:
        """netns mode: build the node side (bridge, local routes for the service CIDR and
        LB pool) and remove leftovers of a crashed lab. Idempotent; ``start`` calls it, but
        ``kubelab up`` calls it first, before the DNS server and the proxy bind service IPs."""
        if self.config.mode == "netns" and self._netns is None:
            from kubelab.runtime.netns import Netns

            netns = Netns(self.config.netns)
            await netns.start()
            self._netns = netns

    async def close(self) -> None:
        """Stop every pod (grace ``shutdown_grace``), remove namespaces and temp logs."""
        self._closing = True
        hooks = getattr(self.registry, "delete_hooks", None)
        if isinstance(hooks, dict) and hooks.get("Pod") == self.delete_hook:
            del hooks["Pod"]
        tasks = [t for t in (self._watch_task, *self._pod_tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(self._stop_pod(run, self.config.shutdown_grace, release=False)
                               for run in list(self.pods.values())), return_exceptions=True)
        self.pods.clear()
        if self._netns is not None:
            await self._netns.close()
        if self._own_log_root and self._log_root is not None:
            # only what this runtime wrote: another lab may share an ephemeral root
            for pod_dir in self._log_dirs:
                shutil.rmtree(pod_dir, ignore_errors=True)
            dirs = [self._log_root]
            if self._log_root.parent.parent.name.startswith("kubelab-"):  # <tmp>/kubelab-UID/HOST_PORT/pods
                dirs.append(self._log_root.parent)
            for d in dirs:
                try:
                    d.rmdir()
                except OSError:
                    pass

    # -- the registry's graceful deletion hook -------------------------------------------

    def delete_hook(self, pod: dict) -> dict | None:
        """DELETE of a run pod marks it terminating; the runtime deletes it when stopped."""
        if not is_run_pod(pod) or self._closing:
            return None
        return delete_marked(pod, now=now_rfc3339())

    # -- reading ------------------------------------------------------------------------

    def log_path(self, namespace: str, name: str, container: str | None = None, *,
                 previous: bool = False, uid: str | None = None) -> Path | None:
        """The log file ``kubelab logs`` shows (``previous``: the run before the current one;
        ``uid``: of that pod only, not of an earlier pod of the same name)."""
        run = self.pods.get(f"{namespace}/{name}")
        if run is None or (uid is not None and run.uid != uid):
            return find_log(self._log_root, namespace, name, container, previous=previous, uid=uid) \
                if self._log_root else None
        c = next((c for c in run.containers if container in (None, c.name)), None)
        if c is None:
            return None
        n = c.restart_count - (1 if previous else 0)
        if n < 0:
            return None
        path = run.log_dir / c.name / f"{n}.log"
        return path if path.exists() else None

    def read_log(self, namespace: str, name: str, container: str | None = None, *, previous: bool = False,
                 tail_lines: int | None = None, limit_bytes: int | None = None,
                 uid: str | None = None) -> bytes | None:
        """A container's output, for an API ``pods/{name}/log`` handler (``kubectl logs``)."""
        path = self.log_path(namespace, name, container, previous=previous, uid=uid)
        if path is None:
            return None
        try:
            return read_log_file(path, tail_lines=tail_lines, limit_bytes=limit_bytes)
        except FileNotFoundError:
            return None

    def netns_of(self, namespace: str, name: str) -> str | None:
        run = self.pods.get(f"{namespace}/{name}")
        return run.netns if run else None

    def netns_of_ip(self, ip: str) -> str | None:
        """netns mode: the namespace of the pod that has ``ip`` (None: no such pod here)."""
        return self._netns_by_ip.get(ip)

    # -- watch --------------------------------------------------------------------------

    async def _watch(self, since: int) -> None:
        from kubelab.controller.store import Gone

        while True:
            try:
                async for event in self.registry.store.watch(since):
                    since = event.resource_version
                    if event.object.get("kind") == "Pod":
                        self._schedule(_key(event.object))
                    elif event.object.get("kind") == "Service":
                        pass  # service env vars are fixed at container start, as in Kubernetes
                return  # the store closed
            except Gone:
                snap = self.registry.store.snapshot()
                since = snap.resource_version
                for key in {_key(p) for p in snap.list("Pod")} | set(self.pods):
                    self._schedule(key)

    def _schedule(self, key: str) -> None:
        """Sync one pod; events arriving while it syncs coalesce into one more sync."""
        if self._closing:
            return
        task = self._pod_tasks.get(key)
        if task is not None and not task.done():
            self._pending.add(key)
            return
        task = asyncio.get_running_loop().create_task(self._sync_loop(key), name=f"pod-sync-{key}")
        self._pod_tasks[key] = task
        task.add_done_callback(lambda t, key=key: self._sync_done(key, t))

    def _sync_done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._pod_tasks.get(key) is task:
            del self._pod_tasks[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("syncing pod %s failed", key, exc_info=task.exception())

    async def _sync_loop(self, key: str) -> None:
        while True:
            self._pending.discard(key)
            await self._sync_pod(key)
            if key not in self._pending:
                return

    async def _sync_pod(self, key: str) -> None:
        ns, name = key.split("/", 1)
        pod = self.registry.store.snapshot().get("Pod", ns, name)
        run = self.pods.get(key)
        if run is not None and (pod is None or pod["metadata"].get("uid") != run.uid or not is_run_pod(pod)):
            same = pod is not None and pod["metadata"].get("uid") == run.uid
            await self._stop_pod(run, self._grace(pod) if same else self._cap(run.grace))
            run = None
        if pod is None or not is_run_pod(pod):
            self._sandbox_failures.pop(key, None)
            return
        if pod["metadata"].get("deletionTimestamp"):
            await self._terminate(pod, run)
            return
        if run is not None and run.sandbox_failed:
            if run.sandbox_retry is not None:
                return  # backing off; the timer syncs the pod again
            await self._stop_pod(run, 0, release=False)  # keeps the IP: status.podIP still names it
            run = None
        if run is None:
            await self._start_pod(pod)

    # -- pod start ----------------------------------------------------------------------

    async def _start_pod(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        key = _key(pod)
        try:
            prior = (pod.get("status") or {}).get("podIP")
            if prior and self.ipam.contains(prior) and self.ipam.observe(key, prior):
                ip = prior
            else:
                ip = self.ipam.allocate(key)
        except IpamExhausted as exc:
            log.error("pod %s: %s", key, exc)
            return
        assert self._log_root is not None
        run = PodRun(meta.get("namespace", "default"), meta["name"], meta.get("uid", ""), ip,
                     (pod.get("status") or {}).get("startTime") or now_rfc3339(),
                     self._log_root / f"{meta.get('namespace', 'default')}_{meta['name']}_{meta.get('uid', '')}",
                     [ContainerRun(c) for c in spec.get("containers") or []])
        self._log_dirs.add(run.log_dir)
        if spec.get("terminationGracePeriodSeconds") is not None:
            run.grace = float(spec["terminationGracePeriodSeconds"])
        self.pods[key] = run
        run.writer = asyncio.get_running_loop().create_task(self._status_writer(run), name=f"pod-status-{key}")
        if self._netns is not None:
            hostname = spec.get("hostname") or meta["name"]
            fqdn = (f"{hostname}.{spec['subdomain']}.{run.namespace}.svc.{self.lab_config.cluster_domain}"
                    if spec.get("subdomain") else None)
            try:
                run.netns = await self._netns.add_pod(run.namespace, run.name, ip, hostname=hostname, fqdn=fqdn,
                                                     spec=spec)
                self._netns_by_ip[ip] = run.netns
                if self.on_pod_network is not None:
                    # publish the pod IP first (kubelet reports it once the sandbox exists):
                    # policy for this pod can only be computed once the registry knows it
                    run.dirty.set()
                    await self.on_pod_network(run.netns, ip)
            except Exception as exc:  # e.g. NetnsError: say so on the pod, as FailedCreatePodSandBox would
                await self._sandbox_failed(run, exc)
                return
            self._sandbox_failures.pop(key, None)
        services = self.registry.store.snapshot().list("Service", run.namespace)
        policy = spec.get("restartPolicy") or "Always"
        for c in run.containers:
            try:
                env = proc_mod.container_env(pod, c.spec, services, pod_ip=ip, host_ip=self.config.host_ip)
            except ValueError as exc:
                c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                continue
            launch = launch_for(c.spec, env, python=self.config.python)
            if launch.reason:
                c.state = {"waiting": {"reason": launch.reason, "message": launch.message}}
                continue
            c.ready_marker = launch.ready_marker
            env = proc_mod.base_env({**launch.extra_env, **env, POD_UID_ENV: run.uid})
            if c is run.containers[0]:
                run.env = env
            pspec = proc_mod.ProcessSpec(launch.argv, env, run.log_dir / c.name, netns=run.netns)
            restart = proc_mod.RestartConfig(policy, self.config.backoff_base, self.config.backoff_cap)
            c.supervisor = proc_mod.Supervisor(pspec, restart, lambda ev, c=c, run=run: self._on_container(run, c, ev),
                                               name=f"{key}/{c.name}")
            c.supervisor.start()
        run.dirty.set()

    async def _sandbox_failed(self, run: PodRun, exc: BaseException) -> None:
        """The pod network could not be built: report it, tear the namespace down and
        build it again after a back-off (the PodRun stays, holding the IP and the status)."""
        uid, failures = self._sandbox_failures.get(run.key, (run.uid, 0))
        failures = (failures if uid == run.uid else 0) + 1
        self._sandbox_failures[run.key] = (run.uid, failures)
        delay = sandbox_backoff(failures, self.config.sandbox_backoff_base, self.config.sandbox_backoff_cap)
        log.error("pod %s: network namespace: %s (retrying in %gs)", run.key, exc, delay)
        run.sandbox_failed = True
        if self._netns_by_ip.get(run.ip) == run.netns:
            del self._netns_by_ip[run.ip]
        run.netns = None
        await self._netns.remove_pod(run.namespace, run.name)  # also what a failed add_pod left
        for c in run.containers:
            c.state = {"waiting": {"reason": "CreatePodSandboxError",
                                   "message": f"failed to set up the pod network: {exc} (back-off {delay:g}s)"}}
        run.dirty.set()

        def due(run: PodRun = run) -> None:
            run.sandbox_retry = None
            if self.pods.get(run.key) is run:
                self._schedule(run.key)

        run.sandbox_retry = asyncio.get_running_loop().call_later(delay, due)

    # -- container events -----------------------------------------------------------------

    async def _on_container(self, run: PodRun, c: ContainerRun, ev: proc_mod.ContainerEvent) -> None:
        if ev.kind == "started":
            if "terminated" in c.state:
                c.last_state = {"terminated": c.state["terminated"]}
            c.restart_count = ev.restart_count
            c.pid = ev.pid
            c.state = {"running": {"startedAt": now_rfc3339(ev.started_at)}}
            await self._start_probes(run, c)
        elif ev.kind in ("exited", "failed"):
            await self._stop_probes(c)
            c.pid, c.ready, c.started = None, False, False
            if "terminated" in c.state:
                c.last_state = {"terminated": c.state["terminated"]}
            term: dict[str, Any] = {"exitCode": ev.exit_code if ev.exit_code is not None else 128,
                                    "reason": ev.reason or "Error",
                                    "startedAt": now_rfc3339(ev.started_at) if ev.started_at else None,
                                    "finishedAt": now_rfc3339(ev.finished_at)}
            if ev.signal:
                term["signal"] = ev.signal
            if ev.message:
                term["message"] = ev.message
            c.state = {"terminated": term}
            policy = c.supervisor.restart.policy if c.supervisor else "Never"
            c.final = not proc_mod.should_restart(policy, term["exitCode"])
        elif ev.kind == "waiting":
            if "terminated" in c.state:
                c.last_state = {"terminated": c.state["terminated"]}
            c.restart_count = ev.restart_count
            message = (f"back-off {ev.delay:g}s restarting failed container={c.name} "
                       f"pod={run.name}_{run.namespace}({run.uid})")
            c.state = {"waiting": {"reason": ev.reason, "message": message}}
        run.dirty.set()

    async def _start_probes(self, run: PodRun, c: ContainerRun) -> None:
        await self._stop_probes(c)
        target = CheckTarget(run.ip, run.env, run.netns)
        specs: dict[str, ProbeSpec] = {}
        for kind, field_name in (("startup", "startupProbe"), ("readiness", "readinessProbe"),
                                 ("liveness", "livenessProbe")):
            if c.spec.get(field_name):
                try:
                    specs[kind] = ProbeSpec.from_k8s(c.spec[field_name], c.spec)
                except ProbeError as exc:
                    log.warning("pod %s container %s: %s", run.key, c.name, exc)
        c.started = "startup" not in specs
        c.ready = c.started and "readiness" not in specs
        log_path = c.supervisor.log_path() if c.supervisor is not None else None
        marker = c.ready_marker

        async def serving() -> None:
            """Probe a built-in image once it said it listens, not while it is importing:
            the first probe then succeeds instead of costing a whole period."""
            if marker and log_path is not None:
                await wait_for_marker(log_path, marker, timeout=3.0)

        def begin(kind: str) -> None:
            spec = specs[kind]

            async def changed(ok: bool, message: str, kind: str = kind) -> None:
                await self._probe_changed(run, c, kind, ok, message, specs)

            worker = ProbeWorker(kind, spec, target, changed, before_first=serving)
            c.probes.append(worker)
            worker.start()

        if "startup" in specs:
            begin("startup")
        else:
            for kind in ("readiness", "liveness"):
                if kind in specs:
                    begin(kind)

    async def _probe_changed(self, run: PodRun, c: ContainerRun, kind: str, ok: bool, message: str,
                             specs: dict[str, ProbeSpec]) -> None:
        if kind == "readiness":
            c.ready = ok and c.started
        elif kind == "startup":
            if ok:
                c.started = True
                c.ready = "readiness" not in specs
                for k in ("readiness", "liveness"):
                    if k in specs:
                        worker = ProbeWorker(k, specs[k], CheckTarget(run.ip, run.env, run.netns),
                                             lambda ok, msg, k=k: self._probe_changed(run, c, k, ok, msg, specs))
                        c.probes.append(worker)
                        worker.start()
            else:
                log.info("pod %s container %s failed its startup probe: %s", run.key, c.name, message)
                self._restart_container(c, f"startup probe failed: {message}")
        elif kind == "liveness" and not ok:
            log.info("pod %s container %s failed its liveness probe: %s", run.key, c.name, message)
            self._restart_container(c, f"liveness probe failed: {message}")
        run.dirty.set()

    def _restart_container(self, c: ContainerRun, reason: str) -> None:
        if c.supervisor is not None:
            sup = c.supervisor
            asyncio.get_running_loop().create_task(sup.restart_now(reason), name=f"restart-{sup.name}")

    async def _stop_probes(self, c: ContainerRun) -> None:
        current = asyncio.current_task()
        workers, c.probes = c.probes, []
        for w in workers:
            if w._task is not current:
                await w.close()

    # -- stop and delete ------------------------------------------------------------------

    def _grace(self, pod: Mapping[str, Any] | None) -> float:
        grace: float = 30.0
        if pod is not None:
            meta = pod.get("metadata") or {}
            if meta.get("deletionGracePeriodSeconds") is not None:
                grace = float(meta["deletionGracePeriodSeconds"])
            elif (pod.get("spec") or {}).get("terminationGracePeriodSeconds") is not None:
                grace = float(pod["spec"]["terminationGracePeriodSeconds"])
        return self._cap(grace)

    def _cap(self, grace: float) -> float:
        return grace if self.config.max_grace is None else min(grace, self.config.max_grace)

    async def _terminate(self, pod: dict, run: PodRun | None) -> None:
        """Graceful deletion: stop the containers, report it, then delete for real."""
        if run is not None:
            await self._stop_pod(run, self._grace(pod), release=True, final_status=True)
        try:
            await self.registry.delete("Pod", pod["metadata"].get("namespace", "default"), pod["metadata"]["name"],
                                       force=True)
        except Exception as exc:  # NotFound: someone else finished it
            if type(exc).__name__ != "NotFound":
                raise

    async def _stop_pod(self, run: PodRun, grace: float, *, release: bool = True, final_status: bool = False) -> None:
        if run.sandbox_retry is not None:
            run.sandbox_retry.cancel()
            run.sandbox_retry = None
        for c in run.containers:
            await self._stop_probes(c)
        await asyncio.gather(*(c.supervisor.stop(grace) for c in run.containers if c.supervisor is not None))
        if final_status:
            for c in run.containers:
                c.ready = False
                c.pid = None
                if "running" in c.state:
                    c.state = {"terminated": {"exitCode": 0, "reason": "Completed",
                                              "startedAt": c.state["running"].get("startedAt"),
                                              "finishedAt": now_rfc3339()}}
                c.final = True
            run.dirty.set()
            await self._flush_status(run)
        if run.writer is not None:
            run.writer.cancel()
            await asyncio.gather(run.writer, return_exceptions=True)
        if self._netns is not None and run.netns:
            if self._netns_by_ip.get(run.ip) == run.netns:
                del self._netns_by_ip[run.ip]
            await self._netns.remove_pod(run.namespace, run.name)
        if self.pods.get(run.key) is run:
            del self.pods[run.key]
        if release:
            self.ipam.release(run.key)

    # -- status ---------------------------------------------------------------------------

    async def _status_writer(self, run: PodRun) -> None:
        while True:
            await run.dirty.wait()
            await self._flush_status(run)

    async def _flush_status(self, run: PodRun) -> None:
        from kubelab.controller.store import NotFound

        while run.dirty.is_set():
            run.dirty.clear()
            pod = self.registry.store.snapshot().get("Pod", run.namespace, run.name)
            if pod is None or pod["metadata"].get("uid") != run.uid:
                return
            status = pod_status(run, self.config.host_ip, now=now_rfc3339())
            if _same_status(pod.get("status"), status):
                continue
            new = dict(pod)
            new["metadata"] = {k: v for k, v in pod["metadata"].items() if k != "resourceVersion"}
            new["status"] = status
            try:
                await self.registry.update_status(new)
            except NotFound:
                return
            except Exception:
                log.exception("pod %s: status update failed", run.key)
                await asyncio.sleep(0.5)
                run.dirty.set()


async def wait_for_marker(path: Path, marker: bytes, *, timeout: float) -> None:
    """Wait until ``path`` contains ``marker`` (or ``timeout`` passes, or it never will)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            if marker in path.read_bytes()[:4096]:
                return
        except OSError:
            pass
        await asyncio.sleep(0.01)


def _same_status(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    return old == new


def _key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


LOG_CHUNK = 64 * 1024


def read_log_file(path: Path, *, tail_lines: int | None = None, limit_bytes: int | None = None,
                  chunk: int = LOG_CHUNK) -> bytes:
    """The log's last ``tail_lines`` lines (all: None), then its first ``limit_bytes`` of
    those, as kubelet answers; a long log is read backwards from its end in ``chunk``s
    until enough lines are found, never whole."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if tail_lines is None:
            f.seek(0)
            return f.read() if limit_bytes is None else f.read(limit_bytes)
        if tail_lines <= 0:
            return b""
        pos, data = size, b""
        # tail_lines lines = that many newlines, plus one more to find where the first starts
        # (a final line without newline counts as a line too)
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
            body = data[:-1] if data.endswith(b"\n") else data
            if body.count(b"\n") >= tail_lines:
                break
    lines = [line + b"\n" for line in data.split(b"\n")]  # "\n" ends a line (kubelet's tail), not "\r"
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    if pos > 0:  # the first line read may be partial, but there were enough whole lines
        lines = lines[1:] if len(lines) > tail_lines else lines
    out = b"".join(lines[len(lines) - tail_lines:] if len(lines) > tail_lines else lines)
    return out if limit_bytes is None else out[:limit_bytes]


def find_log(root: Path | None, namespace: str, name: str, container: str | None, *,
             previous: bool = False, uid: str | None = None) -> Path | None:
    """Find a pod's log on disk (``uid``: that pod exactly; else the newest of that name)."""
    if root is None or not root.is_dir():
        return None
    pattern = f"{namespace}_{name}_{uid}" if uid else f"{namespace}_{name}_*"
    dirs = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not dirs:
        return None
    pod_dir = dirs[-1]
    cdirs = [d for d in sorted(pod_dir.iterdir()) if d.is_dir() and container in (None, d.name)]
    if not cdirs:
        return None
    runs = sorted(cdirs[0].glob("*.log"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    if previous:
        return runs[-2] if len(runs) >= 2 else None
    return runs[-1] if runs else None


def _kill_leftovers(pod: Mapping[str, Any]) -> None:
    """Kill containers a crashed earlier runtime left running (checked by their env)."""
    uid = (pod.get("metadata") or {}).get("uid")
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        cid = str(cs.get("containerID") or "")
        if not cid.startswith(CONTAINER_ID_SCHEME) or not uid:
            continue
        try:
            pid = int(cid[len(CONTAINER_ID_SCHEME):])
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except (ValueError, OSError):
            continue
        if f"{POD_UID_ENV}={uid}".encode() in environ.split(b"\0"):
            log.info("killing leftover container %s of pod %s", pid, _key(pod))
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
