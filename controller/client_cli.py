"""``kubelab apply | get | delete | describe``: kubectl's everyday verbs against the lab API.

Output imitates kubectl's (``pod/web created``, ``service/web configured``, tables from
the server's Table printers, ``Error from server (NotFound): ...``) so that what people
learn here transfers. Unlike kubectl, ``apply`` is atomic: the files are parsed and the
whole set validated by the registry before anything is stored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

import aiohttp
import yaml

from kubelab.controller import api_tables, discovery
from kubelab.controller.client import ApiClient, ApiError, default_server
from kubelab.controller.discovery import KindInfo
from kubelab.controller.manifests import ManifestError, load_sources


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", "-s", default=None, help="API URL (default: $KUBELAB_SERVER or http://127.0.0.1:6443)")
    p.add_argument("--token", default=None, help="bearer token (default: $KUBELAB_TOKEN)")
    p.add_argument("--kubeconfig", default=None, help="read server and token from this kubeconfig")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("apply", help="create or update objects from manifests (atomically)",
                       description="Create or update every object in the files; nothing is stored unless all are valid.")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH",
                   help="file, directory or - (stdin); repeatable")
    p.add_argument("-n", "--namespace", default=None, help="namespace for objects that name none")
    p.add_argument("--dry-run", action="store_true", help="validate and report, store nothing")
    p.add_argument("-o", "--output", choices=("name", "json", "yaml"), default=None)
    _common(p)
    p.set_defaults(func=lambda a: _run(cmd_apply, a))

    p = sub.add_parser("get", help="list objects (or one), like kubectl get")
    p.add_argument("kind", help="pods|po, services|svc, endpointslices|ep, deployments|deploy, "
                   "networkpolicies|netpol, namespaces|ns, nodes|no (comma-separated for several)")
    p.add_argument("names", nargs="*", metavar="NAME")
    ns = p.add_mutually_exclusive_group()
    ns.add_argument("-n", "--namespace", default=None)
    ns.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=("wide", "yaml", "json", "name"), default=None)
    p.add_argument("-l", "--selector", default=None, help="label selector, e.g. app=web")
    _common(p)
    p.set_defaults(func=lambda a: _run(cmd_get, a))

    p = sub.add_parser("delete", help="delete objects by file or by KIND NAME")
    p.add_argument("kind", nargs="?", help="kind, when not using -f")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-f", "--filename", action="append", default=[], metavar="PATH")
    p.add_argument("-n", "--namespace", default=None)
    _common(p)
    p.set_defaults(func=lambda a: _run(cmd_delete, a))

    p = sub.add_parser("describe", help="show one object in detail")
    p.add_argument("kind", help="kind, or KIND/NAME")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace", default=None)
    _common(p)
    p.set_defaults(func=lambda a: _run(cmd_describe, a))


# -- plumbing ------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> ApiClient:
    server, token = args.server, args.token or os.environ.get("KUBELAB_TOKEN")
    if args.kubeconfig:
        from kubelab.controller.kubeconfig import read_server

        kc_server, kc_token = read_server(args.kubeconfig)
        server, token = server or kc_server, token or kc_token
    return ApiClient(server or default_server(), token)


def _run(cmd: Callable[[ApiClient, argparse.Namespace], Any], args: argparse.Namespace) -> int:
    from kubelab.controller.cli import run_async

    async def main() -> int:
        try:
            async with _client(args) as client:
                return await cmd(client, args)
        except ManifestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except ApiError as exc:
            print(format_error(exc), file=sys.stderr)
            return 1
        except aiohttp.ClientConnectionError:
            server = args.server or default_server()
            host = server.split("://", 1)[-1].rstrip("/")
            print(f"The connection to the server {host} was refused - did you specify the right host or port?",
                  file=sys.stderr)
            return 1
        except ValueError as exc:  # unknown kind and friends
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run_async(main())


def format_error(exc: ApiError, context: str = "") -> str:
    """kubectl's rendering of a metav1.Status (``shared/reference/kubectl-api.md`` §6)."""
    status = exc.status
    details = status.get("details") or {}
    if exc.reason == "Invalid" and details.get("causes") is not None and details.get("kind"):
        causes = details["causes"]
        head = f'The {details["kind"]} "{details.get("name", "")}" is invalid: '
        lines = [f'{c.get("field")}: {c.get("message")}' if c.get("field") else c.get("message", "") for c in causes]
        if len(lines) == 1:
            return head + lines[0]
        return head + "\n" + "\n".join(f"* {ln}" for ln in lines)
    if exc.reason == "Invalid":
        return f"The request is invalid: {context}{exc.message}"
    if exc.code == 401:
        return f"error: You must be logged in to the server ({exc.message})"
    if exc.reason:
        return f"Error from server ({exc.reason}): {context}{exc.message}"
    return f"Error from server: {context}{exc.message}"


