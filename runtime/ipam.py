"""Pod IP allocation from the pod CIDR, in the manner of CNI's host-local plugin.

The registry is the memory: a pod's address lives in its ``status.podIP``, so after a
restart the runtime rebuilds the allocator from a store snapshot (``observe``) and every
running pod keeps its address. Simulated pods' addresses are observed too, so a run pod
never gets an address a manifest already used.

Like host-local, allocation walks forward from the last address handed out and wraps,
so a just-freed address is not reused at once (clients and DNS caches may still hold
it). The network address, the broadcast address and the first host (the bridge's
gateway address in netns mode) are never handed out.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class IpamExhausted(RuntimeError):
    """No free address left in the pod CIDR."""


class Ipam:
    def __init__(self, cidr: IPNetwork | str, *, reserved: Iterable[str] = ()):
        self.network = ipaddress.ip_network(cidr)
        if self.network.num_addresses < 4:
            raise ValueError(f"pod CIDR {self.network} is too small")
        self._first = int(self.network.network_address) + 2  # .0 network, .1 gateway
        self._last = int(self.network.broadcast_address) - 1
        self._by_key: dict[str, str] = {}
        self._by_ip: dict[str, str] = {}
        self._cursor = self._first - 1
        for ip in reserved:
            self._by_ip[str(ipaddress.ip_address(ip))] = ""

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    def contains(self, ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in self.network
        except ValueError:
            return False

    def observe(self, key: str, ip: str) -> bool:
        """Record an address already in use (from the store). False if it is someone else's."""
        ip = str(ipaddress.ip_address(ip))
        owner = self._by_ip.get(ip)
        if owner is not None and owner != key:
            return False
        self._by_key[key] = ip
        self._by_ip[ip] = key
        return True

    def get(self, key: str) -> str | None:
        return self._by_key.get(key)

    def allocate(self, key: str) -> str:
        """The key's address, assigning the next free one if it has none (idempotent)."""
        if key in self._by_key:
            return self._by_key[key]
        size = self._last - self._first + 1
        for i in range(size):
            n = self._first + (self._cursor + 1 - self._first + i) % size
            ip = str(ipaddress.ip_address(n))
            if ip not in self._by_ip:
                self._cursor = n
                self._by_key[key] = ip
                self._by_ip[ip] = key
                return ip
        raise IpamExhausted(f"no free address left in pod CIDR {self.network}")

    def release(self, key: str) -> None:
        ip = self._by_key.pop(key, None)
        if ip is not None and self._by_ip.get(ip) == key:
            del self._by_ip[ip]

    def __len__(self) -> int:
        return len(self._by_key)
