"""Kubernetes-style validation: field errors with the apiserver's exact wording.

Why exact wording: kubectl builds its error text client-side from the Status causes
(``The Service "bad" is invalid: spec.ports[0].port: Invalid value: 0: must be between
1 and 65535, inclusive``), so getting ``field``/``type``/``detail`` right makes the
lab's messages match a real cluster. The texts follow ``k8s.io/apimachinery``
``pkg/util/validation`` and ``pkg/apis/core/validation``.

Everything here is pure: ``validate_object(obj, old)`` -> list of ``FieldError``, run
on an already-defaulted object. Allocation errors (ClusterIP, NodePort) are produced
by ``allocators``; NetworkPolicy rules by the NetworkPolicy engineer's
``kubelab.controller.netpol.validate_network_policy`` (called from ``admission``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

# --------------------------------------------------------------------------- errors

# field.ErrorType -> its String() (apimachinery/pkg/util/validation/field/errors.go)
ERROR_TYPES = {
    "FieldValueNotFound": "Not found",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "InternalError": "Internal error",
    "FieldValueTypeInvalid": "Invalid value",
}
# Types whose body never shows the bad value (as in ErrorBody()).
_NO_VALUE = {"FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong", "InternalError"}

OMIT = object()  # a FieldError value that is not printed (field.OmitValueType)


def format_value(value: Any) -> str:
    """Render a bad value the way recent apiservers do: strings quoted, scalars bare,
    maps/lists as compact JSON (``{"app":"other"}``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return str(value)
    if value is None:
        return "null"
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


@dataclass(frozen=True)
class FieldError:
    """One cause of an Invalid response (``metav1.StatusCause``).

    ``type`` is the Kubernetes cause reason (``FieldValueInvalid``, ``FieldValueRequired``,
    ...); ``message()`` is ``<field>: <body>`` exactly as the apiserver prints it.
    """

    field: str
    type: str
    value: Any = OMIT
    detail: str = ""

    def body(self) -> str:
        """The cause's ``message`` (everything after ``<field>: ``)."""
        text = ERROR_TYPES.get(self.type, self.type)
        if self.type not in _NO_VALUE and self.value is not OMIT:
            text = f"{text}: {format_value(self.value)}"
        if self.detail:
            text = f"{text}: {self.detail}"
        return text

    def message(self) -> str:
        return f"{self.field}: {self.body()}" if self.field else self.body()

    def to_cause(self) -> dict[str, str]:
        return {"reason": self.type, "field": self.field, "message": self.body()}

    def __str__(self) -> str:
        return self.message()


# Kind -> API group, for the apiserver's qualified kind ("Deployment.apps").
GROUPS = {
    "Deployment": "apps",
    "EndpointSlice": "discovery.k8s.io",
    "NetworkPolicy": "networking.k8s.io",
}


class Invalid(Exception):
    """An object refused by admission; the API turns it into a 422 ``Invalid`` Status.

    ``str(exc)`` is the apiserver's Status message (``Service "bad" is invalid: ...``;
    several causes are joined as ``[a, b]``); ``status()`` is the full body.
    """

    def __init__(self, kind: str, name: str, causes: list[FieldError]):
        self.kind = kind
        self.name = name
        self.causes = list(causes)
        group = GROUPS.get(kind, "")
        qualified = f"{kind}.{group}" if group else kind
        if len(self.causes) == 1:
            agg = self.causes[0].message()
        else:
            agg = "[" + ", ".join(c.message() for c in self.causes) + "]"
        super().__init__(f'{qualified} "{name}" is invalid: {agg}')

    def status(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "causes": [c.to_cause() for c in self.causes],
        }
        if GROUPS.get(self.kind):
            details["group"] = GROUPS[self.kind]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": str(self),
            "reason": "Invalid",
            "details": details,
            "code": 422,
        }


def invalid(field: str, value: Any, detail: str) -> FieldError:
    return FieldError(field, "FieldValueInvalid", value, detail)


def required(field: str, detail: str = "") -> FieldError:
    return FieldError(field, "FieldValueRequired", OMIT, detail)


def duplicate(field: str, value: Any) -> FieldError:
    return FieldError(field, "FieldValueDuplicate", value)


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError(field, "FieldValueForbidden", OMIT, detail)


