"""Claiming service VIPs so the proxy can bind them: one pluggable step, three modes.

* ``local`` (default): no-op. Linux routes all of 127.0.0.0/8 to ``lo``, so any
  loopback VIP can be bound by an unprivileged process.
* ``netns``: the service CIDRs are made local once at start with
  ``ip route add local CIDR dev lo table local proto 252``; then every VIP in them is
  bindable. Per-IP claims are no-ops. Needs CAP_NET_ADMIN in the node namespace.
  ``proto 252`` (``RT_PROTO``; unassigned in iproute2's ``rt_protos``, which reserves
  0-4 for the kernel and names 8-192 for routing daemons) marks the routes as
  kubelab's: ``ip route show table local proto 252`` lists them. The proxy removes
  only the routes it added itself: in a lab the runtime adds them first, records them
  and removes them after a crash (``kubelab down``); a global flush here would take
  down every other lab's routes on the machine.
* ``compose``: each VIP is added to an interface as a /32 (``ip addr add IP/32 dev
  eth0``) and answered by ARP, as MetalLB's L2 mode does; released with
  ``ip addr del`` when no frontend uses it any more.

A claim that fails raises ``VipError``; the listener manager marks the frontends on
that address ``failed`` (visible in /routes and /healthz) instead of crashing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, Sequence

from kubelab.proxy.config import ProxyConfig

log = logging.getLogger(__name__)


class VipError(Exception):
    pass


class VipClaimer(Protocol):
    async def start(self) -> None: ...
    async def claim(self, ip: str) -> None: ...
    async def release(self, ip: str) -> None: ...
    async def close(self) -> None: ...


async def run_ip(*args: str, ok_if: Sequence[str] = ()) -> bool:
    """Run ``ip ARGS``: True if it changed something, False if it failed with one of the
    ``ok_if`` messages (already so); any other failure raises ``VipError``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise VipError(f"ip {' '.join(args)}: {exc}") from None
    _, err = await proc.communicate()
    if proc.returncode:
        msg = err.decode(errors="replace").strip()
        if any(s in msg for s in ok_if):
            return False
        raise VipError(f"ip {' '.join(args)}: {msg or 'exit status %d' % proc.returncode}")
    return True


class LocalClaim:
    async def start(self) -> None:
        return None

    async def claim(self, ip: str) -> None:
        return None

    async def release(self, ip: str) -> None:
        return None

    async def close(self) -> None:
        return None


RT_PROTO = "252"  # routing protocol number that marks kubelab's routes (see module docstring)


class NetnsClaim(LocalClaim):
    def __init__(self, cidrs: Sequence[str]) -> None:
        self.cidrs = tuple(cidrs)
        self._added: list[str] = []

    async def start(self) -> None:
        for cidr in self.cidrs:
            if await run_ip("route", "add", "local", cidr, "dev", "lo", "table", "local", "proto", RT_PROTO,
                            ok_if=("File exists",)):
                self._added.append(cidr)

    async def close(self) -> None:
        for cidr in self._added:
            try:
                await run_ip("route", "del", "local", cidr, "dev", "lo", "table", "local", "proto", RT_PROTO,
                             ok_if=("No such process",))
            except VipError as exc:
                log.warning("%s", exc)
        self._added.clear()


class ComposeClaim(LocalClaim):
    def __init__(self, interface: str) -> None:
        self.interface = interface

    async def claim(self, ip: str) -> None:
        plen = "128" if ":" in ip else "32"
        await run_ip("addr", "add", f"{ip}/{plen}", "dev", self.interface, ok_if=("File exists",))

    async def release(self, ip: str) -> None:
        plen = "128" if ":" in ip else "32"
        await run_ip("addr", "del", f"{ip}/{plen}", "dev", self.interface, ok_if=("Cannot assign",))


def make_claimer(config: ProxyConfig) -> VipClaimer:
    if config.vip_mode == "netns":
        return NetnsClaim(config.vip_cidrs)
    if config.vip_mode == "compose":
        return ComposeClaim(config.vip_interface)
    return LocalClaim()
