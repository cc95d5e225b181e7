"""``kubelab netpol matrix`` end to end: every public case offline from files, the real
entry point in a subprocess, the running registry (no -f), and the 1,000-pod benchmark.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import subprocess
import time
from typing import Any

import pytest
import yaml

from kubelab.controller import netpol_cli
from tests.helpers import KUBELAB, load_netpol_cases, netpol_topology, run_command

DATA = load_netpol_cases()
CASES = {c["id"]: c for c in DATA["cases"]}
PEERS = ("ip:192.0.2.10", "ip:192.0.2.200", "ip:198.51.100.20", "ip:172.18.0.2")


def write_case(tmp: pathlib.Path, case: dict[str, Any]) -> list[str]:
    """The case as a user would keep it: a YAML topology file and a JSON policies file."""
    topo = tmp / "cluster.yaml"
    topo.write_text(yaml.safe_dump_all(netpol_topology(DATA), sort_keys=False))
    pols = tmp / "policies.json"
    pols.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": case["policies"]}))
    return [str(topo), str(pols)]


def case_args(case: dict[str, Any], files: list[str]) -> list[str]:
    argv = ["netpol", "matrix"]
    for f in files:
        argv += ["-f", f]
    for port, proto in sorted({(p["port"], p["protocol"]) for p in case["probes"]}):
        argv += ["--port", f"{port}/{proto}"]
    for peer in PEERS:
        argv += ["--peer", peer]
    return argv + ["-o", "json"]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Our sub-commands through argparse, in process."""
    parser = argparse.ArgumentParser(prog="kubelab")
    netpol_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def compare(case: dict[str, Any], output: str) -> None:
    probes = json.loads(output)["probes"]
    assert set(probes[0]) == {"from", "to", "port", "protocol", "allowed", "because"}
    got = {(p["from"], p["to"], p["port"], p["protocol"]): p for p in probes}
    wrong = []
    for p in case["probes"]:
        g = got.get((p["from"], p["to"], p["port"], p["protocol"]))
        if g is None or g["allowed"] != p["allowed"]:
            wrong.append((p, g))
        elif not g["because"] or (not g["allowed"] and "denied" not in g["because"]):
            wrong.append((p, g))
        elif p.get("note") and not g["because"].startswith(p["note"] + ":"):
            wrong.append((p, g))
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_every_case_through_matrix_json(tmp_path, case_id):
    case = CASES[case_id]
    code, out, err = run_cli(case_args(case, write_case(tmp_path, case)))
    assert code == 0, err
    compare(case, out)


def test_real_entry_point_in_a_subprocess(tmp_path):
    case = CASES["egress-denied-client-side-despite-ingress-allow"]
    proc = subprocess.run(
        [KUBELAB, *case_args(case, write_case(tmp_path, case))], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    compare(case, proc.stdout)


def test_table_output(tmp_path):
    case = CASES["deny-all-ingress-x"]
    files = write_case(tmp_path, case)
    code, out, _ = run_cli(["netpol", "matrix", "-f", files[0], "-f", files[1]])
    assert code == 0
    blocks = out.strip().split("\n\n")
    # the pods declare TCP/80, TCP/81 and UDP/80: one table each by default
    assert [b.splitlines()[0] for b in blocks] == ["TCP/80:", "TCP/81:", "UDP/80:"]
    lines = blocks[0].splitlines()
    assert lines[1:-1] == case["truth_tables"]["TCP/80"]
    assert lines[-1] == "57 allowed, 24 denied"
    # a peer is one more column (pods -> it) and one more row (it -> pods)
    code, out, _ = run_cli(["netpol", "matrix", "-f", files[0], "-f", files[1], "--peer", "ip:192.0.2.10", "--port", "80"])
    lines = out.strip().splitlines()
    assert lines[1] == case["truth_tables"]["TCP/80"][0] + "\tip:192.0.2.10"
    assert all(line.endswith("\t.") for line in lines[2:11])
    assert lines[11] == "ip:192.0.2.10\tX\tX\tX\t.\t.\t.\t.\t.\t.\t "
    assert lines[12] == "72 allowed, 27 denied"


def test_invalid_policy_file_is_refused_with_field_errors(tmp_path):
    bad = next(i for i in DATA["invalid_policies"] if i["id"] == "endport-below-port")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad["policy"]))
    code, out, err = run_cli(["netpol", "matrix", "-f", str(path)])
    assert code == 1 and out == ""
    assert 'The NetworkPolicy "bad" is invalid: spec.ingress[0].ports[0].endPort: Invalid value: 90:' in err


