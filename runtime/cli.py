"""``kubelab logs``, ``kubelab exec`` and ``kubelab down``: the pod side of the CLI.

``logs`` reads the log file the runtime writes per container run
(``<state-dir>/pods/<ns>_<pod>_<uid>/<container>/<restartCount>.log``, the kubelet's
``/var/log/pods`` layout). An ``--ephemeral`` lab keeps them under a temporary directory
named after its API address, so the CLI finds them from the server URL alone.

``exec`` runs a command *as the pod*: with the environment the pod's container got
(``POD_IP``, service variables, its ``env``), and in netns mode inside the pod's network
namespace, where ``/etc/resolv.conf`` carries the cluster search path -- so
``kubelab exec default/client -- curl http://my-service`` works as inside a Kubernetes
pod. The exit status is the command's.

``down`` removes every namespace, link, file, rule and route a netns lab made, after a
crash; it refuses while a lab with that prefix runs (the lab's lock, see runtime.netns).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubelab.runtime import process as proc_mod

DEFAULT_NETNS_PREFIX = "kl-"


def ephemeral_log_root(api_host: str, api_port: int) -> Path:
    """Where an ``--ephemeral`` lab's runtime keeps logs (derivable from the API address)."""
    return Path(tempfile.gettempdir()) / f"kubelab-{os.geteuid()}" / f"{api_host}_{api_port}" / "pods"


