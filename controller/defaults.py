"""Kubernetes defaulting (``SetDefaults_*`` in ``pkg/apis/*/v1/defaults.go``), as pure functions.

Why defaulting is its own step: validation and allocation run on the defaulted
object, and what ``kubectl get -o yaml`` shows must look like a real cluster's answer
(``protocol: TCP``, ``targetPort`` = ``port``, ``sessionAffinity: None``...).
Cluster-IP families and addresses are defaulted by ``allocators`` because they need
the cluster's configuration and the old object.

``default_object(obj)`` returns a defaulted deep copy; the input is never changed.
"""

from __future__ import annotations

from typing import Any, Callable

AFFINITY_TIMEOUT_DEFAULT = 10800  # kube-proxy / apiserver default for ClientIP affinity
GRACE_PERIOD_DEFAULT = 30


def clone(value: Any) -> Any:
    """A deep copy of a JSON-shaped value (several times faster than ``copy.deepcopy``)."""
    t = type(value)
    if t is dict:
        out = value.copy()  # C-speed copy of the scalars; only nested containers are replaced
        for k, v in value.items():
            if type(v) in _CONTAINERS:
                out[k] = clone(v)
        return out
    if t is list:
        return [(clone(v) if type(v) in _CONTAINERS else v) for v in value]
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clone(v) for v in value]
    return value


_CONTAINERS = (dict, list, tuple)


def _image_pull_policy(image: str) -> str:
    # A tag of ":latest" or none at all pulls Always (SetDefaults_Container).
    name = image.rsplit("/", 1)[-1]
    if "@" in name:
        return "IfNotPresent"
    if ":" not in name or name.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", GRACE_PERIOD_DEFAULT)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or ():
            if not isinstance(c, dict):
                continue
            for p in c.get("ports") or ():
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")
            if isinstance(c.get("image"), str):
                c.setdefault("imagePullPolicy", _image_pull_policy(c["image"]))
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")


def default_pod(pod: dict[str, Any]) -> None:
    spec = pod.setdefault("spec", {})
    if isinstance(spec, dict):
        default_pod_spec(spec)


def default_service(svc: dict[str, Any]) -> None:
    spec = svc.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    stype = spec.setdefault("type", "ClusterIP")
    for p in spec.get("ports") or ():
        if not isinstance(p, dict):
            continue
        p.setdefault("protocol", "TCP")
        if p.get("targetPort") in (None, 0, "") and p.get("port") is not None:
            p["targetPort"] = p["port"]
    spec.setdefault("sessionAffinity", "None")
    if spec["sessionAffinity"] == "ClientIP":
        cfg = spec.setdefault("sessionAffinityConfig", {})
        if isinstance(cfg, dict):
            client = cfg.setdefault("clientIP", {})
            if isinstance(client, dict):
                client.setdefault("timeoutSeconds", AFFINITY_TIMEOUT_DEFAULT)
    if stype != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if stype in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if stype == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    status = svc.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("loadBalancer", {})


def default_deployment(dep: dict[str, Any]) -> None:
    spec = dep.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            ru = strategy.setdefault("rollingUpdate", {})
            if isinstance(ru, dict):
                ru.setdefault("maxUnavailable", "25%")
                ru.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    tmpl = spec.get("template")
    if isinstance(tmpl, dict):
        tspec = tmpl.setdefault("spec", {})
        if isinstance(tspec, dict):
            default_pod_spec(tspec)
    dep.setdefault("status", {})


def default_namespace(ns: dict[str, Any]) -> None:
    meta = ns.setdefault("metadata", {})
    if isinstance(meta, dict) and meta.get("name"):
        labels = meta.get("labels")
        if not isinstance(labels, dict):
            labels = meta["labels"] = {}
        labels["kubernetes.io/metadata.name"] = meta["name"]
    spec = ns.setdefault("spec", {})
    if isinstance(spec, dict):
        spec.setdefault("finalizers", ["kubernetes"])
    status = ns.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("phase", "Active")


def default_network_policy(np: dict[str, Any]) -> None:
    """policyTypes: Ingress always; Egress iff egress rules are present (SetDefaults_NetworkPolicySpec)."""
    spec = np.get("spec")
    if spec is None:
        spec = np["spec"] = {}
    if not isinstance(spec, dict):
        return  # validation reports it
    if spec.get("podSelector") is None:
        spec["podSelector"] = {}
    if not spec.get("policyTypes"):
        types = ["Ingress"]
        if spec.get("egress"):
            types.append("Egress")
        spec["policyTypes"] = types
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or ():
            if isinstance(rule, dict):
                for p in rule.get("ports") or ():
                    if isinstance(p, dict) and p.get("protocol") is None:
                        p["protocol"] = "TCP"


def default_endpoint_slice(es: dict[str, Any]) -> None:
    for p in es.get("ports") or ():
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")


DEFAULTERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "Pod": default_pod,
    "Service": default_service,
    "Deployment": default_deployment,
    "Namespace": default_namespace,
    "NetworkPolicy": default_network_policy,
    "EndpointSlice": default_endpoint_slice,
}

API_VERSIONS = {
    "Namespace": "v1",
    "Node": "v1",
    "Pod": "v1",
    "Service": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "Deployment": "apps/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}


def default_object(obj: dict[str, Any]) -> dict[str, Any]:
    """A defaulted deep copy of ``obj``."""
    out = clone(obj)
    kind = out.get("kind")
    if kind in API_VERSIONS:
        out.setdefault("apiVersion", API_VERSIONS[kind])
    meta = out.setdefault("metadata", {})
    if isinstance(meta, dict) and kind not in ("Namespace", "Node"):
        if not meta.get("namespace"):
            meta["namespace"] = "default"
    fn = DEFAULTERS.get(kind)  # type: ignore[arg-type]
    if fn is not None:
        fn(out)
    return out