def test_explain_names_the_policy_and_rule(tmp_path):
    case = CASES["egress-denied-client-side-despite-ingress-allow"]
    files = write_case(tmp_path, case)
    code, out, _ = run_cli(["netpol", "explain", "-f", files[0], "-f", files[1], "x/a", "y/a", "--port", "80"])
    assert code == 0
    assert out.splitlines() == [
        "x/a -> y/a TCP/80: allowed",
        "  because x/a egress: allowed by x/allow-to-ns-y-pod-a egress[0].to[0]; "
        "y/a ingress: allowed by y/allow-from-xa-on-ya-match-selector ingress[0].from[0]",
    ]
    code, out, _ = run_cli(["netpol", "explain", "-f", files[0], "-f", files[1], "ip:172.18.0.2", "y/b", "--port", "80"])
    assert "allowed" in out and "node" in out
    code, _, err = run_cli(["netpol", "explain", "-f", files[0], "x/nope", "y/b"])
    assert code == 1 and "no pod x/nope" in err


def test_matrix_with_1000_pods_and_200_policies(tmp_path):
    """The issue's bound is 10 s; assert a generous 30 s for a busy CI box and print the figure."""
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": netpol_cli.synthetic_objects(pods=1000, policies=200)}))
    out_path = tmp_path / "out.json"
    start = time.perf_counter()
    with open(out_path, "w") as out:
        proc = subprocess.run(
            [KUBELAB, "netpol", "matrix", "-f", str(path), "--port", "8080/TCP", "-o", "json"],
            stdout=out, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    print(f"netpol matrix, 1,000 pods x 200 policies, 1,000,000 probes: {elapsed:.2f} s")
    with open(out_path) as f:
        first = f.readline() + f.readline()
    assert first.startswith('{"probes": [')
    assert out_path.stat().st_size > 1_000_000 * 80
    assert elapsed < 30


async def test_matrix_from_the_running_registry(tmp_path):
    """Without -f: the policies are refused at apply time, the matrix reads the registry."""
    from kubelab.controller.admission import Admission
    from kubelab.controller.api import make_app, serve
    from kubelab.controller.client import ApiClient, ApiError
    from kubelab.controller.config import LabConfig
    from kubelab.controller.registry import Registry
    from kubelab.controller.store import MemoryStore

    registry = Registry(MemoryStore(), Admission(LabConfig()))
    runner, url = await serve(make_app(registry, token=None))
    try:
        case = CASES["egress-denied-client-side-despite-ingress-allow"]
        async with ApiClient(url) as client:
            await client.apply(netpol_topology(DATA))
            await client.apply(case["policies"])
            for item in DATA["invalid_policies"]:
                with pytest.raises(ApiError) as info:
                    await client.apply([item["policy"]])
                assert info.value.code == 422, item["id"]
                assert info.value.causes and info.value.causes[0]["field"].startswith("spec."), item["id"]
        argv = [KUBELAB, "netpol", "matrix", "--server", url, "--port", "80/TCP"]
        for peer in PEERS:
            argv += ["--peer", peer]
        code, out, err = await run_command(*argv, "-o", "json", timeout=60)
        assert code == 0, err
        compare(case, out)
        # what desired_routes hands the proxy, from a real store snapshot
        from kubelab.controller.netpol import compile_policy_table

        table = compile_policy_table(registry.store.snapshot())
        ips = {f"{p['namespace']}/{p['name']}": p["ip"] for p in DATA["pods"]}
        for p in case["probes"]:
            src = ips.get(p["from"]) or p["from"][3:]
            dst = ips.get(p["to"]) or p["to"][3:]
            assert table.allows(src, dst, p["port"], p["protocol"]) == p["allowed"], p
    finally:
        await runner.cleanup()
        await registry.store.close()
