"""NetworkPolicy for pod-to-pod traffic in the netns lab: nftables in every pod's namespace.

Why: traffic to a Service VIP passes the proxy, which checks policy on each new
connection, but a pod that connects to another pod's IP goes straight over the bridge.
``kubelab.controller.netpol_nft`` compiles each pod's allow sets (the same
``PolicyTable`` the proxy uses) into an nftables ruleset; this module keeps every pod
namespace's ruleset equal to the latest table.

How it is fed:

* ``apply(RouteTable)`` is a route sink (``what = "routes"``): the controller calls it
  with every new table. For every pod IP of ``table.policy`` that has a namespace
  (``netns_of_ip``) it computes the ruleset and writes only those that changed since
  the last write to that namespace (``ip netns exec NS nft -f -``, an atomic replace of
  the kubelab table), several namespaces at once but at most ``concurrency``. A failed
  write is logged, never raised into the controller, and retried on the next table and
  after a back-off (``retry_interval``, doubling to 30 s). A pod no policy selects needs
  no rules: a namespace nft never ran in holds no kubelab table, so nothing is written
  there (no ``nft`` run per pod start, and a lab without policies needs no nft).
* ``pod_network_ready(netns, ip)``: the runtime calls it after it built the pod's
  namespace and before it starts the pod's processes, so a pod never runs without its
  rules. If the latest table knows the pod, its ruleset is written now. If it does not
  yet (a new pod's IP reaches the table only after the runtime wrote ``status.podIP``),
  it waits up to ``settle_timeout`` for a table that does.

What a pod gets when no table knows it (no table arrived yet, or the wait timed out):
nothing is isolated, i.e. an empty kubelab table (default allow). That is Kubernetes'
rule — a pod is non-isolated until a NetworkPolicy selects it, and the documentation
("Pod lifecycle") allows a pod created while policy handling lags to start
unprotected, with isolation applied when handling completes. In the lab the wait makes
that window empty as long as the runtime publishes ``status.podIP`` before calling
``pod_network_ready`` (kubelet also reports the IP once the sandbox exists, before the
containers start) and the controller answers within ``settle_timeout``. If writing a
real (isolating) ruleset fails there, ``pod_network_ready`` raises, so the runtime does
not start the pod unprotected (as a failing CNI ADD fails the sandbox).

The rulesets carry the exemptions (see ``netpol_nft``): loopback, the pod's node (the
bridge address is the node address, so probes and the proxy's connections pass) and
egress to the ``proxied`` CIDRs (Service CIDRs, LoadBalancer pool), which the proxy
checks against the backend it picks.

Namespaces are identified by name *and* inode of ``/var/run/netns/NAME``: a pod deleted
and created again gets a namespace with the same name but no rules, and the new inode
makes the enforcer write them again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable, Mapping

from kubelab.controller.netpol_nft import TABLE, pod_ruleset
from kubelab.proxy.policy import PodRules, PolicyTable

if TYPE_CHECKING:
    from kubelab.proxy.table import RouteTable

log = logging.getLogger(__name__)

NETNS_RUN_DIR = Path("/var/run/netns")

NetnsKey = tuple[str, int]  # (name, inode of /var/run/netns/NAME)


class EnforceError(RuntimeError):
    """Writing a pod's ruleset failed (stderr of ``nft``)."""


# --------------------------------------------------------------------------- pure decisions


def pod_owns_netns(pod: str, netns: str) -> bool:
    """Is ``netns`` (``<prefix><namespace>_<name>``, kubelab.runtime.netns) the namespace of ``pod`` ("ns/name")?

    The table is keyed by IP, and an IP freed by a deleted pod can be given to a new
    pod before the table shows the deletion: the old pod's rules must not be written
    into the new pod's namespace. ``_`` cannot occur in Kubernetes names, so the
    suffix names the pod; the prefix is unknown here, so ``x/a`` also "owns"
    ``kl-yx_a`` — a miss only when pod yx/a got x/a's IP before the table caught up.
    """
    namespace, _, name = pod.partition("/")
    return netns.endswith(f"{namespace}_{name}")


def empty_ruleset(name: str = TABLE) -> str:
    """Default allow: the kubelab table replaced by an empty one (what an unselected pod gets)."""
    return f"table inet {name}\ndelete table inet {name}\ntable inet {name} {{\n}}\n"


def ruleset_for(
    policy: PolicyTable | None, netns: str, ip: str, proxied: tuple[str, ...], name: str = TABLE
) -> str | None:
    """The ruleset the namespace of the pod with ``ip`` must hold, or None if ``policy``
    does not know that pod yet (no table, IP absent, or the IP still belongs to another pod)."""
    if policy is None:
        return None
    rules = policy.pods.get(ip)
    if rules is None or not pod_owns_netns(rules.pod, netns):
        return None
    return pod_ruleset(policy, ip, proxied=proxied, name=name)


