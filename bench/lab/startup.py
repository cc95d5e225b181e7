"""Lab start-up times, from process start (``kubelab up`` as a subprocess) to:

  a. ``up --ephemeral -f examples/``                -> first ``GET /readyz`` 200   (target < 1 s)
  b. ``up --mode local -f examples/clusterip``      -> every pod Ready and the ClusterIP
                                                       answering an HTTP GET       (target < 2 s)
  c. the same with ``--mode netns``                 -> same                        (target < 3 s;
                                                       skipped with a reason when not root)

    flock /tmp/kubelab-bench.lock .venv/bin/python bench/lab/startup.py [-n RUNS] [a b c]

Each run is a fresh process on its own ports and address ranges (127.2xx loopback ranges,
10.2xx for netns), stopped with SIGINT after the measurement. The clock starts right
before ``Popen`` and the probes poll every 5 ms, so a figure includes interpreter start,
imports, binding, manifests, pods and the first probe. Also reported: the CPU seconds
(user+sys) the ``kubelab up`` process used for the whole run, start to exit -- steadier
than wall time on a shared machine -- and how long SIGINT took to a clean exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource  # noqa: F401  (the rusage type)
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KUBELAB = str(Path(sys.executable).with_name("kubelab"))
POLL = 0.005
LIMIT = 30.0
TARGETS = {"a": 1.0, "b": 2.0, "c": 3.0}


@dataclass
class Run:
    seconds: float
    cpu: float
    stop: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(host: str, port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def try_get(host: str, port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    try:
        return get(host, port, path, timeout)
    except (OSError, http.client.HTTPException):
        return 0, b""


def pods_ready(api_port: int) -> bool:
    status, body = try_get("127.0.0.1", api_port, "/api/v1/namespaces/default/pods")
    if status != 200:
        return False
    pods = json.loads(body)["items"]
    return bool(pods) and all(
        any(c.get("type") == "Ready" and c.get("status") == "True" for c in (p.get("status") or {}).get("conditions") or [])
        for p in pods)


def cluster_ip(api_port: int) -> str | None:
    status, body = try_get("127.0.0.1", api_port, "/api/v1/namespaces/default/services/my-service")
    return json.loads(body)["spec"].get("clusterIP") if status == 200 else None


def flags(scenario: int, mode: str) -> list[str]:
    """Own address ranges per run so runs (and other labs) never collide."""
    if mode == "netns":
        x = 200 + scenario % 50
        return ["--mode", "netns", "--netns-prefix", f"klb{x}-", "--service-cidr", f"10.{x}.1.0/24",
                "--pod-cidr", f"10.{x}.2.0/24", "--lb-pool", f"10.{x}.3.0/24", "--dns-upstream", "none"]
    x = 200 + scenario % 50
    return ["--service-cidr", f"127.{x}.0.0/18", "--pod-cidr", f"127.{x}.64.0/18", "--lb-pool", f"127.{x}.128.0/24",
            "--node-ip", f"127.{x}.200.1", "--dns-addr", "127.0.0.1:0", "--dns-upstream", "none"]


def stop_lab(proc: subprocess.Popen[bytes], grace: float = 20.0) -> "resource.struct_rusage | None":
    """SIGINT, then SIGKILL after ``grace`` s; the lab's rusage (None if already reaped)."""
    proc.send_signal(signal.SIGINT)
    deadline = time.perf_counter() + grace
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return usage
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                return usage
            time.sleep(POLL)
    except ChildProcessError:
        return None


def measure(which: str, n: int) -> Run:
    api_port = free_port()
    if which == "a":
        args = ["up", "--ephemeral", "-f", "examples/", *flags(n, "local")]
    else:
        args = ["up", "--ephemeral", "-f", "examples/clusterip", *flags(n, "netns" if which == "c" else "local")]
    args += ["--api-addr", f"127.0.0.1:{api_port}"]
    # the lab's log goes to a file: a pipe nobody reads would fill up and block the lab
    log = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen([KUBELAB, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = t0 + LIMIT
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"kubelab up exited {proc.returncode}: {log.read().decode()[-500:]}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"scenario {which}: not ready after {LIMIT} s")
            if which == "a":
                if try_get("127.0.0.1", api_port, "/readyz", 0.5)[0] == 200:
                    break
            elif pods_ready(api_port):
                ip = cluster_ip(api_port)
                if ip and try_get(ip, 80, "/", 0.5)[0] == 200:
                    break
            time.sleep(POLL)
        took = time.perf_counter() - t0
    finally:
        t1 = time.perf_counter()
        usage = stop_lab(proc)
        stop = time.perf_counter() - t1
        log.close()
    cpu = (usage.ru_utime + usage.ru_stime) if usage else float("nan")
    return Run(took, cpu, stop)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=5)
    ap.add_argument("scenarios", nargs="*", metavar="a|b|c", help="which scenarios (default: all)")
    opts = ap.parse_args()
    opts.scenarios = opts.scenarios or ["a", "b", "c"]
    if set(opts.scenarios) - set(TARGETS):
        ap.error("scenarios are a, b and c")
    print(f"# {opts.runs} runs each; load average {os.getloadavg()[0]:.2f} at start; {os.cpu_count()} CPUs")
    print(f"{'scenario':<10}{'median s':>10}{'max s':>8}{'min s':>8}{'target':>8}{'cpu s (med)':>13}{'stop s (med)':>14}")
    for which in opts.scenarios:
        if which == "c":
            sys.path.insert(0, str(ROOT))
            from kubelab.runtime.netns import supported

            ok, why = supported()
            if not ok:
                print(f"{which:<10}skipped: {why}")
                continue
        runs = [measure(which, i) for i in range(opts.runs)]
        secs = [r.seconds for r in runs]
        print(f"{which:<10}{statistics.median(secs):>10.3f}{max(secs):>8.3f}{min(secs):>8.3f}{TARGETS[which]:>8.1f}"
              f"{statistics.median(r.cpu for r in runs):>13.3f}{statistics.median(r.stop for r in runs):>14.3f}")
        print("          runs: " + " ".join(f"{s:.3f}" for s in secs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
