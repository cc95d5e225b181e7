"""NetworkPolicy for pod-to-pod traffic in the netns lab: nftables in every pod's namespace.

Why: traffic to a Service VIP passes the proxy, which checks policy on each new
connection, but a pod that connects to another pod's IP goes straight over the bridge.
``kubelab.controller.netpol_nft`` compiles each pod's allow sets (the same
``PolicyTable`` the proxy uses) into an nftables ruleset; this module keeps every pod
namespace's ruleset equal to the latest table.

How it is fed:

* ``apply(RouteTable)`` is a route sink: the controller calls it with every new table.
  It only stores the table and wakes the enforcer's own worker task, so the controller
  (and with it DNS and the proxy, which are fed in sequence) never waits for ``nft``. The
  worker coalesces bursts (it always works on the latest table) and, for every pod IP of
  ``table.policy`` that has a namespace (``netns_of_ip``), computes the ruleset and
  writes only those that changed since the last write to that namespace (``ip netns
  exec NS nft -f -``, an atomic replace of the kubelab table), several namespaces at once
  but at most ``concurrency``. A failed write is logged, never raised into the
  controller, and retried on the next table and after a back-off (``retry_interval``,
  doubling to 30 s). A pod no policy selects needs no rules: a namespace nft never ran
  in holds no kubelab table, so nothing is written there (no ``nft`` run per pod start,
  and a lab without policies needs no nft).
* ``pod_network_ready(netns, ip)``: the runtime calls it exactly once per freshly built
  namespace, after it built it (and indexed it for ``netns_of_ip``) and before it starts
  the pod's processes, so a pod never runs without its rules. It forgets whatever was
  written to an earlier namespace of that name (the runtime deletes and re-creates a
  namespace of the same name when a pod is re-created), then, if the latest table knows
  the pod, writes its ruleset now. If it does not yet (no table arrived yet, or a new
  pod's IP reaches the table only after the runtime wrote ``status.podIP``), it waits up
  to ``settle_timeout`` for a table that does.

What a pod gets when no table knows it (the wait timed out): nothing is isolated, i.e.
an empty kubelab table (default allow). That is Kubernetes' rule -- a pod is
non-isolated until a NetworkPolicy selects it, and the documentation ("Pod lifecycle")
allows a pod created while policy handling lags to start unprotected, with isolation
applied when handling completes. In the lab the wait makes that window empty as long as
the runtime publishes ``status.podIP`` before calling ``pod_network_ready`` (kubelet
also reports the IP once the sandbox exists, before the containers start) and the
controller answers within ``settle_timeout``. If writing a real (isolating) ruleset
fails there, ``pod_network_ready`` raises, so the runtime does not start the pod
unprotected (as a failing CNI ADD fails the sandbox; the runtime retries with a
back-off).

The rulesets carry the exemptions (see ``netpol_nft``): loopback, the pod's node (the
bridge address is the node address, so probes and the proxy's connections pass) and
egress to the ``proxied`` CIDRs (Service CIDRs, LB pool), which the proxy checks
against the backend it picks.

Namespaces are identified by name only (``<prefix><namespace>_<pod>``): the kernel
reuses namespace inodes, so an inode can't tell a re-created namespace from the old
one; the reset in ``pod_network_ready`` does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable, Mapping

from kubelab.controller.netpol_nft import TABLE, pod_ruleset
from kubelab.proxy.policy import PodRules, PolicyTable
from kubelab.runtime.netns import DEFAULT_PREFIX, netns_name

if TYPE_CHECKING:
    from kubelab.proxy.table import RouteTable

log = logging.getLogger(__name__)

RETRY_CAP = 30.0  # seconds: the longest back-off between retries of failed writes
COMPILE_BATCH = 64  # rulesets compiled between two turns of the event loop


class EnforceError(RuntimeError):
    """Writing a pod's ruleset failed (stderr of ``nft``)."""


# --------------------------------------------------------------------------- pure decisions


def pod_owns_netns(pod: str, netns: str, prefix: str) -> bool:
    """Is ``netns`` the namespace of ``pod`` ("ns/name") in the lab with ``prefix``?

    The table is keyed by IP, and an IP freed by a deleted pod can be given to a new
    pod before the table shows the deletion: the old pod's rules must not be written
    into the new pod's namespace. The runtime names namespaces with
    ``netns_name(prefix, ns, name)``, so the comparison is exact.
    """
    namespace, _, name = pod.partition("/")
    return netns == netns_name(prefix, namespace, name)


