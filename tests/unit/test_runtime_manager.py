"""The runtime's pure decisions: which process an image is, phase, and the status it writes."""

import sys

import pytest

from kubelab.runtime.manager import (
    ContainerRun,
    PodRun,
    RuntimeConfig,
    delete_marked,
    image_name,
    is_run_pod,
    launch_for,
    pod_phase,
    pod_status,
)
from pathlib import Path


@pytest.mark.parametrize("image, name", [
    ("kubelab/echo", "kubelab/echo"),
    ("kubelab/echo:1.2", "kubelab/echo"),
    ("docker.io/kubelab/echo:latest", "kubelab/echo"),
    ("localhost:5000/kubelab/echo@sha256:abc", "kubelab/echo"),
    ("registry.k8s.io/e2e-test-images/agnhost:2.53", "e2e-test-images/agnhost"),
    ("nginx", "nginx"),
])
def test_image_name(image, name):
    assert image_name(image) == name


def test_launch_echo_with_ports_and_args():
    c = {"name": "echo", "image": "kubelab/echo:1", "args": ["--port", "$(PORT)"],
         "ports": [{"containerPort": 8080}, {"containerPort": 5353, "protocol": "UDP"}]}
    launch = launch_for(c, {"PORT": "9000"}, python="/py")
    assert launch.argv == ("/py", "-m", "kubelab.runtime.echo", "--port", "9000")
    assert launch.extra_env == {"ECHO_PORTS": "8080/TCP,5353/UDP"}
    assert not launch.reason