def targets(
    policy: PolicyTable, netns_of_ip: Callable[[str], str | None], pending: Mapping[str, str]
) -> dict[str, str]:
    """netns -> pod IP for every pod of ``policy`` whose namespace exists (``netns_of_ip``,
    or announced by ``pod_network_ready`` and not yet known to the runtime's index)."""
    out: dict[str, str] = {}
    for ip in policy.pods:
        try:
            ns = netns_of_ip(ip) or pending.get(ip)
        except Exception:  # the runtime's index must never break the controller
            log.exception("netns_of_ip(%s) failed", ip)
            ns = pending.get(ip)
        if ns:
            out[ns] = ip
    return out


@dataclass(frozen=True)
class Plan:
    """What one table means for the namespaces: which to (re)write, which to forget."""

    write: dict[NetnsKey, str]  # namespace -> ruleset text
    forget: tuple[NetnsKey, ...]  # namespaces written before that no table pod maps to now


def plan(desired: Mapping[NetnsKey, str], applied: Mapping[NetnsKey, str]) -> Plan:
    """Write what differs from the last write; forget namespaces no longer desired (their
    pod is gone, or the netns was recreated: a new inode is a new key)."""
    write = {k: text for k, text in desired.items() if applied.get(k) != text}
    forget = tuple(k for k in applied if k not in desired)
    return Plan(write, forget)


# --------------------------------------------------------------------------- effects


