"""The controller -> proxy contract for NetworkPolicy: compiled per-pod allow sets.

The controller evaluates policies; the proxy only asks ``allows`` on each new
connection or UDP flow (DESIGN: "the controller decides, data planes look up").
An empty table allows everything (no pod is isolated).

PLACEHOLDER: the NetworkPolicy issue replaces the internals; the method signatures
are the contract the proxy codes against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class PolicyTable:
    def allows(self, src_ip: str, dst_ip: str, port: int, protocol: str) -> bool:
        """True when the source's egress and the destination's ingress both allow it."""
        return True

    def explain(self, src_ip: str, dst_ip: str, port: int, protocol: str) -> str:
        """Why ``allows`` says what it says, for logs and /routes."""
        return "no NetworkPolicy isolates either pod"

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PolicyTable":
        return cls()
