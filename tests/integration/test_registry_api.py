"""The registry API over real HTTP on 127.0.0.1:0, driven with aiohttp and ApiClient."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import aiohttp
import pytest

from kubelab.controller.api import READY_CHECK, ListenError, check_listen, make_app, serve
from kubelab.controller.client import ApiClient, ApiError
from kubelab.controller.registry import Registry
from kubelab.controller.store import MemoryStore
from tests.helpers import PassThrough, PortCheck, namespace, service

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def svc(name, port=80, ns=None):
    """A Service labelled app=<name>; without ``ns`` the server picks the namespace."""
    return service(name, ns, ports=[port], labels={"app": name})


@pytest.fixture
async def api():
    store = MemoryStore(history=40)
    reg = Registry(store, PortCheck())
    app = make_app(reg, token=None)
    runner, url = await serve(app)
    async with aiohttp.ClientSession() as http, ApiClient(url) as client:
        yield SimpleNamespace(url=url, http=http, reg=reg, app=app, client=client, store=store)
    await runner.cleanup()
    await store.close()


async def test_crud_and_status_errors(api):
    base = api.url + "/api/v1/namespaces/default/services"
    r = await api.http.post(base, json=svc("web"))
    assert r.status == 201
    created = await r.json()
    assert created["metadata"]["resourceVersion"] and created["metadata"]["namespace"] == "default"

    r = await api.http.post(base, json=svc("web"))
    body = await r.json()
    assert r.status == 409 and body["reason"] == "AlreadyExists" and body["message"] == 'services "web" already exists'

    r = await api.http.get(base + "/nope")
    body = await r.json()
    assert (r.status, body["kind"], body["reason"], body["message"]) == (404, "Status", "NotFound", 'services "nope" not found')
    assert body["details"] == {"name": "nope", "kind": "services"}

    # update with optimistic concurrency: the first PUT wins, the stale one is 409
    updated = {**created, "spec": {"ports": [{"port": 81}]}}
    r = await api.http.put(base + "/web", json=updated)
    assert r.status == 200
    r = await api.http.put(base + "/web", json={**created, "spec": {"ports": [{"port": 82}]}})
    body = await r.json()
    assert r.status == 409 and body["reason"] == "Conflict"
    assert body["message"].startswith('Operation cannot be fulfilled on services "web": the object has been modified')

    r = await api.http.patch(base + "/web", data=json.dumps({"metadata": {"labels": {"x": "y"}}}),
                             headers={"Content-Type": "application/merge-patch+json"})
    assert r.status == 200 and (await r.json())["metadata"]["labels"] == {"app": "web", "x": "y"}

    r = await api.http.get(api.url + "/api/v1/services?labelSelector=x%3Dy")
    lst = await r.json()
    assert lst["kind"] == "ServiceList" and [i["metadata"]["name"] for i in lst["items"]] == ["web"]
    assert lst["metadata"]["resourceVersion"] == str(api.store.resource_version)

    r = await api.http.delete(base + "/web")
    assert r.status == 200 and (await r.json())["metadata"]["name"] == "web"
    assert (await api.http.get(base + "/web")).status == 404


async def test_namespace_missing_and_url_mismatch(api):
    r = await api.http.post(api.url + "/api/v1/namespaces/nope/services", json=svc("web"))
    body = await r.json()
    assert r.status == 404 and body["message"] == 'namespaces "nope" not found'
    assert body["details"] == {"name": "nope", "kind": "namespaces"}
    r = await api.http.post(api.url + "/api/v1/namespaces/default/services", json=svc("web", ns="kube-system"))
    assert r.status == 400 and (await r.json())["reason"] == "BadRequest"
    r = await api.http.get(api.url + "/api/v1/gizmos")
    assert r.status == 404 and (await r.json())["kind"] == "Status"


async def test_invalid_is_422_with_causes_and_stores_nothing(api):
    rv = api.store.resource_version
    r = await api.http.post(api.url + "/api/v1/namespaces/default/services", json=svc("bad", 0))
    body = await r.json()
    assert r.status == 422 and body["reason"] == "Invalid"
    assert body["message"] == 'Service "bad" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive'
    assert body["details"]["kind"] == "Service" and body["details"]["name"] == "bad"
    assert body["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "spec.ports[0].port",
                                          "message": "Invalid value: 0: must be between 1 and 65535, inclusive"}]
    assert api.store.resource_version == rv
    # and the batch endpoint refuses the whole file
    with pytest.raises(ApiError) as exc:
        await api.client.apply([svc("ok"), svc("bad", 70000)])
    assert exc.value.code == 422 and exc.value.causes[0]["field"] == "spec.ports[0].port"
    assert api.store.resource_version == rv
    assert await api.client.list("Service") == []


async def test_batch_apply_and_client_helpers(api):
    res = await api.client.apply([namespace("lab"), svc("a", ns="lab"), svc("b", ns="lab")])
    assert [a for a, _ in res] == ["created"] * 3
    res = await api.client.apply([svc("a", 90, ns="lab"), svc("b", ns="lab")], brief=True)
    assert [a for a, _ in res] == ["configured", "unchanged"]
    assert set(res[0][1]["metadata"]) == {"name", "namespace", "uid", "resourceVersion"} and "spec" not in res[0][1]
    assert (await api.client.get("svc", "a", "lab"))["spec"]["ports"] == [{"port": 90}]
    assert [o["metadata"]["name"] for o in await api.client.list("Service", label_selector="app=b")] == ["b"]
    await api.client.delete("Namespace", "lab")
    assert await api.client.list("Service", "lab") == []


async def test_table_output(api):
    await api.client.create(svc("web"))
    r = await api.http.get(api.url + "/api/v1/namespaces/default/services", headers={"Accept": TABLE})
    tbl = await r.json()
    assert tbl["kind"] == "Table" and tbl["columnDefinitions"][1]["name"] == "Type"
    assert tbl["rows"][0]["cells"][0] == "web"
    assert tbl["rows"][0]["object"]["metadata"]["namespace"] == "default"


async def test_scale_subresource(api):
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {}}}
    await api.client.create(dep)
    path = api.url + "/apis/apps/v1/namespaces/default/deployments/web/scale"
    scale = await (await api.http.get(path)).json()
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1 and scale["status"]["selector"] == "app=web"
    r = await api.http.patch(path, data=json.dumps({"spec": {"replicas": 3}}),
                             headers={"Content-Type": "application/merge-patch+json"})
    assert r.status == 200 and (await r.json())["spec"]["replicas"] == 3
    stale = {**scale, "spec": {"replicas": 5}}
    r = await api.http.put(path, data=json.dumps(stale))  # no Content-Type, as kubectl sends it
    assert r.status == 409
    assert (await api.client.get("deploy", "web"))["spec"]["replicas"] == 3


async def read_events(resp, n, timeout=5):
    out = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            line = await resp.content.readline()
            assert line, "watch ended early"
            out.append(json.loads(line))
    return out


async def test_watch_in_order_resume_and_gone(api):
    start = api.store.resource_version
    url = api.url + "/api/v1/namespaces/default/services"
    async with api.http.get(url, params={"watch": "1", "resourceVersion": str(start)}) as resp:
        assert resp.status == 200
        a = await api.client.create(svc("a"))
        await api.client.patch("Service", "a", {"metadata": {"labels": {"v": "2"}}})
        await api.client.create(svc("b"))
        await api.client.create(namespace("other"))
        await api.client.create(svc("elsewhere", ns="other"))  # filtered out by the namespaced URL
        await api.client.delete("Service", "a")
        events = await read_events(resp, 4)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] == int(a["metadata"]["resourceVersion"])

    # resume after the second event: exactly the rest, in order
    got = []
    async for ev in api.client.watch("Service", "default", resource_version=rvs[1]):
        got.append((ev["type"], ev["object"]["metadata"]["name"]))
        if len(got) == 2:
            break
    assert got == [("ADDED", "b"), ("DELETED", "a")]

    # resourceVersion=0: the current state as synthetic ADDED events first
    async with api.http.get(url, params={"watch": "true", "resourceVersion": "0"}) as resp:
        first = await read_events(resp, 1)
    assert first[0]["type"] == "ADDED" and first[0]["object"]["metadata"]["name"] == "b"

    # push the history past what the store keeps (40): the old version is 410 Expired
    await api.client.apply([svc(f"s{i}") for i in range(60)])
    async with api.http.get(url, params={"watch": "1", "resourceVersion": str(start)}) as resp:
        (err,) = await read_events(resp, 1)
    assert err["type"] == "ERROR" and err["object"]["code"] == 410 and err["object"]["reason"] == "Expired"
    with pytest.raises(ApiError) as exc:
        async for _ in api.client.watch("Service", resource_version=start):
            pass
    assert exc.value.code == 410


async def test_watch_label_selector_and_timeout(api):
    url = api.url + "/api/v1/services"
    async with api.http.get(url, params={"watch": "1", "labelSelector": "app=b", "timeoutSeconds": "1",
                                         "resourceVersion": str(api.store.resource_version)}) as resp:
        await api.client.create(svc("a"))
        await api.client.create(svc("b"))
        async with asyncio.timeout(5):
            body = await resp.read()  # the server ends the stream after timeoutSeconds
    events = [json.loads(line) for line in body.splitlines() if line]
    assert [e["object"]["metadata"]["name"] for e in events] == ["b"]


async def test_discovery_version_openapi_health(api):
    v = await api.client.version()
    assert (v["major"], v["minor"]) == ("1", "32")
    r = await api.http.get(api.url + "/apis", headers={
        "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"})
    assert r.headers["Content-Type"].startswith("application/json;g=apidiscovery.k8s.io;v=v2")
    assert (await r.json())["kind"] == "APIGroupDiscoveryList"
    assert (await (await api.http.get(api.url + "/api")).json())["kind"] == "APIVersions"
    assert (await (await api.http.get(api.url + "/apis/apps/v1")).json())["groupVersion"] == "apps/v1"
    doc = await (await api.http.get(api.url + "/openapi/v3")).json()
    ref = doc["paths"]["apis/apps/v1"]["serverRelativeURL"]
    gv = await (await api.http.get(api.url + ref)).json()
    assert "/apis/apps/v1/namespaces/{namespace}/deployments/{name}" in gv["paths"]
    assert (await api.http.get(api.url + "/healthz")).status == 200
    assert (await api.http.get(api.url + "/readyz")).status == 200


async def test_readyz_consults_the_injected_check():
    store = MemoryStore()
    app = make_app(Registry(store, PassThrough()))
    state = {"ready": (False, "waiting for dns")}

    async def check():  # may be sync or async
        return state["ready"]

    app[READY_CHECK] = check
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.get(url + "/readyz")
            assert r.status == 503 and "waiting for dns" in await r.text()
            state["ready"] = (True, "ok")
            assert (await http.get(url + "/readyz")).status == 200
    finally:
        await runner.cleanup()
        await store.close()


async def test_token_required_when_configured():
    store = MemoryStore()
    app = make_app(Registry(store, PassThrough()), token="s3cret")
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.get(url + "/api/v1/pods")
            body = await r.json()
            assert r.status == 401 and body["reason"] == "Unauthorized"
            r = await http.get(url + "/api/v1/pods", headers={"Authorization": "Bearer wrong"})
            assert r.status == 401
            assert (await http.get(url + "/healthz")).status == 200  # health stays public
        async with ApiClient(url, token="s3cret") as c:
            assert await c.list("Pod") == []
        async with ApiClient(url) as c:
            with pytest.raises(ApiError) as exc:
                await c.list("Pod")
            assert exc.value.code == 401
    finally:
        await runner.cleanup()
        await store.close()


def test_non_loopback_listen_needs_a_token():
    with pytest.raises(ListenError):
        check_listen("0.0.0.0", None)
    check_listen("0.0.0.0", "tok")
    check_listen("127.0.0.1", None)
    check_listen("::1", None)


async def test_open_watch_does_not_block_shutdown():
    store = MemoryStore()
    app = make_app(Registry(store, PassThrough()))
    runner, url = await serve(app)
    async with aiohttp.ClientSession() as http:
        resp = await http.get(url + "/api/v1/pods?watch=1")
        assert resp.status == 200
        async with asyncio.timeout(5):
            await runner.cleanup()
            assert await resp.read() == b""
        resp.release()
    await store.close()


async def test_watch_selector_transitions_are_added_and_deleted(api):
    url = api.url + "/api/v1/namespaces/default/services"
    async with api.http.get(url, params={"watch": "1", "labelSelector": "tier=front",
                                         "resourceVersion": str(api.store.resource_version)}) as resp:
        await api.client.create(svc("web"))  # not selected
        await api.client.patch("Service", "web", {"metadata": {"labels": {"tier": "front"}}})  # moves in
        await api.client.patch("Service", "web", {"spec": {"ports": [{"port": 81}]}})  # stays in
        await api.client.patch("Service", "web", {"metadata": {"labels": {"tier": None}}})  # moves out
        events = await read_events(resp, 3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]


async def test_watch_from_the_future_is_expired(api):
    async with api.http.get(api.url + "/api/v1/pods", params={"watch": "1", "resourceVersion": "999999"}) as resp:
        (err,) = await read_events(resp, 1)
    assert err["type"] == "ERROR" and err["object"]["code"] == 410


async def test_strict_field_validation(api):
    base = api.url + "/api/v1/namespaces/default/services"
    bad = {**svc("typo"), "spek": {}}
    bad["metadata"] = {**bad["metadata"], "labelz": {}}
    r = await api.http.post(base, params={"fieldValidation": "Strict"}, json=bad)
    body = await r.json()
    assert r.status == 400 and body["reason"] == "BadRequest"
    assert body["message"] == ('Service in version "v1" cannot be handled as a Service: strict decoding error: '
                               'unknown field "spek", unknown field "metadata.labelz"')
    r = await api.http.post(base, params={"fieldValidation": "Warn"}, json=bad)
    assert r.status == 201 and 'unknown field "spek"' in r.headers["Warning"]


async def test_concurrent_writers_are_serialised(api):
    base = api.url + "/api/v1/namespaces/default/services"
    codes = await asyncio.gather(*[api.http.post(base, json=svc("race")) for _ in range(10)])
    assert sorted(r.status for r in codes) == [201] + [409] * 9
    current = await api.client.get("Service", "race")
    results = await asyncio.gather(*[
        api.http.put(base + "/race", json={**current, "spec": {"ports": [{"port": 1000 + i}]}}) for i in range(10)])
    assert sorted(r.status for r in results) == [200] + [409] * 9


async def test_status_subresource_and_delete_collection(api):
    base = api.url + "/api/v1/namespaces/default/services"
    created = await api.client.create(svc("web"))
    status = {**created, "status": {"loadBalancer": {"ingress": [{"ip": "127.240.0.7"}]}}}
    r = await api.http.put(base + "/web/status", json=status)
    assert r.status == 200 and (await r.json())["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.240.0.7"
    await api.client.create(svc("other"))
    r = await api.http.delete(base, params={"labelSelector": "app=web"})
    assert r.status == 200 and [i["metadata"]["name"] for i in (await r.json())["items"]] == ["web"]
    assert [o["metadata"]["name"] for o in await api.client.list("Service")] == ["other"]
