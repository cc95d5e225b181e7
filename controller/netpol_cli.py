"""``kubelab netpol``: who can reach whom, offline from files or from the running registry.

``kubelab netpol matrix [-f PATH ...] [--port 80/TCP ...] [--peer ip:A.B.C.D ...] [-o table|json]``
prints a truth table per port, like the upstream e2e netpol tests (rows = from,
columns = to, ``.`` allowed, ``X`` denied), or with ``-o json``::

    {"probes": [{"from": "x/a", "to": "y/b", "port": 80, "protocol": "TCP",
                 "allowed": true, "because": "..."}, ...]}

A pod is ``ns/name``; anything else is ``ip:A.B.C.D`` (a Node's address is that node).
Verdicts come from the compiled ``PolicyTable`` — the same allow sets the proxy
enforces — so the matrix shows what the lab does, not a second opinion.

``kubelab netpol explain SRC DST [--port 80/TCP]`` evaluates one connection with the
reference engine and prints each end's verdict.

Without ``--port``, the ports are every (containerPort, protocol) the pods declare,
or 80/TCP when none does. Pods without an IP (run pods not started yet) cannot be
reached and are left out, with a note on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Iterable, Iterator, Sequence, TextIO

import aiohttp

from kubelab.controller.netpol import (
    Cluster,
    build_policy_table,
    evaluate,
    validate_network_policy,
)
from kubelab.controller.client import ApiClient, ApiError
from kubelab.controller.manifests import load_paths
from kubelab.proxy.policy import PolicyTable, ip_key

KINDS = ("Namespace", "Node", "Pod", "NetworkPolicy")
PROTOCOLS = ("TCP", "UDP", "SCTP")
DEFAULT_SERVER = "http://127.0.0.1:6443"


class UsageError(ValueError):
    """A bad flag or input: printed on one line, exit status 1."""


# ---------------------------------------------------------------------------
# Flag parsers


def parse_port(text: str) -> tuple[int, str]:
    """``80``, ``80/TCP``, ``80/udp`` or ``UDP/53`` -> (port, protocol)."""
    a, sep, b = text.partition("/")
    if sep and a.upper() in PROTOCOLS:
        a, b = b, a
    proto = (b or "TCP").upper()
    try:
        port = int(a)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PORT[/PROTOCOL], e.g. 80/TCP") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be between 1 and 65535")
    if proto not in PROTOCOLS:
        raise argparse.ArgumentTypeError(f"{text!r}: protocol must be TCP, UDP or SCTP")
    return port, proto


def parse_peer(text: str) -> str:
    """``ip:A.B.C.D`` or a bare address -> the address."""
    ip = text[3:] if text.startswith("ip:") else text
    if ip_key(ip) is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ip:A.B.C.D")
    return ip


# ---------------------------------------------------------------------------
# The matrix (pure)


def endpoints(cluster: Cluster, table: PolicyTable) -> list[tuple[str, str]]:
    """(name, ip) of every pod the table knows, sorted by namespace/name."""
    return sorted(((r.pod, ip) for ip, r in table.pods.items()), key=lambda e: tuple(e[0].split("/", 1)))


def default_ports(cluster: Cluster) -> list[tuple[int, str]]:
    ports = sorted({(cp.port, cp.protocol) for p in cluster.pods for cp in p.ports}, key=lambda x: (x[1], x[0]))
    return ports or [(80, "TCP")]


def iter_probes(
    table: PolicyTable,
    pods: Sequence[tuple[str, str]],
    peers: Sequence[str],
    ports: Sequence[tuple[int, str]],
) -> Iterator[tuple[str, str, int, str, bool, str]]:
    """(from, to, port, protocol, allowed, because) for every pod pair, pod -> peer and
    peer -> pod, per port; in the order of the upstream truth tables."""
    name = {ip: n for n, ip in pods}
    name.update((ip, f"ip:{ip}") for ip in peers)
    pod_ips = [ip for _, ip in pods]
    for port, proto in ports:
        for s, d, ok, because in table.check_many(pod_ips, [*pod_ips, *peers], port, proto):
            yield name[s], name[d], port, proto, ok, because
        for s, d, ok, because in table.check_many(peers, pod_ips, port, proto):
            yield name[s], name[d], port, proto, ok, because


def write_json(out: TextIO, probes: Iterable[tuple[str, str, int, str, bool, str]]) -> int:
    """Stream ``{"probes": [...]}`` without holding a million dicts in memory."""
    enc = encode_basestring_ascii
    names: dict[str, str] = {}
    out.write('{"probes": [')
    sep = ""
    buf: list[str] = []
    count = 0
    for src, dst, port, proto, ok, because in probes:
        s = names.get(src) or names.setdefault(src, enc(src))
        d = names.get(dst) or names.setdefault(dst, enc(dst))
        buf.append(
            f'{sep}\n{{"from": {s}, "to": {d}, "port": {port}, "protocol": "{proto}", '
            f'"allowed": {"true" if ok else "false"}, "because": {enc(because)}}}'
        )
        sep = ","
        count += 1
        if len(buf) >= 4096:
            out.write("".join(buf))
            buf.clear()
    out.write("".join(buf))
    out.write("\n]}\n")
    return count


def write_tables(
    out: TextIO,
    table: PolicyTable,
    pods: Sequence[tuple[str, str]],
    peers: Sequence[str],
    ports: Sequence[tuple[int, str]],
) -> None:
    """One upstream-style truth table per port; peers are extra rows and columns."""
    peer_eps = [(f"ip:{ip}", ip) for ip in peers]
    cols = [*pods, *peer_eps]
    allows = table.allows
    for port, proto in ports:
        allowed = denied = 0
        lines = [f"{proto}/{port}:", "\t".join(["-", *(n for n, _ in cols)])]
        for sname, sip in (*pods, *peer_eps):
            row = [sname]
            src_is_peer = sname.startswith("ip:")
            for dname, dip in cols:
                if src_is_peer and dname.startswith("ip:"):
                    row.append(" ")
                    continue
                ok = allows(sip, dip, port, proto)
                allowed += ok
                denied += not ok
                row.append("." if ok else "X")
            lines.append("\t".join(row))
        lines.append(f"{allowed} allowed, {denied} denied")
        out.write("\n".join(lines) + "\n\n")


# ---------------------------------------------------------------------------
# A synthetic cluster, for benchmarks and experiments with many pods


def synthetic_objects(pods: int = 1000, policies: int = 200, namespaces: int = 20, seed: int = 1) -> list[dict[str, Any]]:
    """Namespaces, two Nodes, simulated Pods and a mix of realistic policies.

    Pods are spread over the namespaces with ``app``/``tier`` labels and named ports
    (``http`` 8080/TCP, ``metrics`` 9090/TCP, ``dns`` 53/UDP); policies cycle through
    default-deny, same-namespace app rules on named ports, cross-namespace AND peers,
    NotIn selectors, egress to all namespaces, ipBlocks with excepts and port ranges.
    """
    import random

    rnd = random.Random(seed)
    objs: list[dict[str, Any]] = []
    ns_names = [f"ns-{i:02d}" for i in range(namespaces)]
    for i, name in enumerate(ns_names):
        labels = {"team": ("red", "blue", "green")[i % 3], "env": ("prod", "dev")[i % 2]}
        objs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    for i in range(2):
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": f"node-{i + 1}"},
                "status": {"addresses": [{"type": "InternalIP", "address": f"172.18.0.{i + 2}"}]},
            }
        )
    ports = [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
    ]
    for k in range(pods):
        ns_i, j = k % namespaces, k // namespaces
        labels = {"app": f"app-{j % 10}", "tier": ("frontend", "backend", "db")[j % 3]}
        if rnd.random() < 0.5:
            labels["version"] = f"v{j % 2 + 1}"
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"namespace": ns_names[ns_i], "name": f"pod-{j:04d}", "labels": labels},
                "spec": {"nodeName": f"node-{k % 2 + 1}", "containers": [{"name": "c", "image": "kubelab/echo", "ports": ports}]},
                "status": {"phase": "Running", "podIP": f"10.{244 - j // 240}.{ns_i}.{j % 240 + 10}"},
            }
        )
    for k in range(policies):
        ns = ns_names[k % namespaces]
        app = f"app-{rnd.randrange(10)}"
        other = f"app-{rnd.randrange(10)}"
        kind = (k // namespaces) % 10
        spec: dict[str, Any]
        if kind == 0:
            spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
        elif kind == 1:
            spec = {
                "podSelector": {"matchLabels": {"app": app}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": other}}}], "ports": [{"port": "http"}]}],
            }
        elif kind == 2:
            spec = {
                "podSelector": {"matchLabels": {"tier": "backend"}},
                "ingress": [
                    {
                        "from": [{"namespaceSelector": {"matchLabels": {"team": "red"}}, "podSelector": {"matchLabels": {"tier": "frontend"}}}],
                        "ports": [{"port": 8080}],
                    }
                ],
            }
        elif kind == 3:
            spec = {
                "podSelector": {"matchLabels": {"app": app}},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": [app, other]}]}}], "ports": [{"port": 8080}]},
                    {"ports": [{"port": 53, "protocol": "UDP"}]},
                ],
            }
        elif kind == 4:
            spec = {
                "podSelector": {"matchLabels": {"tier": "db"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [f"10.244.{k % namespaces}.0/24"]}}], "ports": [{"port": 9000, "endPort": 9100}]}],
            }
        elif kind == 5:
            spec = {
                "podSelector": {"matchExpressions": [{"key": "version", "operator": "DoesNotExist"}]},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}, {"to": [{"podSelector": {}}]}],
            }
        elif kind == 6:
            spec = {
                "podSelector": {"matchLabels": {"app": app}},
                "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}}]}],
            }
        elif kind == 7:
            spec = {"podSelector": {"matchLabels": {"app": app}}, "ingress": [{"ports": [{"port": "metrics"}]}]}
        elif kind == 8:
            spec = {
                "podSelector": {},
                "ingress": [{"from": [{"podSelector": {}}]}, {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns_names[(k + 1) % namespaces]}}}]}],
            }
        else:
            spec = {
                "podSelector": {"matchLabels": {"tier": "frontend"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{}],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}], "ports": [{"port": "http"}, {"protocol": "UDP"}]}],
            }
        objs.append(
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": ns, "name": f"policy-{k:03d}"}, "spec": spec}
        )
    return objs


# ---------------------------------------------------------------------------
# Inputs


def load_files(paths: Sequence[str]) -> list[dict[str, Any]]:
    return load_paths(list(paths))


async def fetch(server: str | None, token: str | None) -> list[dict[str, Any]]:
    """Namespaces, Nodes, Pods and NetworkPolicies from the running registry."""
    objs: list[dict[str, Any]] = []
    async with ApiClient(server, token=token) as client:
        for kind in KINDS:
            for obj in await client.list(kind):
                objs.append({**obj, "kind": kind})
    return objs


def build_cluster(objs: Iterable[dict[str, Any]], err: TextIO) -> Cluster:
    """Sort objects by kind, refuse invalid policies (as apply would), warn about IP-less pods."""
    by_kind: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for obj in objs:
        kind = obj.get("kind")
        if kind in by_kind:
            by_kind[kind].append(obj)
    problems = []
    for pol in by_kind["NetworkPolicy"]:
        errors = validate_network_policy(pol)
        if errors:
            name = (pol.get("metadata") or {}).get("name", "")
            msgs = [e.message() for e in errors]
            body = msgs[0] if len(msgs) == 1 else "\n" + "\n".join(f"* {m}" for m in msgs)
            problems.append(f'The NetworkPolicy "{name}" is invalid: {body}')
    if problems:
        raise UsageError("\n".join(problems))
    cluster = Cluster(by_kind["Namespace"], by_kind["Node"], by_kind["Pod"], by_kind["NetworkPolicy"])
    missing = [p.key for p in cluster.pods if not p.ip]
    if missing:
        err.write(f"note: left out {len(missing)} pod(s) without an IP: {', '.join(missing[:10])}\n")
    return cluster


# ---------------------------------------------------------------------------
# Commands


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("netpol", help="NetworkPolicy: connectivity matrix and explanations")
    sub = parser.add_subparsers(dest="netpol_command", metavar="COMMAND")
    parser.set_defaults(func=lambda args: _help(parser))

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-f", "--filename", dest="files", action="append", metavar="PATH",
            help="manifests (files, directories, -) with Namespaces, Nodes, simulated Pods, "
            "NetworkPolicies; without -f, read the running registry",
        )
        p.add_argument(
            "--port", dest="ports", action="append", type=parse_port, metavar="PORT/PROTO",
            help="destination pod port to probe (repeatable); default: the pods' declared ports",
        )
        p.add_argument(
            "--server", default=None,
            help=f"registry URL (default: $KUBELAB_SERVER or {DEFAULT_SERVER})",
        )
        p.add_argument("--token", default=os.environ.get("KUBELAB_TOKEN"), help="bearer token")

    m = sub.add_parser("matrix", help="who can reach whom, one truth table per port")
    common(m)
    m.add_argument(
        "--peer", dest="peers", action="append", type=parse_peer, default=[], metavar="ip:A.B.C.D",
        help="a non-pod address probed to and from every pod (repeatable)",
    )
    m.add_argument("-o", "--output", choices=("table", "json"), default="table")
    m.set_defaults(func=matrix_command)

    e = sub.add_parser("explain", help="why one connection is allowed or denied")
    common(e)
    e.add_argument("src", help="ns/name or ip:A.B.C.D")
    e.add_argument("dst", help="ns/name or ip:A.B.C.D")
    e.set_defaults(func=explain_command)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _objects(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.files:
        return load_files(args.files)
    from kubelab.controller.cli import run_async

    result: list[dict[str, Any]] = []

    async def go() -> int:
        result.extend(await fetch(args.server, args.token))
        return 0

    try:
        run_async(go())
    except ApiError as exc:
        raise UsageError(f"{args.server or 'the registry'}: {exc.message}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UsageError(f"cannot reach the registry: {exc}") from None
    return result


def matrix_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        cluster = build_cluster(_objects(args), err)
    except (UsageError, OSError, ValueError) as exc:
        err.write(f"error: {exc}\n")
        return 1
    table = build_policy_table(cluster)
    pods = endpoints(cluster, table)
    ports = args.ports or default_ports(cluster)
    peers = list(dict.fromkeys(args.peers))
    try:
        if args.output == "json":
            write_json(out, iter_probes(table, pods, peers, ports))
        else:
            write_tables(out, table, pods, peers, ports)
        out.flush()
    except BrokenPipeError:  # the reader went away (| head): not worth a traceback
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


def explain_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        cluster = build_cluster(_objects(args), err)
        src, dst = cluster.endpoint(args.src), cluster.endpoint(args.dst)
    except KeyError as exc:
        err.write(f"error: {exc.args[0]}\n")
        return 1
    except (UsageError, OSError, ValueError) as exc:
        err.write(f"error: {exc}\n")
        return 1
    for port, proto in args.ports or default_ports(cluster):
        v = evaluate(cluster, src, dst, port, proto)
        out.write(f"{v.src} -> {v.dst} {proto}/{port}: {'allowed' if v.allowed else 'denied'}\n")
        out.write(f"  because {v.because}\n")
        if v.exemption is not None and not v.rules_allowed:
            out.write(f"  (the {v.exemption} exemption; the rules alone would deny it)\n")
    return 0
