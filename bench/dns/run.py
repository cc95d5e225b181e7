"""DNS bench: kubelab-dns vs Knot DNS, same zone, same machine, same run.

    .venv/bin/python bench/dns/run.py [--services 10000] [--pods 50000] [--seconds 10]

Needs the Debian packages ``dnsperf`` and ``knot``. Steps:

1. Build a synthetic cluster (``zonegen.make_zone``) and write it as ZoneData JSON
   (what ``PUT /v1/zone`` carries) and as RFC 1035 zone files for Knot, generated from
   the very records kubelab-dns would serve (dnslib decodes our packed answers).
2. Start ``knotd`` (1 UDP worker) and ``kubelab-dns`` (uvloop, one event loop) on their
   own loopback addresses.
3. dnsperf, for each server in turn: a realistic mix, unique misses, and a fixed
   10,000 q/s run whose per-query latencies give p99.
4. RSS of the kubelab-dns process with the zone loaded; in-process timing of the
   incremental rebuild after one endpoint change.

Prints a table with the ratios; numbers depend on what else the machine runs, which
is why the peer is measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dnslib  # noqa: E402

import zonegen  # noqa: E402
from kubelab.dns.config import DnsConfig  # noqa: E402
from kubelab.dns.records import EMPTY, RecordTable, build, template_message, template_qtype  # noqa: E402
from kubelab.dns.server import DnsServer  # noqa: E402
from kubelab.dns import wire  # noqa: E402
from kubelab.dns.zone import ZoneData  # noqa: E402

KNOT_ADDR = ("127.53.200.2", 5302)
KDNS_ADDR = ("127.53.200.1", 5301)
KDNS_ADMIN = ("127.53.200.1", 9301)
REVERSE = "10.in-addr.arpa."


def bench_config() -> DnsConfig:
    return DnsConfig(upstreams=(), reverse_zones=(REVERSE,), dns_service_ip="10.96.0.10", addr=KDNS_ADDR)


# ---------------------------------------------------------------- zone files for knot
def zone_files(table: RecordTable, out: Path) -> dict[str, Path]:
    """Every RRset kubelab-dns serves, as text, split by zone (dnslib as the codec)."""
    lines: dict[str, list[str]] = {z.name: [] for z in table.zones}
    zone_of = {z.wire: z.name for z in table.zones}

    def which(name: bytes) -> str:
        best = b""
        for zw in zone_of:
            if name.endswith(zw) and len(zw) > len(best):
                best = zw
        return zone_of[best]

    for name, v in table.answers.items():
        if v is EMPTY:
            continue
        tpls = list(v.values()) if isinstance(v, dict) else [v]
        for tpl in tpls:
            msg = template_message(tpl, b"\x00\x00", name + template_qtype(tpl) + b"\x00\x01")
            rec = dnslib.DNSRecord.parse(msg)
            for rr in rec.rr:
                lines[which(name)].append(rr.toZone())
    for pod_name in table.pods:
        label = pod_name[1 : 1 + pod_name[0]].decode()
        ip = label.replace("-", ".") if label.count("-") == 3 else None
        if ip:
            lines[table.zones[0].name].append(f"{wire.wire_to_name(pod_name)} {table.ttl} IN A {ip}")
    files = {}
    for zone, rows in lines.items():
        p = out / (zone.rstrip(".") + ".zone")
        p.write_text("\n".join(rows) + "\n")
        files[zone] = p
    return files


def knot_conf(out: Path, files: dict[str, Path]) -> Path:
    zones = "\n".join(
        f"  - domain: {z}\n    file: {p}\n    storage: {out}\n    journal-content: none\n"
        f"    zonefile-load: whole\n    zonefile-sync: -1\n    semantic-checks: off"
        for z, p in files.items())
    conf = out / "knot.conf"
    conf.write_text(f"""server:
    rundir: {out}
    listen: {KNOT_ADDR[0]}@{KNOT_ADDR[1]}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: {out}/db
log:
  - target: stderr
    any: warning
