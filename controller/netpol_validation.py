"""NetworkPolicy validation: what the API server refuses, with its field paths and messages.

A port of ``ValidateNetworkPolicySpec``/``Port``/``Peer``/``IPBlock`` (kubernetes
pkg/apis/networking/validation) and ``ValidateLabelSelector`` (apimachinery), R29 of
reference/netpol-spec.md. Only ``spec`` is checked here; object metadata (name,
namespace) is the same for every kind and is admission's job.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from kubelab.controller.validation import FieldError, iana_svc_name, validate_label_selector

PROTOCOLS = ("TCP", "UDP", "SCTP")
POLICY_TYPES = ("Ingress", "Egress")

_CIDR_MSG = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
_PORT_RANGE_MSG = "must be between 1 and 65535, inclusive"


class _Errors:
    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def invalid(self, path: str, value: Any, detail: str) -> None:
        self.items.append(FieldError(field=path, type="FieldValueInvalid", value=value, detail=detail))

    def required(self, path: str, detail: str = "") -> None:
        self.items.append(FieldError(field=path, type="FieldValueRequired", detail=detail))

    def forbidden(self, path: str, detail: str) -> None:
        self.items.append(FieldError(field=path, type="FieldValueForbidden", detail=detail))

    def not_supported(self, path: str, value: Any, supported: tuple[str, ...]) -> None:
        detail = "supported values: " + ", ".join(f'"{s}"' for s in supported)
        self.items.append(FieldError(field=path, type="FieldValueNotSupported", value=value, detail=detail))


def validate_network_policy(obj: dict[str, Any]) -> list[FieldError]:
    """Field errors for a NetworkPolicy as a user wrote it (before or after defaulting).

    An empty list means the API server would accept it. Accepted on purpose, as
    upstream does: the same policyType twice, rules for a direction not listed in
    policyTypes (R4), ``ingress: []``.
    """
    errs = _Errors()
    spec = obj.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        errs.invalid("spec", spec, "must be an object")
        return errs.items
    _selector(errs, spec.get("podSelector"), "spec.podSelector")
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        rules = spec.get(direction)
        if rules is None:
            continue
        if not isinstance(rules, list):
            errs.invalid(f"spec.{direction}", rules, "must be a list")
            continue
        for i, rule in enumerate(rules):
            path = f"spec.{direction}[{i}]"
            if rule is None:
                continue
            if not isinstance(rule, dict):
                errs.invalid(path, rule, "must be an object")
                continue
            for k, port in enumerate(_as_list(errs, rule.get("ports"), f"{path}.ports")):
                _port(errs, port, f"{path}.ports[{k}]")
            for k, peer in enumerate(_as_list(errs, rule.get(peers_key), f"{path}.{peers_key}")):
                _peer(errs, peer, f"{path}.{peers_key}[{k}]")
    types = spec.get("policyTypes")
    if types is not None:
        if not isinstance(types, list):
            errs.invalid("spec.policyTypes", types, "must be a list")
        elif len(types) > len(POLICY_TYPES):
            errs.invalid("spec.policyTypes", types, "may not specify more than two policyTypes")
        else:
            for i, t in enumerate(types):
                if t not in POLICY_TYPES:
                    errs.not_supported(f"spec.policyTypes[{i}]", t, POLICY_TYPES)
    return errs.items


def _as_list(errs: _Errors, value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        errs.invalid(path, value, "must be a list")
        return []
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _port(errs: _Errors, port: Any, path: str) -> None:
    """``ValidateNetworkPolicyPort`` (R18-R21, R29)."""
    if not isinstance(port, dict):
        errs.invalid(path, port, "must be an object")
        return
    proto = port.get("protocol")
    if proto is not None and proto not in PROTOCOLS:
        errs.not_supported(f"{path}.protocol", proto, PROTOCOLS)
    number = port.get("port")
    end = port.get("endPort")
    if end is not None and not _is_int(end):
        errs.invalid(f"{path}.endPort", end, "must be an integer")
        end = None
    if number is None:
        if end is not None:
            errs.invalid(f"{path}.endPort", end, "may not be specified when `port` is not specified")
    elif _is_int(number):
        if not 1 <= number <= 65535:
            errs.invalid(f"{path}.port", number, _PORT_RANGE_MSG)
        if end is not None:
            if end < number:
                # upstream reports port's value here, not endPort's
                errs.invalid(f"{path}.endPort", number, "must be greater than or equal to `port`")
            if not 1 <= end <= 65535:
                errs.invalid(f"{path}.endPort", end, _PORT_RANGE_MSG)
    elif isinstance(number, str):
        if end is not None:
            errs.invalid(f"{path}.endPort", end, "may not be specified when `port` is non-numeric")
        for msg in iana_svc_name(number):
            errs.invalid(f"{path}.port", number, msg)
    else:
        errs.invalid(f"{path}.port", number, "must be an integer or a port name")


def _peer(errs: _Errors, peer: Any, path: str) -> None:
    """``ValidateNetworkPolicyPeer``: exactly ipBlock, or one/both selectors (R8)."""
    if not isinstance(peer, dict):
        errs.invalid(path, peer, "must be an object")
        return
    count = 0
    if peer.get("podSelector") is not None:
        count += 1
        _selector(errs, peer["podSelector"], f"{path}.podSelector")
    if peer.get("namespaceSelector") is not None:
        count += 1
        _selector(errs, peer["namespaceSelector"], f"{path}.namespaceSelector")
    block = peer.get("ipBlock")
    if block is not None:
        count += 1
        _ip_block(errs, block, f"{path}.ipBlock")
    if count == 0:
        errs.required(path, "must specify a peer")
    elif count > 1 and block is not None:
        errs.forbidden(path, "may not specify both ipBlock and another peer")


def _parse_cidr(text: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not isinstance(text, str) or "/" not in text:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)  # ParseCIDRSloppy masks host bits
    except ValueError:
        return None


def _ip_block(errs: _Errors, block: Any, path: str) -> None:
    """``ValidateIPBlock``: a valid cidr; every except a valid, strict subset of it (R15)."""
    if not isinstance(block, dict):
        errs.invalid(path, block, "must be an object")
        return
    cidr = block.get("cidr")
    if not cidr:
        errs.required(f"{path}.cidr")
        return
    net = _parse_cidr(cidr)
    if net is None:
        errs.invalid(f"{path}.cidr", cidr, _CIDR_MSG)
        return
    for i, text in enumerate(_as_list(errs, block.get("except"), f"{path}.except")):
        epath = f"{path}.except[{i}]"
        exc = _parse_cidr(text)
        if exc is None:
            errs.invalid(epath, text, _CIDR_MSG)
            continue
        if (
            exc.version != net.version
            or exc.network_address not in net
            or net.prefixlen >= exc.prefixlen
        ):
            errs.invalid(epath, text, "must be a strict subset of `cidr`")


def _selector(errs: _Errors, sel: Any, path: str) -> None:
    errs.items.extend(validate_label_selector(sel, path))  # ValidateLabelSelector, as for every kind
