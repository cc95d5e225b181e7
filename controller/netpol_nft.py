"""NetworkPolicy as nftables rules, one ruleset per pod network namespace (the netns lab).

Traffic that does not pass the proxy (pod to pod IP) is enforced in each pod's own
namespace from the same compiled allow sets the proxy uses (``PolicyTable``), so
``kubelab exec x/a -- curl 10.244.x.y`` behaves exactly as ``kubelab netpol matrix``
says. Pure: PolicyTable in, ``nft -f`` text out; the runtime applies it with
``ip netns exec <pod-ns> nft -f -``.

Each ruleset replaces the table atomically (``table …; delete table …; table … {…}``
in one ``nft -f`` transaction) and has, per isolated direction, one base chain:

* ``ct state established,related accept`` first: decisions are per connection and
  replies are implicit (R25); ``ct state invalid drop``.
* the exemptions: loopback (R24) and the pod's own node (R23) — which must be listed
  in the Node's ``status.addresses`` with the address pods see (the bridge address in
  the netns lab), since the proxy's connections to backends come from it;
* egress to the ``proxied`` CIDRs (Service VIPs): the proxy checks those connections
  against the chosen backend (R22), the pod only sees the VIP;
* one accept rule per allow entry, in grant order, commented with the policy and rule
  (``x/allow-web ingress[0].from[1]``); selectors are already pod IP sets (named sets
  here, shared by the rules that use them), ipBlocks are ``cidr`` minus ``except``,
  named ports are already numbers;
* then a counted ``reject`` (TCP reset for TCP, ICMP otherwise) commented with the
  policies that isolate the pod — the proxy resets denied connections too.

A direction that no policy isolates gets no chain (everything passes), and a pod with
neither gets an empty table (so stale rules are removed).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from kubelab.proxy.policy import EGRESS, INGRESS, MAX_PORT, Acl, AclEntry, IPBlock, PodRules, PolicyTable

TABLE = "kubelab_netpol"
_ND_TYPES = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert"


def _quote(text: str) -> str:
    return '"' + text.replace('"', "'")[:120] + '"'


def _family(ip: str) -> str:
    """nft family of an address or CIDR: IPv6 text always has a colon, IPv4 text never
    (parsing with ``ipaddress`` made compiling 1,000 pods' rulesets take seconds)."""
    return "ip6" if ":" in ip else "ip"


def _split(ips: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"ip": [], "ip6": []}
    for ip in sorted(ips):
        out[_family(ip)].append(ip)
    return out


def _ports(entry: AclEntry) -> list[str]:
    """Port matches of an entry; [""] means any port and protocol."""
    if entry.ports is None:
        return [""]
    out = []
    for proto, lo, hi in entry.ports:
        l4 = f"meta l4proto {proto.lower()}"
        if lo <= 1 and hi >= MAX_PORT:
            out.append(l4)
        elif lo == hi:
            out.append(f"{l4} th dport {lo}")
        else:
            out.append(f"{l4} th dport {lo}-{hi}")
    return out


class _Sets:
    """Named sets for the pod-IP peers of one ruleset, one per (peer set, family)."""

    def __init__(self) -> None:
        self.names: dict[tuple[frozenset[str], str], str] = {}
        self.lines: list[str] = []

    def ref(self, ips: frozenset[str], family: str, members: list[str]) -> str:
        key = (ips, family)
        name = self.names.get(key)
        if name is None:
            name = self.names[key] = f"peers{len(self.names)}_{'v6' if family == 'ip6' else 'v4'}"
            kind = "ipv6_addr" if family == "ip6" else "ipv4_addr"
            elements = f" elements = {{ {', '.join(members)} }}" if members else ""
            self.lines.append(f"  set {name} {{ type {kind};{elements} }}")
        return f"@{name}"


def _peer_matches(entry: AclEntry, addr: str, sets: _Sets) -> list[str]:
    """Address matches of an entry; [""] means any address, [] means nothing."""
    peer = entry.peer
    if peer is None:
        return [""]
    if isinstance(peer, IPBlock):
        fam = _family(peer.cidr)
        net = ipaddress.ip_network(peer.cidr, strict=False)
        match = f"{fam} {addr} {net}"
        excepts = [str(ipaddress.ip_network(e, strict=False)) for e in peer.excepts if _family(e) == fam]
        if excepts:
            match += f" {fam} {addr} != {{ {', '.join(excepts)} }}"
        return [match]
    out = []
    for fam, members in _split(peer).items():
        if members:
            out.append(f"{fam} {addr} {sets.ref(peer, fam, members)}")
    return out


def _chain(rules: PodRules, acl: Acl, direction: str, sets: _Sets, proxied: tuple[str, ...]) -> list[str]:
    ingress = direction == INGRESS
    name, hook = ("ingress", "input") if ingress else ("egress", "output")
    addr = "saddr" if ingress else "daddr"
    lines = [
        f"  chain {name} {{",
        f"    type filter hook {hook} priority filter; policy accept;",
        "    ct state established,related accept",
        "    ct state invalid drop",
        f'    {"iifname" if ingress else "oifname"} "lo" accept comment "loopback (R24)"',
        f"    icmpv6 type {{ {_ND_TYPES} }} accept",
    ]
    for fam, ips in _split(rules.node_ips).items():
        if ips:
            lines.append(f'    {fam} {addr} {{ {", ".join(ips)} }} accept comment "own node {rules.node or ""} (R23)"')
    if not ingress:
        for fam, nets in _split(proxied).items():
            if nets:
                lines.append(
                    f'    {fam} daddr {{ {", ".join(nets)} }} accept comment "Service VIPs: the proxy enforces on the backend (R22)"'
                )
    for entry in acl.entries:
        policy, path = acl.grants[entry.grant]
        comment = _quote(f"{policy} {path}")
        for peer in _peer_matches(entry, addr, sets):
            for port in _ports(entry):
                match = " ".join(x for x in (peer, port) if x)
                lines.append(f"    {match + ' ' if match else ''}accept comment {comment}")
    why = _quote(f"{rules.pod} {direction.lower()} isolated by {', '.join(acl.isolated_by)}")
    lines += [
        f"    meta l4proto tcp counter reject with tcp reset comment {why}",
        f"    counter reject comment {why}",
        "  }",
    ]
    return lines


def pod_ruleset(table: PolicyTable, pod_ip: str, *, proxied: Iterable[str] = (), name: str = TABLE) -> str:
    """The ``nft -f`` text for the namespace of the pod with ``pod_ip``.

    ``proxied`` are the CIDRs whose traffic goes through the lab proxy (the Service
    CIDRs and the LoadBalancer pool): the pod's egress chain lets them pass, because
    seen from the pod the destination is a VIP, and policy is about the backend the
    proxy picks — which the proxy checks with the same table (R22).
    """
    nets = tuple(str(ipaddress.ip_network(c, strict=False)) for c in proxied)
    rules = table.pods.get(pod_ip)
    head = [f"table inet {name}", f"delete table inet {name}"]
    if rules is None or (rules.ingress is None and rules.egress is None):
        return "\n".join([*head, f"table inet {name} {{", "}"]) + "\n"
    sets = _Sets()
    chains: list[str] = []
    if rules.ingress is not None:
        chains += _chain(rules, rules.ingress, INGRESS, sets, nets)
    if rules.egress is not None:
        chains += _chain(rules, rules.egress, EGRESS, sets, nets)
    body = [f"table inet {name} {{", f"  comment {_quote('NetworkPolicy for ' + rules.pod)}", *sets.lines, *chains, "}"]
    return "\n".join([*head, *body]) + "\n"


def rulesets(table: PolicyTable, *, proxied: Iterable[str] = (), name: str = TABLE) -> dict[str, str]:
    """``ns/name`` -> ruleset, for every pod in the table."""
    nets = tuple(proxied)
    return {r.pod: pod_ruleset(table, ip, proxied=nets, name=name) for ip, r in sorted(table.pods.items())}


__all__ = ["TABLE", "EGRESS", "INGRESS", "pod_ruleset", "rulesets"]
