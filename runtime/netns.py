"""netns mode: one Linux network namespace per pod, on a bridge, with real pod IPs.

Layout (what ``kubelab up --mode netns`` builds; all names start with ``prefix``,
``kl-`` by default, and follow the patterns below, so ``cleanup(prefix)`` finds
everything after a crash and nothing else -- ``check_prefix`` keeps prefixes short and
unlike other tools' names, and cleanup matches the whole name, not just the prefix):

- a bridge ``<prefix>br0`` in the node (root) namespace holding the pod CIDR's first
  address as the pods' gateway;
- per pod a namespace ``<prefix><podns>_<pod>`` (``_`` can't occur in Kubernetes names,
  so the name is unambiguous) with ``lo`` and ``eth0`` (the pod IP), a default route via
  the gateway, and a veth ``<prefix><hash>`` on the bridge;
- ``/etc/netns/<netns>/resolv.conf`` with the cluster search path and the DNS service
  IP, and ``/etc/netns/<netns>/hosts`` with the pod's own name (kubelet writes the same
  into a pod's /etc/hosts); ``ip netns exec`` bind-mounts both over /etc;
- the service CIDRs and the LB pool routed as local in the node namespace (the DNS
  server and the proxy bind addresses in them; pods reach them through their default
  route). Routes carry no name, so the lab records them in
  ``/run/kubelab/<prefix>.routes`` before adding them and cleanup deletes exactly those;
- ``/run/kubelab/<prefix>.lock``, flocked for the lab's lifetime: a second lab (or a
  ``kubelab down``) with the same prefix is refused instead of tearing the first down;
- when another tool (dockerd) left ``iptables -P FORWARD DROP`` with br_netfilter on,
  bridged pod-to-pod traffic would be dropped, so an accept rule for the bridge is
  inserted into ``ip filter FORWARD``, commented ``<prefix>lab`` so cleanup finds it.

Command lists are built by pure functions (unit-tested); ``Netns`` runs them.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

NETNS_RUN_DIR = Path("/var/run/netns")
NETNS_ETC_DIR = Path("/etc/netns")
STATE_DIR = Path("/run/kubelab")  # <prefix>.lock and <prefix>.routes of running labs
ROUTE_PROTO = 252  # routes kubelab adds carry this protocol number (see proxy.vip)
DEFAULT_PREFIX = "kl-"

# What --netns-prefix may be: short (interface names are at most 15 bytes and a veth is
# the prefix plus a hash) and, for safety, unlike the names other tools give interfaces
# and namespaces (cleanup only ever matches the lab's own patterns, but a prefix that
# reads like docker's or a CNI plugin's invites mistakes in `kubelab down`).
PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,6}-")
RESERVED_PREFIXES = ("br-", "cali", "cilium", "cni", "docker", "eth", "flannel", "kube", "lo", "lxc", "tap",
                     "tun", "veth", "virbr", "vxlan", "weave", "wg", "wl", "en")
# <namespace>_<pod>: a DNS label, "_" (never in a Kubernetes name), a DNS subdomain
_POD_PART = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?_[a-z0-9]([-.a-z0-9]*[a-z0-9])?"


class NetnsError(RuntimeError):
    """A failed ip/nft command, with its stderr."""


class LabRunning(NetnsError):
    """Another live lab holds this prefix's lock."""


def check_prefix(prefix: str, flag: str = "--netns-prefix") -> str | None:
    """The one-line error for a prefix ``kubelab up``/``down`` must refuse, or None (pure)."""
    if not PREFIX_RE.fullmatch(prefix):
        return (f"{flag} {prefix!r}: 1 to 8 characters: a lowercase letter, up to 6 lowercase letters or "
                "digits, then '-' (like kl-)")
    stem = prefix.rstrip("-")
    clash = next((r for r in RESERVED_PREFIXES if prefix.startswith(r) or stem == r.rstrip("-")), None)
    if clash is not None:
        return f"{flag} {prefix!r}: looks like the names of another tool's interfaces ({clash}...): pick another"
    return None