def split_pod(pod: str, namespace: str | None) -> tuple[str, str]:
    """``POD`` or ``NS/POD`` (``-n`` wins only when POD has no namespace)."""
    if "/" in pod:
        ns, _, name = pod.partition("/")
        return ns, name
    return namespace or "default", pod


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", "-s", default=None, help="API URL (default: $KUBELAB_SERVER or http://127.0.0.1:6443)")
    p.add_argument("--token", default=None, help="bearer token (default: $KUBELAB_TOKEN)")
    p.add_argument("--kubeconfig", default=None, help="read server and token from this kubeconfig")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("logs", help="print a pod's container output",
                       description="Print the output of a pod's container (the current run, or --previous).")
    p.add_argument("pod", metavar="POD", help="pod name, or NS/POD")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-c", "--container", default=None, help="container name (default: the first)")
    p.add_argument("-p", "--previous", action="store_true", help="the run before the current one")
    p.add_argument("--tail", type=int, default=-1, help="only the last N lines")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what the container writes")
    p.add_argument("--state-dir", default=None, help="the lab's state dir (default: $KUBELAB_STATE_DIR or .state)")
    _common(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("exec", help="run a command as a pod (its env; its network namespace in netns mode)",
                       description="Run CMD with the pod's environment, inside its network namespace when "
                                   "the lab runs in netns mode. Exits with CMD's status.")
    p.add_argument("pod", metavar="POD", help="pod name, or NS/POD")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-c", "--container", default=None, help="container whose env to use (default: the first)")
    p.add_argument("-i", "--stdin", action="store_true", help="accepted for kubectl habit: stdin is always passed")
    p.add_argument("-t", "--tty", action="store_true", help="accepted for kubectl habit: the terminal is yours")
    p.add_argument("--netns-prefix", default=DEFAULT_NETNS_PREFIX, help=argparse.SUPPRESS)
    _common(p)
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(func=cmd_exec)

    if "wait" not in sub.choices:  # kubectl's verb; pods are what people wait for
        p = sub.add_parser("wait", help="wait until pods are Ready (or deleted), like kubectl wait",
                           description="Wait for a condition on pods: kubelab wait --for=condition=Ready "
                                       "pod -l app=web --timeout=60s")
        p.add_argument("resource", metavar="pod[/NAME]", help="pod, pods, po, or pod/NAME")
        p.add_argument("names", nargs="*", metavar="NAME")
        p.add_argument("--for", dest="condition", default="condition=Ready",
                       help="condition=Ready (default), condition=ContainersReady, or delete")
        p.add_argument("-l", "--selector", default=None)
        p.add_argument("-n", "--namespace", default=None)
        p.add_argument("--timeout", default="30s", help="give up after this long (30s, 2m, 90)")
        _common(p)
        p.set_defaults(func=cmd_wait)

    p = sub.add_parser("down", help="remove what a crashed netns lab left behind (namespaces, links, files, routes)")
    p.add_argument("--netns-prefix", "--prefix", dest="prefix", default=DEFAULT_NETNS_PREFIX,
                   help="the lab's --netns-prefix (kubelab up --mode netns)")
    p.set_defaults(func=cmd_down)


def _client(args: argparse.Namespace) -> Any:
    from kubelab.controller.client import ApiClient, default_server

    server, token = args.server, args.token or os.environ.get("KUBELAB_TOKEN")
    if args.kubeconfig:
        from kubelab.controller.kubeconfig import read_server

        kc_server, kc_token = read_server(args.kubeconfig)
        server, token = server or kc_server, token or kc_token
    return ApiClient(server or default_server(), token)


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 1


async def _fetch(args: argparse.Namespace, ns: str, name: str, *, services: bool) -> tuple[Any, dict | None, list]:
    """(server URL, pod or None, services in its namespace); raises OSError when unreachable."""
    from kubelab.controller.client import ApiError

    async with _client(args) as client:
        try:
            pod = await client.get("Pod", name, ns)
        except ApiError as exc:
            if exc.code == 404:
                return client.server, None, []
            raise
        svcs = await client.list("Service", ns) if services else []
        return client.server, pod, svcs


def _not_found(name: str) -> int:
    print(f'Error from server (NotFound): pods "{name}" not found', file=sys.stderr)  # kubectl's words
    return 1


def waiting_to_start(pod: dict, container: str) -> str | None:
    """kubectl's message for a container that never ran (ErrImagePull, ContainerCreating...)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container and "waiting" in (cs.get("state") or {}) and not cs.get("lastState") \
                and not cs.get("restartCount"):
            reason = cs["state"]["waiting"].get("reason") or "ContainerCreating"
            return f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting to start: {reason}'
    return None


# --------------------------------------------------------------------------- logs


def cmd_logs(args: argparse.Namespace) -> int:
    from kubelab.controller.cli import run_async

    return run_async(_logs(args))


def log_roots(args: argparse.Namespace, server: str | None) -> list[Path]:
    roots = []
    state = args.state_dir or os.environ.get("KUBELAB_STATE_DIR")
    if state:
        roots.append(Path(state) / "pods")
    else:
        roots.append(Path(".state") / "pods")
        if server:
            u = urlsplit(server)
            if u.hostname and u.port:
                roots.append(ephemeral_log_root(u.hostname, u.port))
    return roots


async def _logs(args: argparse.Namespace) -> int:
    from kubelab.runtime.manager import find_log

    ns, name = split_pod(args.pod, args.namespace)
    server: str | None = None
    uid = None
    try:
        server, pod, _ = await _fetch(args, ns, name, services=False)
    except OSError:
        pod = None  # the lab is down: its log files may still be there
    else:
        if pod is None:
            return _not_found(name)
        uid = pod["metadata"].get("uid")
        ann = (pod["metadata"].get("annotations") or {})
        if ann.get("kubelab.dev/simulated") == "true":
            return _err(f"pod {ns}/{name} is simulated (its status came from a manifest): it has no process and no logs")
        container = args.container or ((pod.get("spec") or {}).get("containers") or [{}])[0].get("name")
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        if args.container and args.container not in names:
            return _err(f"container {args.container} is not valid for pod {name}")
        args.container = container
        waiting = waiting_to_start(pod, container) if not args.previous else None
        if waiting:
            print(f"Error from server (BadRequest): {waiting}", file=sys.stderr)
            return 1
    for root in log_roots(args, server):
        path = find_log(root, ns, name, args.container, previous=args.previous, uid=uid)
        if path is not None:
            data = full = path.read_bytes()
            if args.tail >= 0:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[len(lines) - args.tail:]) if args.tail else b""
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            if args.follow:
                await _follow(path, len(full))
            return 0
    if args.previous:
        return _err(f'previous terminated container "{args.container}" in pod "{name}" not found')
    return _err(f"no logs for pod {ns}/{name} yet (is it running? kubelab get pod {name} -n {ns})")


async def _follow(path: Path, offset: int) -> None:
    """``tail -f``: print what is appended until interrupted (or the file goes away)."""
    import asyncio

    while path.exists():
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        if chunk:
            offset += len(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        else:
            await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- exec


def cmd_exec(args: argparse.Namespace) -> int:
    from kubelab.controller.cli import run_async

    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        return _err("you must specify at least one command for the container (kubelab exec POD -- CMD)")
    ns, name = split_pod(args.pod, args.namespace)
    try:
        plan = run_async(_exec_plan(args, ns, name, cmd))
    except OSError as exc:
        return _err(f"cannot reach the lab API: {exc}")
    if isinstance(plan, int):
        return plan
    argv, env = plan
    try:
        return subprocess.run(argv, env=env).returncode
    except FileNotFoundError:
        return _err(f'exec: "{cmd[0]}": executable file not found in $PATH')


async def _exec_plan(args: argparse.Namespace, ns: str, name: str, cmd: list[str]) -> tuple[list[str], dict] | int:
    from kubelab.runtime.manager import POD_UID_ENV, is_run_pod
    from kubelab.runtime.netns import NETNS_RUN_DIR, netns_name

    _, pod, services = await _fetch(args, ns, name, services=True)
    if pod is None:
        return _not_found(name)
    if not is_run_pod(pod):
        return _err(f"pod {ns}/{name} is simulated (its status came from a manifest): there is nothing to exec into")
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return _err(f"cannot exec into a container in a completed pod; current phase is {status['phase']}")
    containers = (pod.get("spec") or {}).get("containers") or []
    container = next((c for c in containers if args.container in (None, c.get("name"))), None)
    if container is None:
        return _err(f"container {args.container} not found in pod {name}")
    pod_ip = status.get("podIP") or ""
    if not pod_ip:
        return _err(f"pod {ns}/{name} has no IP yet (phase {status.get('phase', 'Pending')})")
    try:
        env = proc_mod.container_env(pod, container, services, pod_ip=pod_ip,
                                     host_ip=status.get("hostIP") or "127.0.0.1")
    except ValueError as exc:
        return _err(str(exc))
    env = proc_mod.base_env({**env, POD_UID_ENV: pod["metadata"].get("uid", "")})
    netns = netns_name(args.netns_prefix, ns, name)
    if (NETNS_RUN_DIR / netns).exists():
        return ["ip", "netns", "exec", netns, *cmd], env
    return cmd, env


# --------------------------------------------------------------------------- wait


def parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def condition_met(pod: dict, condition: str) -> bool:
    want = condition.split("=", 1)[1] if "=" in condition else condition
    ctype, _, value = want.partition("=")
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type", "").lower() == ctype.lower():
            return str(c.get("status")).lower() == (value or "true").lower()
    return False


def cmd_wait(args: argparse.Namespace) -> int:
    from kubelab.controller.cli import run_async

    kind, _, name = args.resource.partition("/")
    if kind not in ("pod", "pods", "po"):
        return _err("kubelab wait supports pods only")
    names = ([name] if name else []) + list(args.names)
    if not names and not args.selector:
        return _err("resource(s) were provided, but no name was specified (give names or -l SELECTOR)")
    try:
        timeout = parse_duration(args.timeout)
    except ValueError:
        return _err(f"invalid --timeout {args.timeout!r}")
    try:
        return run_async(_wait(args, names, timeout))
    except OSError as exc:
        return _err(f"cannot reach the lab API: {exc}")


async def _wait(args: argparse.Namespace, names: list[str], timeout: float) -> int:
    import asyncio

    deleting = args.condition == "delete"
    ns = args.namespace or "default"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    done: set[str] = set()
    async with _client(args) as client:
        while True:
            pods = {p["metadata"]["name"]: p for p in await client.list("Pod", ns, label_selector=args.selector)}
            targets = names or sorted(pods)
            if not names and not pods and not deleting:
                pending = ["(no pods match yet)"]
            else:
                pending = []
                for n in targets:
                    pod = pods.get(n)
                    ok = pod is None if deleting else (pod is not None and condition_met(pod, args.condition))
                    if ok and n not in done:
                        done.add(n)
                        print(f"pod/{n} {'deleted' if deleting else 'condition met'}", flush=True)
                    elif not ok:
                        pending.append(n)
            if not pending:
                return 0
            if loop.time() >= deadline:
                for n in pending:
                    print(f"error: timed out waiting for the condition on pods/{n}", file=sys.stderr)
                return 1
            await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- down


def cmd_down(args: argparse.Namespace) -> int:
    from kubelab.runtime.netns import LabLock, LabRunning, check_prefix, cleanup, is_lab_netns

    problem = check_prefix(args.prefix)
    if problem:
        return _err(problem)
    if os.geteuid() != 0:
        leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        if any(is_lab_netns(args.prefix, (line.split() or [""])[0]) for line in leftovers.splitlines()):
            return _err("kubelab down needs root to remove network namespaces (sudo kubelab down)")
        print("nothing to clean up")
        return 0
    try:
        with LabLock(args.prefix):
            removed = cleanup(args.prefix)
    except LabRunning as exc:
        return _err(f"{exc}: stop it instead (Ctrl-C, or kill the pid)")
    for item in removed:
        print(f"removed {item}")
    if not removed:
        print("nothing to clean up")
    return 0
