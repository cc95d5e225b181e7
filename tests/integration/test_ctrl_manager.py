"""MemoryStore + Registry + Admission + ControllerManager, in one loop (no sockets except HttpSink's test)."""

import asyncio
import ipaddress
import json
import re

import pytest
from aiohttp import web

from kubelab.controller.admission import Admission, Invalid
from kubelab.controller.config import LabConfig
from kubelab.controller.manager import ControllerManager
from kubelab.controller.registry import Registry
from kubelab.controller.sinks import HttpSink, InProcessSink, SinkError
from kubelab.controller.store import MemoryStore
from kubelab.dns.zone import ZoneData
from kubelab.proxy.table import Frontend, RouteTable
from tests.helpers import DATA_DIR, wait_until

CLUSTER = json.loads((DATA_DIR / "dns-cases.json").read_text())["cluster"]
TIMEOUT = 5.0
# The waits poll every 5 ms: test_publishes_only_on_change reads ``manager.syncs`` right
# after an apply, and a slower poll lets the runner's next sync land inside that apply.
POLL = 0.005


class Recorder:
    def __init__(self, name):
        self.name = name
        self.states = []

    def __call__(self, state):
        self.states.append(state)

    @property
    def last(self):
        return self.states[-1] if self.states else None


class Lab:
    def __init__(self, config=None, sinks=None):
        self.config = config or LabConfig()
        self.store = MemoryStore()
        self.registry = Registry(self.store, Admission(self.config))
        self.dns = Recorder("dns")
        self.proxy = Recorder("proxy")
        if sinks is None:
            sinks = [InProcessSink("dns", self.dns), InProcessSink("proxy", self.proxy)]
        self.manager = ControllerManager(self.registry, self.config, sinks)

    async def __aenter__(self):
        await self.registry.start()
        await self.manager.start()
        return self

    async def __aexit__(self, *exc):
        await self.manager.close()
        await self.store.close()

    def snap(self):
        return self.store.snapshot()


def service(name="web", namespace="default", **spec):
    spec.setdefault("selector", {"app": name})
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": "http"}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def sim_pod(name, ip, ready=True, app="web", namespace="default"):
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"nodeName": "lab-node", "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def echo_deployment(replicas):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "echo", "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "echo"}},
                     "template": {"metadata": {"labels": {"app": "echo"}},
                                  "spec": {"containers": [{"name": "c", "image": "kubelab/echo"}]}}}}


def echo_pods(lab):
    """The pods the ``echo`` Deployment's ReplicaSets made."""
    return [p for p in lab.snap().list("Pod", "default") if p["metadata"]["name"].startswith("echo-")]


def zone_endpoints(lab, key):
    zone = lab.dns.last
    if zone is None or key not in zone.services:
        return None
    return [(e.address, e.ready) for e in zone.services[key].endpoints]


def proxy_backends(lab, service):
    table = lab.proxy.last
    if table is None:
        return None
    return sorted({b.ip for r in table.routes.values() if r.service == service for b in r.backends})


