"""An asyncio client for the registry API (the kubelab CLI and tests use it).

It speaks the Kubernetes REST paths of :mod:`kubelab.controller.discovery`'s kind table
(no discovery round trips) plus kubelab's atomic batch apply. Errors come back as
:class:`ApiError` carrying the server's ``metav1.Status``.
"""

from __future__ import annotations

import json
import os
from typing import Any, AsyncIterator
from urllib.parse import quote

import aiohttp

from kubelab.controller import discovery
from kubelab.controller.discovery import KindInfo

DEFAULT_SERVER = "http://127.0.0.1:6443"
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def default_server() -> str:
    return os.environ.get("KUBELAB_SERVER") or DEFAULT_SERVER


class ApiError(Exception):
    """A non-2xx answer; ``status`` is the metav1.Status body (synthesised if there was none)."""

    def __init__(self, code: int, status: dict) -> None:
        self.code = code
        self.status = status
        self.reason = status.get("reason") or ""
        self.message = status.get("message") or f"HTTP {code}"
        super().__init__(self.message)

    @property
    def causes(self) -> list[dict]:
        return (self.status.get("details") or {}).get("causes") or []


def _info(kind: str) -> KindInfo:
    info = discovery.kind_info(kind) or discovery.resolve(kind)
    if info is None:
        raise ValueError(f'the server doesn\'t have a resource type "{kind}"')
    return info


class ApiClient:
    """``async with ApiClient(server, token) as c: await c.list("Pod")``."""

    def __init__(self, server: str | None = None, token: str | None = None, *, timeout: float = 300.0) -> None:
        self.server = (server or default_server()).rstrip("/")
        self.token = token
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
                read_bufsize=1 << 21,  # a watch event is one line; big EndpointSlices are long lines
            )
        return self._session

    async def request(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
                      headers: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        hdrs = {"Accept": "application/json"}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with self._http().request(method, self.server + path, data=data, params=params, headers=hdrs,
                                        timeout=timeout) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise _error(resp.status, raw)
            return json.loads(raw) if raw else None

    # -- typed helpers --

    async def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
                   field_selector: str | None = None) -> list[dict]:
        return (await self.list_raw(kind, namespace, label_selector, field_selector))["items"]

    async def list_raw(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
                       field_selector: str | None = None, *, table: bool = False) -> dict:
        info = _info(kind)
        params = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        return await self.request("GET", info.path(namespace if info.namespaced else None), params=params,
                                  headers={"Accept": TABLE_ACCEPT} if table else None)

    async def get(self, kind: str, name: str, namespace: str | None = None, *, table: bool = False) -> dict:
        info = _info(kind)
        return await self.request("GET", info.path(_ns(info, namespace), quote(name)),
                                  headers={"Accept": TABLE_ACCEPT} if table else None)

    async def create(self, obj: dict) -> dict:
        info = _info(obj["kind"])
        ns = (obj.get("metadata") or {}).get("namespace")
        return await self.request("POST", info.path(_ns(info, ns)), body=obj)

    async def update(self, obj: dict) -> dict:
        info = _info(obj["kind"])
        meta = obj.get("metadata") or {}
        return await self.request("PUT", info.path(_ns(info, meta.get("namespace")), quote(meta["name"])), body=obj)

    async def patch(self, kind: str, name: str, patch: Any, namespace: str | None = None, *,
                    patch_type: str = "application/merge-patch+json", subresource: str | None = None) -> dict:
        info = _info(kind)
        return await self.request("PATCH", info.path(_ns(info, namespace), quote(name), subresource), body=patch,
                                  headers={"Content-Type": patch_type})

    async def apply(self, objs: list[dict], *, dry_run: bool = False, brief: bool = False) -> list[tuple[str, dict]]:
        """Atomic create-or-update of ``objs``: all stored, or none (the error says why).

        ``brief=True`` returns only each object's apiVersion, kind and identity metadata.
        """
        params = {}
        if dry_run:
            params["dryRun"] = "All"
        if brief:
            params["brief"] = "true"
        result = await self.request("POST", "/kubelab/v1/apply", body={"items": objs}, params=params or None)
        return [(item["action"], item["object"]) for item in result["items"]]

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> dict:
        info = _info(kind)
        return await self.request("DELETE", info.path(_ns(info, namespace), quote(name)))

    async def watch(self, kind: str, namespace: str | None = None, resource_version: str | int | None = None,
                    label_selector: str | None = None, timeout_seconds: int | None = None) -> AsyncIterator[dict]:
        """Watch events as dicts (``type``, ``object``); ends when the server ends the stream.

        An ``ERROR`` event (410 Expired: resume point too old) is raised as :class:`ApiError`.
        """
        info = _info(kind)
        params: dict[str, str] = {"watch": "true"}
        if resource_version is not None:
            params["resourceVersion"] = str(resource_version)
        if label_selector:
            params["labelSelector"] = label_selector
        if timeout_seconds is not None:
            params["timeoutSeconds"] = str(timeout_seconds)
        async with self._http().get(self.server + info.path(namespace if info.namespaced else None), params=params,
                                    headers={"Accept": "application/json"}) as resp:
            if resp.status >= 400:
                raise _error(resp.status, await resp.read())
            async for line in resp.content:
                if not line.strip():
                    continue
                ev = json.loads(line)
                if ev.get("type") == "ERROR":
                    status = ev.get("object") or {}
                    raise ApiError(int(status.get("code") or 500), status)
                yield ev

    async def version(self) -> dict:
        return await self.request("GET", "/version")


def _ns(info: KindInfo, namespace: str | None) -> str | None:
    return (namespace or "default") if info.namespaced else None


def _error(code: int, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("kind") != "Status":
        text = raw.decode(errors="replace").strip()
        body = {"kind": "Status", "status": "Failure", "code": code,
                "reason": {401: "Unauthorized", 404: "NotFound", 500: "InternalError"}.get(code, ""),
                "message": text or f"HTTP {code}"}
    return ApiError(code, body)
