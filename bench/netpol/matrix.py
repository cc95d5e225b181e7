"""Bench: ``kubelab netpol matrix -o json`` offline, 1,000 pods and 200 policies (issue 6: < 10 s).

    flock /tmp/kubelab-bench.lock .venv/bin/python bench/netpol/matrix.py [--runs 5] [--pods 1000] [--policies 200]

Steps:

1. Generate the cluster once with ``kubelab.controller.netpol_cli.synthetic_objects``
   (20 namespaces, 2 Nodes, simulated Pods with named ports http 8080/TCP, metrics
   9090/TCP, dns 53/UDP, and a mix of policies: default deny, named ports, AND peers,
   NotIn, egress to all namespaces, ipBlocks with excepts, port ranges) and write it as
   one ``kind: List`` JSON file — the same input as tests/integration/test_netpol_cli.py.
2. Run the real entry point (``.venv/bin/kubelab netpol matrix -f FILE -o json``) as a
   subprocess, stdout to a file, ``--runs`` times for each port set:
   ``--port 8080/TCP`` (pods x pods = 1,000,000 probes) and no ``--port`` (every declared
   port: 3,000,000 probes).
3. Report per run: wall seconds, CPU seconds of the child (user + sys, from ``wait4``;
   steadier than wall time on a shared machine), probes written; then min/median/max.

Every run is printed; nothing is dropped. ``--json`` adds one machine-readable line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubelab.controller.netpol_cli import synthetic_objects

KUBELAB = str(Path(sys.executable).with_name("kubelab"))
TARGET = 10.0


def run_once(path: Path, out_path: Path, ports: list[str]) -> tuple[float, float, int]:
    """(wall s, child CPU s, probes) for one ``kubelab netpol matrix`` run."""
    argv = [KUBELAB, "netpol", "matrix", "-f", str(path), *(a for p in ports for a in ("--port", p)), "-o", "json"]
    with open(out_path, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err[:500]}")
    with open(out_path, "rb") as f:
        head = f.readline()
        probes = sum(1 for line in f if line.startswith(b'{"from": '))
    if not head.startswith(b'{"probes": ['):
        raise SystemExit(f"unexpected output: {head[:80]!r}")
    return wall, usage.ru_utime + usage.ru_stime, probes

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = ap.parse_args(argv)

    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="kubelab-netpol-bench-") as tmp:
        path = Path(tmp) / "cluster.json"
        objs = synthetic_objects(pods=args.pods, policies=args.policies)
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
        out_path = Path(tmp) / "out.json"
        print(f"{args.pods} pods, {args.policies} policies ({path.stat().st_size // 1024} KiB input), "
              f"{args.runs} runs each, load average {os.getloadavg()[0]:.2f}")
        for label, ports in (("--port 8080/TCP", ["8080/TCP"]), ("every declared port", [])):
            walls, cpus = [], []
            for i in range(args.runs):
                wall, cpu, probes = run_once(path, out_path, ports)
                walls.append(wall)
                cpus.append(cpu)
                print(f"  {label:22s} run {i + 1}: {wall:6.2f} s wall, {cpu:6.2f} s CPU, {probes:,} probes, "
                      f"{out_path.stat().st_size / 1e6:.0f} MB, {probes / cpu / 1e6:.2f} M probes/CPU-s")
            print(f"  {label:22s} wall min/median/max {min(walls):.2f} / {statistics.median(walls):.2f} / "
                  f"{max(walls):.2f} s; CPU median {statistics.median(cpus):.2f} s; target < {TARGET:.0f} s: "
                  f"{'ok' if statistics.median(walls) < TARGET else 'MISSED'} "
                  f"({statistics.median(walls) / TARGET:.2f} of the budget)")
            results[label] = {"wall": walls, "cpu": cpus, "probes": [probes]}
    if args.json:
        print(json.dumps({"pods": args.pods, "policies": args.policies, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