zone:
{zones}
""")
    return conf


# ---------------------------------------------------------------- query files
def query_files(zone: ZoneData, out: Path, n_unique: int) -> dict[str, Path]:
    rng = random.Random(1)
    svcs = list(zone.services.values())
    cluster = [s for s in svcs if not s.headless and s.external_name is None]
    headless = [s for s in svcs if s.headless]
    namespaces = sorted({s.namespace for s in svcs})
    mix = []
    for _ in range(200_000):
        r = rng.random()
        if r < 0.35:
            s = rng.choice(cluster)
            mix.append(f"{s.name}.{s.namespace}.svc.cluster.local A")
        elif r < 0.50:  # glibc/musl send AAAA alongside A: NODATA for IPv4-only services
            s = rng.choice(cluster)
            mix.append(f"{s.name}.{s.namespace}.svc.cluster.local AAAA")
        elif r < 0.60:
            s = rng.choice(headless)
            mix.append(f"{s.name}.{s.namespace}.svc.cluster.local A")
        elif r < 0.65:
            s = rng.choice(headless)
            mix.append(f"{s.name}-0.{s.name}.{s.namespace}.svc.cluster.local A")
        elif r < 0.75:
            s = rng.choice(cluster)
            mix.append(f"_http._tcp.{s.name}.{s.namespace}.svc.cluster.local SRV")
        else:  # ndots:5 search-path expansion: must be a fast NXDOMAIN
            s = rng.choice(cluster)
            ns = rng.choice(namespaces)
            target = rng.choice([f"{s.name}.{s.namespace}.svc.cluster.local", "www.example.com",
                                 f"{s.name}.{s.namespace}", "api.github.com"])
            suffix = rng.choice([f"{ns}.svc.cluster.local", "svc.cluster.local", "cluster.local"])
            mix.append(f"{target}.{suffix} {rng.choice(['A', 'AAAA'])}")
    files = {"mix": out / "mix.txt", "unique": out / "unique.txt"}
    files["mix"].write_text("\n".join(mix) + "\n")
    files["unique"].write_text("\n".join(
        f"u{i}x{rng.getrandbits(32):08x}.{rng.choice(namespaces)}.svc.cluster.local A" for i in range(n_unique)) + "\n")
    return files


# ---------------------------------------------------------------- running
def wait_udp(addr: tuple[str, int], timeout: float = 60.0) -> None:
    """Until the server answers one query (any rcode but SERVFAIL)."""
    q = dnslib.DNSRecord.question("kubernetes.default.svc.cluster.local").pack()
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                s.sendto(q, addr)
                data, _ = s.recvfrom(4096)
                if data[3] & 0xF != 2:
                    return
            except OSError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"no answer from {addr}")


def dnsperf(addr, qfile: Path, seconds: float, extra=()) -> dict:
    cmd = ["dnsperf", "-s", addr[0], "-p", str(addr[1]), "-d", str(qfile), "-l", str(seconds),
           "-c", "8", "-q", "400", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = re.search(r"Queries lost:\s+(\d+)", out).group(1)
    codes = re.search(r"Response codes:\s+(.*)", out)
    return {"qps": qps, "lost": int(lost), "codes": codes.group(1) if codes else "", "out": out}


def p99_at(addr, qfile: Path, rate: int, seconds: float) -> dict:
    cmd = ["dnsperf", "-s", addr[0], "-p", str(addr[1]), "-d", str(qfile), "-l", str(seconds),
           "-Q", str(rate), "-c", "4", "-q", "200", "-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    lat = sorted(float(m) for m in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M))
    if not lat:
        return {"p50": float("nan"), "p99": float("nan"), "n": 0}
    return {"p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)], "n": len(lat)}


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def incremental_ms(zone: ZoneData) -> dict:
    """One endpoint flips readiness: plan + commit time, objects shared / from JSON."""
    srv = DnsServer(bench_config())
    t0 = time.perf_counter()
    srv.set_zone(zone)
    full = time.perf_counter() - t0
    key = next(k for k, s in zone.services.items() if s.endpoints)
    s = zone.services[key]
    eps = list(s.endpoints)
    eps[0] = dataclasses.replace(eps[0], ready=not eps[0].ready)
    services = dict(zone.services)
    services[key] = dataclasses.replace(s, endpoints=tuple(eps))
    z2 = ZoneData(zone.generation + 1, services, zone.pods, zone.namespaces)
    times = []
    for gen in range(5):
        z = z2 if gen % 2 == 0 else ZoneData(z2.generation + gen, zone.services, zone.pods, zone.namespaces)
        z = dataclasses.replace(z, generation=zone.generation + 2 + gen)
        t0 = time.perf_counter()
        srv.set_zone(z)
        times.append((time.perf_counter() - t0) * 1000)
    z3 = ZoneData.from_json(dict(z2.to_json(), generation=zone.generation + 100))
    t0 = time.perf_counter()
    srv.set_zone(z3)
    json_ms = (time.perf_counter() - t0) * 1000
    return {"full_s": full, "incremental_ms": statistics.median(times), "json_equal_objects_ms": json_ms}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--pods", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--unique", type=int, default=3_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-udp-mmsg", action="store_true", help="run kubelab-dns without recvmmsg/sendmmsg")
    args = ap.parse_args()
    for tool in ("dnsperf", "knotd"):
        if shutil.which(tool) is None and not Path("/usr/sbin/" + tool).exists():
            print(f"{tool} not found: apt-get install dnsperf knot", file=sys.stderr)
            return 2
    out = Path(tempfile.mkdtemp(prefix="kubelab-dns-bench-"))
    print(f"workdir {out}")
    zone = zonegen.make_zone(args.services, args.pods)
    (out / "zone.json").write_text(json.dumps(zone.to_json()))
    table = build(bench_config(), zone, 1)
    files = zone_files(table, out)
    qfiles = query_files(zone, out, args.unique)
    del table
    print(f"zone: {args.services} services, {args.pods} pods; zone files {[p.name for p in files.values()]}")

    knot = subprocess.Popen(["knotd", "-c", str(knot_conf(out, files))], stderr=subprocess.PIPE)
    env = dict(os.environ)
    kdns = subprocess.Popen([sys.executable, "-m", "kubelab.dns", "--addr", "%s:%d" % KDNS_ADDR,
                             "--admin", "%s:%d" % KDNS_ADMIN, "--upstream", "none", "--reverse-zone", REVERSE,
                             "--dns-service-ip", "10.96.0.10", "--zone-file", str(out / "zone.json"),
                             "--log-level", "WARNING", *(["--no-udp-mmsg"] if args.no_udp_mmsg else [])], env=env)
    results: dict[str, dict] = {}
    try:
        wait_udp(KNOT_ADDR)
        wait_udp(KDNS_ADDR)
        results["rss_mb"] = {"kubelab-dns": rss_mb(kdns.pid), "knotd": rss_mb(knot.pid)}
        # Interleave the servers over several rounds and keep the median: other load on
        # the machine moves both, and this keeps it from favouring one of them.
        runs: dict[tuple[str, str], list[dict]] = {}
        for rnd in range(args.rounds):
            for label, qf in (("mix", qfiles["mix"]), ("unique", qfiles["unique"])):
                for name, addr, pid in (("knot", KNOT_ADDR, knot.pid), ("kubelab-dns", KDNS_ADDR, kdns.pid)):
                    u0, s0 = cpu_seconds(pid)
                    r = dnsperf(addr, qf, args.seconds)
                    u1, s1 = cpu_seconds(pid)
                    n = max(1.0, r["qps"] * args.seconds)
                    # CPU per answered query: steadier than q/s when the machine is shared.
                    r["user_us"], r["sys_us"] = (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6
                    runs.setdefault((label, name), []).append(r)
                    print(f"round {rnd} {label:7s} {name:12s} {r['qps']:>10.0f} q/s  lost {r['lost']}  "
                          f"cpu/q {r['user_us']:.2f} user + {r['sys_us']:.2f} sys us  load {os.getloadavg()[0]:.1f}  "
                          f"{r['codes']}", flush=True)
        for (label, name), rs in runs.items():
            rs.sort(key=lambda r: r["qps"])
            results.setdefault(label, {})[name] = rs[len(rs) // 2]
        for name, addr in (("knot", KNOT_ADDR), ("kubelab-dns", KDNS_ADDR)):
            r = p99_at(addr, qfiles["mix"], 10_000, args.seconds)
            results.setdefault("p99_10k", {})[name] = r
            print(f"10k q/s {name:12s} p50 {r['p50'] * 1000:.3f} ms  p99 {r['p99'] * 1000:.3f} ms  ({r['n']} queries)")
        results["rss_mb"]["kubelab-dns-after"] = rss_mb(kdns.pid)
    finally:
        for p in (kdns, knot):
            p.send_signal(signal.SIGTERM)
        for p in (kdns, knot):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    inc = incremental_ms(zone)
    mix = results["mix"]["kubelab-dns"]["qps"] / results["mix"]["knot"]["qps"]
    uniq = results["unique"]["kubelab-dns"]["qps"] / results["unique"]["knot"]["qps"]
    budget = (args.pods + args.services) / 1000 + 54
    print()
    print("| measure | kubelab-dns | knot | ratio / target |")
    print("|---|---|---|---|")
    print(f"(median of {args.rounds} interleaved rounds of {args.seconds:.0f} s each)")
    print(f"| realistic mix q/s | {results['mix']['kubelab-dns']['qps']:.0f} | {results['mix']['knot']['qps']:.0f} "
          f"| {mix:.2f}x (>= 0.9x) |")
    print(f"| unique misses q/s | {results['unique']['kubelab-dns']['qps']:.0f} | {results['unique']['knot']['qps']:.0f} "
          f"| {uniq:.2f}x (>= 0.5x) |")
    for label in ("mix", "unique"):
        cpu = {name: statistics.median(r["user_us"] + r["sys_us"] for r in runs[(label, name)])
               for name in ("kubelab-dns", "knot")}
        print(f"| {label} server CPU per query (median) | {cpu['kubelab-dns']:.2f} us | {cpu['knot']:.2f} us "
              f"| {cpu['kubelab-dns'] / cpu['knot']:.2f}x |")
    k, n = results["p99_10k"]["kubelab-dns"], results["p99_10k"]["knot"]
    print(f"| p99 at 10k q/s | {k['p99'] * 1000:.3f} ms | {n['p99'] * 1000:.3f} ms | < 1 ms |")
    print(f"| RSS loaded | {results['rss_mb']['kubelab-dns']:.1f} MB "
          f"(after load test {results['rss_mb']['kubelab-dns-after']:.1f}) | {results['rss_mb']['knotd']:.1f} MB "
          f"| < {budget:.0f} MB |")
    print(f"| full zone build | {inc['full_s'] * 1000:.0f} ms | | |")
    print(f"| rebuild after 1 endpoint change | {inc['incremental_ms']:.1f} ms "
          f"(all objects new, e.g. from JSON: {inc['json_equal_objects_ms']:.0f} ms) | | < 20 ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