def not_supported(field: str, value: Any, supported: Iterable[str]) -> FieldError:
    values = ", ".join(json.dumps(s) for s in sorted(supported))
    return FieldError(field, "FieldValueNotSupported", value, f"supported values: {values}")


def immutable(field: str, value: Any) -> FieldError:
    return invalid(field, value, "field is immutable")


# --------------------------------------------------------------------------- names

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + r")*"
_DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"

_RE_1123_LABEL = re.compile(_DNS1123_LABEL)
_RE_1123_SUBDOMAIN = re.compile(_DNS1123_SUBDOMAIN)
_RE_1035_LABEL = re.compile(_DNS1035_LABEL)
_RE_QUALIFIED = re.compile(_QUALIFIED_NAME)
_RE_LABEL_VALUE = re.compile(_LABEL_VALUE)
_RE_IANA = re.compile(r"[-a-z0-9]+")
_RE_HAS_LETTER = re.compile(r"[a-z]")

MSG_1123_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    f"regex used for validation is '{_DNS1123_LABEL}')"
)
MSG_1123_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    f"regex used for validation is '{_DNS1123_SUBDOMAIN}')"
)
MSG_1035_LABEL = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
    "an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    f"'abc-123', regex used for validation is '{_DNS1035_LABEL}')"
)
MSG_QUALIFIED = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
    f"used for validation is '{_QUALIFIED_NAME}')"
)
MSG_LABEL_VALUE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    f"'my_value',  or '12345', regex used for validation is '{_LABEL_VALUE}')"
)
MSG_PORT_RANGE = "must be between 1 and 65535, inclusive"
MSG_IP = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"


def max_len(n: int) -> str:
    return f"must be no more than {n} characters"


def dns1123_label(value: str) -> list[str]:
    out = []
    if len(value) > 63:
        out.append(max_len(63))
    if not _RE_1123_LABEL.fullmatch(value):
        out.append(MSG_1123_LABEL)
    return out


def dns1123_subdomain(value: str) -> list[str]:
    out = []
    if len(value) > 253:
        out.append(max_len(253))
    if not _RE_1123_SUBDOMAIN.fullmatch(value):
        out.append(MSG_1123_SUBDOMAIN)
    return out


def dns1035_label(value: str) -> list[str]:
    out = []
    if len(value) > 63:
        out.append(max_len(63))
    if not _RE_1035_LABEL.fullmatch(value):
        out.append(MSG_1035_LABEL)
    return out


def iana_svc_name(value: str) -> list[str]:
    """Container port names and named targetPorts (IsValidPortName)."""
    out = []
    if len(value) > 15:
        out.append(max_len(15))
    if not _RE_IANA.fullmatch(value):
        out.append("must contain only alphanumeric characters (a-z, 0-9), and hyphens (-)")
    if "--" in value:
        out.append("must not contain consecutive hyphens")
    if value and (value[0] == "-" or value[-1] == "-"):
        out.append("must not begin or end with a hyphen")
    if not _RE_HAS_LETTER.search(value):
        out.append("must contain at least one letter (a-z)")
    return out


def qualified_name(value: str) -> list[str]:
    """Label and annotation keys: ``[prefix/]name``."""
    prefix, slash, name = value.rpartition("/")
    out = []
    if slash:
        if not prefix:
            out.append("prefix part must be non-empty")
        else:
            out += ["prefix part " + m for m in dns1123_subdomain(prefix)]
    if not name:
        out.append("name part must be non-empty")
    else:
        if len(name) > 63:
            out.append("name part " + max_len(63))
        if not _RE_QUALIFIED.fullmatch(name):
            out.append(MSG_QUALIFIED)
    return out


def label_value(value: str) -> list[str]:
    out = []
    if len(value) > 63:
        out.append(max_len(63))
    if not _RE_LABEL_VALUE.fullmatch(value):
        out.append(MSG_LABEL_VALUE)
    return out


_RE_IPV4_ASCII = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})", re.ASCII)


