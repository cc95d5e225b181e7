"""kubelab-proxy vs haproxy vs a direct connection, all on loopback, in one run.

Starts (as children it owns, in a temp dir): nginx (the backend, one worker),
haproxy (``mode tcp``, one thread) and ``kubelab-proxy`` (uvloop), each on its own
address in 127.80.250.0/24, then measures with wrk and curl:

1. requests/s, keep-alive, 50 connections          (peer: haproxy)
2. new connections/s (``Connection: close``), 50 c  (peer: haproxy)
3. one 1 GB download (nginx sendfile, 1 MiB reads)  (peers: haproxy and direct)
4. p99 latency at half of the proxy's max keep-alive rate, paced by a wrk Lua
   ``delay()``; "added" = p99 through a proxy minus p99 direct at the same pacing
5. with ``--policies N``: a second kubelab-proxy (127.80.250.4) whose route table
   carries a PolicyTable compiled (``kubelab.controller.netpol.compile_policy_table``)
   from N generated NetworkPolicies over ~1,000 pods, the client (127.0.0.1) and the
   backend among them and the verdict "allowed"; its new connections/s are compared
   with the policy-free proxy's in the same run (issue 6: >= 90%)

``--pin`` runs wrk and nginx on CPU 0 and the proxies on CPU 1 (``taskset``), so the
proxy under test never competes with its own client or backend for a core.

Prints a table of figures and ratios (also as JSON with ``--json``). Every child is
stopped by its own pid at the end; every step has a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKEND = ("127.80.250.1", 8080)
HAPROXY = ("127.80.250.2", 8080)
KUBELAB = ("127.80.250.3", 8080)
ADMIN = ("127.80.250.3", 10256)
KUBELAB_NP = ("127.80.250.4", 8080)
ADMIN_NP = ("127.80.250.4", 10256)
CLIENT_IP = "127.0.0.1"  # the source address wrk's connections get on loopback

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    sendfile on;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    server {{
        listen {ip}:{port} backlog=4096 reuseport;
        root {tmp}/www;
        location = / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
"""

HAPROXY_CONF = """
global
    nbthread 1
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen svc
    bind {ip}:{port}
    server nginx {bip}:{bport}
"""

WRK_PACE = """
local d = {delay}
function delay() return d end
"""


