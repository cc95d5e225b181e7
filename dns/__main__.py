"""``kubelab-dns``: the DNS data plane as its own process, fed over ``PUT /v1/zone``.

    kubelab-dns --addr 127.0.0.1:5353 --admin 127.0.0.1:9153 \\
        [--cluster-domain cluster.local] [--ttl 5] [--pods-mode verified] \\
        [--upstream none|ADDR[:PORT][,ADDR...]] [--reverse-zone 10.in-addr.arpa ...] \\
        [--dns-service-ip 10.96.0.10] [--zone-file zone.json]

Only this entry point picks the loop (uvloop when importable) and installs signal
handlers; SIGINT/SIGTERM stop accepting, drain, and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys

from kubelab.dns.config import DnsConfig, parse_upstreams
from kubelab.dns.server import DnsServer
from kubelab.dns.zoneio import parse_zone_json, release_memory

logger = logging.getLogger("kubelab.dns")


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubelab-dns", description=__doc__.split("\n")[0])
    p.add_argument("--addr", type=_hostport, default=("127.0.0.1", 5353), help="UDP+TCP listen HOST:PORT")
    p.add_argument("--admin", type=_hostport, default=("127.0.0.1", 9153), help="admin HTTP HOST:PORT")
    p.add_argument("--cluster-domain", "--domain", default="cluster.local")
    p.add_argument("--ttl", type=int, default=5)
    p.add_argument("--pods-mode", choices=("verified", "insecure", "disabled"), default="verified")
    p.add_argument("--upstream", default="resolv.conf",
                   help="ADDR[:PORT][,ADDR...], 'none' (REFUSED), or 'resolv.conf' (default)")
    p.add_argument("--allow-recursion", action="append", default=[],
                   help="CIDR allowed to use forwarding (repeatable; default loopback + pod CIDR)")
    p.add_argument("--service-cidr", action="append", default=[])
    p.add_argument("--pod-cidr", action="append", default=[])
    p.add_argument("--reverse-zone", action="append", default=[])
    p.add_argument("--dns-service-ip", default=None)
    p.add_argument("--edns-udp-size", type=int, default=1232)
    p.add_argument("--zone-file", default=None, help="ZoneData JSON to serve at start")
    p.add_argument("--no-udp-mmsg", dest="udp_mmsg", action="store_false",
                   help="one recvfrom/sendto per datagram instead of recvmmsg/sendmmsg batches")
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> DnsConfig:
    kw: dict = {}
    if args.service_cidr:
        kw["service_cidrs"] = tuple(ipaddress.ip_network(c) for c in args.service_cidr)
    if args.pod_cidr:
        kw["pod_cidrs"] = tuple(ipaddress.ip_network(c) for c in args.pod_cidr)
    pod_cidrs = kw.get("pod_cidrs", DnsConfig.pod_cidrs)
    if args.allow_recursion:
        kw["recursion_clients"] = tuple(ipaddress.ip_network(c) for c in args.allow_recursion)
    else:
        kw["recursion_clients"] = (ipaddress.ip_network("127.0.0.0/8"),
                                   ipaddress.ip_network("::1/128"), *pod_cidrs)
    if args.reverse_zone:
        kw["reverse_zones"] = tuple(args.reverse_zone)
    return DnsConfig(zone=args.cluster_domain, ttl=args.ttl, pods_mode=args.pods_mode,
                     upstreams=parse_upstreams(args.upstream), addr=args.addr,
                     admin_addr=args.admin, dns_service_ip=args.dns_service_ip,
                     edns_udp_size=args.edns_udp_size, gc_freeze=True, udp_mmsg=args.udp_mmsg, **kw)


async def serve(config: DnsConfig, zone_file: str | None, stop: asyncio.Event) -> None:
    server = DnsServer(config)  # starts the admin app too (config.admin_addr)
    if zone_file:  # before binding: never SERVFAIL for a zone we were given
        with open(zone_file, "rb") as f:
            server.set_zone(parse_zone_json(f.read()))
        release_memory()
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"kubelab-dns: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is optional
        loop_factory = None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, args.zone_file, stop)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
