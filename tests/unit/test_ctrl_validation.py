"""Validation messages match the apiserver's, field by field (table-driven)."""

import pytest

from kubelab.controller.admission import FieldError, Invalid
from kubelab.controller.defaults import default_object
from kubelab.controller.validation import (
    MSG_1035_LABEL,
    MSG_1123_LABEL,
    MSG_1123_SUBDOMAIN,
    format_value,
    validate_object,
)


def svc(name="web", **spec):
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def pod(name="p", **spec):
    spec.setdefault("containers", [{"name": "main", "image": "img:1"}])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def dep(selector=None, labels=None, **spec):
    spec.setdefault("selector", {"matchLabels": {"app": "web"}} if selector is None else selector)
    spec.setdefault(
        "template",
        {"metadata": {"labels": {"app": "web"} if labels is None else labels},
         "spec": {"containers": [{"name": "main", "image": "img:1"}]}},
    )
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"}, "spec": spec}


def messages(obj, old=None):
    return [e.message() for e in validate_object(default_object(obj), default_object(old) if old else None)]


CASES = [
    ("port 0", svc(ports=[{"port": 0}]), ["spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"]),
    ("port 70000", svc(ports=[{"port": 70000, "targetPort": 80}]),
     ["spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"]),
    ("two ports, one unnamed", svc(ports=[{"name": "a", "port": 80}, {"port": 81}]), ["spec.ports[1].name: Required value"]),
    ("duplicate port names", svc(ports=[{"name": "a", "port": 80}, {"name": "a", "port": 81}]),
     ['spec.ports[1].name: Duplicate value: "a"']),
    ("duplicate port+protocol", svc(ports=[{"name": "a", "port": 80}, {"name": "b", "port": 80}]),
     ['spec.ports[1]: Duplicate value: {"port":80,"protocol":"TCP"}']),
    ("same port, other protocol is fine", svc(ports=[{"name": "a", "port": 53}, {"name": "b", "port": 53, "protocol": "UDP"}]), []),
    ("bad protocol", svc(ports=[{"port": 80, "protocol": "ICMP"}]),
     ['spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"']),
    ("uppercase service name", svc(name="Web"), [f'metadata.name: Invalid value: "Web": {MSG_1035_LABEL}']),
    ("service name starting with digit", svc(name="1web"), [f'metadata.name: Invalid value: "1web": {MSG_1035_LABEL}']),
    ("missing ports", svc(ports=[]), ["spec.ports: Required value"]),
    ("headless without ports is fine", svc(ports=[], clusterIP="None"), []),
    ("bad type", svc(type="Magic"),
     ['spec.type: Unsupported value: "Magic": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"']),
    ("nodePort on ClusterIP", svc(ports=[{"port": 80, "nodePort": 30001}]),
     ["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"]),
    ("ExternalName needs a name", svc(type="ExternalName", ports=[]), ["spec.externalName: Required value"]),
    ("bad named targetPort", svc(ports=[{"port": 80, "targetPort": "Http_x"}]),
     ['spec.ports[0].targetPort: Invalid value: "Http_x": must contain only alphanumeric characters (a-z, 0-9), and hyphens (-)']),
    ("affinity timeout", svc(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}),
     ["spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"]),
    ("externalTrafficPolicy on ClusterIP", svc(externalTrafficPolicy="Local"),
     ["spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set when `type` is 'NodePort' or 'LoadBalancer'"]),
    ("headless NodePort", svc(type="NodePort", clusterIP="None"),
     ['spec.clusterIPs[0]: Invalid value: "None": may not be set to \'None\' for NodePort services']),
    ("bad clusterIP", svc(clusterIP="10.0.0.300"),
     ['spec.clusterIPs[0]: Invalid value: "10.0.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)']),
    ("bad label value", svc(selector={"app": "a b"}),
     ['spec.selector: Invalid value: "a b": a valid label must be an empty string or consist of alphanumeric characters, '
      "'-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
      "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"]),
    ("pod name", pod(name="Bad_Pod"), [f'metadata.name: Invalid value: "Bad_Pod": {MSG_1123_SUBDOMAIN}']),
    ("pod without containers", pod(containers=[]), ["spec.containers: Required value"]),
    ("pod container without image", pod(containers=[{"name": "c"}]), ["spec.containers[0].image: Required value"]),
    ("duplicate containers", pod(containers=[{"name": "c", "image": "i"}, {"name": "c", "image": "i"}]),
     ['spec.containers[1].name: Duplicate value: "c"']),
    ("containerPort 0", pod(containers=[{"name": "c", "image": "i", "ports": [{"containerPort": 0}]}]),
     ["spec.containers[0].ports[0].containerPort: Invalid value: 0: must be between 1 and 65535, inclusive"]),
    ("pod hostname", pod(hostname="Web_0"), [f'spec.hostname: Invalid value: "Web_0": {MSG_1123_LABEL}']),
    ("restartPolicy", pod(restartPolicy="Sometimes"),
     ['spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "Never", "OnFailure"']),
    ("selector mismatch", dep(labels={"app": "other"}),
     ['spec.template.metadata.labels: Invalid value: {"app":"other"}: `selector` does not match template `labels`']),
    ("empty selector", dep(selector={}), ["spec.selector: Invalid value: {}: empty selector is invalid for deployment"]),
    ("negative replicas", dep(replicas=-1), ["spec.replicas: Invalid value: -1: must be greater than or equal to 0"]),
    ("deployment restartPolicy", dep(template={"metadata": {"labels": {"app": "web"}},
                                              "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}),
     ['spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"']),
    ("valid deployment", dep(), []),
    ("namespace name", {"kind": "Namespace", "metadata": {"name": "a.b"}}, [f'metadata.name: Invalid value: "a.b": {MSG_1123_LABEL}']),
    ("missing name", {"kind": "Namespace", "metadata": {}}, ["metadata.name: Required value: name or generateName is required"]),
    ("slice address family", {"kind": "EndpointSlice", "metadata": {"name": "s", "namespace": "d"}, "addressType": "IPv4",
                              "endpoints": [{"addresses": ["fd00::1"]}]},
     ['endpoints[0].addresses[0]: Invalid value: "fd00::1": must be a valid IPv4 address']),
    ("slice addressType", {"kind": "EndpointSlice", "metadata": {"name": "s", "namespace": "d"}, "addressType": "Pigeon"},
     ['addressType: Unsupported value: "Pigeon": supported values: "FQDN", "IPv4", "IPv6"']),
]


@pytest.mark.parametrize("obj,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_validation_messages(obj, expected):
    assert messages(obj) == expected


UPDATE_CASES = [
    ("clusterIP immutable",
     svc(clusterIP="127.96.0.10"), svc(clusterIP="127.96.0.11"),
     ['spec.clusterIP: Invalid value: "127.96.0.11": field is immutable']),
    ("clusterIP omitted on update is fine", svc(clusterIP="127.96.0.10"), svc(), []),
    ("deployment selector immutable",
     dep(), dep(selector={"matchLabels": {"app": "web", "tier": "x"}}, labels={"app": "web", "tier": "x"}),
     ['spec.selector: Invalid value: {"matchLabels":{"app":"web","tier":"x"}}: field is immutable']),
    ("pod image may change", pod(), pod(containers=[{"name": "main", "image": "img:2"}]), []),
    ("pod spec is otherwise immutable", pod(), pod(hostname="h"), ["spec: Forbidden: pod updates may not change fields"]),
]


@pytest.mark.parametrize("old,new,expected", [c[1:] for c in UPDATE_CASES], ids=[c[0] for c in UPDATE_CASES])
def test_update_rules(old, new, expected):
    got = messages(new, old)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.startswith(e)


def test_invalid_message_and_status():
    causes = [
        FieldError("spec.ports[0].port", "FieldValueInvalid", 0, "must be between 1 and 65535, inclusive"),
        FieldError("spec.ports[1].port", "FieldValueInvalid", 70000, "must be between 1 and 65535, inclusive"),
    ]
    one = Invalid("Service", "bad", causes[:1])
    assert str(one) == 'Service "bad" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive'
    two = Invalid("Service", "bad2", causes)
    assert str(two).startswith('Service "bad2" is invalid: [spec.ports[0].port: Invalid value: 0: ')
    status = two.status()
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert status["details"] == {
        "name": "bad2",
        "kind": "Service",
        "causes": [
            {"reason": "FieldValueInvalid", "field": "spec.ports[0].port",
             "message": "Invalid value: 0: must be between 1 and 65535, inclusive"},
            {"reason": "FieldValueInvalid", "field": "spec.ports[1].port",
             "message": "Invalid value: 70000: must be between 1 and 65535, inclusive"},
        ],
    }
    dep_err = Invalid("Deployment", "web", [FieldError("spec.replicas", "FieldValueInvalid", -1, "x")])
    assert str(dep_err).startswith('Deployment.apps "web" is invalid: ')
    assert dep_err.status()["details"]["group"] == "apps"


@pytest.mark.parametrize(
    "err,text",
    [
        (FieldError("spec.ports", "FieldValueRequired"), "spec.ports: Required value"),
        (FieldError("spec.ports", "FieldValueRequired", None, "why"), "spec.ports: Required value: why"),
        (FieldError("a", "FieldValueForbidden", None, "no"), "a: Forbidden: no"),
        (FieldError("a", "FieldValueInvalid", "x", "bad"), 'a: Invalid value: "x": bad'),
        (FieldError("a", "FieldValueInvalid", True, "bad"), "a: Invalid value: true: bad"),
        (FieldError("a", "FieldValueDuplicate", 3), "a: Duplicate value: 3"),
        (FieldError("a", "FieldValueInvalid", ["1.2.3.4"], "bad"), 'a: Invalid value: ["1.2.3.4"]: bad'),
    ],
)
def test_field_error_formatting(err, text):
    assert err.message() == text


def test_format_value_sorts_maps():
    assert format_value({"b": "1", "a": "2"}) == '{"a":"2","b":"1"}'


def _is_ip_before_fast_path(value):
    """is_ip as it was before the regex fast path (the reference for the table below)."""
    import ipaddress

    if not isinstance(value, str):
        return False
    if ":" not in value:
        parts = value.split(".")
        return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("value", [
    "10.0.0.1", "0.0.0.0", "255.255.255.255", "256.0.0.1", "1.2.3", "1.2.3.4.5", "01.2.3.4", "001.002.003.004",
    "1.2.3.1000", "1.2.3.-4", "1.2.3.+4", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "a.b.c.d", "", "...", "1..2.3",
    "\u0661.\u0662.\u0663.\u0664", "1.2.3.x", "fd00::1", "::", "1.2.3.4::", None, 7,
])
def test_is_ip_fast_path_agrees_with_the_reference(value):
    from kubelab.controller.validation import is_ip

    assert is_ip(value) is _is_ip_before_fast_path(value)