def netns_inode(netns: str) -> int | None:
    """Inode of the namespace's bind mount (None: the namespace does not exist)."""
    try:
        return os.stat(NETNS_RUN_DIR / netns).st_ino
    except OSError:
        return None


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
    ``load(netns, text)`` and ``inode(netns)`` are the effects (tests replace them).
    """

    name = "netpol-nft"
    what = "routes"  # ControllerManager: this sink takes RouteTables

    def __init__(
        self,
        netns_of_ip: Callable[[str], str | None],
        proxied: tuple[str, ...],
        *,
        concurrency: int = 8,
        settle_timeout: float = 1.0,
        retry_interval: float = 1.0,
        table_name: str = TABLE,
        load: Callable[[str, str], Awaitable[None]] = nft_load,
        inode: Callable[[str], int | None] = netns_inode,
    ) -> None:
        self._netns_of_ip = netns_of_ip
        self.proxied = tuple(str(c) for c in proxied)
        self.settle_timeout = settle_timeout
        self.retry_interval = retry_interval
        self.table_name = table_name
        self._load = load
        self._inode = inode
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self._policy: PolicyTable | None = None
        self._applied: dict[NetnsKey, str] = {}  # last text written per namespace
        self._written: set[NetnsKey] = set()  # namespaces nft ran in (the others hold no kubelab table)
        self._texts: dict[tuple[str, str], tuple[PodRules, str]] = {}  # (netns, ip) -> rules, ruleset
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending: dict[str, str] = {}  # ip -> netns of pods in pod_network_ready
        self._table_arrived = asyncio.Condition()
        self._retry: asyncio.Task[None] | None = None
        self._retry_delay = retry_interval
        self._closed = False
        self.writes = 0  # rulesets written (tests, metrics)
        self.failures = 0

    # -- the sink ------------------------------------------------------------------------

    async def apply(self, table: RouteTable) -> None:
        """Bring every pod namespace to ``table.policy``. Never raises (failures are retried)."""
        if self._closed:
            return
        self._policy = table.policy
        async with self._table_arrived:
            self._table_arrived.notify_all()
        try:
            await self._sync_all()
        except Exception:  # a bug here must not stop the controller
            log.exception("NetworkPolicy enforcement failed")
            self._schedule_retry()

    async def _sync_all(self) -> None:
        policy = self._policy
        if policy is None:
            return
        by_ns = targets(policy, self._netns_of_ip, self._pending)
        desired: dict[NetnsKey, str] = {}
        ips: dict[NetnsKey, str] = {}
        self._texts = {k: v for k, v in self._texts.items() if by_ns.get(k[0]) == k[1]}
        for ns, ip in by_ns.items():
            text = self._text(ns, ip)
            inode = self._inode(ns)
            if text is None or inode is None:
                continue
            desired[(ns, inode)] = text
            ips[(ns, inode)] = ip
        todo = plan(desired, self._applied)
        for key in todo.forget:
            if key[0] not in self._pending.values():
                self._applied.pop(key, None)
        self._written = {k for k in self._written if k in desired or self._inode(k[0]) == k[1]}
        results = await asyncio.gather(*(self._sync(key[0], ips[key]) for key in todo.write))
        if all(results):
            self._retry_delay = self.retry_interval
        else:
            self._schedule_retry()

    async def _sync(self, netns: str, ip: str, *, fallback: str | None = None) -> bool:
        """Write the latest ruleset for one namespace unless it already holds it.

        Computed from the latest table *inside* the namespace's lock, so when two writes
        race (``apply`` and ``pod_network_ready``, or two tables) the last one wins with
        the newest rules. ``fallback``: what to write when the table does not know the pod.
        Returns False when the write failed.
        """
        async with self._lock(netns):
            text = self._text(netns, ip) or fallback
            inode = self._inode(netns)
            if text is None or inode is None:
                return True
            key = (netns, inode)
            if self._applied.get(key) == text:
                return True
            if key not in self._written and text == empty_ruleset(self.table_name):
                # a namespace nft never ran in holds no kubelab table: that already is
                # default allow (the runtime creates every pod's namespace afresh), so a
                # pod no policy selects costs no nft run (and needs no nft installed)
                self._applied[key] = text
                return True
            self._written.add(key)
            async with self._sem:
                try:
                    await self._load(netns, text)
                except Exception as exc:
                    self.failures += 1
                    self._applied.pop(key, None)
                    log.warning("NetworkPolicy for %s (%s) not applied, will retry: %s", netns, ip, exc)
                    return False
            self._applied = {k: v for k, v in self._applied.items() if k[0] != netns}  # older inodes
            self._applied[key] = text
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
        text = ruleset_for(policy, netns, ip, self.proxied, self.table_name)
        if text is not None and rules is not None:
            self._texts[(netns, ip)] = (rules, text)
        return text

    def _lock(self, netns: str) -> asyncio.Lock:
        lock = self._locks.get(netns)
        if lock is None:
            lock = self._locks[netns] = asyncio.Lock()
        return lock

    def _schedule_retry(self) -> None:
        if self._closed or (self._retry is not None and not self._retry.done()):
            return

        delay = self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, max(self.retry_interval, 30.0))

        async def retry() -> None:
            await asyncio.sleep(delay)  # a back-off (1 s doubling to 30 s), not synchronisation
            self._retry = None
            try:
                await self._sync_all()
            except Exception:
                log.exception("NetworkPolicy enforcement retry failed")
                self._schedule_retry()

        self._retry = asyncio.get_running_loop().create_task(retry(), name="netpol-nft-retry")

    # -- the runtime's hook ----------------------------------------------------------------

    def _knows(self, netns: str, ip: str) -> bool:
        rules = self._policy.pods.get(ip) if self._policy is not None else None
        return rules is not None and pod_owns_netns(rules.pod, netns)

    async def pod_network_ready(self, netns: str, pod_ip: str) -> None:
        """Write the pod's rules before its processes start (see the module docstring).

        Raises EnforceError when an isolating ruleset could not be written.
        """
        if self._closed:
            return
        self._pending[pod_ip] = netns
        try:
            if self._policy is not None and not self._knows(netns, pod_ip):
                try:
                    async with self._table_arrived:
                        await asyncio.wait_for(
                            self._table_arrived.wait_for(lambda: self._closed or self._knows(netns, pod_ip)),
                            self.settle_timeout,
                        )
                except asyncio.TimeoutError:
                    log.warning("no policy table knows pod %s (%s) after %.1fs: it starts non-isolated "
                                "until one does", netns, pod_ip, self.settle_timeout)
            empty = empty_ruleset(self.table_name)
            ok = await self._sync(netns, pod_ip, fallback=empty)
            if not ok:
                self._schedule_retry()
            wanted = self._text(netns, pod_ip) or empty
            if not ok and wanted != empty:  # an unselected pod may start: it has nothing to enforce
                raise EnforceError(f"cannot apply NetworkPolicy in {netns}: not starting the pod unprotected")
        finally:
            if self._pending.get(pod_ip) == netns:
                del self._pending[pod_ip]

    # -- reading ---------------------------------------------------------------------------

    def applied(self) -> dict[str, str]:
        """netns -> the ruleset last written there."""
        return {ns: text for (ns, _), text in self._applied.items()}

    async def close(self) -> None:
        self._closed = True
        async with self._table_arrived:
            self._table_arrived.notify_all()
        if self._retry is not None:
            self._retry.cancel()
            try:
                await self._retry
            except asyncio.CancelledError:
                pass
            self._retry = None


def proxied_cidrs(service_cidrs: Iterable[object], lb_pool: object | None) -> tuple[str, ...]:
    """The CIDRs the proxy enforces, from a LabConfig's ``service_cidrs`` and ``lb_pool``."""
    return tuple(str(c) for c in (*service_cidrs, *((lb_pool,) if lb_pool is not None else ())))


__all__ = ["EnforceError", "NetnsPolicyEnforcer", "Plan", "empty_ruleset", "nft_load", "plan",
           "pod_owns_netns", "proxied_cidrs", "ruleset_for", "targets"]
