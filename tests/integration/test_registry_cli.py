"""``kubelab apply/get/delete/describe`` as a user runs them: a subprocess against a live API."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import pytest

from kubelab.controller.api import make_app, serve
from kubelab.controller.registry import Registry
from kubelab.controller.store import MemoryStore
from tests.helpers import PortCheck, run_command, service


@pytest.fixture
async def lab(tmp_path):
    store = MemoryStore()
    reg = Registry(store, PortCheck())
    runner, url = await serve(make_app(reg))
    env = {**os.environ, "KUBELAB_SERVER": url}

    async def kubelab(*args, stdin: bytes | None = None):
        return await run_command(sys.executable, "-m", "kubelab.controller.cli", *args,
                                 env=env, stdin=stdin, timeout=60)

    yield SimpleNamespace(reg=reg, store=store, run=kubelab, tmp=tmp_path, url=url)
    await runner.cleanup()
    await store.close()


MULTI = """\
apiVersion: v1
kind: Namespace
metadata: {name: lab}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: lab}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: lab}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c, image: kubelab/echo}]}}
"""


async def test_apply_get_describe_delete(lab):
    f = lab.tmp / "app.yaml"
    f.write_text(MULTI)
    rc, out, err = await lab.run("apply", "-f", str(f))
    assert rc == 0, err
    assert out.splitlines() == ["namespace/lab created", "service/web created", "deployment.apps/web created"]
    rc, out, err = await lab.run("apply", "-f", str(f))
    assert out.splitlines() == ["namespace/lab unchanged", "service/web unchanged", "deployment.apps/web unchanged"]

    rc, out, err = await lab.run("get", "svc", "-n", "lab")
    assert rc == 0, err
    header, row = out.splitlines()
    assert header.split()[:3] == ["NAME", "TYPE", "CLUSTER-IP"] and row.split()[0] == "web"

    rc, out, err = await lab.run("get", "services", "-A", "-o", "wide")
    assert out.splitlines()[0].split()[0] == "NAMESPACE" and "SELECTOR" in out.splitlines()[0]
    assert out.splitlines()[1].split()[:2] == ["lab", "web"]

    rc, out, err = await lab.run("get", "deploy", "web", "-n", "lab", "-o", "json")
    assert rc == 0 and json.loads(out)["spec"]["replicas"] == 1
    rc, out, err = await lab.run("get", "po", "-n", "lab", "-o", "yaml")
    assert rc == 0 and "kind: List" in out
    rc, out, err = await lab.run("get", "pods")
    assert rc == 0 and out == "" and "No resources found in default namespace." in err

    rc, out, err = await lab.run("describe", "svc", "web", "-n", "lab")
    assert rc == 0, err
    assert "Name:" in out and "Selector:" in out and "app=web" in out and "TargetPort:" in out

    rc, out, err = await lab.run("delete", "svc", "web", "-n", "lab")
    assert (rc, out.strip()) == (0, 'service "web" deleted')
    rc, out, err = await lab.run("delete", "-f", str(f))
    assert rc == 1  # the service is already gone
    assert f'Error from server (NotFound): error when deleting "{f}": services "web" not found' in err
    assert out.strip() == 'namespace "lab" deleted'  # ... which took the deployment with it:
    assert 'deployments.apps "web" not found' in err
    assert lab.store.snapshot().get("Namespace", "", "lab") is None


async def test_json_and_stdin_are_accepted(lab):
    f = lab.tmp / "svc.json"
    f.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        service("a", None, ports=[80]), service("b", None, ports=[81])]}))
    rc, out, err = await lab.run("apply", "-f", str(f))
    assert out.splitlines() == ["service/a created", "service/b created"], err
    doc = service("a", None, ports=[90])
    rc, out, err = await lab.run("apply", "-f", "-", stdin=json.dumps(doc).encode())
    assert out.strip() == "service/a configured", err
    rc, out, err = await lab.run("get", "svc", "a", "-o", "name")
    assert out.strip() == "service/a"
    rc, out, err = await lab.run("get", "svc/b", "-o", "json")
    assert rc == 0 and json.loads(out)["spec"]["ports"] == [{"port": 81}]
    rc, out, err = await lab.run("delete", "svc/b")
    assert (rc, out.strip()) == (0, 'service "b" deleted')


async def test_invalid_file_changes_nothing(lab):
    rv = lab.store.resource_version
    f = lab.tmp / "bad.yaml"
    f.write_text(MULTI + "---\napiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  ports: [{port: 0}]\n")
    rc, out, err = await lab.run("apply", "-f", str(f))
    assert rc == 1 and out == ""
    assert err.strip() == ('The Service "bad" is invalid: spec.ports[0].port: Invalid value: 0: '
                           "must be between 1 and 65535, inclusive")
    assert lab.store.resource_version == rv

    f.write_text(MULTI + "---\nkind: Service\nmetadata: {name: nokind}\n")
    rc, out, err = await lab.run("apply", "-f", str(f))
    assert rc == 1 and "document 3" in err and "apiVersion not set" in err
    assert lab.store.resource_version == rv


async def test_unknown_kind_and_unreachable_server(lab):
    rc, out, err = await lab.run("get", "gizmos")
    assert rc == 1 and 'the server doesn\'t have a resource type "gizmos"' in err
    rc, out, err = await lab.run("get", "pods", "--server", "http://127.0.0.1:9")
    assert rc == 1 and "The connection to the server 127.0.0.1:9 was refused" in err


async def test_unknown_field_is_refused_before_anything_is_stored(lab):
    rv = lab.store.resource_version
    f = lab.tmp / "typo.yaml"
    f.write_text(MULTI + "---\napiVersion: v1\nkind: Service\nmetadata: {name: typo}\nspek: {}\n")
    rc, out, err = await lab.run("apply", "-f", str(f))
    assert rc == 1 and out == ""
    assert 'Error from server (BadRequest): Service "typo" in version "v1" cannot be handled as a Service: ' \
           'strict decoding error: unknown field "spek"' in err
    assert lab.store.resource_version == rv
