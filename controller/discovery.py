"""The kinds the registry serves, and the discovery documents kubectl reads about them.

One table (:data:`KINDS`) drives the REST paths, the error messages (``pods "x" not
found`` names the *resource*), the CLI's aliases and discovery, so they cannot drift.
Discovery follows what kubectl 1.32 asks for (aggregated v2 when the Accept header
names it, the legacy documents otherwise); see ``shared/reference/kubectl-api.md`` §3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.4",
    "gitCommit": "kubelab",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SUB_VERBS = ["get", "patch", "update"]


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    singular: str
    group: str  # "" for the core group
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ("status",)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        """``/api/v1`` or ``/apis/<group>/<version>``."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def resource(self) -> str:
        """``pods``, ``deployments.apps``: how kubectl names the resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def type_name(self) -> str:
        """``pod``, ``deployment.apps``: the prefix of ``kubectl apply`` output lines."""
        return f"{self.singular}.{self.group}" if self.group else self.singular

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        p = self.prefix
        if self.namespaced and namespace:
            p += f"/namespaces/{namespace}"
        p += f"/{self.plural}"
        if name:
            p += f"/{name}"
            if sub:
                p += f"/{sub}"
        return p


KINDS: tuple[KindInfo, ...] = (
    KindInfo("Namespace", "namespaces", "namespace", "", "v1", False, ("ns",)),
    KindInfo("Node", "nodes", "node", "", "v1", False, ("no",)),
    KindInfo("Pod", "pods", "pod", "", "v1", True, ("po",), ("all",)),
    KindInfo("Service", "services", "service", "", "v1", True, ("svc",), ("all",)),
    KindInfo("EndpointSlice", "endpointslices", "endpointslice", "discovery.k8s.io", "v1", True, (), (), ()),
    KindInfo("Deployment", "deployments", "deployment", "apps", "v1", True, ("deploy",), ("all",), ("scale", "status")),
    KindInfo("NetworkPolicy", "networkpolicies", "networkpolicy", "networking.k8s.io", "v1", True, ("netpol",), (), ()),
)

BY_KIND: dict[str, KindInfo] = {k.kind: k for k in KINDS}
BY_GV_PLURAL: dict[tuple[str, str, str], KindInfo] = {(k.group, k.version, k.plural): k for k in KINDS}
GROUP_VERSIONS: tuple[tuple[str, str], ...] = tuple(dict.fromkeys((k.group, k.version) for k in KINDS))

# Extra names the kubelab CLI accepts (kubectl's aliases plus the familiar `ep`).
_EXTRA_ALIASES = {"ep": "EndpointSlice", "endpoints": "EndpointSlice", "eps": "EndpointSlice"}


def kind_info(kind: str) -> KindInfo | None:
    return BY_KIND.get(kind)


def is_namespaced(kind: str) -> bool:
    info = BY_KIND.get(kind)
    return True if info is None else info.namespaced


def resolve(name: str) -> KindInfo | None:
    """``po``, ``pods``, ``Pod``, ``deployment.apps``, ``svc`` ... -> KindInfo (case-insensitive)."""
    n = name.strip().lower()
    if n in _EXTRA_ALIASES:
        return BY_KIND[_EXTRA_ALIASES[n]]
    for k in KINDS:
        names = {k.kind.lower(), k.plural, k.singular, *k.short_names}
        if n in names:
            return k
        if k.group and n in {f"{k.plural}.{k.group}", f"{k.singular}.{k.group}", f"{k.kind.lower()}.{k.group}"}:
            return k
    return None


# -- discovery documents ------------------------------------------------------------------


def wants_aggregated(accept: str) -> bool:
    """kubectl asks for v2 aggregated discovery; older clients only know v2beta1 -> legacy."""
    for part in accept.split(","):
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip() for p in part.split(";")[1:] if "=" in p}
        if params.get("g") == "apidiscovery.k8s.io" and params.get("v") == "v2" and params.get("as") == "APIGroupDiscoveryList":
            return True
    return False


AGGREGATED_CONTENT_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def _aggregated_resource(k: KindInfo) -> dict[str, Any]:
    r: dict[str, Any] = {
        "resource": k.plural,
        "singularResource": k.singular,
        "scope": "Namespaced" if k.namespaced else "Cluster",
        "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
        "verbs": VERBS,
    }
    if k.short_names:
        r["shortNames"] = list(k.short_names)
    if k.categories:
        r["categories"] = list(k.categories)
    subs = []
    for s in k.subresources:
        if s == "scale":
            subs.append({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": SUB_VERBS})
        else:
            subs.append({"subresource": s, "responseKind": {"group": k.group, "version": k.version, "kind": k.kind}, "verbs": SUB_VERBS})
    if subs:
        r["subresources"] = subs
    return r


def aggregated(core: bool) -> dict[str, Any]:
    """``GET /api`` (core=True) or ``GET /apis`` as an APIGroupDiscoveryList."""
    items = []
    for group, version in GROUP_VERSIONS:
        if (group == "") != core:
            continue
        resources = [_aggregated_resource(k) for k in KINDS if (k.group, k.version) == (group, version)]
        items.append({
            "metadata": {"name": group},
            "versions": [{"version": version, "freshness": "Current", "resources": resources}],
        })
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def api_group_list() -> dict[str, Any]:
    groups = []
    for group, version in GROUP_VERSIONS:
        if not group:
            continue
        gv = {"groupVersion": f"{group}/{version}", "version": version}
        groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    kinds = [k for k in KINDS if (k.group, k.version) == (group, version)]
    if not kinds:
        return None
    resources: list[dict[str, Any]] = []
    for k in kinds:
        r: dict[str, Any] = {
            "name": k.plural, "singularName": k.singular, "namespaced": k.namespaced,
            "kind": k.kind, "verbs": VERBS,
        }
        if k.short_names:
            r["shortNames"] = list(k.short_names)
        if k.categories:
            r["categories"] = list(k.categories)
        resources.append(r)
        for s in k.subresources:
            sr: dict[str, Any] = {"name": f"{k.plural}/{s}", "singularName": "", "namespaced": k.namespaced,
                                  "kind": k.kind, "verbs": SUB_VERBS}
            if s == "scale":
                sr.update(group="autoscaling", version="v1", kind="Scale")
            resources.append(sr)
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


OPENAPI_HASH = "kubelab-1"


def openapi_root() -> dict[str, Any]:
    paths = {}
    for group, version in GROUP_VERSIONS:
        key = f"apis/{group}/{version}" if group else f"api/{version}"
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={OPENAPI_HASH}"}
    return {"paths": paths}


def openapi_group(group: str, version: str) -> dict[str, Any] | None:
    """Just enough OpenAPI v3 for kubectl to see that PATCH takes ``fieldValidation``.

    kubectl then validates server-side (sends ``fieldValidation=Strict``) instead of
    downloading full schemas. Deliberately no strategic-merge-patch request body: kubectl
    would then try to build apply patches from schemas we do not publish.
    """
    kinds = [k for k in KINDS if (k.group, k.version) == (group, version)]
    if not kinds:
        return None
    paths = {}
    param = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]
    for k in kinds:
        item = k.prefix + (f"/namespaces/{{namespace}}" if k.namespaced else "") + f"/{k.plural}/{{name}}"
        paths[item] = {
            "patch": {
                "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
                "parameters": param,
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "components": {"schemas": {}},
        "paths": paths,
    }