def wait_port(addr: tuple[str, int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(addr, timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {addr[0]}:{addr[1]} after {timeout}s")


def cpu_seconds(pid: int | None) -> float:
    """user+system CPU time of a process (from /proc), 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def policy_objects(n_policies: int, n_pods: int = 1000) -> list[dict]:
    """Namespaces, simulated pods and ``n_policies`` NetworkPolicies of assorted shapes.

    20 namespaces of pods labelled app/tier, plus namespace ``bench`` holding the client
    (127.0.0.1, app=client) and the backend (nginx's address, app=nginx). One policy in
    twenty lands in ``bench`` and selects the client (egress) or the backend (ingress);
    exactly one of each allows the bench traffic, the others allow other peers/ports, so
    both ends are isolated and the verdict is decided by a rule in the middle of the list.
    """
    objs: list[dict] = []
    nss = [f"ns-{i}" for i in range(20)]
    for i, ns in enumerate(nss + ["bench"]):
        objs.append({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": ns, "labels": {"team": f"t{i % 4}", "env": "prod" if i % 2 else "dev"}}})

    def pod(ns: str, name: str, ip: str, labels: dict) -> dict:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name, "labels": labels},
                "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip}}

    for i in range(n_pods):
        objs.append(pod(nss[i % 20], f"p{i}", f"127.81.{i // 250}.{i % 250 + 1}",
                        {"app": f"app-{i % 40}", "tier": ("web", "db", "cache")[i % 3]}))
    objs.append(pod("bench", "client", CLIENT_IP, {"app": "client", "tier": "web"}))
    objs.append(pod("bench", "nginx", BACKEND[0], {"app": "nginx", "tier": "web"}))
    allow_in = allow_out = False
    for j in range(n_policies):
        meta = {"namespace": "bench" if j % 20 == 0 else nss[j % 20], "name": f"np-{j}"}
        port = {"protocol": "TCP", "port": 8000 + j % 100}
        peer: dict = {"podSelector": {"matchLabels": {"app": f"app-{j % 40}"}}}
        if j % 3 == 1:
            peer = {"namespaceSelector": {"matchLabels": {"team": f"t{j % 4}"}},
                    "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "db"]}]}}
        elif j % 3 == 2:
            peer = {"ipBlock": {"cidr": f"10.{j % 250}.0.0/16", "except": [f"10.{j % 250}.1.0/24"]}}
        spec: dict = {"podSelector": {"matchLabels": {"app": f"app-{(j * 7) % 40}"}}}
        if meta["namespace"] == "bench":
            if (j // 20) % 2 == 0:
                spec = {"podSelector": {"matchLabels": {"app": "nginx"}}, "policyTypes": ["Ingress"]}
                if not allow_in and j >= n_policies // 2:
                    allow_in = True
                    peer, port = {"podSelector": {"matchLabels": {"app": "client"}}}, {"protocol": "TCP", "port": 8080}
                spec["ingress"] = [{"from": [peer], "ports": [port]}]
            else:
                spec = {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]}
                if not allow_out and j >= n_policies // 2:
                    allow_out = True
                    peer, port = {"podSelector": {"matchLabels": {"app": "nginx"}}}, {"protocol": "TCP", "port": 8080}
                spec["egress"] = [{"to": [peer], "ports": [port]}]
        elif j % 2:
            spec["policyTypes"] = ["Ingress", "Egress"]
            spec["ingress"] = [{"from": [peer], "ports": [port]}]
            spec["egress"] = [{"to": [peer]}]
        else:
            spec["ingress"] = [{"from": [peer]}]
        objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec})
    return objs


class ListSnapshot:
    """Just enough of a registry Snapshot for ``compile_policy_table``."""

    def __init__(self, objs: list[dict]) -> None:
        self.objs = objs

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        return [o for o in self.objs if o["kind"] == kind
                and (namespace is None or o["metadata"].get("namespace") == namespace)]


def policy_table_json(n_policies: int) -> tuple[dict, str]:
    """(PolicyTable JSON, the verdict's explanation) for ``n_policies`` generated policies."""
    from kubelab.controller.netpol import compile_policy_table

    objs = policy_objects(n_policies)
    t0 = time.perf_counter()
    table = compile_policy_table(ListSnapshot(objs))
    dt = time.perf_counter() - t0
    if not table.allows(CLIENT_IP, BACKEND[0], BACKEND[1], "TCP"):
        raise SystemExit("generated policies deny the bench traffic: " + table.explain(CLIENT_IP, BACKEND[0], BACKEND[1], "TCP"))
    n = sum(1 for o in objs if o["kind"] == "NetworkPolicy")
    why = (f"{n} policies, {len(table.pods)} pods compiled in {dt:.2f}s; "
           + table.explain(CLIENT_IP, BACKEND[0], BACKEND[1], "TCP"))
    return table.to_json(), why


def wrk(url: str, *, conns: int, seconds: int, close: bool = False, script: str | None = None,
        pid: int | None = None, pin: list[str] | None = None) -> dict[str, float]:
    cpu0 = cpu_seconds(pid)
    cmd = (pin or []) + ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(val) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    total = re.search(r"(\d+) requests in", out)
    cpu = cpu_seconds(pid) - cpu0
    cpu_us = cpu / int(total.group(1)) * 1e6 if pid and total and int(total.group(1)) else float("nan")
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "cpu_us_per_req": cpu_us, "p50_ms": lat.get("50", float("nan")), "p99_ms": lat.get("99", float("nan")),
            "errors": errors.group(1) if errors else "", "non2xx": int(non2xx.group(1)) if non2xx else 0}  # type: ignore[dict-item]


def bulk_speed(addr: tuple[str, int], size: int) -> float:
    """One GET of the bulk file read with 1 MiB ``recv_into`` (curl's 16 KiB reads were the
    bottleneck of the direct path: ~300 MB/s against ~1.3 GB/s here)."""
    with socket.create_connection(addr, timeout=60) as s:
        s.sendall(b"GET /bulk HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        got = 0
        t0 = time.perf_counter()
        while k := s.recv_into(mv):
            got += k
        dt = time.perf_counter() - t0
    if got < size:
        raise SystemExit(f"bulk download from {addr}: {got} of {size} bytes")
    return size / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5, help="duration of each wrk run")
    ap.add_argument("--bulk-mb", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2, help="runs per figure (best kept)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", default="ka,close,bulk,lat", help="figures to measure (comma-separated)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--policies", type=int, default=0,
                    help="also run a kubelab-proxy with a PolicyTable compiled from N NetworkPolicies")
    ap.add_argument("--pin", action="store_true", help="taskset: wrk+nginx on CPU 0, proxies on CPU 1")
    ap.add_argument("--proxy-arg", action="append", default=[], metavar="ARG",
                    help="extra kubelab-proxy argument (repeatable), e.g. --proxy-arg=--tcp-relay=transport")
    args = ap.parse_args()
    for tool in ("wrk", "nginx", "haproxy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y wrk nginx haproxy curl")

    tmp = Path(tempfile.mkdtemp(prefix="kubelab-bench-proxy-"))
    tmp.chmod(0o755)  # nginx workers run as an unprivileged user
    (tmp / "www").mkdir()
    with open(tmp / "www" / "bulk", "wb") as fh:
        fh.truncate(args.bulk_mb * 1024 * 1024)  # sparse: nginx sendfile reads zeros at memory speed
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, ip=BACKEND[0], port=BACKEND[1]))
    (tmp / "haproxy.cfg").write_text(HAPROXY_CONF.format(ip=HAPROXY[0], port=HAPROXY[1], bip=BACKEND[0], bport=BACKEND[1]))
    table = {"generation": 1, "routes": [{
        "frontend": [KUBELAB[0], KUBELAB[1], "TCP"], "service": "bench/nginx", "portName": "http", "kind": "ClusterIP",
        "backends": [[BACKEND[0], BACKEND[1], "bench/nginx-0", "lab-node", True, True, False]],
    }]}
    (tmp / "routes.json").write_text(json.dumps(table))
    policy_note = ""
    if args.policies:
        policy, policy_note = policy_table_json(args.policies)
        table_np = dict(table, routes=[dict(table["routes"][0], frontend=[KUBELAB_NP[0], KUBELAB_NP[1], "TCP"])],
                        policy=policy)
        (tmp / "routes-np.json").write_text(json.dumps(table_np))
    cpu_client = ["taskset", "-c", "0"] if args.pin else []
    cpu_proxy = ["taskset", "-c", "1"] if args.pin else []

    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp / "children.log", "wb")
    try:
        procs.append(subprocess.Popen(cpu_client + ["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                                      stdout=log, stderr=log))
        procs.append(subprocess.Popen(cpu_proxy + ["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")], stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            cpu_proxy + [args.python, "-m", "kubelab.proxy", "--routes", str(tmp / "routes.json"),
                         "--admin-addr", f"{ADMIN[0]}:{ADMIN[1]}", "--max-connections", "9000", *args.proxy_arg],
            stdout=log, stderr=log, env=dict(os.environ)))
        targets = {"direct": BACKEND, "haproxy": HAPROXY, "kubelab": KUBELAB}
        pids = {"direct": None, "haproxy": procs[1].pid, "kubelab": procs[2].pid}
        if args.policies:
            procs.append(subprocess.Popen(
                cpu_proxy + [args.python, "-m", "kubelab.proxy", "--routes", str(tmp / "routes-np.json"),
                             "--admin-addr", f"{ADMIN_NP[0]}:{ADMIN_NP[1]}", "--max-connections", "9000",
                             *args.proxy_arg],
                stdout=log, stderr=log, env=dict(os.environ)))
            targets["kubelab_np"] = KUBELAB_NP
            pids["kubelab_np"] = procs[3].pid
        for addr in targets.values():
            wait_port(addr)
        url = {k: f"http://{ip}:{port}/" for k, (ip, port) in targets.items()}
        res: dict[str, dict[str, float]] = {}

        only = set(args.only.split(","))
        nan = {"rps": float("nan"), "p99_ms": float("nan"), "Bps": float("nan")}
        # Every figure interleaves the three targets run by run (best of --repeat kept), so a
        # change in machine load during the bench hits all of them alike.
        runs: dict[str, list[dict[str, float]]] = {}
        for fig, kw in (("ka", {}), ("close", {"close": True})):
            if fig not in only and not (fig == "ka" and "lat" in only):
                for name in targets:
                    res[f"{fig}_{name}"] = nan
                continue
            for name in targets:
                wrk(url[name], conns=50, seconds=1, pin=cpu_client, **kw)  # warm up
            for _ in range(args.repeat):
                for name in targets:
                    runs.setdefault(f"{fig}_{name}", []).append(
                        wrk(url[name], conns=50, seconds=args.seconds, pid=pids[name], pin=cpu_client, **kw))
            for name in targets:
                res[f"{fig}_{name}"] = max(runs[f"{fig}_{name}"], key=lambda r: r["rps"])
        # bulk: interleave the three targets so drift in machine load hits all of them alike
        speeds: dict[str, list[float]] = {name: [] for name in targets}
        main3 = ("direct", "haproxy", "kubelab")
        for _ in range(args.repeat if "bulk" in only else 0):
            for name in main3:
                speeds[name].append(bulk_speed(targets[name], args.bulk_mb << 20))
        for name in main3:
            res[f"bulk_{name}"] = {"Bps": max(speeds[name]) if speeds[name] else float("nan")}

        # latency at half of kubelab's max keep-alive rate, same pacing for all three
        conns = 0
        if "lat" in only:
            half = res["ka_kubelab"]["rps"] / 2
            delay_ms = 2
            conns = max(1, round(half * delay_ms / 1000))
            script = tmp / "pace.lua"
            script.write_text(WRK_PACE.format(delay=delay_ms))
        lat: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for _ in range(args.repeat if "lat" in only else 0):
            for name in main3:
                lat[name].append(wrk(url[name], conns=conns, seconds=args.seconds, script=str(script), pin=cpu_client))
        for name in main3:
            res[f"lat_{name}"] = min(lat[name], key=lambda r: r["p99_ms"]) if lat[name] else nan
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if p.args[0] != "nginx" else signal.SIGQUIT)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()
        if os.environ.get("KEEP_BENCH_TMP"):
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    r = res
    nan = float("nan")
    ratios = {
        "keepalive_rps_vs_haproxy": r["ka_kubelab"]["rps"] / r["ka_haproxy"]["rps"],
        "newconn_rps_vs_haproxy": r["close_kubelab"]["rps"] / r["close_haproxy"]["rps"],
        "bulk_vs_haproxy": r["bulk_kubelab"]["Bps"] / r["bulk_haproxy"]["Bps"],
        "bulk_vs_direct": r["bulk_kubelab"]["Bps"] / r["bulk_direct"]["Bps"],
    }
    if args.policies:
        ratios["newconn_rps_policies_vs_none"] = r["close_kubelab_np"]["rps"] / r["close_kubelab"]["rps"]
        ratios["keepalive_rps_policies_vs_none"] = r["ka_kubelab_np"]["rps"] / r["ka_kubelab"]["rps"]
    added = {k: r[f"lat_{k}"]["p99_ms"] - r["lat_direct"]["p99_ms"] for k in ("kubelab", "haproxy")}
    targets_ok = {
        "keepalive >= 0.95x haproxy": ratios["keepalive_rps_vs_haproxy"] >= 0.95,
        "new connections >= 0.8x haproxy": ratios["newconn_rps_vs_haproxy"] >= 0.8,
        "bulk >= haproxy": ratios["bulk_vs_haproxy"] >= 1.0,
        "bulk >= 0.8x direct": ratios["bulk_vs_direct"] >= 0.8,
        "p99 added < 1 ms at half rate": added["kubelab"] < 1.0,
    }
    if args.policies:
        targets_ok[f"new connections with {args.policies} policies >= 0.9x none"] = (
            ratios["newconn_rps_policies_vs_none"] >= 0.9)
    if args.json:
        print(json.dumps({"results": res, "ratios": ratios, "p99_added_ms": added, "targets": targets_ok,
                          "policies": policy_note, "pinned": args.pin, "proxy_args": args.proxy_arg}, indent=1))
        return 0
    print(f"{'figure':34} {'direct':>12} {'haproxy':>12} {'kubelab':>12}  ratio")
    print(f"{'keep-alive req/s (50 c)':34} {r['ka_direct']['rps']:12.0f} {r['ka_haproxy']['rps']:12.0f} "
          f"{r['ka_kubelab']['rps']:12.0f}  {ratios['keepalive_rps_vs_haproxy']:.2f}x haproxy")
    print(f"{'new connections/s (close, 50 c)':34} {r['close_direct']['rps']:12.0f} {r['close_haproxy']['rps']:12.0f} "
          f"{r['close_kubelab']['rps']:12.0f}  {ratios['newconn_rps_vs_haproxy']:.2f}x haproxy")
    mb = 1 << 20
    print(f"{'  proxy CPU us/request, keep-alive':34} {'':12} {r['ka_haproxy'].get('cpu_us_per_req', nan):12.1f} "
          f"{r['ka_kubelab'].get('cpu_us_per_req', nan):12.1f}")
    print(f"{'  proxy CPU us/connection, close':34} {'':12} {r['close_haproxy'].get('cpu_us_per_req', nan):12.1f} "
          f"{r['close_kubelab'].get('cpu_us_per_req', nan):12.1f}")
    print(f"{'1 GB download MB/s':34} {r['bulk_direct']['Bps'] / mb:12.0f} {r['bulk_haproxy']['Bps'] / mb:12.0f} "
          f"{r['bulk_kubelab']['Bps'] / mb:12.0f}  {ratios['bulk_vs_haproxy']:.2f}x haproxy, "
          f"{ratios['bulk_vs_direct']:.2f}x direct")
    print(f"{'p99 ms at %.0f req/s (%d c)' % (r['lat_kubelab']['rps'], conns):34} {r['lat_direct']['p99_ms']:12.3f} "
          f"{r['lat_haproxy']['p99_ms']:12.3f} {r['lat_kubelab']['p99_ms']:12.3f}  "
          f"added {added['kubelab']:.3f} ms (haproxy {added['haproxy']:.3f} ms)")
    if args.policies:
        print(f"{'new conn/s, %d policies vs none' % args.policies:34} {'':12} {r['close_kubelab']['rps']:12.0f} "
              f"{r['close_kubelab_np']['rps']:12.0f}  {ratios['newconn_rps_policies_vs_none']:.2f}x "
              f"(CPU us/conn {r['close_kubelab'].get('cpu_us_per_req', nan):.1f} -> "
              f"{r['close_kubelab_np'].get('cpu_us_per_req', nan):.1f})")
        print(f"{'keep-alive req/s, policies vs none':34} {'':12} {r['ka_kubelab']['rps']:12.0f} "
              f"{r['ka_kubelab_np']['rps']:12.0f}  {ratios['keepalive_rps_policies_vs_none']:.2f}x")
        print(f"  policies: {policy_note}")
    for name, ok in targets_ok.items():
        print(f"  [{'ok' if ok else 'MISS'}] {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
