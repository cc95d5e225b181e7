"""The probe state machine and probe specs (kubelet semantics, no I/O)."""

import pytest

from kubelab.runtime.probes import ProbeError, ProbeSpec, ProbeState, resolve_port, step

CONTAINER = {"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}


def run(spec, kind, results):
    state = ProbeState.initial(kind)
    out = []
    for r in results:
        state = step(spec, state, r)
        out.append(state.ok)
    return out


def test_initial_states_follow_the_kubelet():
    assert ProbeState.initial("readiness").ok is False
    assert ProbeState.initial("liveness").ok is True
    assert ProbeState.initial("startup").ok is None
    with pytest.raises(ValueError):
        ProbeState.initial("sideways")


@pytest.mark.parametrize("kind, success_threshold, failure_threshold, results, expected", [
    # readiness: one success makes it ready; three failures in a row make it unready
    ("readiness", 1, 3, [True, False, False, True, False, False, False],
     [True, True, True, True, True, True, False]),
    # successThreshold 2: two consecutive successes needed, a failure resets the count
    ("readiness", 2, 3, [True, False, True, True], [False, False, False, True]),
    # liveness starts ok and needs failureThreshold consecutive failures
    ("liveness", 1, 2, [False, True, False, False], [True, True, True, False]),
    # failureThreshold 1: one failure is enough
    ("readiness", 1, 1, [True, False, True], [True, False, True]),
    # startup: unknown until a verdict
    ("startup", 1, 3, [False, False, False], [None, None, False]),
    ("startup", 1, 3, [False, True], [None, True]),
])
def test_thresholds(kind, success_threshold, failure_threshold, results, expected):
    spec = ProbeSpec("tcpSocket", port=1, success_threshold=success_threshold, failure_threshold=failure_threshold)
    assert run(spec, kind, results) == expected


def test_step_counts_consecutive_results():
    spec = ProbeSpec("tcpSocket", port=1)
    s = step(spec, ProbeState(False), False)
    assert (s.successes, s.failures) == (0, 1)
    s = step(spec, s, True)
    assert (s.successes, s.failures) == (1, 0)


def test_from_k8s_defaults_and_named_port():
    spec = ProbeSpec.from_k8s({"httpGet": {"path": "/healthz", "port": "http"}}, CONTAINER)
    assert (spec.handler, spec.port, spec.path, spec.scheme) == ("httpGet", 8080, "/healthz", "HTTP")
    assert (spec.initial_delay, spec.period, spec.timeout, spec.success_threshold, spec.failure_threshold) == (
        0, 10, 1, 1, 3)


def test_from_k8s_all_handlers_and_timing():
    tcp = ProbeSpec.from_k8s({"tcpSocket": {"port": 9000}, "periodSeconds": 2, "initialDelaySeconds": 3,
                              "timeoutSeconds": 4, "successThreshold": 2, "failureThreshold": 5}, CONTAINER)
    assert (tcp.port, tcp.period, tcp.initial_delay, tcp.timeout, tcp.success_threshold, tcp.failure_threshold) == (
        9000, 2, 3, 4, 2, 5)
    ex = ProbeSpec.from_k8s({"exec": {"command": ["cat", "/tmp/ready"]}}, CONTAINER)
    assert ex.command == ("cat", "/tmp/ready")
    http = ProbeSpec.from_k8s({"httpGet": {"port": 80, "httpHeaders": [{"name": "X", "value": "1"}]}}, CONTAINER)
    assert http.headers == (("X", "1"),) and http.path == "/"


@pytest.mark.parametrize("probe", [{}, {"grpc": {"port": 1}}, {"exec": {"command": []}},
                                   {"tcpSocket": {"port": "nope"}}])
def test_from_k8s_rejects(probe):
    with pytest.raises(ProbeError):
        ProbeSpec.from_k8s(probe, CONTAINER)


def test_resolve_port():
    assert resolve_port(80, CONTAINER) == 80
    assert resolve_port("8081", CONTAINER) == 8081
    assert resolve_port("http", CONTAINER) == 8080
