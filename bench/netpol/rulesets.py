"""Bench: compiling every pod's nftables ruleset (netns enforcement) for 1,000 pods and 200 policies.

    flock /tmp/kubelab-bench.lock .venv/bin/python bench/netpol/rulesets.py [--runs 5]

What the netns enforcer costs the controller's event loop when the policy changes for
every pod at once: ``compile_policy_table``-equivalent (``build_policy_table``) once,
then ``pod_ruleset`` for each pod. Prints per-run CPU seconds (process time) and the
total ruleset size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from kubelab.controller.netpol import Cluster, build_policy_table
from kubelab.controller.netpol_cli import synthetic_objects
from kubelab.controller.netpol_nft import pod_ruleset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    objs = synthetic_objects(pods=args.pods, policies=args.policies)

    def kind(k: str) -> list[dict]:
        return [o for o in objs if o["kind"] == k]

    compile_s, rules_s = [], []
    for i in range(args.runs):
        t0 = time.process_time()
        table = build_policy_table(Cluster(kind("Namespace"), kind("Node"), kind("Pod"), kind("NetworkPolicy")))
        t1 = time.process_time()
        texts = [pod_ruleset(table, ip, proxied=("10.96.0.0/12", "10.240.0.0/24")) for ip in table.pods]
        t2 = time.process_time()
        compile_s.append(t1 - t0)
        rules_s.append(t2 - t1)
        print(f"run {i + 1}: policy table {t1 - t0:.3f} s CPU, {len(texts)} rulesets {t2 - t1:.3f} s CPU "
              f"({(t2 - t1) / len(texts) * 1e6:.0f} us/pod, {sum(map(len, texts)) / 1e6:.1f} MB of nft text)")
    print(f"median: policy table {statistics.median(compile_s):.3f} s, rulesets {statistics.median(rules_s):.3f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
