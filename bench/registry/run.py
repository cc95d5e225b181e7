"""Registry bench: bulk apply throughput and readiness-flip -> EndpointSlice latency.

    flock /tmp/kubelab-bench.lock timeout 900 .venv/bin/python bench/registry/run.py

Options: ``--services 10000 --pods 50000 --namespaces 100 --flips 300``, ``--only
floor,inproc,api`` to run a subset, ``--stores memory,sqlite``, ``--profile DIR`` to
write cProfile dumps of the in-process phases.

What it measures (issue 2's numbers), on this machine, in one run:

1. **floor** — the cost of the same bytes without the registry: ``json.loads`` of the
   manifest file, and a plain ``sqlite3`` ``executemany`` of the same objects as JSON
   rows into the store's schema (WAL, ``synchronous=FULL``, one transaction). That is
   the least any durable store of these objects can cost; the ratio of kubelab's rate
   to it is the registry's overhead.
2. **inproc** — ``Registry.apply`` of the parsed file with a ``ControllerManager``
   running (no sinks), on MemoryStore and SqliteStore: *ack* is when ``apply`` returns
   (the objects are stored, and durable for SQLite), *caught up* is when the store
   published the commit holding the last Service's EndpointSlice, *settled* is when the
   controllers are idle again (zone, routes, policy table rebuilt). A dry run first times
   admission alone, and the backend's ``_persist`` is timed: "where the time goes". The
   floor is measured again for the objects as stored. Then ``--flips`` readiness flips (``registry.update_status``
   of a Pod's Ready condition), each timed until the store's watch delivers the
   EndpointSlice whose endpoint for that pod shows the new ``conditions.ready``.
3. **api** — the user path: ``kubelab up --disable dns,proxy,runtime`` (``--ephemeral``
   and ``--state-dir``) in its own process, ``kubelab apply -f FILE`` as a process
   (ack = the command exits), EndpointSlices counted through an API watch (caught up =
   all seen), then flips with ``PATCH .../pods/NAME/status`` (merge patch) timed until
   the API watch delivers the slice (the first flip after the load is reported on its
   own: it measures the controllers' post-load tail). The server's CPU seconds (``/proc/PID/stat``) are
   reported per object too: CPU per operation is steadier than wall time on a shared
   machine.

The cluster: ``--namespaces`` namespaces, Services ``svc-NNNNN`` spread over them, each
selecting ``pods/services`` simulated Pods (``status.podIP`` and a Ready condition
given, so no runtime runs them) through a named targetPort. Pod IPs are unique in
10.0.0.0/8. The file is one JSON ``kind: List``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
KUBELAB = str(ROOT / ".venv" / "bin" / "kubelab")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the cluster -------------------------------------------------------------------------------


def make_cluster(services: int, pods: int, namespaces: int) -> list[dict]:
    """Namespaces, then Services, then simulated Pods (the order a dump would have)."""
    per_svc = max(1, pods // services)
    nss = [f"bench-{i:03d}" for i in range(namespaces)]
    objs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in nss]
    for i in range(services):
        objs.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc-{i:05d}", "namespace": nss[i % namespaces], "labels": {"bench": "registry"}},
            "spec": {"selector": {"app": f"svc-{i:05d}"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        })
    for k in range(pods):
        i = min(k // per_svc, services - 1)
        ip = 10 << 24 | (k + 1)
        objs.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"svc-{i:05d}-{k:06d}", "namespace": nss[i % namespaces],
                         "labels": {"app": f"svc-{i:05d}", "bench": "registry"}},
            "spec": {"nodeName": "lab-node",
                     "containers": [{"name": "app", "image": "kubelab/echo",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": f"{ip >> 24}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })
    return objs


def write_cluster(path: Path, objs: list[dict]) -> None:
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, separators=(",", ":")))


# -- small helpers -----------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def lat_summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p90_ms": round(pct(ms, 90), 2),
            "p99_ms": round(pct(ms, 99), 2), "max_ms": round(max(ms), 2), "mean_ms": round(statistics.fmean(ms), 2)}


def proc_cpu(pid: int) -> float:
    """user+system CPU seconds of a process (and its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flip_plan(objs: list[dict], n: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """(namespace, pod, service) for ``n`` distinct random pods."""
    pods = [o for o in objs if o["kind"] == "Pod"]
    rnd = random.Random(seed)
    chosen = rnd.sample(pods, min(n, len(pods)))
    return [(p["metadata"]["namespace"], p["metadata"]["name"], p["metadata"]["labels"]["app"]) for p in chosen]


def endpoint_ready(es: dict, pod: str) -> bool | None:
    for ep in es.get("endpoints") or ():
        if (ep.get("targetRef") or {}).get("name") == pod:
            return bool((ep.get("conditions") or {}).get("ready"))
    return None


# -- 1. the floor ------------------------------------------------------------------------------


def sqlite_floor(objs: list[dict], db_path: Path) -> tuple[float, float, int]:
    """(encode s, insert s, bytes): plain sqlite3, the store's schema and pragmas, one transaction."""
    from kubelab.controller.sqlite_store import PAGE_SIZE, SCHEMA

    db = sqlite3.connect(str(db_path), isolation_level=None)
    db.execute(f"PRAGMA page_size={PAGE_SIZE}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    t0 = time.perf_counter()
    rows = [(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"], i + 1, dumps(o))
            for i, o in enumerate(objs)]
    encode_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT OR REPLACE INTO objects (kind, namespace, name, rv, data) VALUES (?,?,?,?,?)", rows)
    db.execute("COMMIT")
    insert_s = time.perf_counter() - t1
    db.close()
    return encode_s, insert_s, sum(len(r[4]) for r in rows)


def bench_floor(path: Path, tmp: Path) -> dict:
    t0 = time.perf_counter()
    doc = json.loads(path.read_bytes())
    parse_s = time.perf_counter() - t0
    objs = doc["items"]
    encode_s, insert_s, size = sqlite_floor(objs, tmp / "floor.db")
    n = len(objs)
    return {"objects": n, "parse_s": round(parse_s, 3), "encode_s": round(encode_s, 3), "insert_s": round(insert_s, 3),
            "mb": round(size / 1e6, 1), "sqlite_floor_obj_per_s": round(n / (encode_s + insert_s)),
            "parse_floor_obj_per_s": round(n / parse_s)}


# -- 2. in process -----------------------------------------------------------------------------


async def wait_until(pred: Any, timeout: float, what: str, step: float = 0.002) -> float:
    deadline = time.perf_counter() + timeout
    while not pred():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(step)
    return time.perf_counter()


async def bench_inproc(path: Path, store_kind: str, tmp: Path, flips: int, profile_dir: Path | None,
                       gap: float = 0.0) -> dict:
    from kubelab.controller.admission import Admission
    from kubelab.controller.config import LabConfig
    from kubelab.controller.manager import ControllerManager
    from kubelab.controller.manifests import load_paths
    from kubelab.controller.registry import Registry
    from kubelab.controller.sqlite_store import SqliteStore
    from kubelab.controller.store import MemoryStore

    t0 = time.perf_counter()
    objs = load_paths([str(path)])
    load_s = time.perf_counter() - t0
    n = len(objs)
    n_svc = sum(1 for o in objs if o["kind"] == "Service")
    plan = flip_plan(objs, flips + 1)  # the first one is reported on its own (see README)
    config = LabConfig()
    store = MemoryStore() if store_kind == "memory" else SqliteStore(tmp / f"inproc-{time.monotonic_ns()}")
    registry = Registry(store, Admission(config))
    await registry.start()
    manager = ControllerManager(registry, config, ())
    await manager.start()
    await wait_until(lambda: manager.ready, 10, "controllers ready")
    prof = cProfile.Profile() if profile_dir else None
    out: dict[str, Any] = {"store": store_kind, "objects": n, "load_s": round(load_s, 3)}
    try:
        # Where the time goes: admission alone (a dry run: nothing stored), then the real apply
        # with the backend's persistence timed, and the moment the store *published* the last
        # slice (a poller could only see it once the controllers yield the loop).
        t0 = time.perf_counter()
        await registry.apply(objs, dry_run=True)
        out["admission_only_s"] = round(time.perf_counter() - t0, 3)
        persist_s = [0.0]
        real_persist, real_publish = store._persist, store._publish
        slices_at: list[float] = []

        async def timed_persist(changes: Any, rv: int) -> None:
            t = time.perf_counter()
            await real_persist(changes, rv)
            persist_s[0] += time.perf_counter() - t

        def timed_publish(events: Any) -> None:
            real_publish(events)
            if not slices_at and store.snapshot().count("EndpointSlice") >= n_svc:
                slices_at.append(time.perf_counter())

        store._persist, store._publish = timed_persist, timed_publish  # type: ignore[method-assign]
        c0, t0 = self_cpu(), time.perf_counter()
        if prof:
            prof.enable()
        await registry.apply(objs)
        t_ack = time.perf_counter()
        out["persist_s"] = round(persist_s[0], 3)
        await wait_until(lambda: bool(slices_at), 600, "endpointslices")
        t_done = slices_at[0]
        runner = manager._runner  # a bench may peek: idle = nothing pending, no sync running, watch drained

        def idle() -> bool:
            return (manager._rv == store.resource_version and not runner._pending and runner._last_end is not None
                    and runner._last_start is not None and runner._last_end >= runner._last_start)

        t_idle = await wait_until(idle, 600, "controllers idle")
        if prof:
            prof.disable()
            prof.dump_stats(str(profile_dir / f"inproc-{store_kind}-apply.prof"))
        cpu = self_cpu() - c0  # apply + controllers until idle
        ack_s, done_s = t_ack - t0, t_done - t0
        out.update({"ack_s": round(ack_s, 3), "ack_obj_per_s": round(n / ack_s),
                    "caught_up_s": round(done_s, 3), "caught_up_obj_per_s": round(n / done_s),
                    "settled_s": round(t_idle - t0, 3), "cpu_s": round(cpu, 3), "cpu_us_per_obj": round(cpu / n * 1e6, 1),
                    "slices": store.snapshot().count("EndpointSlice")})
        if store_kind == "memory":  # the floor again, for the objects as stored (defaulted, with metadata)
            snap = store.snapshot()
            stored = [o for k in ("Namespace", "Service", "Pod") for o in snap.list(k)]
            enc, ins, size = sqlite_floor(stored, tmp / "floor-stored.db")
            out["stored_floor"] = {"objects": len(stored), "mb": round(size / 1e6, 1), "encode_s": round(enc, 3),
                                   "insert_s": round(ins, 3), "obj_per_s": round(len(stored) / (enc + ins))}
        # Flips: each timed from just before the write to the watch event of its slice.
        lat: list[float] = []
        write_ms: list[float] = []
        first_ms: float | None = None
        if prof:
            prof = cProfile.Profile()
            prof.enable()
        c0 = self_cpu()
        for i, (ns, pod, svc) in enumerate(plan):
            if i == 1:
                first_ms = lat.pop()
                write_ms.pop()
                c0 = self_cpu()
            if i and gap:
                await asyncio.sleep(gap)
            snap = store.snapshot()
            cur = snap.get("Pod", ns, pod)
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in cur["status"]["conditions"])
            want = not ready
            status = {**cur["status"], "conditions": [{"type": "Ready", "status": "True" if want else "False"}]}
            watch = store.watch(snap.resource_version)
            t0 = time.perf_counter()
            await registry.update_status({**cur, "status": status})
            write_ms.append((time.perf_counter() - t0) * 1e3)

            async def seen() -> None:
                async for ev in watch:
                    o = ev.object
                    if (o.get("kind") == "EndpointSlice" and o["metadata"]["namespace"] == ns
                            and o["metadata"]["name"].startswith(svc + "-") and endpoint_ready(o, pod) is want):
                        return

            await asyncio.wait_for(seen(), 10)
            lat.append((time.perf_counter() - t0) * 1e3)
            await watch.aclose()
        flip_cpu = self_cpu() - c0
        if prof:
            prof.disable()
            prof.dump_stats(str(profile_dir / f"inproc-{store_kind}-flips.prof"))
        out["flip"] = lat_summary(lat)
        out["flip"]["first_ms"] = round(first_ms or 0, 1)
        out["flip"]["write_p50_ms"] = round(pct(write_ms, 50), 2)
        out["flip"]["cpu_ms_per_flip"] = round(flip_cpu / len(lat) * 1e3, 2)
    finally:
        await manager.close()
        await store.close()
    return out


# -- 3. the user path: kubelab up + kubelab apply ----------------------------------------------


class Watcher:
    """One API watch on EndpointSlices: counts managed slices, and resolves flip waits."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.names: set[tuple[str, str]] = set()
        self.count_target = 0
        self.counted: asyncio.Future | None = None
        self.want: tuple[str, str, str, bool, asyncio.Future] | None = None
        self.started = asyncio.Event()

    async def run(self, rv: str) -> None:
        async for ev in self.client.watch("EndpointSlice", resource_version=rv):
            self.started.set()
            o = ev["object"]
            meta = o["metadata"]
            key = (meta["namespace"], meta["name"])
            if ev["type"] == "DELETED":
                self.names.discard(key)
            else:
                self.names.add(key)
            if self.counted is not None and not self.counted.done() and len(self.names) >= self.count_target:
                self.counted.set_result(time.perf_counter())
            w = self.want
            if w is not None and not w[4].done() and key[0] == w[0] and key[1].startswith(w[2] + "-"):
                if endpoint_ready(o, w[1]) is w[3]:
                    w[4].set_result(time.perf_counter())


async def start_up(state: str, tmp: Path, profile_dir: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile_dir / f"up-{state}.prof")] if profile_dir else []
    args = prefix + [KUBELAB, "up", "--disable", "dns,proxy,runtime", "--api-addr", f"127.0.0.1:{port}",
            "--kubeconfig", str(tmp / f"kubeconfig-{port}")]
    args += ["--ephemeral"] if state == "memory" else ["--state-dir", str(tmp / f"state-{port}")]
    log = open(tmp / f"up-{port}.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    import aiohttp

    deadline = time.perf_counter() + 30
    async with aiohttp.ClientSession() as s:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"kubelab up exited: {(tmp / f'up-{port}.log').read_text()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        break
            if time.perf_counter() > deadline:
                raise TimeoutError("kubelab up not ready")
            await asyncio.sleep(0.05)
    return proc, url


async def bench_api(path: Path, objs: list[dict], state: str, tmp: Path, flips: int,
                    profile_dir: Path | None = None, gap: float = 0.0) -> dict:
    from kubelab.controller.client import ApiClient

    n = len(objs)
    n_svc = sum(1 for o in objs if o["kind"] == "Service")
    plan = flip_plan(objs, flips + 1)
    proc, url = await start_up(state, tmp, profile_dir)
    out: dict[str, Any] = {"state": state, "objects": n}
    try:
        async with ApiClient(url) as client:
            lst = await client.list_raw("EndpointSlice")
            w = Watcher(client)
            wtask = asyncio.create_task(w.run(lst["metadata"]["resourceVersion"]))
            w.count_target = n_svc + len(lst["items"])
            w.names = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in lst["items"]}
            w.counted = asyncio.get_running_loop().create_future()
            c0, t0 = proc_cpu(proc.pid), time.perf_counter()
            cli = await asyncio.create_subprocess_exec(KUBELAB, "apply", "-f", str(path), "--server", url,
                                                       stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(cli.communicate(), 600)
            t_ack = time.perf_counter()
            c_ack = proc_cpu(proc.pid)
            if cli.returncode != 0:
                raise RuntimeError(f"kubelab apply failed: {err.decode()}")
            t_done = await asyncio.wait_for(w.counted, 600)
            cpu = proc_cpu(proc.pid) - c0
            ack_s, done_s = t_ack - t0, t_done - t0
            out.update({"ack_s": round(ack_s, 3), "ack_obj_per_s": round(n / ack_s),
                        "caught_up_s": round(done_s, 3), "caught_up_obj_per_s": round(n / done_s),
                        "server_cpu_s_at_ack": round(c_ack - c0, 3), "server_cpu_s": round(cpu, 3),
                        "server_cpu_us_per_obj": round(cpu / n * 1e6, 1)})
            # Flips: PATCH the status subresource; wait for the watch to show the slice.
            lat: list[float] = []
            write_ms: list[float] = []
            ready = {p: True for _, p, _ in plan}
            first_ms: float | None = None
            c0 = proc_cpu(proc.pid)
            for i, (ns, pod, svc) in enumerate(plan):
                if i == 1:
                    first_ms = lat.pop()
                    write_ms.pop()
                    c0 = proc_cpu(proc.pid)
                if i and gap:
                    await asyncio.sleep(gap)
                want = not ready[pod]
                fut = asyncio.get_running_loop().create_future()
                w.want = (ns, pod, svc, want, fut)
                patch = {"status": {"conditions": [{"type": "Ready", "status": "True" if want else "False"}]}}
                t0 = time.perf_counter()
                await client.patch("Pod", pod, patch, ns, subresource="status")
                write_ms.append((time.perf_counter() - t0) * 1e3)
                t1 = await asyncio.wait_for(fut, 10)
                lat.append((t1 - t0) * 1e3)
                ready[pod] = want
            cpu = proc_cpu(proc.pid) - c0
            out["flip"] = lat_summary(lat)
            out["flip"]["first_ms"] = round(first_ms or 0, 1)
            out["flip"]["patch_p50_ms"] = round(pct(write_ms, 50), 2)
            out["flip"]["server_cpu_ms_per_flip"] = round(cpu / len(lat) * 1e3, 2)
            wtask.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await wtask
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return out


# -- main --------------------------------------------------------------------------------------


def fmt_row(cols: list[Any], widths: list[int]) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))


async def amain(args: argparse.Namespace) -> dict:
    only = set(args.only.split(","))
    stores = [s for s in args.stores.split(",") if s]
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
                               "cluster": {"services": args.services, "pods": args.pods, "namespaces": args.namespaces}}
    with tempfile.TemporaryDirectory(prefix="kubelab-bench-registry-") as d:
        tmp = Path(d)
        path = tmp / "cluster.json"
        objs = make_cluster(args.services, args.pods, args.namespaces)
        write_cluster(path, objs)
        results["cluster"]["objects"] = len(objs)
        results["cluster"]["file_mb"] = round(path.stat().st_size / 1e6, 1)
        print(f"cluster: {len(objs)} objects, {results['cluster']['file_mb']} MB", file=sys.stderr)
        profile_dir = Path(args.profile) if args.profile else None
        if profile_dir:
            profile_dir.mkdir(parents=True, exist_ok=True)
        if "floor" in only:
            results["floor"] = bench_floor(path, tmp)
            print("floor", results["floor"], file=sys.stderr)
        if "inproc" in only:
            for s in stores:
                r = await bench_inproc(path, s, tmp, args.flips, profile_dir, args.flip_gap_ms / 1e3)
                results.setdefault("inproc", []).append(r)
                print("inproc", r, file=sys.stderr)
        if "api" in only:
            for s in stores:
                r = await bench_api(path, objs, s, tmp, args.flips, profile_dir, args.flip_gap_ms / 1e3)
                results.setdefault("api", []).append(r)
                print("api", r, file=sys.stderr)
    results["machine"]["loadavg_end"] = os.getloadavg()
    return results


def report(results: dict) -> str:
    lines = []
    floor = results.get("floor")
    fl = floor["sqlite_floor_obj_per_s"] if floor else None
    n = results["cluster"]["objects"]
    lines.append(f"cluster: {n} objects ({results['cluster']['services']} Services, {results['cluster']['pods']} Pods, "
                 f"{results['cluster']['namespaces']} Namespaces), {results['cluster']['file_mb']} MB JSON")
    if floor:
        lines.append(f"floor: json.loads {floor['parse_floor_obj_per_s']} obj/s; sqlite3 encode+executemany of the "
                     f"file's objects ({floor['mb']} MB) {fl} obj/s ({floor['encode_s']} s + {floor['insert_s']} s)")
    for r in results.get("inproc", []):
        sf = r.get("stored_floor")
        if sf:
            lines.append(f"floor for the objects as stored ({sf['mb']} MB): {sf['obj_per_s']} obj/s "
                         f"({sf['encode_s']} s + {sf['insert_s']} s)")
    w = [34, 8, 10, 12, 16, 10, 11, 12]
    lines.append(fmt_row(["apply (target >= 5000 obj/s)", "ack s", "ack obj/s", "caught-up s", "caught-up obj/s",
                          "settled s", "CPU us/obj", "floor ratio"], w))
    for r in results.get("inproc", []):
        ratio = f"{fl / r['ack_obj_per_s']:.1f}x" if fl and r["store"] == "sqlite" else "-"
        lines.append(fmt_row([f"in-process Registry.apply, {r['store']}", r["ack_s"], r["ack_obj_per_s"],
                              r["caught_up_s"], r["caught_up_obj_per_s"], r["settled_s"], r["cpu_us_per_obj"], ratio], w))
    for r in results.get("api", []):
        ratio = f"{fl / r['ack_obj_per_s']:.1f}x" if fl and r["state"] == "sqlite" else "-"
        settled = f"<={r['caught_up_s'] + r['flip']['first_ms'] / 1e3:.2f}"
        lines.append(fmt_row([f"kubelab apply -f (up, {r['state']})", r["ack_s"], r["ack_obj_per_s"], r["caught_up_s"],
                              r["caught_up_obj_per_s"], settled, r["server_cpu_us_per_obj"], ratio], w))
    for r in results.get("inproc", []):
        if "admission_only_s" in r:
            lines.append(f"  where the time goes ({r['store']}): admission alone {r['admission_only_s']} s, persist "
                         f"{r['persist_s']} s, store+registry rest {r['ack_s'] - r['persist_s'] - r['admission_only_s']:.2f} s"
                         f" | ack -> all slices stored {r['caught_up_s'] - r['ack_s']:.2f} s | -> controllers idle "
                         f"(zone, routes, policy rebuilt) {r['settled_s'] - r['caught_up_s']:.2f} s")
    w2 = [34, 6, 9, 9, 9, 9, 14, 12, 12]
    lines.append(fmt_row(["flip -> slice (target p99 < 50 ms)", "n", "p50 ms", "p90 ms", "p99 ms", "max ms",
                          "write p50 ms", "CPU ms/flip", "1st flip ms"], w2))
    for r in results.get("inproc", []):
        f = r["flip"]
        lines.append(fmt_row([f"in-process update_status, {r['store']}", f["n"], f["p50_ms"], f["p90_ms"], f["p99_ms"],
                              f["max_ms"], f["write_p50_ms"], f["cpu_ms_per_flip"], f["first_ms"]], w2))
    for r in results.get("api", []):
        f = r["flip"]
        lines.append(fmt_row([f"API PATCH pods/status, {r['state']}", f["n"], f["p50_ms"], f["p90_ms"], f["p99_ms"],
                              f["max_ms"], f["patch_p50_ms"], f["server_cpu_ms_per_flip"], f["first_ms"]], w2))
    m = results["machine"]
    lines.append(f"machine: {m['cpus']} CPUs, load average {m['loadavg_start'][0]:.2f} at start, "
                 f"{m['loadavg_end'][0]:.2f} at end")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--pods", type=int, default=50_000)
    p.add_argument("--namespaces", type=int, default=100)
    p.add_argument("--flips", type=int, default=300)
    p.add_argument("--flip-gap-ms", type=float, default=0.0,
                   help="pause between flips (default 0: back to back, each right after the previous one landed)")
    p.add_argument("--only", default="floor,inproc,api", help="comma-separated: floor, inproc, api")
    p.add_argument("--stores", default="memory,sqlite", help="comma-separated: memory, sqlite")
    p.add_argument("--profile", default=None, metavar="DIR", help="write cProfile dumps of the in-process phases")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the raw results as JSON")
    args = p.parse_args()
    results = asyncio.run(amain(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
