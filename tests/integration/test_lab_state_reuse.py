"""A state dir reused with other ranges: the built-in Services follow the flags (each on its
own, re-created when their immutable ClusterIP changed), a dir whose user Services lie
outside --service-cidr is refused on one line, and pods/log serves only the named pod's log.

Addresses: services 127.221.0.0/24 or 127.222.0.0/24, pods 127.223.0.0/24, LB pool
127.224.0.0/24, node 127.225.0.1 (this file's own ranges); API and DNS on port 0.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import aiohttp
import pytest

from kubelab.controller.config import LabConfig
from kubelab.controller.lab import LabError
from tests.helpers import started_lab, wait_until

A, B = "127.221.0.0/24", "127.222.0.0/24"


def config(state: Path | None, services: str = A, dns: str | None = "10", **kw) -> LabConfig:
    net = ipaddress.ip_network(services)
    base = dict(api_addr=("127.0.0.1", 0), dns_addr=("127.0.0.1", 0), service_cidrs=(net,),
                pod_cidr=ipaddress.ip_network("127.223.0.0/24"), lb_pool=ipaddress.ip_network("127.224.0.0/24"),
                node_ip="127.225.0.1", state_dir=state, dns_upstream=(),
                dns_service_ip=str(net.network_address + int(dns)) if dns else None)
    return LabConfig(**{**base, **kw})


def cluster_ips(lab) -> dict[str, str | None]:
    snap = lab.registry.store.snapshot()
    out = {}
    for ns, name in (("default", "kubernetes"), ("kube-system", "kube-dns")):
        svc = snap.get("Service", ns, name)
        out[name] = svc["spec"]["clusterIP"] if svc else None
    return out


async def test_builtins_follow_a_new_service_cidr(tmp_path):
    async with started_lab(config(tmp_path, A, disabled=frozenset({"runtime"}))) as lab:
        assert cluster_ips(lab) == {"kubernetes": "127.221.0.1", "kube-dns": "127.221.0.10"}
    # another --service-cidr with the same state dir (what switching --mode does)
    async with started_lab(config(tmp_path, B, disabled=frozenset({"runtime"}))) as lab:
        assert cluster_ips(lab) == {"kubernetes": "127.222.0.1", "kube-dns": "127.222.0.10"}
        es = lab.registry.store.snapshot().get("EndpointSlice", "default", "kubernetes")
        assert es["endpoints"][0]["addresses"] == ["127.0.0.1"]


async def test_a_kube_dns_outside_the_new_range_goes_when_there_is_no_dns_service_ip(tmp_path):
    async with started_lab(config(tmp_path, A, disabled=frozenset({"runtime"}))):
        pass
    async with started_lab(config(tmp_path, B, dns=None, disabled=frozenset({"runtime"}))) as lab:
        assert cluster_ips(lab) == {"kubernetes": "127.222.0.1", "kube-dns": None}
        assert lab.registry.store.snapshot().get("EndpointSlice", "kube-system", "kube-dns") is None


async def test_a_new_dns_service_ip_recreates_kube_dns_only(tmp_path):
    async with started_lab(config(tmp_path, A, disabled=frozenset({"runtime"}))) as lab:
        uid = lab.registry.store.snapshot().get("Service", "default", "kubernetes")["metadata"]["uid"]
    async with started_lab(config(tmp_path, A, dns="53", disabled=frozenset({"runtime"}))) as lab:
        assert cluster_ips(lab) == {"kubernetes": "127.221.0.1", "kube-dns": "127.221.0.53"}
        assert lab.registry.store.snapshot().get("Service", "default", "kubernetes")["metadata"]["uid"] == uid


async def test_one_builtin_clashing_does_not_drop_the_other(tmp_path, caplog):
    async with started_lab(config(tmp_path, A, dns=None, disabled=frozenset({"runtime"}))) as lab:
        await lab.registry.apply([{"apiVersion": "v1", "kind": "Service",
                                   "metadata": {"name": "mine", "namespace": "default"},
                                   "spec": {"clusterIP": "127.221.0.10", "ports": [{"port": 53}]}}])
    async with started_lab(config(tmp_path, A, dns="10", disabled=frozenset({"runtime"}))) as lab:
        assert cluster_ips(lab) == {"kubernetes": "127.221.0.1", "kube-dns": None}  # its address is taken
        # the kubernetes slice still follows this run's API port (all-or-nothing kept the last run's)
        es = lab.registry.store.snapshot().get("EndpointSlice", "default", "kubernetes")
        assert es["ports"][0]["port"] == int(lab.listening.api.rsplit(":", 1)[1])
    assert "kube-system/kube-dns" in caplog.text


async def test_a_state_dir_with_services_outside_the_range_is_refused(tmp_path):
    async with started_lab(config(tmp_path, A, disabled=frozenset({"runtime"}))) as lab:
        await lab.registry.apply([{"apiVersion": "v1", "kind": "Service",
                                   "metadata": {"name": "web", "namespace": "default"},
                                   "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}])
    with pytest.raises(LabError, match=r"Services default/web \(127\.221\.0\.\d+\) are outside --service-cidr "
                                       r"127\.222\.0\.0/24 .*another --state-dir, or --ephemeral"):
        async with started_lab(config(tmp_path, B, disabled=frozenset({"runtime"}))):
            pass


async def log(api: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(api + path) as resp:
        return resp.status, await resp.text()


async def test_pod_log_is_the_named_pods_not_a_deleted_namesakes(tmp_path):
    async with started_lab(config(None)) as lab:
        api = lab.listening.api
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
               "spec": {"restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "busybox", "command": ["echo", "first pod"]}]}}
        await lab.registry.create(pod)

        async def done():
            status, text = await log(api, "/api/v1/namespaces/default/pods/p/log")
            return text if status == 200 and "first pod" in text else None

        await wait_until(done, timeout=15, what="p's log")
        status, body = await log(api, "/api/v1/namespaces/default/pods/p/log?limitBytes=0")
        assert status == 400 and "limitBytes" in json.loads(body)["message"]
        await lab.registry.delete("Pod", "default", "p")
        await wait_until(lambda: lab.registry.store.snapshot().get("Pod", "default", "p") is None, timeout=15,
                         what="p gone")
        # a namesake the runtime does not run (a simulated pod: it came with a podIP)
        await lab.registry.create({**pod, "status": {"podIP": "127.223.0.200", "phase": "Running"}})
        status, body = await log(api, "/api/v1/namespaces/default/pods/p/log")
        assert status == 400 and "first pod" not in body, body