@dataclass(frozen=True)
class NetnsConfig:
    """Names and addresses of one netns lab."""

    pod_cidr: ipaddress.IPv4Network
    dns_ip: str
    cluster_domain: str = "cluster.local"
    prefix: str = DEFAULT_PREFIX
    mtu: int = 1500
    # CIDRs routed as local in the node namespace (service CIDR, LB pool): the proxy and
    # the DNS server bind addresses in them, and pods reach them through their gateway
    local_cidrs: tuple[str, ...] = ()

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br0"

    @property
    def gateway(self) -> str:
        return str(self.pod_cidr.network_address + 1)


def supported() -> tuple[bool, str]:
    """Can this process build namespaces? (root, ``ip`` with netns support)."""
    if os.geteuid() != 0:
        return False, "netns mode needs root"
    if shutil.which("ip") is None:
        return False, "netns mode needs the ip command (apt-get install iproute2)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"ip netns does not work here: {probe.stderr.strip()}"
    return True, ""


# --------------------------------------------------------------------------- pure naming


def netns_name(prefix: str, namespace: str, name: str) -> str:
    return f"{prefix}{namespace}_{name}"


def veth_name(prefix: str, namespace: str, name: str) -> str:
    """Interface names are at most 15 bytes: the prefix plus a hash of the pod."""
    room = veth_room(prefix)
    digest = hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()[:room]
    return f"{prefix}{digest}"[:15]


def veth_room(prefix: str) -> int:
    return max(4, 15 - len(prefix))


def is_lab_netns(prefix: str, name: str) -> bool:
    """Is ``name`` a pod namespace (or /etc/netns dir) of the lab with ``prefix``?"""
    return name.startswith(prefix) and re.fullmatch(_POD_PART, name[len(prefix):]) is not None


def is_lab_veth(prefix: str, ifname: str, master: str | None) -> bool:
    """Is ``ifname`` the node side of a pod's veth (``veth_name``): the prefix plus the
    hash, on the lab's bridge (or on none, once the bridge is gone)?"""
    if not ifname.startswith(prefix) or master not in (None, f"{prefix}br0"):
        return False
    digest = ifname[len(prefix):]
    return len(ifname) == min(15, len(prefix) + veth_room(prefix)) and re.fullmatch(r"[0-9a-f]+", digest) is not None


def lab_links(prefix: str, links: Sequence[dict]) -> list[str]:
    """Which of ``ip -j link show``'s links are the lab's: veths first, the bridge last (pure)."""
    bridge = f"{prefix}br0"
    veths = [ln["ifname"] for ln in links if is_lab_veth(prefix, ln.get("ifname", ""), ln.get("master"))]
    return veths + [ln["ifname"] for ln in links if ln.get("ifname") == bridge]


def resolv_conf(namespace: str, dns_ip: str, cluster_domain: str) -> str:
    """What kubelet writes for dnsPolicy ClusterFirst."""
    search = f"{namespace}.svc.{cluster_domain} svc.{cluster_domain} {cluster_domain}"
    return f"search {search}\nnameserver {dns_ip}\noptions ndots:5\n"


