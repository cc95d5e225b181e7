"""Registry -> controller manager -> DnsServer, in one process (as ``kubelab up`` wires it).

What the zone builder (``controller/desired.py``) decides, observed through real DNS
queries: a terminating pod's record disappears (dns-spec F2), an empty namespace's
``<ns>.svc`` node is NODATA and a deleted one NXDOMAIN (A8/F6).
"""

from __future__ import annotations

import datetime

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from kubelab.dns.config import DnsConfig
from kubelab.dns.server import DnsServer
from tests.helpers import namespace, pod, wait_until

ADDR = "127.53.8.1"
POD_IP = "127.244.3.7"
POD_NAME = "127-244-3-7.prod.pod.cluster.local."

ctl = pytest.importorskip("kubelab.controller.manager")


def _mark_terminating(pod: dict) -> dict:
    """The pod runtime's graceful-deletion hook, reduced to its store effect."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    marked = dict(pod)
    marked["metadata"] = {**pod["metadata"], "deletionTimestamp": now, "deletionGracePeriodSeconds": 30}
    return marked


async def _ask(server: DnsServer, qname: str, qtype: str = "A") -> dns.message.Message:
    host, port = server.address
    return await dns.asyncquery.udp(dns.message.make_query(qname, qtype), host, port=port, timeout=2)


async def _until(server: DnsServer, qname: str, qtype: str, want, timeout: float = 5.0) -> dns.message.Message:
    """Ask until ``want(reply)`` holds (the controller publishes asynchronously)."""

    async def wanted() -> dns.message.Message | None:
        reply = await _ask(server, qname, qtype)
        return reply if want(reply) else None

    return await wait_until(wanted, timeout, f"the wanted reply to {qname} {qtype}")


def _rcode(name: str):
    return lambda r: dns.rcode.to_text(r.rcode()) == name


@pytest.fixture
async def lab():
    from kubelab.controller.admission import Admission
    from kubelab.controller.config import LabConfig
    from kubelab.controller.registry import Registry
    from kubelab.controller.sinks import InProcessSink
    from kubelab.controller.store import MemoryStore

    cfg = LabConfig(state_dir=None)
    server = DnsServer(DnsConfig.for_lab(host=ADDR, port=0, upstreams="none", pod_cidr=str(cfg.pod_cidr)))
    await server.start()
    store = MemoryStore()
    registry = Registry(store, Admission(cfg))
    registry.delete_hooks["Pod"] = _mark_terminating
    manager = ctl.ControllerManager(registry, cfg, [InProcessSink("dns", server.set_zone)])
    await manager.start()
    try:
        yield registry, server
    finally:
        await manager.close()
        await store.close()
        await server.close()


async def test_terminating_pod_record_disappears(lab):
    registry, server = lab
    await registry.apply([namespace("prod"), pod("p1", "prod", ip=POD_IP)])
    reply = await _until(server, POD_NAME, "A", lambda r: bool(r.answer))
    assert [rd.address for rd in reply.answer[0]] == [POD_IP]

    marked = await registry.delete("Pod", "prod", "p1")
    assert marked["metadata"].get("deletionTimestamp")  # still stored: terminating, not gone
    assert registry.store.snapshot().get("Pod", "prod", "p1") is not None
    reply = await _until(server, POD_NAME, "A", _rcode("NXDOMAIN"))
    assert not reply.answer and reply.authority  # NXDOMAIN with the SOA
    # the namespace node still exists (its Namespace object does)
    assert _rcode("NOERROR")(await _ask(server, "prod.pod.cluster.local.", "A"))


async def test_empty_namespace_is_nodata_until_deleted(lab):
    registry, server = lab
    await _until(server, "empty.svc.cluster.local.", "A", _rcode("NXDOMAIN"))
    await registry.apply([namespace("empty")])
    for node in ("empty.svc.cluster.local.", "EMPTY.pod.cluster.local."):
        reply = await _until(server, node, "A", _rcode("NOERROR"))
        assert not reply.answer and reply.authority  # NODATA: SOA, no answer
    assert _rcode("NXDOMAIN")(await _ask(server, "nosuch.svc.cluster.local.", "A"))
    assert _rcode("NXDOMAIN")(await _ask(server, "web.empty.svc.cluster.local.", "A"))
    await registry.delete("Namespace", "", "empty")
    await _until(server, "empty.svc.cluster.local.", "A", _rcode("NXDOMAIN"))
