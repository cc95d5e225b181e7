"""The compose lab's self-registration sidecar: its pure decisions (no sockets)."""

from __future__ import annotations

import pytest

from kubelab.runtime.register import (
    RegisterConfig,
    RegisterError,
    config_from_args,
    merged_update,
    needs_update,
    parse_labels,
    pod_manifest,
    pod_path,
    token_from_kubeconfig,
)

CFG = RegisterConfig(name="echo-1", namespace="default", labels={"app": "echo"}, port=8080)


@pytest.mark.parametrize(
    "text, want",
    [
        ("", {}),
        ("app=echo", {"app": "echo"}),
        (" app=echo , tier=web ", {"app": "echo", "tier": "web"}),
        ("k=", {"k": ""}),
        ("a=b=c", {"a": "b=c"}),
    ],
)
def test_parse_labels(text, want):
    assert parse_labels(text) == want


@pytest.mark.parametrize("text", ["app", "=echo", "a=1,a=2"])
def test_parse_labels_rejects(text):
    with pytest.raises(RegisterError):
        parse_labels(text)


def test_manifest_is_a_simulated_pod_with_ip_labels_and_ready_condition():
    pod = pod_manifest(CFG, "172.28.0.130", True, 0.0, 0.0)
    assert pod["kind"] == "Pod" and pod["apiVersion"] == "v1"
    assert pod["metadata"]["name"] == "echo-1" and pod["metadata"]["namespace"] == "default"
    assert pod["metadata"]["labels"] == {"app": "echo"}
    assert pod["status"]["podIP"] == "172.28.0.130"
    assert pod["status"]["podIPs"] == [{"ip": "172.28.0.130"}]
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    port = pod["spec"]["containers"][0]["ports"][0]
    assert port == {"containerPort": 8080, "protocol": "TCP", "name": "http"}


def test_not_ready_manifest():
    pod = pod_manifest(CFG, "172.28.0.130", False, 0.0, 0.0)
    conds = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conds["Ready"] == "False" and conds["ContainersReady"] == "False"
    assert pod["status"]["containerStatuses"][0]["ready"] is False


def _stored(ip="172.28.0.130", ready=True, labels=None):
    pod = pod_manifest(CFG, ip, ready, 0.0, 0.0)
    pod["metadata"].update(resourceVersion="7", uid="u-1")
    pod["metadata"]["annotations"]["kubelab.dev/simulated"] = "true"
    if labels is not None:
        pod["metadata"]["labels"] = labels
    return pod


@pytest.mark.parametrize(
    "stored, changed",
    [
        (_stored(), False),
        (_stored(ready=False), True),
        (_stored(ip="172.28.0.131"), True),
        (_stored(labels={"app": "other"}), True),
    ],
)
def test_needs_update(stored, changed):
    desired = pod_manifest(CFG, "172.28.0.130", True, 100.0, 100.0)  # timestamps alone don't count
    assert needs_update(stored, desired) is changed


def test_merged_update_keeps_identity_and_foreign_annotations():
    stored = _stored(ready=False)
    desired = pod_manifest(CFG, "172.28.0.130", True, 0.0, 0.0)
    out = merged_update(stored, desired)
    assert out["metadata"]["resourceVersion"] == "7" and out["metadata"]["uid"] == "u-1"
    assert out["metadata"]["annotations"]["kubelab.dev/simulated"] == "true"
    assert not needs_update(out, desired)
    assert stored["status"]["conditions"][-1]["status"] == "False"  # input untouched


def test_pod_path():
    assert pod_path("ns") == "/api/v1/namespaces/ns/pods"
    assert pod_path("ns", "p") == "/api/v1/namespaces/ns/pods/p"


KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: kubelab, cluster: {server: "http://0.0.0.0:6443"}}]
users: [{name: kubelab, user: {token: s3cret}}, {name: other, user: {token: nope}}]
contexts: [{name: kubelab, context: {cluster: kubelab, user: kubelab}}]
current-context: kubelab
"""


def test_token_from_kubeconfig():
    assert token_from_kubeconfig(KUBECONFIG) == "s3cret"
    assert token_from_kubeconfig("users: [{name: a, user: {}}]") is None
    assert token_from_kubeconfig("") is None


def test_config_from_args_and_env():
    env = {"KUBELAB_SERVER": "http://controller:6443", "POD_NAME": "echo-2", "POD_LABELS": "app=echo"}
    cfg = config_from_args(["--port", "8080", "--ip", "10.0.0.1"], env)
    assert cfg.server == "http://controller:6443" and cfg.name == "echo-2"
    assert cfg.labels == {"app": "echo"} and cfg.ip == "10.0.0.1" and cfg.port == 8080
    assert cfg.protocol == "TCP" and cfg.ready_path == "/healthz"
    assert config_from_args(["--ready-path", "-", "--name", "x"], {}).ready_path == ""


@pytest.mark.parametrize(
    "argv",
    [["--port", "0"], ["--port", "http"], ["--port", "80/SCTP"], ["--server", "controller:6443"], ["--period", "0"]],
)
def test_config_rejects(argv):
    with pytest.raises(RegisterError):
        config_from_args(["--name", "x", *argv], {})
