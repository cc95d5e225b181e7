"""The protobuf subset kubectl's imperative creates send, decoded from hand-built bytes."""

from __future__ import annotations

import pytest

from kubelab.controller.api_protobuf import ProtobufError, decode_object


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num: int, value) -> bytes:
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(num << 3 | 2) + varint(len(data)) + data


def entry(k, v):
    return field(1, k) + field(2, v)


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    return b"k8s\x00" + field(1, field(1, api_version) + field(2, kind)) + field(2, raw)


def test_deployment_with_pointer_replicas_zero_kept_and_empty_strings_dropped():
    meta = field(1, "web") + field(2, "") + field(3, "lab") + field(11, entry("app", "web"))
    container = field(1, "echo") + field(2, "kubelab/echo") + field(6, field(3, 8080)) + field(5, "")
    template = field(1, field(11, entry("app", "web"))) + field(2, field(2, container))
    spec = field(1, 0) + field(2, field(1, entry("app", "web"))) + field(3, template) + field(5, 0)
    obj = decode_object(envelope("apps/v1", "Deployment", field(1, meta) + field(2, spec)))
    assert obj == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "lab", "labels": {"app": "web"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "echo", "image": "kubelab/echo",
                                                       "ports": [{"containerPort": 8080}]}]}}},
    }


def test_service_target_port_int_or_string():
    ports = field(1, field(1, "http") + field(3, 80) + field(4, field(1, 1) + field(3, "web"))) + \
        field(1, field(3, 81) + field(4, field(1, 0) + field(2, 8081)))
    obj = decode_object(envelope("v1", "Service", field(1, field(1, "s")) + field(2, ports + field(4, "NodePort"))))
    assert obj["spec"] == {"ports": [{"name": "http", "port": 80, "targetPort": "web"},
                                     {"port": 81, "targetPort": 8081}], "type": "NodePort"}


def test_unsupported_kind_and_garbage():
    with pytest.raises(ProtobufError, match="ConfigMap"):
        decode_object(envelope("v1", "ConfigMap", b""))
    with pytest.raises(ProtobufError):
        decode_object(b"{}")
