"""``kubelab up``: flags -> ``LabConfig`` -> ``Lab``, served until SIGINT/SIGTERM.

A bad flag or a port in use is one line on stderr and exit status 1, never a
traceback: those are the mistakes people make most when starting a lab. So is
``--mode netns`` on a machine (or as a user) that can't build network namespaces.

The address flags default per mode (``config.mode_defaults``): their argparse default
is "not given" so that ``--mode netns`` can tell a value the user chose from one it
may replace with kubeadm's ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from kubelab.controller.config import (
    MODE_FLAGS,
    MODES,
    ConfigError,
    LabConfig,
    check_mode_supported,
    mode_defaults,
    parse_cidrs,
    parse_hostport,
    parse_port_range,
    validate_lab,
)

COMPONENTS = ("dns", "proxy", "runtime")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "up",
        help="start the lab (registry API, controllers, DNS, proxy, pod runtime)",
        description="Start the lab in one process and serve until SIGINT/SIGTERM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = LabConfig()
    unset = argparse.SUPPRESS  # "not given": the mode picks the default (see mode_defaults)
    p.add_argument("--mode", default="local", choices=MODES,
                   help="local: pods on loopback addresses, no privileges; netns: one network namespace per "
                        "pod on a bridge with real addresses (needs root and ip netns; changes the address "
                        "defaults below to kubeadm's)")
    p.add_argument("--api-addr", default="127.0.0.1:6443", help="registry API listen address; "
                   "a non-loopback address requires the bearer token written to the kubeconfig")
    p.add_argument("--dns-addr", default=unset, help="cluster DNS listen address, UDP and TCP "
                   "(default: 127.0.0.1:5353; netns: DNS_SERVICE_IP:53)")
    p.add_argument("--service-cidr", default=unset, help="ClusterIP range: one CIDR, or an IPv4,IPv6 pair for "
                   "dual-stack (default: 127.96.0.0/16; netns: 10.96.0.0/16)")
    p.add_argument("--pod-cidr", default=unset, help="pod IP range for run pods "
                   "(default: 127.244.0.0/16; netns: 10.244.0.0/16)")
    p.add_argument("--node-port-range", default="%d-%d" % d.node_port_range, help="NodePort range")
    p.add_argument("--lb-pool", default=unset, help="LoadBalancer ingress address pool "
                   "(default: 127.240.0.0/24; netns: 10.97.0.0/24)")
    p.add_argument("--node-ip", default=unset, help="the node's address, where NodePorts listen "
                   "(default: 127.0.0.1; netns: the pod CIDR's first address, the bridge)")
    p.add_argument("--dns-service-ip", default=unset, help="ClusterIP of the kube-system/kube-dns Service, "
                   "the nameserver in pods' resolv.conf (default: none; netns: the service CIDR's tenth address)")
    p.add_argument("--netns-prefix", default=d.netns_prefix,
                   help="netns mode: every namespace, link and file of the lab starts with it "
                        "(a lowercase letter, up to 6 lowercase letters or digits, then '-')")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--state-dir", default=str(d.state_dir), help="where the registry (SQLite) and logs live")
    state.add_argument("--ephemeral", action="store_true", help="keep the registry in memory only")
    p.add_argument("-f", "--filename", dest="manifests", action="append", default=[], metavar="PATH",
                   help="manifest file or directory to apply at start (repeatable)")
    p.add_argument("--disable", action="append", default=[], metavar="COMPONENT",
                   help="run without dns, proxy or runtime (repeatable, or comma-separated)")
    p.add_argument("--cluster-domain", default=d.cluster_domain, help="DNS zone for services and pods")
    p.add_argument("--dns-ttl", type=int, default=d.dns_ttl, help="TTL of cluster DNS answers (seconds)")
    p.add_argument("--dns-pods-mode", default=d.dns_pods_mode, choices=("verified", "insecure", "disabled"),
                   help="pod A records: only for existing pods (verified), any IP (insecure), or none")
    p.add_argument("--dns-upstream", default=None, metavar="ADDR[,ADDR]|none",
                   help="forwarders for names outside the cluster domain (default: /etc/resolv.conf)")
    p.add_argument("--zone-sink", action="append", default=[], metavar="URL",
                   help="also publish zones to a standalone kubelab-dns admin URL (compose lab)")
    p.add_argument("--routes-sink", action="append", default=[], metavar="URL",
                   help="also publish route tables to a standalone kubelab-proxy admin URL (compose lab)")
    p.add_argument("--kubeconfig", default=None, metavar="PATH",
                   help="where to write the kubeconfig (default: STATE_DIR/kubeconfig; with "
                        "--ephemeral, TMPDIR/kubelab-API_PORT.kubeconfig, removed at exit)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> LabConfig:
    disabled = {c.strip() for item in args.disable for c in item.split(",") if c.strip()}
    unknown = disabled - set(COMPONENTS)
    if unknown:
        raise ConfigError(f"--disable {','.join(sorted(unknown))}: expected one of {', '.join(COMPONENTS)}")
    if args.dns_ttl < 0:
        raise ConfigError("--dns-ttl must be >= 0")
    upstream: tuple[str, ...] | None = None
    if args.dns_upstream is not None:
        upstream = () if args.dns_upstream == "none" else tuple(
            a.strip() for a in args.dns_upstream.split(",") if a.strip()
        )
    mode = getattr(args, "mode", "local")
    flags = mode_defaults(mode, {k: getattr(args, k, None) for k in MODE_FLAGS})
    pod_cidr = parse_cidrs(str(flags["pod_cidr"]))
    lb_pool = parse_cidrs(str(flags["lb_pool"]))
    if len(pod_cidr) != 1 or len(lb_pool) != 1:
        raise ConfigError("--pod-cidr and --lb-pool take one CIDR")
    for m in args.manifests:
        if m != "-" and not Path(m).exists():
            raise ConfigError(f"-f {m}: no such file or directory")
    config = LabConfig(
        api_addr=parse_hostport(args.api_addr),
        dns_addr=parse_hostport(str(flags["dns_addr"])),
        service_cidrs=parse_cidrs(str(flags["service_cidr"])),
        pod_cidr=pod_cidr[0],
        node_port_range=parse_port_range(args.node_port_range),
        lb_pool=lb_pool[0],
        node_ip=str(flags["node_ip"]),
        state_dir=None if args.ephemeral else Path(args.state_dir),
        cluster_domain=args.cluster_domain.strip("."),
        dns_ttl=args.dns_ttl,
        dns_pods_mode=args.dns_pods_mode,
        dns_upstream=upstream,
        disabled=frozenset(disabled),
        manifests=tuple(Path(m) for m in args.manifests),
        mode=mode,
        dns_service_ip=flags["dns_service_ip"],
        netns_prefix=getattr(args, "netns_prefix", "kl-"),
    )
    validate_lab(config)
    return config


def netns_warning(config: LabConfig, have_nft: bool) -> str | None:
    """The one-line warning for a netns lab that can't enforce NetworkPolicy between pods."""
    if config.mode != "netns" or have_nft or "runtime" in config.disabled:
        return None
    return ("nft not found (apt-get install nftables): NetworkPolicy is not enforced between pods "
            "(only on Service traffic, by the proxy), and a pod a policy isolates will not start")