def _kind(name: str) -> KindInfo:
    info = discovery.resolve(name)
    if info is None:
        raise ValueError(f'the server doesn\'t have a resource type "{name}"')
    return info


def _dump(obj: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(obj, indent=4) + "\n"
    return yaml.safe_dump(obj, default_flow_style=False, sort_keys=True)


def _name_of(obj: dict) -> str:
    info = discovery.kind_info(obj.get("kind", ""))
    return f"{info.type_name if info else obj.get('kind', '').lower()}/{obj['metadata']['name']}"


# -- apply -----------------------------------------------------------------------------------


async def cmd_apply(client: ApiClient, args: argparse.Namespace) -> int:
    sources = load_sources(args.filename)
    objs = []
    for _, obj in sources:
        if args.namespace:
            info = discovery.kind_info(obj.get("kind", ""))
            if info is None or info.namespaced:
                meta = dict(obj.get("metadata") or {})
                meta.setdefault("namespace", args.namespace)
                obj = {**obj, "metadata": meta}
        objs.append(obj)
    if not objs:
        print("error: no objects passed to apply", file=sys.stderr)
        return 1
    results = await client.apply(objs, dry_run=args.dry_run, brief=args.output not in ("json", "yaml"))
    suffix = " (dry run)" if args.dry_run else ""
    if args.output in ("json", "yaml"):
        items = [o for _, o in results]
        doc = items[0] if len(items) == 1 else {"apiVersion": "v1", "kind": "List", "items": items}
        sys.stdout.write(_dump(doc, args.output))
        return 0
    out = sys.stdout
    for action, obj in results:
        if args.output == "name":
            out.write(_name_of(obj) + "\n")
        else:
            out.write(f"{_name_of(obj)} {action}{suffix}\n")
    return 0


# -- get -------------------------------------------------------------------------------------


def _split_kind_name(args: argparse.Namespace) -> None:
    """``svc/web`` -> kind ``svc``, name ``web`` (kubectl's TYPE/NAME form)."""
    if args.kind and "/" in args.kind:
        kind, _, name = args.kind.partition("/")
        args.kind = kind
        if hasattr(args, "names"):
            args.names = [name, *args.names]
        elif not getattr(args, "name", None):
            args.name = name


async def cmd_get(client: ApiClient, args: argparse.Namespace) -> int:
    _split_kind_name(args)
    kinds = [_kind(k) for k in args.kind.split(",") if k]
    ns = None if args.all_namespaces else (args.namespace or "default")
    structured = args.output in ("json", "yaml")
    if args.names:
        if len(kinds) != 1:
            print("error: there is no need to specify a resource type as a separate argument when passing "
                  "arguments in resource/name form", file=sys.stderr)
            return 1
        info = kinds[0]
        objs, rc = [], 0
        for name in args.names:
            try:
                objs.append(await client.get(info.kind, name, ns or "default"))
            except ApiError as exc:
                print(format_error(exc), file=sys.stderr)
                rc = 1
        if not objs:
            return rc
        if structured:
            doc = objs[0] if len(objs) == 1 else {"apiVersion": "v1", "kind": "List", "items": objs,
                                                    "metadata": {"resourceVersion": ""}}
            sys.stdout.write(_dump(doc, args.output))
        elif args.output == "name":
            sys.stdout.write("".join(_name_of(o) + "\n" for o in objs))
        else:
            tbl = api_tables.table(info.kind, objs)
            sys.stdout.write(api_tables.render(tbl, wide=args.output == "wide"))
        return rc
    if structured or args.output == "name":
        items: list[dict] = []
        for info in kinds:
            items.extend(await client.list(info.kind, ns if info.namespaced else None, args.selector))
        if args.output == "name":
            sys.stdout.write("".join(_name_of(o) + "\n" for o in items))
        else:
            sys.stdout.write(_dump({"apiVersion": "v1", "kind": "List", "items": items,
                                    "metadata": {"resourceVersion": ""}}, args.output))
        if not items:
            _no_resources(ns, kinds)
        return 0
    printed = False
    for info in kinds:
        tbl = await client.list_raw(info.kind, ns if info.namespaced else None, args.selector, table=True)
        if not tbl.get("rows"):
            continue
        if len(kinds) > 1:
            for row in tbl["rows"]:
                row["cells"][0] = f"{info.type_name}/{row['cells'][0]}"
        if printed:
            sys.stdout.write("\n")
        sys.stdout.write(api_tables.render(tbl, wide=args.output == "wide",
                                           namespace_column=args.all_namespaces and info.namespaced))
        printed = True
    if not printed:
        _no_resources(ns, kinds)
    return 0


def _no_resources(ns: str | None, kinds: list[KindInfo]) -> None:
    if ns is None or not any(k.namespaced for k in kinds):
        print("No resources found", file=sys.stderr)
    else:
        print(f"No resources found in {ns} namespace.", file=sys.stderr)


# -- delete ----------------------------------------------------------------------------------


async def cmd_delete(client: ApiClient, args: argparse.Namespace) -> int:
    targets: list[tuple[str, KindInfo, str, str | None]] = []  # (source, kind, name, ns)
    if args.filename:
        if args.kind:
            print("error: specify objects by -f or by KIND NAME, not both", file=sys.stderr)
            return 1
        for source, obj in load_sources(args.filename):
            info = _kind(obj["kind"])
            meta = obj.get("metadata") or {}
            targets.append((source, info, meta["name"], meta.get("namespace") or args.namespace))
    else:
        _split_kind_name(args)
        if not args.kind or not args.names:
            print("error: you must specify -f PATH or KIND NAME", file=sys.stderr)
            return 1
        info = _kind(args.kind)
        targets = [("", info, n, args.namespace) for n in args.names]
    rc = 0
    for source, info, name, ns in targets:
        try:
            await client.delete(info.kind, name, ns)
        except ApiError as exc:
            ctx = f'error when deleting "{source}": ' if source else ""
            print(format_error(exc, ctx), file=sys.stderr)
            rc = 1
            continue
        print(f'{info.type_name} "{name}" deleted')
    return rc


# -- describe --------------------------------------------------------------------------------


def _kv(pairs: dict | None, indent: int) -> str:
    if not pairs:
        return "<none>"
    items = [f"{k}={v}" for k, v in sorted(pairs.items())]
    return ("\n" + " " * indent).join(items)


def _block(obj: Any, indent: str = "  ") -> str:
    text = yaml.safe_dump(obj, default_flow_style=False, sort_keys=False).rstrip()
    return "\n".join(indent + line for line in text.splitlines())


def describe(obj: dict, slices: list[dict] | None = None) -> str:
    """kubectl-describe-like text for one object (pure; the CLI fetches what it needs)."""
    meta = obj.get("metadata") or {}
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    lines: list[tuple[str, Any]] = [("Name", meta.get("name"))]
    if meta.get("namespace"):
        lines.append(("Namespace", meta["namespace"]))
    lines.append(("Labels", _kv(meta.get("labels"), 18)))
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k != "kubectl.kubernetes.io/last-applied-configuration"}
    lines.append(("Annotations", _kv(annotations, 18)))
    kind = obj.get("kind")
    extra: list[str] = []
    if kind == "Pod":
        lines += [("Node", spec.get("nodeName") or "<none>"), ("Status", status.get("phase") or "Unknown")]
        if meta.get("deletionTimestamp"):
            lines.append(("Terminating since", meta["deletionTimestamp"]))
        lines += [("IP", status.get("podIP") or ""),
                  ("IPs", ", ".join(i.get("ip", "") for i in status.get("podIPs") or []) or "<none>")]
        extra.append("Containers:")
        for c in spec.get("containers") or []:
            extra.append(f"  {c.get('name')}:")
            extra.append(f"    Image:  {c.get('image', '')}")
            for p in c.get("ports") or []:
                extra.append(f"    Port:   {p.get('containerPort')}/{p.get('protocol', 'TCP')}"
                             + (f" ({p['name']})" if p.get("name") else ""))
            if c.get("command"):
                extra.append(f"    Command: {' '.join(map(str, c['command']))}")
        extra.append("Conditions:")
        extra.append("  Type           Status")
        for cond in status.get("conditions") or []:
            extra.append(f"  {cond.get('type', ''):<14} {cond.get('status', '')}")
    elif kind == "Service":
        lines += [("Selector", _kv(spec.get("selector"), 18)), ("Type", spec.get("type") or "ClusterIP"),
                  ("IP", spec.get("clusterIP") or ""), ("IPs", ",".join(spec.get("clusterIPs") or []) or "<none>")]
        if spec.get("externalName"):
            lines.append(("External Name", spec["externalName"]))
        ingress = (status.get("loadBalancer") or {}).get("ingress") or []
        if ingress:
            lines.append(("LoadBalancer Ingress", ", ".join(i.get("ip") or i.get("hostname", "") for i in ingress)))
        for p in spec.get("ports") or []:
            proto = p.get("protocol", "TCP")
            lines.append(("Port", f"{p.get('name') or '<unset>'}  {p.get('port')}/{proto}"))
            lines.append(("TargetPort", f"{p.get('targetPort', p.get('port'))}/{proto}"))
            if p.get("nodePort"):
                lines.append(("NodePort", f"{p.get('name') or '<unset>'}  {p['nodePort']}/{proto}"))
            eps = []
            for s in slices or []:
                port = next((sp.get("port") for sp in s.get("ports") or [] if sp.get("name", "") == p.get("name", "")), None)
                for e in s.get("endpoints") or []:
                    if (e.get("conditions") or {}).get("ready", True) and port is not None:
                        eps.extend(f"{a}:{port}" for a in e.get("addresses") or [])
            lines.append(("Endpoints", ",".join(eps) or "<none>"))
        lines.append(("Session Affinity", spec.get("sessionAffinity") or "None"))
    elif kind == "Deployment":
        want = spec.get("replicas", 1)
        lines += [("Selector", api_tables._label_selector(spec.get("selector"))),
                  ("Replicas", f"{want} desired | {status.get('updatedReplicas', 0)} updated | "
                               f"{status.get('replicas', 0)} total | {status.get('availableReplicas', 0)} available | "
                               f"{status.get('unavailableReplicas', 0)} unavailable")]
        extra.append("Pod Template:")
        extra.append(_block((spec.get("template") or {}), "  "))
    elif kind == "Namespace":
        lines.append(("Status", status.get("phase") or "Active"))
    elif kind == "EndpointSlice":
        lines.append(("AddressType", obj.get("addressType", "")))
        extra.append("Ports:")
        for p in obj.get("ports") or []:
            extra.append(f"  {p.get('name') or '<unset>'}  {p.get('port')}/{p.get('protocol', 'TCP')}")
        extra.append("Endpoints:")
        for e in obj.get("endpoints") or []:
            c = e.get("conditions") or {}
            extra.append(f"  - Addresses:  {','.join(e.get('addresses') or [])}")
            extra.append(f"    Conditions: Ready: {c.get('ready')}  Serving: {c.get('serving')}  "
                         f"Terminating: {c.get('terminating')}")
            if (e.get("targetRef") or {}).get("name"):
                extra.append(f"    TargetRef:  Pod/{e['targetRef']['name']}")
    else:
        if spec:
            extra.append("Spec:")
            extra.append(_block(spec))
        if status:
            extra.append("Status:")
            extra.append(_block(status))
    width = max(len(k) for k, _ in lines) + 2
    text = "\n".join(f"{k + ':':<{width}}{v}" for k, v in lines)
    return text + ("\n" + "\n".join(extra) if extra else "") + "\n"


async def cmd_describe(client: ApiClient, args: argparse.Namespace) -> int:
    _split_kind_name(args)
    if not args.name:
        print("error: describe needs KIND NAME (or KIND/NAME)", file=sys.stderr)
        return 1
    info = _kind(args.kind)
    ns = args.namespace or "default"
    obj = await client.get(info.kind, args.name, ns)
    slices = None
    if info.kind == "Service":
        try:
            slices = await client.list("EndpointSlice", ns, f"kubernetes.io/service-name={args.name}")
        except ApiError:
            slices = None
    sys.stdout.write(describe(obj, slices))
    return 0