def pod_resolv_conf(spec: dict, namespace: str, dns_ip: str, cluster_domain: str) -> str | None:
    """resolv.conf for a pod's ``dnsPolicy``/``dnsConfig`` (None: use the node's, ``Default``)."""
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    if policy == "Default":
        return None
    cfg = spec.get("dnsConfig") or {}
    if policy == "None":
        nameservers, searches, options = [], [], {}
    else:  # ClusterFirst, ClusterFirstWithHostNet
        nameservers = [dns_ip]
        searches = [f"{namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]
        options = {"ndots": "5"}
    nameservers += [n for n in cfg.get("nameservers") or [] if n not in nameservers]
    searches += [d for d in cfg.get("searches") or [] if d not in searches]
    for opt in cfg.get("options") or []:
        options[opt["name"]] = opt.get("value")
    lines = []
    if searches:
        lines.append("search " + " ".join(searches[:32]))
    lines += [f"nameserver {n}" for n in nameservers[:3]]
    if options:
        lines.append("options " + " ".join(k if v is None else f"{k}:{v}" for k, v in options.items()))
    return "\n".join(lines) + "\n"


def hosts_file(pod_ip: str, hostname: str, fqdn: str | None) -> str:
    """kubelet's managed /etc/hosts: localhost lines plus the pod's own name."""
    names = f"{fqdn}\t{hostname}" if fqdn else hostname
    return ("# Kubernetes-managed hosts file (kubelab).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{pod_ip}\t{names}\n")


def bridge_commands(cfg: NetnsConfig) -> list[list[str]]:
    prefixlen = cfg.pod_cidr.prefixlen
    return [
        ["ip", "link", "add", cfg.bridge, "type", "bridge"],
        ["ip", "link", "set", cfg.bridge, "mtu", str(cfg.mtu)],
        ["ip", "addr", "add", f"{cfg.gateway}/{prefixlen}", "dev", cfg.bridge],
        ["ip", "link", "set", cfg.bridge, "up"],
    ]


def local_route_commands(cfg: NetnsConfig, op: str = "replace") -> list[list[str]]:
    """``ip route replace local CIDR dev lo``: every address in CIDR is this host's (bindable).

    ``replace`` because the proxy's netns VIP claim may have added the same route first."""
    return [["ip", "route", op, "local", str(cidr), "dev", "lo", "table", "local", "proto", str(ROUTE_PROTO)]
            for cidr in cfg.local_cidrs]


def pod_commands(cfg: NetnsConfig, namespace: str, name: str, pod_ip: str) -> list[list[str]]:
    ns = netns_name(cfg.prefix, namespace, name)
    veth = veth_name(cfg.prefix, namespace, name)
    return [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", veth, "mtu", str(cfg.mtu), "type", "veth", "peer", "name", "eth0", "netns", ns],
        ["ip", "link", "set", veth, "master", cfg.bridge, "up"],
        ["ip", "-n", ns, "addr", "add", f"{pod_ip}/{cfg.pod_cidr.prefixlen}", "dev", "eth0"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "link", "set", "eth0", "up"],
        ["ip", "-n", ns, "route", "add", "default", "via", cfg.gateway, "dev", "eth0"],
    ]


def pod_teardown_commands(cfg: NetnsConfig, namespace: str, name: str) -> list[list[str]]:
    return [
        ["ip", "link", "del", veth_name(cfg.prefix, namespace, name)],
        ["ip", "netns", "del", netns_name(cfg.prefix, namespace, name)],
    ]


def forward_rule_needed(ruleset_json: str) -> bool:
    """True when an ``ip filter FORWARD`` chain exists whose policy is drop."""
    try:
        data = json.loads(ruleset_json)
    except ValueError:
        return False
    for item in data.get("nftables", []):
        chain = item.get("chain")
        if chain and chain.get("family") == "ip" and chain.get("table") == "filter" \
                and chain.get("name") == "FORWARD" and chain.get("policy") == "drop":
            return True
    return False


def rules_with_comment(ruleset_json: str, comment: str) -> list[tuple[str, str, str, int]]:
    """(family, table, chain, handle) of every rule whose comment is ``comment``."""
    try:
        data = json.loads(ruleset_json)
    except ValueError:
        return []
    out = []
    for item in data.get("nftables", []):
        rule = item.get("rule")
        if rule and rule.get("comment") == comment:
            out.append((rule["family"], rule["table"], rule["chain"], int(rule["handle"])))
    return out


# --------------------------------------------------------------------------- running


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc


async def run(argv: Sequence[str], *, check: bool = True) -> str:
    """Run one command off the event loop (they take milliseconds, but never block it)."""
    proc = await asyncio.to_thread(_run, argv, check=check)
    return proc.stdout


def routes_file(prefix: str, state_dir: Path | None = None) -> Path:
    return (state_dir or STATE_DIR) / f"{prefix}.routes"


def record_routes(prefix: str, cidrs: Sequence[str], state_dir: Path | None = None) -> None:
    """Note the lab's local routes *before* adding them, so that cleanup after a crash
    deletes exactly those (routes carry no name; proto 252 is shared with other labs)."""
    path = routes_file(prefix, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{c}\n" for c in cidrs))
    tmp.replace(path)


def routes_of_other_labs(prefix: str, cidrs: Sequence[str], state_dir: Path | None = None) -> str | None:
    """Why this lab can't route ``cidrs`` (None: it can): another lab's recorded routes
    overlap them. Two labs on one range would share one kernel route, and the first to
    stop (or its ``kubelab down``) would take it from the other."""
    mine = [ipaddress.ip_network(c) for c in cidrs]
    for path in sorted((state_dir or STATE_DIR).glob("*.routes")):
        other = path.name[: -len(".routes")]
        if other == prefix:
            continue
        for theirs in recorded_routes(other, state_dir):
            try:
                net = ipaddress.ip_network(theirs)
            except ValueError:
                continue
            clash = next((m for m in mine if m.version == net.version and m.overlaps(net)), None)
            if clash is not None:
                return (f"{clash} overlaps {net}, routed by the lab with prefix {other} (give this lab other "
                        f"ranges, or stop that lab; after a crash: kubelab down --netns-prefix {other})")
    return None


def recorded_routes(prefix: str, state_dir: Path | None = None) -> list[str]:
    try:
        return [line.strip() for line in routes_file(prefix, state_dir).read_text().splitlines() if line.strip()]
    except OSError:
        return []


class LabLock:
    """``/run/kubelab/<prefix>.lock``, flocked while a lab (or ``kubelab down``) uses the
    prefix; the kernel drops it when the process dies, so a crashed lab holds nothing.

    A clean release removes the file (the lab leaves no file behind). Whoever locked a
    file that was removed meanwhile holds a lock nobody else can see, so ``acquire``
    checks that the locked file is still the one at the path, and retries if not."""

    def __init__(self, prefix: str, state_dir: Path | None = None) -> None:
        self.prefix = prefix
        self.path = (state_dir or STATE_DIR) / f"{prefix}.lock"
        self._fd: int | None = None

    def acquire(self) -> "LabLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise LabRunning(f"a lab with prefix {self.prefix} is running (pid {pid})") from None
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # released and removed while we waited for it: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # still ours while locked
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "LabLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Netns:
    """Builds and removes pod namespaces for one lab (all names start with cfg.prefix)."""

    def __init__(self, cfg: NetnsConfig, state_dir: Path | None = None):
        self.cfg = cfg
        self.state_dir = state_dir
        self._lock = asyncio.Lock()
        self._lab_lock: LabLock | None = None
        self._forward_rule = False

    def name(self, namespace: str, pod: str) -> str:
        return netns_name(self.cfg.prefix, namespace, pod)

    async def start(self) -> None:
        """Take the prefix's lock, remove the leftovers of an earlier, crashed lab, then
        create the bridge and the local routes. Raises LabRunning when a live lab has the
        prefix (and then touches nothing)."""
        self._lab_lock = LabLock(self.cfg.prefix, self.state_dir).acquire()
        try:
            await asyncio.to_thread(cleanup, self.cfg.prefix, self.state_dir)
            for argv in bridge_commands(self.cfg):
                await run(argv)
            clash = routes_of_other_labs(self.cfg.prefix, self.cfg.local_cidrs, self.state_dir)
            if clash:
                raise NetnsError(clash)
            await asyncio.to_thread(record_routes, self.cfg.prefix, self.cfg.local_cidrs, self.state_dir)
            for argv in local_route_commands(self.cfg):
                await run(argv)
            if shutil.which("nft"):
                ruleset = await run(["nft", "-j", "list", "ruleset"], check=False)
                if forward_rule_needed(ruleset):
                    await run(["nft", "insert", "rule", "ip", "filter", "FORWARD", "iifname", self.cfg.bridge,
                               "accept", "comment", f'"{self.cfg.prefix}lab"'])
                    self._forward_rule = True
        except BaseException:
            await asyncio.to_thread(cleanup, self.cfg.prefix, self.state_dir)
            self._lab_lock.release()
            self._lab_lock = None
            raise

    async def add_pod(self, namespace: str, name: str, pod_ip: str, *, hostname: str, fqdn: str | None,
                      spec: dict | None = None) -> str:
        """Namespace + veth + address + resolv.conf/hosts for one pod; returns the netns name."""
        ns = self.name(namespace, name)
        async with self._lock:
            await self._remove(namespace, name)  # a leftover from before a restart
            etc = NETNS_ETC_DIR / ns
            etc.mkdir(parents=True, exist_ok=True)
            resolv = pod_resolv_conf(spec or {}, namespace, self.cfg.dns_ip, self.cfg.cluster_domain)
            if resolv is not None:  # dnsPolicy Default: the node's own resolv.conf shows through
                (etc / "resolv.conf").write_text(resolv)
            (etc / "hosts").write_text(hosts_file(pod_ip, hostname, fqdn))
            try:
                for argv in pod_commands(self.cfg, namespace, name, pod_ip):
                    await run(argv)
            except NetnsError:
                await self._remove(namespace, name)
                raise
        return ns

    async def remove_pod(self, namespace: str, name: str) -> None:
        async with self._lock:
            await self._remove(namespace, name)

    async def _remove(self, namespace: str, name: str) -> None:
        ns = self.name(namespace, name)
        await asyncio.to_thread(_kill_netns_pids, ns)
        for argv in pod_teardown_commands(self.cfg, namespace, name):
            await run(argv, check=False)
        shutil.rmtree(NETNS_ETC_DIR / ns, ignore_errors=True)

    async def close(self) -> None:
        """Remove everything of the lab and release the prefix (idempotent)."""
        if self._lab_lock is None:
            return
        await asyncio.to_thread(cleanup, self.cfg.prefix, self.state_dir)
        self._lab_lock.release()
        self._lab_lock = None


def _kill_netns_pids(ns: str) -> None:
    if not (NETNS_RUN_DIR / ns).exists():
        return
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


def cleanup(prefix: str = DEFAULT_PREFIX, state_dir: Path | None = None) -> list[str]:
    """Remove the namespaces, links, /etc/netns dirs, nft rule and routes of a lab.

    Only the lab's own names match (``is_lab_netns``, ``lab_links``: the bridge
    ``<prefix>br0``, veths named ``<prefix><hash>`` on it), and only the routes recorded
    in ``<prefix>.routes``. Run by ``kubelab down`` (which first takes the prefix's lock)
    and by the next start after a crash; returns what it removed, for the output.
    """
    if not prefix:
        raise ValueError("refusing to clean up with an empty prefix")
    removed: list[str] = []
    if shutil.which("ip") is None:
        return removed
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if is_lab_netns(prefix, ns):
            _kill_netns_pids(ns)
            _run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
    try:
        links = json.loads(_run(["ip", "-j", "link", "show"], check=False).stdout or "[]")
    except ValueError:
        links = []
    for ifname in lab_links(prefix, links):
        if _run(["ip", "link", "del", ifname], check=False).returncode == 0:
            removed.append(f"link {ifname}")
    if NETNS_ETC_DIR.is_dir():
        for d in NETNS_ETC_DIR.iterdir():
            if is_lab_netns(prefix, d.name):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(f"dir {d}")
    if shutil.which("nft"):
        ruleset = _run(["nft", "-j", "list", "ruleset"], check=False).stdout
        for family, table, chain, handle in rules_with_comment(ruleset, f"{prefix}lab"):
            _run(["nft", "delete", "rule", family, table, chain, "handle", str(handle)], check=False)
            removed.append(f"nft rule {family} {table} {chain} {handle}")
    for cidr in recorded_routes(prefix, state_dir):
        argv = ["ip", "route", "del", "local", cidr, "dev", "lo", "table", "local", "proto", str(ROUTE_PROTO)]
        if _run(argv, check=False).returncode == 0:
            removed.append(f"route local {cidr} (table local)")
    try:
        routes_file(prefix, state_dir).unlink()
    except OSError:
        pass
    return removed