def run(args: argparse.Namespace) -> int:
    from kubelab.controller.cli import run_async

    try:
        config = config_from_args(args)
        from kubelab.runtime.netns import supported

        problem = check_mode_supported(config.mode, supported)
        if problem:
            raise ConfigError(problem)
    except ConfigError as exc:
        print(f"kubelab up: {exc}", file=sys.stderr)
        return 1
    warning = netns_warning(config, shutil.which("nft") is not None)
    if warning:
        print(f"kubelab up: warning: {warning}", file=sys.stderr)
    return run_async(serve(config, args))


def kubeconfig_path(config: LabConfig, explicit: str | None) -> tuple[Path | None, bool]:
    """Where ``up`` writes its kubeconfig, and whether it is ours to remove at exit.

    An ephemeral lab still gets one (kubectl is how many people look at a lab), in the
    temp dir under the API port so that two labs never share it; it goes with the lab.
    ``None`` lets the Lab put it in the state dir, next to the registry it belongs to.
    """
    if explicit:
        return Path(explicit), False
    if config.state_dir is not None:
        return None, False
    return Path(tempfile.gettempdir()) / f"kubelab-{config.api_addr[1]}.kubeconfig", True


async def serve(config: LabConfig, args: argparse.Namespace) -> int:
    from kubelab.controller.lab import Lab, LabError

    kubeconfig, remove_kubeconfig = kubeconfig_path(config, args.kubeconfig)
    lab = Lab(
        config,
        zone_sinks=tuple(args.zone_sink),
        route_sinks=tuple(args.routes_sink),
        kubeconfig_path=kubeconfig,
        gc_freeze=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            where = await lab.start()
        except (LabError, ConfigError) as exc:
            print(f"kubelab up: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # a bad -f manifest, for example: say what, not where
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            print(f"kubelab up: {message}", file=sys.stderr)
            return 1
        # Everything loaded so far (modules, manifests, the first zone) lives as long as the
        # process: keep it out of the cyclic GC's full passes (see bench/lab/README.md).
        gc.freeze()
        print(f"registry API   {where.api}", flush=True)
        if where.kubeconfig:
            print(f"kubeconfig     {where.kubeconfig}   (kubectl --kubeconfig {where.kubeconfig} get pods)")
        if where.dns:
            print(f"cluster DNS    {where.dns[0]}:{where.dns[1]} udp+tcp   "
                  f"(dig @{where.dns[0]} -p {where.dns[1]} kubernetes.default.svc.{config.cluster_domain})")
        if where.dns_admin:
            print(f"DNS admin      {where.dns_admin}/metrics")
        if where.proxy_admin:
            print(f"proxy admin    {where.proxy_admin}/routes")
        if config.mode == "netns":
            print(f"pod network    bridge {config.netns_prefix}br0 {config.bridge_ip}, namespaces "
                  f"{config.netns_prefix}<ns>_<pod>   (kubelab exec default/<pod> -- sh; "
                  f"kubelab down --netns-prefix {config.netns_prefix} after a crash)")
        print("serving; Ctrl-C to stop", flush=True)
        waiter = asyncio.ensure_future(stop.wait())
        failed = asyncio.ensure_future(lab.manager.wait()) if hasattr(lab.manager, "wait") else None
        done, _ = await asyncio.wait([f for f in (waiter, failed) if f], return_when=asyncio.FIRST_COMPLETED)
        for f in (waiter, failed):
            if f and f not in done:
                f.cancel()
        if failed in done and failed.exception():
            print(f"kubelab up: controllers stopped: {failed.exception()}", file=sys.stderr)
            return 1
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await lab.close()
        if remove_kubeconfig and kubeconfig is not None:
            kubeconfig.unlink(missing_ok=True)