def test_launch_agnhost_netexec_and_command():
    launch = launch_for({"name": "a", "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                         "args": ["netexec", "--http-port=8080"]}, {}, python="/py")
    assert launch.argv == ("/py", "-m", "kubelab.runtime.echo", "--http-port=8080")
    launch = launch_for({"name": "c", "image": "busybox", "command": ["sh", "-c"], "args": ["echo $(POD_IP)"]},
                        {"POD_IP": "127.55.0.2"}, python="/py")
    assert launch.argv == ("sh", "-c", "echo 127.55.0.2")


def test_launch_unknown_image_is_a_clear_status_not_a_crash():
    launch = launch_for({"name": "n", "image": "nginx:1.27"}, {}, python=sys.executable)
    assert launch.reason == "ErrImagePull"
    assert 'image "nginx:1.27"' in launch.message and "kubelab/echo" in launch.message and "command" in launch.message


def test_is_run_pod():
    assert is_run_pod({"metadata": {}})
    assert not is_run_pod({"metadata": {"annotations": {"kubelab.dev/simulated": "true"}}})


def running(name="c", ready=True):
    return ContainerRun({"name": name, "image": "kubelab/echo"}, state={"running": {"startedAt": "t"}},
                        ready=ready, started=True, pid=42)


def terminated(code, final=True):
    return ContainerRun({"name": "c", "image": "x"}, state={"terminated": {"exitCode": code}}, final=final)


@pytest.mark.parametrize("containers, phase", [
    ([ContainerRun({"name": "c"})], "Pending"),
    ([ContainerRun({"name": "c"}, state={"waiting": {"reason": "ErrImagePull"}})], "Pending"),
    ([running()], "Running"),
    ([running(), ContainerRun({"name": "d"}, state={"waiting": {"reason": "ErrImagePull"}})], "Pending"),
    ([terminated(0)], "Succeeded"),
    ([terminated(1)], "Failed"),
    ([terminated(1, final=False)], "Running"),  # restarting
    ([ContainerRun({"name": "c"}, state={"waiting": {"reason": "CrashLoopBackOff"}}, restart_count=2)], "Running"),
])
def test_phase(containers, phase):
    assert pod_phase(containers) == phase


def make_run(*containers):
    return PodRun("default", "web-0", "uid-1", "127.55.0.2", "2026-01-01T00:00:00Z", Path("/nonexistent"),
                  list(containers))


def test_status_of_a_ready_pod():
    run = make_run(running())
    st = pod_status(run, "127.0.0.1", now="T1")
    assert st["phase"] == "Running"
    assert st["podIP"] == "127.55.0.2" and st["podIPs"] == [{"ip": "127.55.0.2"}]
    assert st["hostIP"] == "127.0.0.1" and st["hostIPs"] == [{"ip": "127.0.0.1"}]
    conds = {c["type"]: c for c in st["conditions"]}
    assert {t: c["status"] for t, c in conds.items()} == {
        "PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True", "ContainersReady": "True",
        "PodScheduled": "True"}
    cs = st["containerStatuses"][0]
    assert cs["ready"] and cs["started"] and cs["restartCount"] == 0 and cs["containerID"] == "kubelab://42"
    assert cs["state"] == {"running": {"startedAt": "t"}}


def test_status_unready_reason_and_transition_times():
    c = running(ready=False)
    run = make_run(c)
    st = pod_status(run, "127.0.0.1", now="T1")
    ready = next(x for x in st["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    assert ready["message"] == "containers with unready status: [c]"
    st = pod_status(run, "127.0.0.1", now="T2")  # no change: the transition time stays
    assert next(x for x in st["conditions"] if x["type"] == "Ready")["lastTransitionTime"] == "T1"
    c.ready = True
    st = pod_status(run, "127.0.0.1", now="T3")
    assert next(x for x in st["conditions"] if x["type"] == "Ready")["lastTransitionTime"] == "T3"


def test_delete_marked_sets_deletion_fields_once():
    pod = {"metadata": {"name": "p"}, "spec": {"terminationGracePeriodSeconds": 7}}
    marked = delete_marked(pod, now="T")
    assert marked["metadata"]["deletionTimestamp"] == "T"
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 7
    assert "deletionTimestamp" not in pod["metadata"]  # the stored object is not changed
    assert delete_marked(marked, now="T2") is marked
    assert delete_marked({"metadata": {"name": "q"}}, now="T")["metadata"]["deletionGracePeriodSeconds"] == 30


def test_runtime_config_from_lab():
    from kubelab.controller.config import LabConfig

    cfg = RuntimeConfig.from_lab(LabConfig(state_dir=Path("/tmp/x")))
    assert cfg.mode == "local" and cfg.pod_cidr == "127.244.0.0/16" and cfg.log_dir == Path("/tmp/x/pods")
    eph = RuntimeConfig.from_lab(LabConfig(state_dir=None, api_addr=("127.0.0.1", 16443)))
    assert eph.remove_logs and eph.log_dir.parts[-2:] == ("127.0.0.1_16443", "pods")
    assert RuntimeConfig.from_lab(LabConfig(state_dir=None, api_addr=("127.0.0.1", 0))).log_dir is None


def test_runtime_config_from_lab_netns_mode():
    import ipaddress

    from kubelab.controller.config import LabConfig

    lab = LabConfig(state_dir=None, mode="netns", netns_prefix="kz-", dns_service_ip="10.96.0.10",
                    dns_addr=("127.0.0.1", 5353), service_cidrs=(ipaddress.ip_network("10.96.0.0/16"),),
                    pod_cidr=ipaddress.ip_network("10.244.0.0/16"), lb_pool=ipaddress.ip_network("10.97.0.0/24"),
                    node_ip="10.244.0.1")
    cfg = RuntimeConfig.from_lab(lab)
    assert cfg.mode == "netns" and cfg.host_ip == "10.244.0.1"
    # pods' resolv.conf names the DNS service IP, not where the DNS server happens to listen
    assert cfg.netns.dns_ip == "10.96.0.10" and cfg.netns.prefix == "kz-"
    assert cfg.netns.local_cidrs == ("10.96.0.0/16", "10.97.0.0/24")
    assert cfg.netns.gateway == lab.bridge_ip == "10.244.0.1"
