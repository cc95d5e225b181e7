"""Just enough Kubernetes protobuf to accept kubectl's imperative creates.

kubectl 1.32 sends ``kubectl create namespace|deployment|service ...`` as
``application/vnd.kubernetes.protobuf`` and does not fall back to JSON. The body is
``k8s\\x00`` + ``runtime.Unknown{1: TypeMeta{1: apiVersion, 2: kind}, 2: raw}``, where
``raw`` is the typed object. The schema below lists only the fields those commands set
(``shared/reference/kubectl-api.md`` §7); unknown fields are skipped. gogo-protobuf writes
every non-pointer field, so empty strings and zero numbers are dropped (``replicas`` is
a pointer and kept).
"""

from __future__ import annotations

from typing import Any

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    pass


# message name -> field number -> (json name, type, repeated); type is "str", "int",
# "map" (string->string), or another message name.
S = "str"
I = "int"
M = "map"
SCHEMA: dict[str, dict[int, tuple[str, str, bool]]] = {
    "Unknown": {1: ("typeMeta", "TypeMeta", False), 2: ("raw", "bytes", False)},
    "TypeMeta": {1: ("apiVersion", S, False), 2: ("kind", S, False)},
    "ObjectMeta": {1: ("name", S, False), 2: ("generateName", S, False), 3: ("namespace", S, False),
                   11: ("labels", M, False), 12: ("annotations", M, False), 14: ("finalizers", S, True)},
    "Object": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "", False)},  # spec type per kind
    "NamespaceSpec": {1: ("finalizers", S, True)},
    "DeploymentSpec": {1: ("replicas", I, False), 2: ("selector", "LabelSelector", False),
                       3: ("template", "PodTemplateSpec", False), 5: ("minReadySeconds", I, False)},
    "LabelSelector": {1: ("matchLabels", M, False)},
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "PodSpec", False)},
    "PodSpec": {2: ("containers", "Container", True), 3: ("restartPolicy", S, False),
                7: ("nodeSelector", M, False), 10: ("nodeName", S, False)},
    "Container": {1: ("name", S, False), 2: ("image", S, False), 3: ("command", S, True), 4: ("args", S, True),
                  5: ("workingDir", S, False), 6: ("ports", "ContainerPort", True), 7: ("env", "EnvVar", True),
                  14: ("imagePullPolicy", S, False)},
    "ContainerPort": {1: ("name", S, False), 2: ("hostPort", I, False), 3: ("containerPort", I, False),
                      4: ("protocol", S, False)},
    "EnvVar": {1: ("name", S, False), 2: ("value", S, False)},
    "ServiceSpec": {1: ("ports", "ServicePort", True), 2: ("selector", M, False), 3: ("clusterIP", S, False),
                    4: ("type", S, False), 5: ("externalIPs", S, True), 7: ("sessionAffinity", S, False),
                    11: ("externalName", S, False)},
    "ServicePort": {1: ("name", S, False), 2: ("protocol", S, False), 3: ("port", I, False),
                    4: ("targetPort", "IntOrString", False), 5: ("nodePort", I, False)},
    "IntOrString": {1: ("type", I, False), 2: ("intVal", I, False), 3: ("strVal", S, False)},
}
SPEC_OF = {"Namespace": "NamespaceSpec", "Deployment": "DeploymentSpec", "Service": "ServiceSpec", "Pod": "PodSpec"}
KEEP_ZERO = frozenset({"replicas"})


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        yield num, wire, value


def _decode(buf: bytes, message: str, spec_type: str = "") -> dict[str, Any]:
    schema = SCHEMA[message]
    out: dict[str, Any] = {}
    for num, wire, value in _fields(buf):
        if num not in schema:
            continue
        name, typ, repeated = schema[num]
        if typ == "":
            typ = spec_type
        if typ == I:
            v: Any = value if wire == 0 else int.from_bytes(value, "little")
            if v >= 1 << 63:
                v -= 1 << 64
        elif typ == S:
            v = bytes(value).decode()
        elif typ == "bytes":
            v = bytes(value)
        elif typ == M:
            entry = {n: bytes(val).decode() for n, _, val in _fields(value)}
            out.setdefault(name, {})[entry.get(1, "")] = entry.get(2, "")
            continue
        else:
            v = _decode(value, typ)
        if repeated:
            out.setdefault(name, []).append(v)
        else:
            out[name] = v
    return out


def _clean(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        if set(value) <= {"type", "intVal", "strVal"} and key == "targetPort":
            return value.get("strVal") if value.get("type") == 1 else value.get("intVal", 0)
        cleaned = {k: _clean(v, k) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if k in KEEP_ZERO or v not in ("", 0, {}, [], None)}
    if isinstance(value, list):
        return [_clean(v, key) for v in value]
    return value


def decode_object(body: bytes) -> dict[str, Any]:
    """A protobuf-encoded Kubernetes object (of the kinds in :data:`SPEC_OF`) as JSON."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf envelope")
    unknown = _decode(body[len(MAGIC):], "Unknown")
    type_meta = unknown.get("typeMeta") or {}
    kind = type_meta.get("kind", "")
    if kind not in SPEC_OF:
        raise ProtobufError(f"kubelab cannot decode protobuf for kind {kind!r}; use `kubectl apply -f` with YAML")
    obj = _clean(_decode(unknown.get("raw", b""), "Object", SPEC_OF[kind]))
    obj.setdefault("metadata", {})
    return {"apiVersion": type_meta.get("apiVersion", "v1"), "kind": kind, **obj}
