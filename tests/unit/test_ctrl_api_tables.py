"""kubectl's STATUS column (printers.go printPod), table-tested against upstream's rules."""

from __future__ import annotations

import pytest

from kubelab.controller.api_tables import _pod, pod_status_reason


def running(ready: bool = True) -> dict:
    return {"ready": ready, "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}


def waiting(reason: str) -> dict:
    return {"ready": False, "state": {"waiting": {"reason": reason}}}


def terminated(reason: str = "", code: int = 0, signal: int = 0) -> dict:
    t: dict = {"exitCode": code}
    if reason:
        t["reason"] = reason
    if signal:
        t["signal"] = signal
    return {"ready": False, "state": {"terminated": t}}


READY = [{"type": "Ready", "status": "True"}]
NOT_READY = [{"type": "Ready", "status": "False"}]


@pytest.mark.parametrize(
    "status, want",
    [
        ({"phase": "Pending"}, "Pending"),
        ({"phase": "Running", "containerStatuses": [running()]}, "Running"),
        ({"phase": "Failed", "reason": "Evicted"}, "Evicted"),
        # the first container's reason wins (upstream walks them last to first)
        ({"phase": "Pending", "containerStatuses": [waiting("ErrImagePull"), waiting("ContainerCreating")]},
         "ErrImagePull"),
        ({"phase": "Running", "containerStatuses": [waiting("CrashLoopBackOff"), terminated("Error", 1)]},
         "CrashLoopBackOff"),
        ({"phase": "Running", "containerStatuses": [terminated(code=2), terminated(signal=9)]}, "ExitCode:2"),
        ({"phase": "Running", "containerStatuses": [terminated(signal=9), running()]}, "Signal:9"),
        # "Completed" with a container still ready and running: the pod is Running ...
        ({"phase": "Running", "conditions": READY, "containerStatuses": [terminated("Completed"), running()]},
         "Running"),
        # ... or NotReady without the Ready condition
        ({"phase": "Running", "conditions": NOT_READY, "containerStatuses": [terminated("Completed"), running()]},
         "NotReady"),
        ({"phase": "Running", "containerStatuses": [terminated("Completed"), running(ready=False)]}, "Completed"),
        ({"phase": "Succeeded", "containerStatuses": [terminated("Completed"), terminated("Completed")]}, "Completed"),
        ({"phase": "Succeeded", "containerStatuses": [terminated(code=0)]}, "Completed"),
        ({"phase": "Succeeded"}, "Completed"),
    ],
)
def test_pod_status_reason(status, want):
    assert pod_status_reason(status) == want


@pytest.mark.parametrize("phase, want", [("Running", "Terminating"), ("Succeeded", "Completed"), ("Failed", "Error")])
def test_terminating_only_while_not_finished(phase, want):
    status = {"phase": phase, "containerStatuses": [running() if phase == "Running" else
                                                    terminated("Completed" if phase == "Succeeded" else "Error", 1)]}
    pod = {"metadata": {"name": "p", "deletionTimestamp": "2024-01-01T00:00:00Z"},
           "spec": {"containers": [{"name": "c"}]}, "status": status}
    assert _pod(pod, None)[2] == want
