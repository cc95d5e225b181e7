"""Selectors, Table printers, discovery and kubeconfig: the API's pure helpers."""

from __future__ import annotations

import datetime

import pytest
import yaml

from kubelab.controller import api_tables, discovery
from kubelab.controller.api_selectors import (
    SelectorError,
    label_selector_string,
    parse_field_selector,
    parse_label_selector,
)
from kubelab.controller.kubeconfig import read_server, write_kubeconfig


def obj(labels=None, **extra):
    return {"metadata": {"name": "x", "namespace": "default", "labels": labels or {}}, **extra}


@pytest.mark.parametrize("sel, labels, want", [
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "db"}, False),
    ("app!=web", {}, True),
    ("app in (web,db),tier", {"app": "db", "tier": "1"}, True),
    ("app notin (web)", {"app": "web"}, False),
    ("!canary", {"canary": "y"}, False),
    ("app", {}, False),
])
def test_label_selector(sel, labels, want):
    assert parse_label_selector(sel)(obj(labels)) is want


def test_empty_and_bad_selectors():
    assert parse_label_selector("") is None and parse_field_selector(None) is None
    with pytest.raises(SelectorError):
        parse_label_selector("a=(b")


def test_field_selector():
    o = obj(status={"phase": "Running"}, spec={"nodeName": "n"})
    assert parse_field_selector("metadata.name=x,status.phase=Running")(o)
    assert not parse_field_selector("status.phase!=Running")(o)
    assert parse_field_selector("spec.nodeName=n,metadata.namespace==default")(o)


def test_label_selector_string():
    assert label_selector_string({"matchLabels": {"b": "2", "a": "1"},
                                  "matchExpressions": [{"key": "t", "operator": "In", "values": ["x", "y"]}]}) == \
        "a=1,b=2,t in (x,y)"


@pytest.mark.parametrize("seconds, want", [(0, "0s"), (119, "119s"), (125, "2m5s"), (600, "10m"), (3 * 3600, "3h"),
                                           (3 * 3600 + 60, "3h1m"), (50 * 3600, "2d2h"), (400 * 86400, "400d")])
def test_human_duration(seconds, want):
    assert api_tables.human_duration(seconds) == want


def test_service_row_and_render():
    now = datetime.datetime(2026, 1, 1, 0, 1, 0, tzinfo=datetime.timezone.utc)
    svc = {"kind": "Service", "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"type": "LoadBalancer", "clusterIP": "127.96.0.10", "selector": {"app": "web"},
                    "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]},
           "status": {"loadBalancer": {"ingress": [{"ip": "127.240.0.1"}]}}}
    tbl = api_tables.table("Service", [svc], "5", now=now)
    assert tbl["rows"][0]["cells"] == ["web", "LoadBalancer", "127.96.0.10", "127.240.0.1", "80:30080/TCP", "60s", "app=web"]
    assert tbl["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    text = api_tables.render(tbl, namespace_column=True)
    assert text.splitlines()[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert "SELECTOR" in api_tables.render(tbl, wide=True)


def test_pod_row_terminating_and_ready():
    pod = {"kind": "Pod", "metadata": {"name": "p", "deletionTimestamp": "x"},
           "spec": {"containers": [{"name": "c"}]},
           "status": {"phase": "Running", "podIP": "127.244.0.5", "conditions": [{"type": "Ready", "status": "True"}]}}
    cells = api_tables.table("Pod", [pod])["rows"][0]["cells"]
    assert cells[:3] == ["p", "1/1", "Terminating"] and cells[5] == "127.244.0.5"


@pytest.mark.parametrize("alias, kind", [("po", "Pod"), ("pods", "Pod"), ("svc", "Service"), ("ep", "EndpointSlice"),
                                         ("endpointslices", "EndpointSlice"), ("deploy", "Deployment"),
                                         ("deployment.apps", "Deployment"), ("netpol", "NetworkPolicy"),
                                         ("ns", "Namespace"), ("no", "Node"), ("Service", "Service")])
def test_kind_aliases(alias, kind):
    assert discovery.resolve(alias).kind == kind


def test_discovery_documents():
    assert discovery.resolve("nope") is None
    accept = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
              "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")
    assert discovery.wants_aggregated(accept)
    assert not discovery.wants_aggregated("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList")
    groups = [i["metadata"]["name"] for i in discovery.aggregated(core=False)["items"]]
    assert groups == ["discovery.k8s.io", "apps", "networking.k8s.io"]
    core = discovery.api_resource_list("", "v1")
    assert {"pods", "services", "namespaces", "nodes"} <= {r["name"] for r in core["resources"]}
    apps = discovery.api_resource_list("apps", "v1")
    assert any(r["name"] == "deployments/scale" and r["kind"] == "Scale" for r in apps["resources"])
    assert discovery.BY_KIND["Deployment"].path("lab", "web", "scale") == "/apis/apps/v1/namespaces/lab/deployments/web/scale"


def test_kubeconfig_roundtrip(tmp_path):
    p = write_kubeconfig(tmp_path / "kc" / "config", "http://127.0.0.1:6443", token="t0k")
    assert p.stat().st_mode & 0o777 == 0o600
    assert read_server(p) == ("http://127.0.0.1:6443", "t0k")
    cfg = yaml.safe_load(p.read_text())
    assert cfg["current-context"] == "kubelab"
    write_kubeconfig(p, "http://127.0.0.1:1")
    assert read_server(p) == ("http://127.0.0.1:1", None)