def is_ip(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if ":" not in value:  # the common case, without ipaddress's cost (50,000-pod imports)
        m = _RE_IPV4_ASCII.fullmatch(value)
        if m is not None:
            return max(map(int, m.groups())) <= 255
        parts = value.split(".")  # what the pattern leaves (non-ASCII digits...), judged as always
        return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def ip_version(value: str) -> int:
    """4 or 6 for a valid address, else 0."""
    if not is_ip(value):
        return 0
    return 6 if ":" in value else 4


def _check(errs: list[FieldError], field: str, value: Any, checker: Callable[[str], list[str]]) -> None:
    if not isinstance(value, str):
        errs.append(invalid(field, value, "must be a string"))
        return
    for msg in checker(value):
        errs.append(invalid(field, value, msg))


def _port_ok(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


# --------------------------------------------------------------------------- metadata

CLUSTER_SCOPED = frozenset({"Namespace", "Node"})
KINDS = frozenset({"Namespace", "Node", "Pod", "Service", "EndpointSlice", "Deployment", "NetworkPolicy"})


def validate_labels(labels: Any, field: str) -> list[FieldError]:
    errs: list[FieldError] = []
    if labels is None:
        return errs
    if not isinstance(labels, dict):
        return [invalid(field, labels, "must be a map of string keys to string values")]
    for k, v in labels.items():
        for msg in qualified_name(str(k)):
            errs.append(invalid(field, k, msg))
        if not isinstance(v, str):
            errs.append(invalid(f"{field}", v, "label values must be strings"))
            continue
        for msg in label_value(v):
            errs.append(invalid(f"{field}", v, msg))
    return errs


def validate_metadata(obj: Mapping[str, Any], name_check: Callable[[str], list[str]]) -> list[FieldError]:
    errs: list[FieldError] = []
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [required("metadata.name", "name or generateName is required")]
    name = meta.get("name")
    if not name:
        errs.append(required("metadata.name", "name or generateName is required"))
    else:
        _check(errs, "metadata.name", name, name_check)
    kind = obj.get("kind")
    ns = meta.get("namespace")
    if kind not in CLUSTER_SCOPED and ns:
        _check(errs, "metadata.namespace", ns, dns1123_label)
    errs += validate_labels(meta.get("labels"), "metadata.labels")
    ann = meta.get("annotations")
    if ann is not None:
        if not isinstance(ann, dict):
            errs.append(invalid("metadata.annotations", ann, "must be a map of string keys to string values"))
        else:
            for k, v in ann.items():
                for msg in qualified_name(str(k)):
                    errs.append(invalid("metadata.annotations", k, msg))
                if not isinstance(v, str):
                    errs.append(invalid(f"metadata.annotations[{k}]", v, "must be a string"))
    return errs


def validate_label_selector(sel: Any, field: str) -> list[FieldError]:
    """A metav1.LabelSelector (matchLabels + matchExpressions)."""
    errs: list[FieldError] = []
    if sel is None:
        return errs
    if not isinstance(sel, dict):
        return [invalid(field, sel, "must be a label selector")]
    errs += validate_labels(sel.get("matchLabels"), f"{field}.matchLabels")
    for i, expr in enumerate(sel.get("matchExpressions") or ()):
        path = f"{field}.matchExpressions[{i}]"
        if not isinstance(expr, dict):
            errs.append(invalid(path, expr, "must be a label selector requirement"))
            continue
        op = expr.get("operator")
        values = expr.get("values") or []
        if op in ("In", "NotIn"):
            if not values:
                errs.append(required(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif op in ("Exists", "DoesNotExist"):
            if values:
                errs.append(forbidden(f"{path}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"))
        else:
            errs.append(invalid(f"{path}.operator", op, "not a valid selector operator"))
        for msg in qualified_name(str(expr.get("key", ""))):
            errs.append(invalid(f"{path}.key", expr.get("key", ""), msg))
    return errs


# --------------------------------------------------------------------------- Service

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS = ("TCP", "UDP", "SCTP")
FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
TRAFFIC_POLICIES = ("Cluster", "Local")
MAX_AFFINITY_TIMEOUT = 86400


def validate_service(svc: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    errs = validate_metadata(svc, dns1035_label)
    spec = svc.get("spec") or {}
    stype = spec.get("type", "ClusterIP")
    if stype not in SERVICE_TYPES:
        errs.append(not_supported("spec.type", stype, SERVICE_TYPES))
        return errs
    ports = spec.get("ports") or []
    headless = spec.get("clusterIP") == "None"
    if stype == "ExternalName":
        ext = spec.get("externalName")
        if not ext:
            errs.append(required("spec.externalName"))
        else:
            _check(errs, "spec.externalName", ext.rstrip(".") if isinstance(ext, str) else ext, dns1123_subdomain)
        if spec.get("clusterIP") not in (None, "", "None") or any(
            ip not in ("", "None") for ip in spec.get("clusterIPs") or ()
        ):
            errs.append(forbidden("spec.clusterIPs", "may not be set for ExternalName services"))
    elif not ports and not headless:
        errs.append(required("spec.ports"))
    seen_names: dict[str, int] = {}
    seen_ports: set[tuple[int, str]] = set()
    for i, p in enumerate(ports):
        path = f"spec.ports[{i}]"
        if not isinstance(p, dict):
            errs.append(invalid(path, p, "must be a service port"))
            continue
        name = p.get("name", "")
        if len(ports) > 1 and not name:
            errs.append(required(f"{path}.name"))
        elif name:
            _check(errs, f"{path}.name", name, dns1123_label)
            if name in seen_names:
                errs.append(duplicate(f"{path}.name", name))
            seen_names[name] = i
        port = p.get("port")
        if port is None:
            errs.append(required(f"{path}.port"))
        elif not _port_ok(port):
            errs.append(invalid(f"{path}.port", port, MSG_PORT_RANGE))
        proto = p.get("protocol", "TCP")
        if proto not in PROTOCOLS:
            errs.append(not_supported(f"{path}.protocol", proto, PROTOCOLS))
        elif _port_ok(port):
            key = (port, proto)
            if key in seen_ports:
                errs.append(duplicate(path, {"port": port, "protocol": proto}))
            seen_ports.add(key)
        tp = p.get("targetPort")
        if isinstance(tp, str):
            for msg in iana_svc_name(tp):
                errs.append(invalid(f"{path}.targetPort", tp, msg))
        elif tp is not None and not _port_ok(tp) and not (tp == port and not _port_ok(port)):
            # (a targetPort defaulted from an invalid port is reported once, on the port)
            errs.append(invalid(f"{path}.targetPort", tp, MSG_PORT_RANGE))
        np = p.get("nodePort")
        if np not in (None, 0):
            if stype not in ("NodePort", "LoadBalancer"):
                errs.append(forbidden(f"{path}.nodePort", f"may not be used when `type` is '{stype}'"))
            elif not _port_ok(np):
                errs.append(invalid(f"{path}.nodePort", np, MSG_PORT_RANGE))
    # cluster IPs (allocation and range checks are the allocator's)
    cip = spec.get("clusterIP")
    cips = spec.get("clusterIPs")
    if stype != "ExternalName":
        if cips and cip not in (None, "") and cips[0] != cip:
            errs.append(invalid("spec.clusterIPs", cips, "first value must match `clusterIP`"))
        for i, ip in enumerate(cips or ([cip] if cip else [])):
            if ip in ("", "None"):
                if ip == "None" and stype in ("NodePort", "LoadBalancer"):
                    errs.append(invalid(f"spec.clusterIPs[{i}]", ip, f"may not be set to 'None' for {stype} services"))
                elif ip == "None" and i > 0:
                    errs.append(invalid(f"spec.clusterIPs[{i}]", ip, "must be a valid IP address"))
                continue
            if not is_ip(ip):
                errs.append(invalid(f"spec.clusterIPs[{i}]", ip, MSG_IP))
        if cips and len(cips) > 2:
            errs.append(invalid("spec.clusterIPs", cips, "may only hold up to 2 values"))
    pol = spec.get("ipFamilyPolicy")
    if pol is not None and pol not in FAMILY_POLICIES:
        errs.append(not_supported("spec.ipFamilyPolicy", pol, FAMILY_POLICIES))
    fams = spec.get("ipFamilies") or []
    for i, fam in enumerate(fams):
        if fam not in ("IPv4", "IPv6"):
            errs.append(not_supported(f"spec.ipFamilies[{i}]", fam, ("IPv4", "IPv6")))
    if len(fams) == 2 and fams[0] == fams[1]:
        errs.append(duplicate("spec.ipFamilies[1]", fams[1]))
    if len(fams) > 2:
        errs.append(invalid("spec.ipFamilies", fams, "may only hold up to 2 values"))
    # selector
    sel = spec.get("selector")
    if sel is not None:
        errs += validate_labels(sel, "spec.selector")
    # affinity
    aff = spec.get("sessionAffinity", "None")
    if aff not in ("None", "ClientIP"):
        errs.append(not_supported("spec.sessionAffinity", aff, ("ClientIP", "None")))
    cfg = spec.get("sessionAffinityConfig")
    if aff == "ClientIP":
        timeout = ((cfg or {}).get("clientIP") or {}).get("timeoutSeconds")
        if timeout is not None and not (isinstance(timeout, int) and 0 < timeout <= MAX_AFFINITY_TIMEOUT):
            errs.append(
                invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    timeout,
                    f"must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}",
                )
            )
    elif aff == "None" and cfg:
        errs.append(invalid("spec.sessionAffinityConfig", cfg, "must not be set when `sessionAffinity` is None"))
    # traffic policies
    etp = spec.get("externalTrafficPolicy")
    if etp is not None:
        if stype not in ("NodePort", "LoadBalancer"):
            errs.append(
                invalid("spec.externalTrafficPolicy", etp, "may only be set when `type` is 'NodePort' or 'LoadBalancer'")
            )
        elif etp not in TRAFFIC_POLICIES:
            errs.append(not_supported("spec.externalTrafficPolicy", etp, TRAFFIC_POLICIES))
    itp = spec.get("internalTrafficPolicy")
    if itp is not None and itp not in TRAFFIC_POLICIES:
        errs.append(not_supported("spec.internalTrafficPolicy", itp, TRAFFIC_POLICIES))
    for i, ip in enumerate(spec.get("externalIPs") or ()):
        if not is_ip(ip):
            errs.append(invalid(f"spec.externalIPs[{i}]", ip, MSG_IP))
    lbip = spec.get("loadBalancerIP")
    if lbip:
        if stype != "LoadBalancer":
            errs.append(forbidden("spec.loadBalancerIP", "may only be used when `type` is 'LoadBalancer'"))
        elif not is_ip(lbip):
            errs.append(invalid("spec.loadBalancerIP", lbip, MSG_IP))
    if old is not None:
        errs += _service_immutable(spec, old.get("spec") or {})
    return errs


def _service_immutable(spec: Mapping[str, Any], old_spec: Mapping[str, Any]) -> list[FieldError]:
    """ClusterIPs may not change once set (except by switching to/from ExternalName)."""
    if spec.get("type") == "ExternalName" or old_spec.get("type") == "ExternalName":
        return []
    old_ips = old_spec.get("clusterIPs") or ([old_spec["clusterIP"]] if old_spec.get("clusterIP") else [])
    new_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    if not old_ips or not new_ips:
        return []
    if new_ips[0] != old_ips[0]:
        return [immutable("spec.clusterIP", spec.get("clusterIP") or new_ips[0])]
    if len(new_ips) == len(old_ips) and new_ips != old_ips:
        return [immutable("spec.clusterIPs", new_ips)]
    return []


# --------------------------------------------------------------------------- Pod

RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")


def validate_pod_spec(spec: Any, field: str) -> list[FieldError]:
    errs: list[FieldError] = []
    if not isinstance(spec, dict):
        return [required(field)]
    containers = spec.get("containers")
    if not containers:
        errs.append(required(f"{field}.containers"))
        containers = []
    names: set[str] = set()
    port_names: set[str] = set()
    for i, c in enumerate(containers):
        path = f"{field}.containers[{i}]"
        if not isinstance(c, dict):
            errs.append(invalid(path, c, "must be a container"))
            continue
        name = c.get("name")
        if not name:
            errs.append(required(f"{path}.name"))
        else:
            _check(errs, f"{path}.name", name, dns1123_label)
            if name in names:
                errs.append(duplicate(f"{path}.name", name))
            names.add(name)
        if not c.get("image"):
            errs.append(required(f"{path}.image"))
        for j, p in enumerate(c.get("ports") or ()):
            ppath = f"{path}.ports[{j}]"
            if not isinstance(p, dict):
                errs.append(invalid(ppath, p, "must be a container port"))
                continue
            pname = p.get("name")
            if pname:
                if not isinstance(pname, str):
                    errs.append(invalid(f"{ppath}.name", pname, "must be a string"))
                else:
                    for msg in iana_svc_name(pname):
                        errs.append(invalid(f"{ppath}.name", pname, msg))
                    if pname in port_names:
                        errs.append(duplicate(f"{ppath}.name", pname))
                    port_names.add(pname)
            cp = p.get("containerPort")
            if cp is None:
                errs.append(required(f"{ppath}.containerPort"))
            elif not _port_ok(cp):
                errs.append(invalid(f"{ppath}.containerPort", cp, MSG_PORT_RANGE))
            proto = p.get("protocol", "TCP")
            if proto not in PROTOCOLS:
                errs.append(not_supported(f"{ppath}.protocol", proto, PROTOCOLS))
    rp = spec.get("restartPolicy", "Always")
    if rp not in RESTART_POLICIES:
        errs.append(not_supported(f"{field}.restartPolicy", rp, RESTART_POLICIES))
    dp = spec.get("dnsPolicy", "ClusterFirst")
    if dp not in DNS_POLICIES:
        errs.append(not_supported(f"{field}.dnsPolicy", dp, DNS_POLICIES))
    for key in ("hostname", "subdomain"):
        if spec.get(key):
            _check(errs, f"{field}.{key}", spec[key], dns1123_label)
    tg = spec.get("terminationGracePeriodSeconds")
    if tg is not None and not (isinstance(tg, int) and tg >= 0):
        errs.append(invalid(f"{field}.terminationGracePeriodSeconds", tg, "must be greater than or equal to 0"))
    return errs


POD_UPDATE_FORBIDDEN = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
    "(allow it to be set to 1 if it was previously negative)"
)


def _pod_spec_mutable_view(spec: Mapping[str, Any], old_node: str | None) -> Any:
    """A pod spec with the mutable fields blanked, to compare old and new."""
    view = dict(spec)
    view["containers"] = [{**c, "image": None} for c in spec.get("containers") or ()]
    view["initContainers"] = [{**c, "image": None} for c in spec.get("initContainers") or ()]
    for k in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
        view.pop(k, None)
    if not old_node:  # binding: nodeName may be set once (the lab has no scheduler)
        view.pop("nodeName", None)
    return view


def validate_pod(pod: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    errs = validate_metadata(pod, dns1123_subdomain)
    errs += validate_pod_spec(pod.get("spec"), "spec")
    status = pod.get("status") or {}
    if status.get("podIP") and not is_ip(status["podIP"]):
        errs.append(invalid("status.podIP", status["podIP"], MSG_IP))
    for i, entry in enumerate(status.get("podIPs") or ()):
        ip = entry.get("ip") if isinstance(entry, dict) else entry
        if not is_ip(ip):
            errs.append(invalid(f"status.podIPs[{i}].ip", ip, MSG_IP))
    if old is not None and isinstance(pod.get("spec"), dict):
        old_spec = old.get("spec") or {}
        old_node = old_spec.get("nodeName")
        if _pod_spec_mutable_view(pod["spec"], old_node) != _pod_spec_mutable_view(old_spec, old_node):
            errs.append(forbidden("spec", POD_UPDATE_FORBIDDEN))
    return errs


# --------------------------------------------------------------------------- Deployment


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """metav1.LabelSelector semantics. ``None`` matches nothing; ``{}`` matches everything."""
    if selector is None:
        return False
    labels = labels or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or ()
        if op == "In":
            if key not in labels or labels[key] not in values:
                return False
        elif op == "NotIn":
            if key in labels and labels[key] in values:
                return False
        elif op == "Exists":
            if key not in labels:
                return False
        elif op == "DoesNotExist":
            if key in labels:
                return False
        else:
            return False
    return True


def validate_deployment(dep: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    errs = validate_metadata(dep, dns1123_subdomain)
    spec = dep.get("spec") or {}
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        errs.append(invalid("spec.replicas", replicas, "must be greater than or equal to 0"))
    sel = spec.get("selector")
    tmpl = spec.get("template") or {}
    tlabels = (tmpl.get("metadata") or {}).get("labels") or {}
    if sel is None:
        errs.append(required("spec.selector"))
    elif not sel.get("matchLabels") and not sel.get("matchExpressions"):
        errs.append(invalid("spec.selector", sel, "empty selector is invalid for deployment"))
    else:
        errs += validate_label_selector(sel, "spec.selector")
        if not selector_matches(sel, tlabels):
            errs.append(invalid("spec.template.metadata.labels", tlabels, "`selector` does not match template `labels`"))
    errs += validate_labels(tlabels, "spec.template.metadata.labels")
    if not tmpl:
        errs.append(required("spec.template"))
    else:
        tspec = tmpl.get("spec")
        errs += validate_pod_spec(tspec, "spec.template.spec")
        rp = (tspec or {}).get("restartPolicy", "Always")
        if rp != "Always" and rp in RESTART_POLICIES:
            errs.append(not_supported("spec.template.spec.restartPolicy", rp, ("Always",)))
    strategy = spec.get("strategy") or {}
    st = strategy.get("type", "RollingUpdate")
    if st not in ("RollingUpdate", "Recreate"):
        errs.append(not_supported("spec.strategy.type", st, ("Recreate", "RollingUpdate")))
    rhl = spec.get("revisionHistoryLimit")
    if rhl is not None and not (isinstance(rhl, int) and rhl >= 0):
        errs.append(invalid("spec.revisionHistoryLimit", rhl, "must be greater than or equal to 0"))
    if old is not None:
        old_sel = (old.get("spec") or {}).get("selector")
        if old_sel is not None and sel is not None and old_sel != sel:
            errs.append(immutable("spec.selector", sel))
    return errs


# --------------------------------------------------------------------------- others


def validate_namespace(ns: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    return validate_metadata(ns, dns1123_label)


def validate_node(node: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    errs = validate_metadata(node, dns1123_subdomain)
    for i, a in enumerate(((node.get("status") or {}).get("addresses")) or ()):
        if not isinstance(a, dict) or not a.get("type"):
            errs.append(required(f"status.addresses[{i}].type"))
        elif a.get("type") in ("InternalIP", "ExternalIP") and not is_ip(a.get("address")):
            errs.append(invalid(f"status.addresses[{i}].address", a.get("address"), MSG_IP))
    return errs


ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


def validate_endpoint_slice(es: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    errs = validate_metadata(es, dns1123_subdomain)
    at = es.get("addressType")
    if not at:
        errs.append(required("addressType"))
    elif at not in ADDRESS_TYPES:
        errs.append(not_supported("addressType", at, ADDRESS_TYPES))
    for i, ep in enumerate(es.get("endpoints") or ()):
        path = f"endpoints[{i}]"
        addrs = ep.get("addresses") if isinstance(ep, dict) else None
        if not addrs:
            errs.append(required(f"{path}.addresses"))
            continue
        if len(addrs) > 1:
            errs.append(invalid(f"{path}.addresses", addrs, "must have exactly 1 address"))
        for j, a in enumerate(addrs):
            if at in ("IPv4", "IPv6"):
                ok = ip_version(a) == (4 if at == "IPv4" else 6)
                if not ok:
                    errs.append(invalid(f"{path}.addresses[{j}]", a, f"must be a valid {at} address"))
    for i, p in enumerate(es.get("ports") or ()):
        port = p.get("port")
        if port is not None and not _port_ok(port):
            errs.append(invalid(f"ports[{i}].port", port, MSG_PORT_RANGE))
        proto = p.get("protocol", "TCP")
        if proto not in PROTOCOLS:
            errs.append(not_supported(f"ports[{i}].protocol", proto, PROTOCOLS))
    return errs


VALIDATORS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any] | None], list[FieldError]]] = {
    "Namespace": validate_namespace,
    "Node": validate_node,
    "Pod": validate_pod,
    "Service": validate_service,
    "EndpointSlice": validate_endpoint_slice,
    "Deployment": validate_deployment,
    "NetworkPolicy": lambda np, old: validate_metadata(np, dns1123_subdomain),
}


def validate_object(obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[FieldError]:
    """All field errors of a defaulted object (``old`` for update-only rules)."""
    kind = obj.get("kind")
    check = VALIDATORS.get(kind)  # type: ignore[arg-type]
    if check is None:
        return [not_supported("kind", kind, sorted(KINDS))]
    return check(obj, old)
