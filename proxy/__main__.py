"""``kubelab-proxy``: the proxy data plane as its own process (compose lab, benches).

It starts with an empty table (or ``--routes FILE``, a ``RouteTable.to_json()``
document) and is fed by ``PUT /v1/routes`` on the admin port. uvloop is used
when importable; SIGINT/SIGTERM stop accepting, drain with ``--drain-timeout``
and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
from typing import Sequence

from kubelab.proxy.config import ProxyConfig
from kubelab.proxy.service import ServiceProxy
from kubelab.proxy.table import RouteTable

log = logging.getLogger("kubelab.proxy")


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated seconds") from None


def build_parser() -> argparse.ArgumentParser:
    d = ProxyConfig()
    p = argparse.ArgumentParser(
        prog="kubelab-proxy",
        description="kubelab userspace service proxy (fed by PUT /v1/routes on the admin port)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--admin-addr", type=_hostport, default="127.0.0.1:10256", metavar="HOST:PORT",
                   help="admin HTTP (/healthz, /metrics, /routes, PUT /v1/routes); 0.0.0.0:10256 in a container")
    p.add_argument("--node-name", default=d.node_name)
    p.add_argument("--node-ip", action="append", default=[], metavar="IP",
                   help="node address (repeatable); default 127.0.0.1")
    p.add_argument("--routes", default=None, metavar="FILE", help="initial route table (RouteTable JSON)")
    p.add_argument("--balancer", choices=("roundrobin", "random"), default=d.balancer)
    p.add_argument("--connect-schedule", type=_floats, default=",".join(map(str, d.connect_schedule)), metavar="S,S,...",
                   help="connect attempt timeouts, one attempt per entry on the next endpoint")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout)
    p.add_argument("--udp-idle-timeout", type=float, default=d.udp_idle_timeout)
    p.add_argument("--max-connections", type=int, default=d.max_connections)
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout)
    p.add_argument("--healthz-timeout", type=float, default=d.healthz_timeout)
    p.add_argument("--high-water", type=int, default=d.high_water)
    p.add_argument("--low-water", type=int, default=d.low_water)
    p.add_argument("--pipe-size", type=int, default=d.pipe_size, help="splice relay: pipe size per direction")
    p.add_argument("--tcp-relay", choices=("auto", "splice", "transport"), default=d.tcp_relay,
                   help="splice: raw sockets + splice(2) (Linux); transport: asyncio transports")
    p.add_argument("--vip-mode", choices=("local", "netns", "compose"), default=d.vip_mode)
    p.add_argument("--vip-cidr", action="append", default=[], metavar="CIDR", help="netns mode: CIDRs made local")
    p.add_argument("--vip-interface", default=d.vip_interface, help="compose mode: interface for VIPs")
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def config_from_args(args: argparse.Namespace) -> ProxyConfig:
    return ProxyConfig(
        node_name=args.node_name,
        node_ips=tuple(args.node_ip) or ("127.0.0.1",),
        connect_schedule=args.connect_schedule,
        idle_timeout=args.idle_timeout,
        udp_idle_timeout=args.udp_idle_timeout,
        max_connections=args.max_connections,
        drain_timeout=args.drain_timeout,
        healthz_timeout=args.healthz_timeout,
        high_water=args.high_water,
        low_water=args.low_water,
        pipe_size=args.pipe_size,
        balancer=args.balancer,
        tcp_relay=args.tcp_relay,
        vip_mode=args.vip_mode,
        vip_cidrs=tuple(args.vip_cidr),
        vip_interface=args.vip_interface,
        admin_addr=args.admin_addr,
    )


async def serve(config: ProxyConfig, routes: RouteTable | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    proxy = ServiceProxy(config)
    await proxy.start()  # also serves the admin port (config.admin_addr)
    try:
        if routes is not None:
            await proxy.apply(routes)
        # Long-lived objects (config, tables, modules) out of the GC's way: the data path makes
        # no reference cycles, so collections only ever scan short-lived per-connection objects.
        gc.freeze()
        log.info("kubelab-proxy: admin on %s, node %s", proxy.admin_url, config.node_name)
        await stop.wait()
        log.info("kubelab-proxy: shutting down (drain %.1fs)", config.drain_timeout)
    finally:
        await proxy.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
        routes = None
        if args.routes:
            with open(args.routes) as fh:
                routes = RouteTable.from_json(json.load(fh))
    except (ValueError, OSError, KeyError) as exc:
        print(f"kubelab-proxy: {exc}", file=sys.stderr)
        return 1
    factory = None
    if not args.no_uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(config, routes))
    except OSError as exc:
        print(f"kubelab-proxy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