def empty_ruleset(name: str = TABLE) -> str:
    """Default allow: the kubelab table replaced by an empty one (what an unselected pod gets)."""
    return f"table inet {name}\ndelete table inet {name}\ntable inet {name} {{\n}}\n"


def ruleset_for(
    policy: PolicyTable | None, netns: str, ip: str, proxied: tuple[str, ...], name: str = TABLE,
    prefix: str = DEFAULT_PREFIX,
) -> str | None:
    """The ruleset the namespace of the pod with ``ip`` must hold, or None if ``policy``
    does not know that pod yet (no table, IP absent, or the IP still belongs to another pod)."""
    if policy is None:
        return None
    rules = policy.pods.get(ip)
    if rules is None or not pod_owns_netns(rules.pod, netns, prefix):
        return None
    return pod_ruleset(policy, ip, proxied=proxied, name=name)


def targets(policy: PolicyTable, netns_of_ip: Callable[[str], str | None]) -> dict[str, str]:
    """netns -> pod IP for every pod of ``policy`` whose namespace exists (``netns_of_ip``:
    the runtime indexes a namespace before it calls ``pod_network_ready``)."""
    out: dict[str, str] = {}
    for ip in policy.pods:
        try:
            ns = netns_of_ip(ip)
        except Exception:  # the runtime's index must never break the enforcer
            log.exception("netns_of_ip(%s) failed", ip)
            ns = None
        if ns:
            out[ns] = ip
    return out


@dataclass(frozen=True)
class Plan:
    """What one table means for the namespaces: which to (re)write, which to forget."""

    write: dict[str, str]  # namespace -> ruleset text
    forget: tuple[str, ...]  # namespaces written before that no table pod maps to now


def plan(desired: Mapping[str, str], applied: Mapping[str, str]) -> Plan:
    """Write what differs from the last write; forget namespaces no longer desired."""
    write = {k: text for k, text in desired.items() if applied.get(k) != text}
    forget = tuple(k for k in applied if k not in desired)
    return Plan(write, forget)


# --------------------------------------------------------------------------- effects


async def nft_load(netns: str, text: str, *, timeout: float = 10.0) -> None:
    """``ip netns exec NETNS nft -f -`` with ``text`` on stdin (one atomic transaction)."""
    ip = shutil.which("ip") or "ip"
    nft = shutil.which("nft")
    if nft is None:
        raise EnforceError("nft not found (apt-get install nftables): NetworkPolicy cannot be enforced between pods")
    proc = await asyncio.create_subprocess_exec(
        ip, "netns", "exec", netns, nft, "-f", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(text.encode()), timeout)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        raise EnforceError(f"nft in {netns}: {err.decode(errors='replace').strip()[:500] or proc.returncode}")