async def test_conformance_cluster_through_the_registry():
    cfg = LabConfig(service_cidrs=(ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00:10:96::/112")))
    async with Lab(cfg) as lab:
        await lab.registry.apply(CLUSTER["namespaces"] + CLUSTER["services"] + CLUSTER["pods"])

        def canon(es):
            return json.dumps({"ns": es["metadata"]["namespace"], "name": es["metadata"]["name"],
                               "labels": es["metadata"]["labels"], "addressType": es["addressType"],
                               "ports": es["ports"], "endpoints": sorted(es["endpoints"], key=lambda e: e["addresses"])},
                              sort_keys=True)
        want = sorted(map(canon, CLUSTER["endpointSlices"]))
        await wait_until(lambda: sorted(map(canon, lab.snap().list("EndpointSlice"))) == want, interval=POLL)
        await wait_until(lambda: zone_endpoints(lab, "db/mysql") is not None and len(zone_endpoints(lab, "db/mysql")) == 3, interval=POLL)
        assert lab.manager.ready


async def test_readiness_flip_reaches_zone_and_routes():
    async with Lab() as lab:
        await lab.registry.apply([service(), sim_pod("web-a", "127.244.0.10"), sim_pod("web-b", "127.244.0.11")])
        await wait_until(lambda: zone_endpoints(lab, "default/web") == [("127.244.0.10", True), ("127.244.0.11", True)], interval=POLL)
        svc = lab.snap().get("Service", "default", "web")
        vip = Frontend(svc["spec"]["clusterIP"], 80, "TCP")
        await wait_until(lambda: lab.proxy.last and vip in lab.proxy.last.routes and len(lab.proxy.last.routes[vip].backends) == 2, interval=POLL)
        gen = lab.dns.last.generation
        await lab.registry.apply([sim_pod("web-a", "127.244.0.10", ready=False)])
        await wait_until(lambda: zone_endpoints(lab, "default/web") == [("127.244.0.10", False), ("127.244.0.11", True)], interval=POLL)
        assert lab.dns.last.generation > gen
        await wait_until(lambda: [b.ready for b in lab.proxy.last.routes[vip].backends] == [False, True], interval=POLL)
        # the slice itself carries the condition
        (es,) = lab.snap().list("EndpointSlice", "default")
        assert {e["targetRef"]["name"]: e["conditions"]["ready"] for e in es["endpoints"]} == {"web-a": False, "web-b": True}


async def test_echo_of_own_slice_write_does_not_cost_a_sync():
    """A flip is one sync: the watch echo of the slice it wrote asks for no second one."""
    async with Lab() as lab:
        await lab.registry.apply([service(), sim_pod("web-a", "127.244.0.10"), sim_pod("web-b", "127.244.0.11")])
        await wait_until(lambda: zone_endpoints(lab, "default/web") == [("127.244.0.10", True), ("127.244.0.11", True)], interval=POLL)
        asks = []
        real_run = lab.manager._runner.run

        def counting_run():
            asks.append(lab.store.resource_version)
            real_run()

        lab.manager._runner.run = counting_run
        await lab.registry.apply([sim_pod("web-a", "127.244.0.10", ready=False)])

        def slice_flipped():
            (es,) = lab.snap().list("EndpointSlice", "default")
            return {e["targetRef"]["name"]: e["conditions"]["ready"] for e in es["endpoints"]}["web-a"] is False

        await wait_until(slice_flipped, interval=POLL)
        await wait_until(lambda: lab.manager._rv == lab.store.resource_version, interval=POLL)  # the echo was indexed
        assert len(asks) == 1  # the pod's event only
        # ...and a slice changed by someone else is still news (repaired by a sync)
        (es,) = lab.snap().list("EndpointSlice", "default")
        await lab.registry.update_status({**es, "endpoints": []})
        await wait_until(lambda: len(asks) == 2, interval=POLL)
        await wait_until(lambda: len(lab.snap().list("EndpointSlice", "default")[0]["endpoints"]) == 2, interval=POLL)


async def test_publishes_only_on_change():
    async with Lab() as lab:
        await lab.registry.apply([service(), sim_pod("web-a", "127.244.0.10")])
        # both sinks have the pod: a publish is pushed to one sink after the other, so
        # counting states between the two pushes would see the second one as "a change"
        await wait_until(lambda: zone_endpoints(lab, "default/web") == [("127.244.0.10", True)]
                         and proxy_backends(lab, "default/web") == ["127.244.0.10"])
        before = (len(lab.dns.states), len(lab.proxy.states))
        # a DNS- and proxy-neutral change: a new label nobody selects on
        pod = sim_pod("web-a", "127.244.0.10")
        pod["metadata"]["labels"]["extra"] = "x"
        syncs = lab.manager.syncs  # before the apply: the sync may run before apply() returns
        await lab.registry.apply([pod])
        await wait_until(lambda: lab.manager.syncs > syncs, what="a sync that saw the new label")
        assert (len(lab.dns.states), len(lab.proxy.states)) == before


async def test_service_and_pod_deletion():
    async with Lab() as lab:
        await lab.registry.apply([service(), sim_pod("web-a", "127.244.0.10")])
        await wait_until(lambda: lab.snap().list("EndpointSlice", "default"), interval=POLL)
        await wait_until(lambda: [(p.name, p.ip) for p in lab.dns.last.pods] == [("web-a", "127.244.0.10")], interval=POLL)
        await lab.registry.delete("Pod", "default", "web-a")
        await wait_until(lambda: zone_endpoints(lab, "default/web") == [], interval=POLL)
        await wait_until(lambda: lab.dns.last.pods == (), interval=POLL)
        await lab.registry.delete("Service", "default", "web")
        await wait_until(lambda: not lab.snap().list("EndpointSlice", "default"), interval=POLL)
        await wait_until(lambda: "default/web" not in lab.dns.last.services, interval=POLL)
        await wait_until(lambda: not any(r.service == "default/web" for r in lab.proxy.last.routes.values()), interval=POLL)


async def test_selector_change_moves_endpoints_and_manual_edits_are_repaired():
    async with Lab() as lab:
        await lab.registry.apply([service(), sim_pod("web-a", "127.244.0.10"), sim_pod("api-a", "127.244.0.20", app="api")])
        await wait_until(lambda: zone_endpoints(lab, "default/web") == [("127.244.0.10", True)], interval=POLL)
        await lab.registry.apply([service(selector={"app": "api"})])
        await wait_until(lambda: zone_endpoints(lab, "default/web") == [("127.244.0.20", True)], interval=POLL)
        (es,) = lab.snap().list("EndpointSlice", "default")
        await lab.registry.apply([{**es, "endpoints": []}])  # someone edits a managed slice
        await wait_until(lambda: lab.snap().list("EndpointSlice", "default")[0]["endpoints"] != [], interval=POLL)


async def test_node_port_and_load_balancer_routes():
    async with Lab() as lab:
        await lab.registry.apply([service(type="LoadBalancer"), sim_pod("web-a", "127.244.0.10")])
        svc = lab.snap().get("Service", "default", "web")
        lb_ip = svc["status"]["loadBalancer"]["ingress"][0]["ip"]
        node_port = svc["spec"]["ports"][0]["nodePort"]
        want = {Frontend(svc["spec"]["clusterIP"], 80, "TCP"), Frontend("127.0.0.1", node_port, "TCP"), Frontend(lb_ip, 80, "TCP")}
        await wait_until(lambda: lab.proxy.last and want <= set(lab.proxy.last.routes), interval=POLL)
        assert lab.proxy.last.routes[Frontend(lb_ip, 80, "TCP")].kind == "LoadBalancer"


async def test_deployment_scale_and_delete():
    dep = echo_deployment(3)
    async with Lab() as lab:
        await lab.registry.apply([dep])
        await wait_until(lambda: len(echo_pods(lab)) == 3, interval=POLL)
        names = [p["metadata"]["name"] for p in echo_pods(lab)]
        hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in echo_pods(lab)}
        assert len(hashes) == 1
        (h,) = hashes
        assert all(re.fullmatch(rf"echo-{h}-[bcdfghjklmnpqrstvwxz2456789]{{5}}", n) for n in names)
        assert all(p["metadata"]["ownerReferences"][0]["kind"] == "Deployment" for p in echo_pods(lab))
        await wait_until(lambda: lab.snap().get("Deployment", "default", "echo")["status"].get("replicas") == 3, interval=POLL)
        # scale through the API (merge patch)
        await lab.registry.patch("Deployment", "default", "echo", {"spec": {"replicas": 1}})
        await wait_until(lambda: len(echo_pods(lab)) == 1, interval=POLL)
        await wait_until(lambda: lab.snap().get("Deployment", "default", "echo")["status"].get("replicas") == 1, interval=POLL)
        await lab.registry.delete("Deployment", "default", "echo")
        await wait_until(lambda: not echo_pods(lab), interval=POLL)


async def test_sink_failure_is_retried_with_current_state():
    class Flaky:
        name = "dns"

        def __init__(self):
            self.fail = 2
            self.states = []

        async def apply(self, state):
            if self.fail:
                self.fail -= 1
                raise SinkError("down")
            self.states.append(state)

    flaky = Flaky()
    async with Lab(sinks=[flaky]) as lab:
        lab.manager._runner.retry_interval = 0.01
        assert not lab.manager.ready
        await lab.registry.apply([service(), sim_pod("web-a", "127.244.0.10")])
        await wait_until(lambda: flaky.states and "default/web" in flaky.states[-1].services
                       and flaky.states[-1].services["default/web"].endpoints, interval=POLL)
        assert lab.manager.ready
        assert lab.manager._runner.failures >= 2


async def test_crashing_sink_stops_the_manager_loudly():
    class Broken:
        name = "proxy"

        async def apply(self, state):
            raise RuntimeError("bug in the data plane")

    async with Lab(sinks=[Broken()]) as lab:
        with pytest.raises(RuntimeError, match="bug in the data plane"):
            await asyncio.wait_for(lab.manager.wait(), TIMEOUT)
        assert not lab.manager.ready


async def test_http_sink_puts_state():
    received = []

    async def put_zone(request):
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_put("/v1/zone", put_zone)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sink = HttpSink("dns", f"http://127.0.0.1:{port}", "zone")
    try:
        async with Lab(sinks=[sink]) as lab:
            await lab.registry.apply([service(), sim_pod("web-a", "127.244.0.10")])
            await wait_until(lambda: received and any(s["name"] == "web" and s["endpoints"] for s in received[-1]["services"]), interval=POLL)
            zone = ZoneData.from_json(received[-1])
            assert zone.services["default/web"].endpoints[0].address == "127.244.0.10"
    finally:
        await sink.close()
        await runner.cleanup()
    bad = HttpSink("dns", f"http://127.0.0.1:{port}", "zone", timeout=2)
    try:
        with pytest.raises(SinkError):
            await bad.apply(ZoneData(generation=1))
    finally:
        await bad.close()


async def test_invalid_objects_are_refused_and_nothing_is_stored():
    async with Lab() as lab:
        with pytest.raises(Invalid):
            await lab.registry.apply([service(name="ok"), service(name="bad", ports=[{"name": "x", "port": 0}])])
        assert lab.snap().get("Service", "default", "ok") is None


async def test_watch_expiry_relists_and_converges(caplog):
    lab = Lab()
    lab.store = MemoryStore(history=1)  # any batch of more than one event outruns the watcher
    lab.registry = Registry(lab.store, Admission(lab.config))
    lab.manager = ControllerManager(lab.registry, lab.config, [InProcessSink("dns", lab.dns)])
    async with lab:
        await lab.registry.apply([service(), sim_pod("web-a", "127.244.0.10"), sim_pod("web-b", "127.244.0.11")])
        await wait_until(lambda: zone_endpoints(lab, "default/web") == [("127.244.0.10", True), ("127.244.0.11", True)], interval=POLL)
        await lab.registry.apply([sim_pod("web-a", "127.244.0.10", ready=False), sim_pod("web-c", "127.244.0.12")])
        await wait_until(lambda: zone_endpoints(lab, "default/web") == [
            ("127.244.0.10", False), ("127.244.0.11", True), ("127.244.0.12", True)], interval=POLL)
    assert any("relisting" in r.getMessage() for r in caplog.records)


async def test_restart_from_sqlite_keeps_allocations_and_rewrites_nothing(tmp_path):
    from kubelab.controller.sqlite_store import SqliteStore

    path = tmp_path / "registry.db"
    lab = Lab()
    lab.store = SqliteStore(path)
    lab.registry = Registry(lab.store, Admission(lab.config))
    lab.manager = ControllerManager(lab.registry, lab.config, [InProcessSink("dns", lab.dns)])
    async with lab:
        await lab.registry.apply([service(), sim_pod("web-a", "127.244.0.10")])
        await wait_until(lambda: zone_endpoints(lab, "default/web") == [("127.244.0.10", True)], interval=POLL)
        first_ip = lab.snap().get("Service", "default", "web")["spec"]["clusterIP"]
        (es,) = lab.snap().list("EndpointSlice", "default")

    again = Lab()
    again.store = SqliteStore(path)
    again.registry = Registry(again.store, Admission(again.config))
    again.manager = ControllerManager(again.registry, again.config, [InProcessSink("dns", again.dns)])
    async with again:
        await wait_until(lambda: again.manager.ready, interval=POLL)
        assert zone_endpoints(again, "default/web") == [("127.244.0.10", True)]
        (es2,) = again.snap().list("EndpointSlice", "default")
        assert es2["metadata"]["resourceVersion"] == es["metadata"]["resourceVersion"]  # not rewritten
        # a new service does not get the address the stored one holds
        await again.registry.apply([service(name="other")])
        assert again.snap().get("Service", "default", "other")["spec"]["clusterIP"] != first_ip


async def test_recreated_deployment_replaces_the_old_incarnations_pods():
    dep = echo_deployment(2)
    async with Lab() as lab:
        await lab.registry.apply([dep])
        await wait_until(lambda: len(echo_pods(lab)) == 2, interval=POLL)
        old_names = {p["metadata"]["name"] for p in echo_pods(lab)}
        # delete and re-create before the controller can react: one coalesced sync sees both
        await lab.registry.delete("Deployment", "default", "echo")
        await lab.registry.apply([dep])
        uid = lab.snap().get("Deployment", "default", "echo")["metadata"]["uid"]
        await wait_until(lambda: len(echo_pods(lab)) == 2 and not old_names & {p["metadata"]["name"] for p in echo_pods(lab)}, interval=POLL)
        assert all(p["metadata"]["ownerReferences"][0]["uid"] == uid for p in echo_pods(lab))
