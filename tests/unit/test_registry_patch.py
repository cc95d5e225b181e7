"""Patch semantics, with the patches kubectl actually sends (kubectl-api.md §2, §8)."""

from __future__ import annotations

import pytest

from kubelab.controller.api_patch import PatchError, json_merge_patch, json_patch, strategic_merge_patch

DEPLOY = {
    "metadata": {"name": "app", "labels": {"a": "1"}},
    "spec": {
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
        "template": {"spec": {
            "containers": [
                {"name": "main", "image": "busybox:1.36", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "side", "image": "nginx"},
            ],
            "volumes": [{"name": "v", "emptyDir": {}}],
        }},
    },
}


def test_merge_patch_rfc7386():
    assert json_merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": [1]}) == \
        {"a": 1, "b": {"d": 3, "e": 4}, "f": [1]}
    assert json_merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    original = {"a": {"b": 1}}
    json_merge_patch(original, {"a": {"b": None}})
    assert original == {"a": {"b": 1}}  # inputs are never mutated


def test_json_patch_ops():
    doc = {"spec": {"replicas": 1, "list": [1, 2]}}
    out = json_patch(doc, [
        {"op": "replace", "path": "/spec/replicas", "value": 3},
        {"op": "add", "path": "/spec/list/-", "value": 9},
        {"op": "remove", "path": "/spec/list/0"},
        {"op": "copy", "from": "/spec/replicas", "path": "/spec/copy"},
        {"op": "move", "from": "/spec/copy", "path": "/moved"},
        {"op": "test", "path": "/moved", "value": 3},
    ])
    assert out == {"spec": {"replicas": 3, "list": [2, 9]}, "moved": 3}
    assert doc == {"spec": {"replicas": 1, "list": [1, 2]}}
    with pytest.raises(PatchError, match="missing path"):
        json_patch(doc, [{"op": "remove", "path": "/spec/nope"}])


def test_smp_observed_kubectl_apply_patch():
    patch = {"metadata": {"annotations": {"x": "y"}},
             "spec": {"template": {"spec": {
                 "$setElementOrder/containers": [{"name": "main"}],
                 "containers": [
                     {"$setElementOrder/env": [{"name": "A"}],
                      "env": [{"name": "A", "value": "9"}, {"$patch": "delete", "name": "B"}],
                      "image": "busybox:1.37", "name": "main"},
                     {"$patch": "delete", "name": "side"}]}}}}
    out = strategic_merge_patch(DEPLOY, patch)
    cs = out["spec"]["template"]["spec"]["containers"]
    assert cs == [{"name": "main", "image": "busybox:1.37", "env": [{"name": "A", "value": "9"}]}]
    assert out["metadata"]["annotations"] == {"x": "y"}
    assert out["spec"]["template"]["spec"]["volumes"] == [{"name": "v", "emptyDir": {}}]


def test_smp_service_port_delete_and_order():
    svc = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 9090, "name": "m"}]}}
    out = strategic_merge_patch(svc, {"spec": {"$setElementOrder/ports": [{"port": 80}],
                                               "ports": [{"$patch": "delete", "port": 9090}]}})
    assert out == {"spec": {"ports": [{"port": 80, "name": "http"}]}}
    out = strategic_merge_patch(svc, {"spec": {"ports": [{"port": 443, "name": "https"}, {"port": 80, "targetPort": 8080}]}})
    assert [p["port"] for p in out["spec"]["ports"]] == [80, 9090, 443]
    assert out["spec"]["ports"][0] == {"port": 80, "name": "http", "targetPort": 8080}


def test_smp_retain_keys_and_null_deletes():
    out = strategic_merge_patch(DEPLOY, {"metadata": {"labels": None},
                                         "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}})
    assert "labels" not in out["metadata"]
    assert out["spec"]["strategy"] == {"type": "Recreate"}


def test_smp_atomic_lists_are_replaced():
    np = {"spec": {"ingress": [{"from": [{"podSelector": {}}]}], "policyTypes": ["Ingress"]}}
    out = strategic_merge_patch(np, {"spec": {"ingress": [{"ports": [{"port": 80}]}]}})
    assert out["spec"]["ingress"] == [{"ports": [{"port": 80}]}]


def test_smp_replace_directive_and_finalizers_union():
    out = strategic_merge_patch({"spec": {"a": 1, "b": 2}, "metadata": {"finalizers": ["x"]}},
                                {"spec": {"$patch": "replace", "c": 3}, "metadata": {"finalizers": ["y", "x"]}})
    assert out == {"spec": {"c": 3}, "metadata": {"finalizers": ["x", "y"]}}