class NetnsPolicyEnforcer:
    """Keeps every pod namespace's nftables ruleset equal to the latest PolicyTable.

    ``netns_of_ip(ip)``: the namespace of the run pod with that IP, or None.
    ``proxied``: CIDRs whose traffic the proxy enforces (Service CIDRs, LB pool).
    ``prefix``: the lab's ``--netns-prefix`` (namespace names, see ``pod_owns_netns``).
    ``load(netns, text)`` is the effect (tests replace it).
    """

    def __init__(
        self,
        netns_of_ip: Callable[[str], str | None],
        proxied: tuple[str, ...],
        *,
        prefix: str = DEFAULT_PREFIX,
        concurrency: int = 8,
        settle_timeout: float = 1.0,
        retry_interval: float = 1.0,
        table_name: str = TABLE,
        load: Callable[[str, str], Awaitable[None]] = nft_load,
    ) -> None:
        self._netns_of_ip = netns_of_ip
        self.proxied = tuple(str(c) for c in proxied)
        self.prefix = prefix
        self.settle_timeout = settle_timeout
        self.retry_interval = retry_interval
        self.table_name = table_name
        self._load = load
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self._policy: PolicyTable | None = None
        self._applied: dict[str, str] = {}  # netns -> last text written there
        self._ips: dict[str, str] = {}  # netns -> the pod IP it was written for
        self._written: set[str] = set()  # namespaces nft ran in (the others hold no kubelab table)
        self._texts: dict[tuple[str, str], tuple[PodRules, str]] = {}  # (netns, ip) -> rules, ruleset
        self._locks: dict[str, asyncio.Lock] = {}
        self._changed = asyncio.Condition()  # a table arrived, or the worker finished a pass
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._received = 0  # tables received ...
        self._done = 0  # ... and the last one the worker finished a pass over
        self._retry_delay = retry_interval
        self._closed = False
        self.writes = 0  # rulesets written (tests, metrics)
        self.failures = 0

    # -- the sink ------------------------------------------------------------------------

    async def apply(self, table: RouteTable) -> None:
        """Take ``table`` and return at once: the worker brings the namespaces to it."""
        if self._closed:
            return
        self._policy = table.policy
        self._received += 1
        self._wake.set()
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="netpol-nft")
        async with self._changed:
            self._changed.notify_all()

    async def synced(self) -> None:
        """Until the worker finished a pass over the latest table (tests, benches)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._closed or self._done >= self._received)

    async def _work(self) -> None:
        """The worker: one pass per wake-up over the latest table; after a failed write,
        another pass after the back-off (or at the next table, whichever comes first)."""
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            received = self._received
            try:
                ok = await self._sync_all()
            except Exception:  # a bug here must not stop enforcement for good
                log.exception("NetworkPolicy enforcement failed")
                ok = False
            delay = self._retry_delay
            self._retry_delay = self.retry_interval if ok else min(delay * 2, max(self.retry_interval, RETRY_CAP))
            self._done = received
            async with self._changed:
                self._changed.notify_all()
            if ok:
                continue
            try:  # a back-off, not synchronisation: a new table ends it early
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                self._wake.set()

    async def _sync_all(self) -> bool:
        """One pass over the latest table; False when a write failed."""
        policy = self._policy
        if policy is None:
            return True
        by_ns = targets(policy, self._netns_of_ip)
        self._texts = {k: v for k, v in self._texts.items() if by_ns.get(k[0]) == k[1]}
        desired: dict[str, str] = {}
        for i, (ns, ip) in enumerate(by_ns.items()):
            if i % COMPILE_BATCH == COMPILE_BATCH - 1:
                await asyncio.sleep(0)  # compiling 1,000 rulesets takes a while: let DNS and the proxy run
            text = self._text(ns, ip)
            if text is not None:
                desired[ns] = text
        todo = plan(desired, self._applied)
        for ns in todo.forget:
            self._forget(ns)
        results = await asyncio.gather(*(self._sync(ns, by_ns[ns]) for ns in todo.write))
        return all(results)

    def _forget(self, netns: str) -> None:
        """No pod of the table maps to ``netns`` now. While the runtime still has it (the
        table lags), only the record of the last write goes (the next table that knows
        the pod rewrites it); once the pod is gone, everything about the name goes."""
        lock = self._locks.get(netns)
        if lock is not None and lock.locked():
            return  # a write is in flight: the next pass decides
        self._applied.pop(netns, None)
        ip = self._ips.get(netns)
        try:
            alive = ip is not None and self._netns_of_ip(ip) == netns
        except Exception:
            alive = True
        if not alive:
            self._ips.pop(netns, None)
            self._written.discard(netns)
            self._locks.pop(netns, None)

    async def _sync(self, netns: str, ip: str, *, fallback: str | None = None, bounded: bool = True) -> bool:
        """Write the latest ruleset for one namespace unless it already holds it.

        Computed from the latest table *inside* the namespace's lock, so when two writes
        race (the worker and ``pod_network_ready``) the last one wins with the newest
        rules. ``fallback``: what to write when the table does not know the pod.
        ``bounded``: wait for one of the ``concurrency`` slots (``pod_network_ready`` does
        not: a pod start must not queue behind a pass over every namespace).
        Returns False when the write failed.
        """
        if not bounded:
            return await self._sync_locked(netns, ip, fallback)
        async with self._sem:  # the slot first: a namespace lock is never held while queueing
            return await self._sync_locked(netns, ip, fallback)

    async def _sync_locked(self, netns: str, ip: str, fallback: str | None) -> bool:
        async with self._lock(netns):
            text = self._text(netns, ip) or fallback
            if text is None or self._applied.get(netns) == text:
                return True
            self._ips[netns] = ip
            if netns not in self._written and text == empty_ruleset(self.table_name):
                # a namespace nft never ran in holds no kubelab table: that already is
                # default allow (the runtime creates every pod's namespace afresh), so a
                # pod no policy selects costs no nft run (and needs no nft installed)
                self._applied[netns] = text
                return True
            self._written.add(netns)
            try:
                await self._load(netns, text)
            except Exception as exc:
                self.failures += 1
                self._applied.pop(netns, None)
                log.warning("NetworkPolicy for %s (%s) not applied, will retry: %s", netns, ip, exc)
                return False
            self._applied[netns] = text
            self.writes += 1
            return True

    def _text(self, netns: str, ip: str) -> str | None:
        """``ruleset_for`` the latest table, memoised on the pod's ``PodRules``: a new
        RouteTable (endpoints changed) or a policy change elsewhere costs an equality
        check per pod, not a ruleset compilation."""
        policy = self._policy
        rules = policy.pods.get(ip) if policy is not None else None
        hit = self._texts.get((netns, ip))
        if rules is not None and hit is not None and (hit[0] is rules or hit[0] == rules):
            return hit[1]
        text = ruleset_for(policy, netns, ip, self.proxied, self.table_name, self.prefix)
        if text is not None and rules is not None:
            self._texts[(netns, ip)] = (rules, text)
        return text

    def _lock(self, netns: str) -> asyncio.Lock:
        lock = self._locks.get(netns)
        if lock is None:
            lock = self._locks[netns] = asyncio.Lock()
        return lock

    # -- the runtime's hook ----------------------------------------------------------------

    def _knows(self, netns: str, ip: str) -> bool:
        rules = self._policy.pods.get(ip) if self._policy is not None else None
        return rules is not None and pod_owns_netns(rules.pod, netns, self.prefix)

    async def pod_network_ready(self, netns: str, pod_ip: str) -> None:
        """Write the pod's rules before its processes start (see the module docstring).

        Called once per freshly built namespace. Raises EnforceError when an isolating
        ruleset could not be written, and once closed: a pod started then (the lab
        shutting down) would run with no rules at all.
        """
        if self._closed:
            raise EnforceError(f"NetworkPolicy enforcement has stopped: not starting {netns}")
        async with self._lock(netns):
            # a new namespace: nothing written to an earlier one of this name holds here
            self._applied.pop(netns, None)
            self._written.discard(netns)
            self._ips[netns] = pod_ip
        if not self._knows(netns, pod_ip):
            try:
                async with self._changed:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self._closed or self._knows(netns, pod_ip)),
                        self.settle_timeout,
                    )
            except asyncio.TimeoutError:
                log.warning("no policy table knows pod %s (%s) after %.1fs: it starts non-isolated "
                            "until one does", netns, pod_ip, self.settle_timeout)
        if self._closed:
            raise EnforceError(f"NetworkPolicy enforcement has stopped: not starting {netns}")
        empty = empty_ruleset(self.table_name)
        ok = await self._sync(netns, pod_ip, fallback=empty, bounded=False)
        if not ok:
            self._wake.set()  # the worker retries (after its back-off if it is in one)
            wanted = self._text(netns, pod_ip) or empty
            if wanted != empty:  # an unselected pod may start: it has nothing to enforce
                raise EnforceError(f"cannot apply NetworkPolicy in {netns}: not starting the pod unprotected")

    # -- reading ---------------------------------------------------------------------------

    def applied(self) -> dict[str, str]:
        """netns -> the ruleset last written there."""
        return dict(self._applied)

    async def close(self) -> None:
        self._closed = True
        async with self._changed:
            self._changed.notify_all()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None


def proxied_cidrs(service_cidrs: Iterable[object], lb_pool: object | None) -> tuple[str, ...]:
    """The IPv4 CIDRs the proxy enforces (and netns mode routes as local), from a
    LabConfig's ``service_cidrs`` and ``lb_pool`` (pods have IPv4 addresses only)."""
    cidrs = (*service_cidrs, *((lb_pool,) if lb_pool is not None else ()))
    return tuple(str(c) for c in cidrs if ipaddress.ip_network(str(c)).version == 4)


__all__ = ["EnforceError", "NetnsPolicyEnforcer", "Plan", "empty_ruleset", "nft_load", "plan",
           "pod_owns_netns", "proxied_cidrs", "ruleset_for", "targets"]
