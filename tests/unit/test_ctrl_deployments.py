"""Deployment decisions: names, hashes, scaling, rollout, status."""

import itertools
import re

from kubelab.controller.deployments import (
    HASH_LABEL,
    deployment_status,
    max_unavailable,
    new_pod,
    plan,
    template_hash,
)


def dep(replicas=3, image="img:1", strategy=None):
    d = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "prod", "uid": "dep-uid", "generation": 2},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}},
        },
    }
    if strategy:
        d["spec"]["strategy"] = strategy
    return d


def counter():
    it = itertools.count()
    return lambda: f"{next(it):05d}"


def ready(pod, is_ready=True, ts="2026-01-01T00:00:00Z"):
    return {**pod, "metadata": {**pod["metadata"], "creationTimestamp": ts},
            "status": {"phase": "Running", "podIP": "1.2.3.4",
                       "conditions": [{"type": "Ready", "status": "True" if is_ready else "False"}]}}


def test_template_hash_is_stable_and_template_sensitive():
    h = template_hash(dep()["spec"]["template"])
    assert h == template_hash(dep()["spec"]["template"])
    assert h != template_hash(dep(image="img:2")["spec"]["template"])
    assert re.fullmatch(r"[bcdfghjklmnpqrstvwxz2456789]+", h)


def test_new_pod_shape():
    d = dep()
    h = template_hash(d["spec"]["template"])
    p = new_pod(d, h, "abcde")
    assert p["metadata"]["name"] == f"web-{h}-abcde"
    assert p["metadata"]["labels"] == {"app": "web", HASH_LABEL: h}
    assert p["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                                 "controller": True, "blockOwnerDeletion": True, "uid": "dep-uid"}]
    assert "status" not in p  # a run pod


def test_scale_up_from_zero():
    got = plan(dep(3), [], counter())
    assert len(got.create) == 3 and got.delete == ()
    assert len({p["metadata"]["name"] for p in got.create}) == 3


def test_scale_down_prefers_not_ready_then_newer():
    d = dep(3)
    pods = [ready(p) for p in plan(d, [], counter()).create]
    pods[1] = ready(pods[1], is_ready=False)
    pods[2] = ready(pods[2], ts="2026-02-01T00:00:00Z")  # newest ready
    got = plan(dep(1), pods, counter())
    assert got.create == ()
    assert got.delete == (pods[1]["metadata"]["name"], pods[2]["metadata"]["name"])


def test_steady_state_does_nothing_and_ignores_foreign_and_terminating_pods():
    d = dep(2)
    pods = [ready(p) for p in plan(d, [], counter()).create]
    foreign = {**pods[0], "metadata": {**pods[0]["metadata"], "name": "x", "ownerReferences": [
        {"kind": "Deployment", "name": "other"}]}}
    assert plan(d, pods + [foreign], counter()) == plan(d, pods, counter())
    assert plan(d, pods, counter()).create == () and plan(d, pods, counter()).delete == ()
    gone = {**pods[0], "metadata": {**pods[0]["metadata"], "deletionTimestamp": "t"}}
    assert len(plan(d, [gone, pods[1]], counter()).create) == 1


def test_rolling_update_keeps_availability():
    old = [ready(p) for p in plan(dep(4), [], counter()).create]
    d2 = dep(4, image="img:2")
    step = plan(d2, old, counter())
    assert len(step.create) == 4
    assert len(step.delete) == 1  # 25% of 4 may be unavailable
    new = [ready(p) for p in step.create]
    done = plan(d2, old + new, counter())
    assert set(done.delete) == {p["metadata"]["name"] for p in old}


def test_recreate_deletes_old_first():
    old = [ready(p) for p in plan(dep(2), [], counter()).create]
    got = plan(dep(2, image="img:2", strategy={"type": "Recreate"}), old, counter())
    assert got.create == () and len(got.delete) == 2


def test_max_unavailable():
    assert max_unavailable(dep(4)) == 1
    assert max_unavailable(dep(10)) == 2
    d = dep(3, strategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}})
    assert max_unavailable(d) == 1


def test_status():
    d = dep(3)
    pods = [ready(p) for p in plan(d, [], counter()).create]
    pods[0] = ready(pods[0], is_ready=False)
    st = deployment_status(d, pods)
    assert {k: st[k] for k in ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas",
                               "availableReplicas", "unavailableReplicas")} == {
        "observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 2,
        "availableReplicas": 2, "unavailableReplicas": 1}
    assert st["conditions"][0]["type"] == "Available" and st["conditions"][0]["status"] == "False"
    empty = deployment_status(dep(0), [])
    assert "replicas" not in empty and empty["conditions"][0]["status"] == "True"
