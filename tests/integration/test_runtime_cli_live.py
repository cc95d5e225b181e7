"""``kubelab logs | exec | wait`` against a running lab (registry, controllers, runtime)."""

import ipaddress
import os

import pytest

from kubelab.controller.config import LabConfig
from tests.helpers import KUBELAB, pod_status, run_command, started_lab, wait_until


@pytest.fixture
async def lab(tmp_path):
    config = LabConfig(api_addr=("127.0.0.1", 0), pod_cidr=ipaddress.ip_network("127.55.8.0/24"),
                       state_dir=tmp_path / "state", disabled=frozenset({"dns", "proxy"}))
    async with started_lab(config) as lab:
        lab.env = {**os.environ, "KUBELAB_SERVER": lab.listening.api, "KUBELAB_STATE_DIR": str(tmp_path / "state")}
        yield lab


async def kubelab(lab, *args, stdin=None):
    return await run_command(KUBELAB, *args, env=lab.env, stdin=stdin, timeout=60)


POD = """
apiVersion: v1
kind: Pod
metadata: {name: talker, labels: {app: talker}}
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'echo "hello from $POD_NAME at $POD_IP"; exec sleep 60']
    env: [{name: GREETING, value: "hi $(POD_NAME)"}]
    readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
"""


async def test_wait_logs_exec(lab):
    rc, out, err = await kubelab(lab, "apply", "-f", "-", stdin=POD.encode())
    assert rc == 0, err
    rc, out, err = await kubelab(lab, "wait", "--for=condition=Ready", "pod", "-l", "app=talker", "--timeout=20s")
    assert (rc, out) == (0, "pod/talker condition met\n"), err
    ip = lab.registry.store.snapshot().get("Pod", "default", "talker")["status"]["podIP"]

    rc, out, err = await kubelab(lab, "logs", "talker")
    assert (rc, out) == (0, f"hello from talker at {ip}\n"), err
    rc, out, err = await kubelab(lab, "logs", "default/talker", "--tail", "0")
    assert (rc, out) == (0, "")

    rc, out, _ = await kubelab(lab, "exec", "talker", "--", "sh", "-c", 'echo "$GREETING $POD_IP"; exit 7')
    assert (rc, out) == (7, f"hi talker {ip}\n")
    rc, out, _ = await kubelab(lab, "exec", "-n", "default", "talker", "--", "printenv", "POD_NAMESPACE")
    assert (rc, out) == (0, "default\n")


async def test_errors_are_one_line(lab):
    rc, _, err = await kubelab(lab, "exec", "nope", "--", "true")
    assert rc == 1 and err == 'Error from server (NotFound): pods "nope" not found\n'
    rc, _, err = await kubelab(lab, "logs", "nope")
    assert rc == 1 and err == 'Error from server (NotFound): pods "nope" not found\n'
    rc, _, err = await kubelab(lab, "exec", "nope")
    assert rc == 1 and "at least one command" in err
    rc, _, err = await kubelab(lab, "wait", "pod/nope", "--timeout=0.3s")
    assert rc == 1 and "timed out waiting for the condition on pods/nope" in err
    await lab.registry.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sim"},
                               "spec": {"containers": [{"name": "c", "image": "x"}]}, "status": {"podIP": "10.9.9.9"}})
    rc, _, err = await kubelab(lab, "exec", "sim", "--", "true")
    assert rc == 1 and "simulated" in err
    await lab.registry.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nginx"},
                               "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}})
    await wait_until(lambda: pod_status(lab.registry, "nginx").get("containerStatuses"), timeout=10,
                     what="nginx's container statuses", interval=0.02)
    rc, _, err = await kubelab(lab, "logs", "nginx")
    assert rc == 1 and err == ('Error from server (BadRequest): container "nginx" in pod "nginx" is waiting to '
                               'start: ErrImagePull\n')


async def test_wait_for_delete(lab):
    rc, _, err = await kubelab(lab, "apply", "-f", "-", stdin=POD.encode())
    assert rc == 0, err
    await kubelab(lab, "wait", "pod/talker", "--timeout=20s")
    rc, _, _ = await kubelab(lab, "delete", "pod", "talker")
    assert rc == 0
    rc, out, err = await kubelab(lab, "wait", "--for=delete", "pod/talker", "--timeout=20s")
    assert (rc, out) == (0, "pod/talker deleted\n"), err
