"""The registry's HTTP API: Kubernetes REST paths and object shapes, served by aiohttp.

What kubectl 1.32 needs is written down in ``shared/reference/kubectl-api.md``; this
module follows it: discovery (aggregated and legacy), a minimal OpenAPI v3 so ``kubectl
apply --validate`` works, list/get/create/update/patch/delete, watch as NDJSON resumable
from a resourceVersion (410 Expired when too old), Table output for ``kubectl get``, the
Deployment ``/scale`` and ``/status`` subresources, and ``metav1.Status`` errors with the
exact messages kubectl turns into its familiar output.

Writes all go through :class:`~kubelab.controller.registry.Registry`; reads use one store
snapshot per request. ``POST /kubelab/v1/apply`` is the one non-Kubernetes endpoint: an
atomic batch apply (the whole file validated before anything is stored), which kubectl's
per-object apply cannot give.

Authentication is a bearer token when one is configured (required for non-loopback
listen addresses: see :func:`check_listen`); ``/healthz``, ``/livez``, ``/readyz`` and
``/version`` stay public, as in Kubernetes.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
from collections import OrderedDict
from typing import Any, Awaitable, Callable

import yaml
from aiohttp import web

from kubelab.controller import api_tables, discovery
from kubelab.controller.api_patch import PatchError, json_merge_patch, json_patch, strategic_merge_patch
from kubelab.controller.api_selectors import SelectorError, parse_field_selector, parse_label_selector
from kubelab.controller.discovery import KindInfo
from kubelab.controller.registry import STATUS_OP, BadRequest, Forbidden, Registry
from kubelab.controller.store import AlreadyExists, Conflict, Event, Gone, NotFound, StoreError

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], "tuple[bool, str] | Awaitable[tuple[bool, str]]"]  # sync or async
# (namespace, pod, container, *, previous, tail_lines, limit_bytes, uid) -> bytes, or None
# when there is no log; the Lab passes the pod runtime's reader (the API never imports it)
LogReader = Callable[..., "bytes | None"]
READY_CHECK: web.AppKey[ReadyCheck] = web.AppKey("kubelab_ready_check")
REGISTRY: web.AppKey[Registry] = web.AppKey("kubelab_registry")
TOKEN: web.AppKey[str | None] = web.AppKey("kubelab_token")
LOG_READER: web.AppKey[LogReader | None] = web.AppKey("kubelab_log_reader")
_WATCHERS: web.AppKey[set] = web.AppKey("kubelab_watchers")
_ENCODED: web.AppKey[OrderedDict] = web.AppKey("kubelab_encoded")

PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})
JSON = "application/json"
WATCH_POLL = 5.0  # how often an idle watch checks that its client is still there
ENCODE_CACHE = 4096


class ListenError(ValueError):
    pass


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, token: str | None) -> None:
    """The rule from the brief: off loopback, the API refuses to start without a token."""
    if not is_loopback(host) and not token:
        raise ListenError(f"listening on {host} requires a bearer token")


# -- Status bodies ---------------------------------------------------------------------------


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def status_response(code: int, reason: str, message: str, details: dict | None = None) -> web.Response:
    return _json(status_body(code, reason, message, details), status=code)


def _json(obj: Any, status: int = 200, content_type: str = JSON) -> web.Response:
    return web.Response(body=json.dumps(obj, separators=(",", ":")).encode(), status=status,
                        content_type=content_type.split(";")[0] if ";" not in content_type else None,
                        headers=None if ";" not in content_type else {"Content-Type": content_type})


def _details(exc: StoreError) -> tuple[str, dict]:
    info = discovery.kind_info(exc.kind)
    resource = info.resource if info else (exc.kind.lower() + "s" if exc.kind else "")
    details: dict[str, Any] = {"name": exc.name, "kind": info.plural if info else resource}
    if info and info.group:
        details["group"] = info.group
    return resource, details


def _cause_message(cause: Any) -> str:
    text = cause.message() if callable(getattr(cause, "message", None)) else str(getattr(cause, "message", cause))
    prefix = f"{cause.field}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def is_invalid(exc: BaseException) -> bool:
    return all(hasattr(exc, a) for a in ("causes", "kind", "name"))


def invalid_body(exc: Any) -> dict:
    causes = list(exc.causes or [])
    message = str(exc)
    if not message or message == repr(causes):
        parts = [f"{c.field}: {_cause_message(c)}" for c in causes]
        message = f'{exc.kind} "{exc.name}" is invalid: ' + (parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]")
    return status_body(422, "Invalid", message, {
        "name": exc.name, "kind": exc.kind,
        "causes": [{"reason": getattr(c, "type", "FieldValueInvalid"), "message": _cause_message(c), "field": c.field}
                   for c in causes],
    })


def error_body(exc: BaseException) -> dict | None:
    """metav1.Status for an exception the API knows how to explain, else None."""
    if isinstance(exc, NotFound):
        resource, details = _details(exc)
        return status_body(404, "NotFound", f'{resource} "{exc.name}" not found', details)
    if isinstance(exc, AlreadyExists):
        resource, details = _details(exc)
        return status_body(409, "AlreadyExists", f'{resource} "{exc.name}" already exists', details)
    if isinstance(exc, Conflict):
        resource, details = _details(exc)
        return status_body(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{exc.name}": the object '
                           "has been modified; please apply your changes to the latest version and try again", details)
    if isinstance(exc, Gone):
        return status_body(410, "Expired", str(exc))
    if isinstance(exc, Forbidden):
        return status_body(403, "Forbidden", str(exc))
    if isinstance(exc, (BadRequest, SelectorError)):
        return status_body(400, "BadRequest", str(exc))
    if isinstance(exc, PatchError):
        return status_body(422, "Invalid", str(exc))
    if is_invalid(exc):
        return invalid_body(exc)
    return None


# -- middlewares -------------------------------------------------------------------------------


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    token = request.app[TOKEN]
    if token and request.path not in PUBLIC_PATHS:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return status_response(401, "Unauthorized", "Unauthorized")
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            return status_response(404, "NotFound", "the server could not find the requested resource")
        if exc.status == 405:
            return status_response(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource")
        raise
    except Exception as exc:
        body = error_body(exc)
        if body is not None:
            return _json(body, status=body["code"])
        if isinstance(exc, StoreError):
            return status_response(500, "InternalError", str(exc))
        log.exception("%s %s failed", request.method, request.path)
        return status_response(500, "InternalError", f"an error on the server ({type(exc).__name__}: {exc}) "
                               "has prevented the request from succeeding")


# -- request parsing --------------------------------------------------------------------------


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    ctype = request.headers.get("Content-Type", "")
    if not raw:
        raise BadRequest(message="the request body is empty")
    try:
        if "yaml" in ctype:
            return yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise BadRequest(message=f"the request body is not valid JSON: {exc}") from None


def _wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "as=Table" in accept and "g=meta.k8s.io" in accept


def _dry_run(request: web.Request) -> bool:
    return "All" in request.query.getall("dryRun", [])


def _truthy(v: str | None) -> bool:
    return v is not None and v.lower() in ("1", "true", "yes")


class _Target:
    __slots__ = ("info", "namespace", "name", "sub")

    def __init__(self, info: KindInfo, namespace: str | None, name: str | None, sub: str | None) -> None:
        self.info, self.namespace, self.name, self.sub = info, namespace, name, sub


def _target(request: web.Request) -> _Target:
    group = request.match_info.get("group", "")
    version = request.match_info["version"]
    segs = [s for s in request.match_info["tail"].split("/") if s]
    ns = None
    if len(segs) >= 3 and segs[0] == "namespaces" and (group, version, segs[2]) in discovery.BY_GV_PLURAL:
        ns, segs = segs[1], segs[2:]
    info = discovery.BY_GV_PLURAL.get((group, version, segs[0])) if segs else None
    if info is None or len(segs) > 3:
        raise web.HTTPNotFound()
    name = segs[1] if len(segs) > 1 else None
    sub = segs[2] if len(segs) > 2 else None
    if sub is not None and sub not in info.subresources:
        raise web.HTTPNotFound()
    if not info.namespaced and ns is not None:
        raise web.HTTPNotFound()
    if info.namespaced and name is not None and ns is None:
        raise web.HTTPNotFound()
    return _Target(info, ns, name, sub)


def _filter(request: web.Request, t: _Target) -> Callable[[dict], bool]:
    label = parse_label_selector(request.query.get("labelSelector"))
    field = parse_field_selector(request.query.get("fieldSelector"))
    kind, ns = t.info.kind, t.namespace

    def match(obj: dict) -> bool:
        if obj.get("kind") != kind:
            return False
        if ns is not None and (obj.get("metadata") or {}).get("namespace") != ns:
            return False
        return (label is None or label(obj)) and (field is None or field(obj))

    return match


def _prepare_body(obj: Any, t: _Target, name: str | None = None) -> dict:
    if not isinstance(obj, dict):
        raise BadRequest(t.info.kind, message="the request body must be a JSON object")
    obj = dict(obj)
    obj.setdefault("kind", t.info.kind)
    obj.setdefault("apiVersion", t.info.api_version)
    if obj["kind"] != t.info.kind:
        raise BadRequest(t.info.kind, message=f"the kind of the object ({obj['kind']}) does not match the URL ({t.info.kind})")
    meta = dict(obj.get("metadata") or {})
    if t.info.namespaced:
        if meta.get("namespace") and t.namespace and meta["namespace"] != t.namespace:
            raise BadRequest(t.info.kind, message="the namespace of the provided object does not match the namespace sent on the request")
        if t.namespace:
            meta["namespace"] = t.namespace
    if name is not None:
        if meta.get("name") and meta["name"] != name:
            raise BadRequest(t.info.kind, message="the name of the object (%s) does not match the name on the URL (%s)" % (meta["name"], name))
        meta["name"] = name
    obj["metadata"] = meta
    return obj


_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields"})
_TOP_FIELDS = {"EndpointSlice": frozenset({"addressType", "endpoints", "ports"})}
_COMMON_TOP = frozenset({"apiVersion", "kind", "metadata"})


def unknown_fields(obj: dict) -> list[str]:
    """Top-level and metadata fields the kind does not have (``fieldValidation=Strict``)."""
    allowed = _COMMON_TOP | _TOP_FIELDS.get(obj.get("kind", ""), frozenset({"spec", "status"}))
    bad = [k for k in obj if k not in allowed]
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        bad += [f"metadata.{k}" for k in meta if k not in _META_FIELDS]
    return bad


def _field_validation(request: web.Request, t: _Target, obj: dict) -> str | None:
    """Strict: unknown fields are a 400, as kubectl expects; Warn: a Warning header text."""
    mode = request.query.get("fieldValidation", "")
    if mode not in ("Strict", "Warn"):
        return None
    bad = unknown_fields(obj)
    if not bad:
        return None
    listed = ", ".join(f'unknown field "{b}"' for b in bad)
    if mode == "Strict":
        raise BadRequest(t.info.kind, message=f'{t.info.kind} in version "{t.info.version}" cannot be handled as a '
                         f"{t.info.kind}: strict decoding error: {listed}")
    return listed


# -- handlers ---------------------------------------------------------------------------------


def _registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


async def _resource(request: web.Request) -> web.StreamResponse:
    t = _target(request)
    method = request.method
    if t.name is None:
        if method == "GET":
            if _truthy(request.query.get("watch")):
                return await _watch(request, t)
            return _list(request, t)
        if method == "POST":
            return await _create(request, t)
        if method == "DELETE":
            return await _delete_collection(request, t)
        raise web.HTTPMethodNotAllowed(method, ["GET", "POST", "DELETE"])
    if t.sub == "scale":
        return await _scale(request, t)
    if method == "GET":
        return _get(request, t)
    if method == "PUT":
        return await _replace(request, t)
    if method == "PATCH":
        return await _patch(request, t)
    if method == "DELETE" and t.sub is None:
        return await _delete(request, t)
    raise web.HTTPMethodNotAllowed(method, ["GET", "PUT", "PATCH", "DELETE"])


def _object_response(request: web.Request, t: _Target, obj: dict, status: int = 200) -> web.Response:
    if _wants_table(request):
        rv = (obj.get("metadata") or {}).get("resourceVersion", "")
        return _json(api_tables.table(t.info.kind, [obj], rv, include_object=request.query.get("includeObject") == "Object"), status)
    return _json(obj, status)


def _list(request: web.Request, t: _Target) -> web.Response:
    snap = _registry(request).store.snapshot()
    items = snap.list(t.info.kind, t.namespace)
    if request.query.get("labelSelector") or request.query.get("fieldSelector"):
        match = _filter(request, t)
        items = [o for o in items if match(o)]
    rv = str(snap.resource_version)
    if _wants_table(request):
        return _json(api_tables.table(t.info.kind, items, rv, include_object=request.query.get("includeObject") == "Object"))
    return _json({"kind": f"{t.info.kind}List", "apiVersion": t.info.api_version,
                  "metadata": {"resourceVersion": rv}, "items": items})


def _get(request: web.Request, t: _Target) -> web.Response:
    obj = _registry(request).store.snapshot().get(t.info.kind, t.namespace or "", t.name or "")
    if obj is None:
        raise NotFound(t.info.kind, t.namespace or "", t.name or "")
    return _object_response(request, t, obj)


async def _create(request: web.Request, t: _Target) -> web.Response:
    if request.headers.get("Content-Type", "").startswith("application/vnd.kubernetes.protobuf"):
        from kubelab.controller.api_protobuf import ProtobufError, decode_object

        try:  # kubectl create namespace|deployment|service sends protobuf (kubectl-api.md §7)
            raw: Any = decode_object(await request.read())
        except (ProtobufError, UnicodeDecodeError, IndexError) as exc:
            return status_response(415, "UnsupportedMediaType", str(exc))
    else:
        raw = await _body(request)
    obj = _prepare_body(raw, t)
    warning = _field_validation(request, t, obj)
    stored = await _registry(request).create(obj, dry_run=_dry_run(request))
    return _warn(_object_response(request, t, stored, 201), warning)


def _warn(resp: web.Response, warning: str | None) -> web.Response:
    if warning:
        resp.headers["Warning"] = f'299 - "{warning}"'
    return resp


async def _replace(request: web.Request, t: _Target) -> web.Response:
    obj = _prepare_body(await _body(request), t, t.name)
    warning = _field_validation(request, t, obj)
    reg = _registry(request)
    if t.sub == "status":
        stored = await reg.update_status(obj, dry_run=_dry_run(request))
    else:
        stored = await reg.update(obj, dry_run=_dry_run(request))
    return _warn(_object_response(request, t, stored), warning)


def _patcher(request: web.Request, body: Any) -> Callable[[dict], dict]:
    ctype = request.headers.get("Content-Type", "application/merge-patch+json").split(";")[0].strip()
    if ctype == "application/json-patch+json":
        return lambda old: json_patch(old, body)
    if ctype == "application/merge-patch+json":
        if not isinstance(body, dict):
            raise PatchError("a merge patch must be a JSON object")
        return lambda old: json_merge_patch(old, body)
    if ctype in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
        return lambda old: strategic_merge_patch(old, body)
    raise _UnsupportedPatch(ctype)


class _UnsupportedPatch(Exception):
    pass


async def _patch(request: web.Request, t: _Target) -> web.Response:
    body = await _body(request)
    try:
        fn = _patcher(request, body)
    except _UnsupportedPatch as exc:
        return status_response(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                               f"accepted media types include: application/json-patch+json, application/merge-patch+json, "
                               f"application/apply-patch+yaml, application/strategic-merge-patch+json ({exc})")
    reg = _registry(request)
    ns, name = t.namespace or "", t.name or ""
    dry = _dry_run(request)
    is_apply = request.headers.get("Content-Type", "").startswith("application/apply-patch")
    if is_apply and reg.store.snapshot().get(t.info.kind, ns, name) is None:
        obj = _prepare_body(body, t, name)
        warning = _field_validation(request, t, obj)
        return _warn(_object_response(request, t, await reg.create(obj, dry_run=dry), 201), warning)
    warnings: list[str] = []

    def apply(old: dict) -> dict:
        new = fn(old)
        if not isinstance(new, dict):
            raise PatchError("the patch did not produce an object")
        new = _prepare_body(new, t, name)
        w = _field_validation(request, t, new)
        if w:
            warnings.append(w)
        return new

    op = STATUS_OP if t.sub == "status" else "update"
    stored = await reg.mutate(t.info.kind, ns, name, apply, op=op, dry_run=dry)
    return _warn(_object_response(request, t, stored), warnings[0] if warnings else None)


async def _delete(request: web.Request, t: _Target) -> web.Response:
    opts: dict = {}
    if request.can_read_body:
        raw = await request.read()
        if raw.strip():
            try:
                opts = json.loads(raw) or {}
            except ValueError:
                raise BadRequest(message="DeleteOptions must be JSON") from None
    pre = (opts.get("preconditions") or {}).get("resourceVersion")
    grace = opts.get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
    force = grace is not None and int(grace) == 0
    stored = await _registry(request).delete(t.info.kind, t.namespace or "", t.name or "", expect_rv=pre,
                                             force=force, dry_run=_dry_run(request))
    return _object_response(request, t, stored)


async def _delete_collection(request: web.Request, t: _Target) -> web.Response:
    reg = _registry(request)
    match = _filter(request, t)
    deleted = []
    for obj in reg.store.snapshot().list(t.info.kind, t.namespace):
        if match(obj):
            meta = obj["metadata"]
            try:
                deleted.append(await reg.delete(t.info.kind, meta.get("namespace", ""), meta["name"], dry_run=_dry_run(request)))
            except NotFound:
                continue
    return _json({"kind": f"{t.info.kind}List", "apiVersion": t.info.api_version,
                  "metadata": {"resourceVersion": str(reg.store.resource_version)}, "items": deleted})


def _scale_of(obj: dict) -> dict:
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    from kubelab.controller.api_selectors import label_selector_string

    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta},
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                   "selector": label_selector_string(spec.get("selector"))},
    }


async def _scale(request: web.Request, t: _Target) -> web.Response:
    reg = _registry(request)
    ns, name = t.namespace or "", t.name or ""
    if request.method == "GET":
        obj = reg.store.snapshot().get(t.info.kind, ns, name)
        if obj is None:
            raise NotFound(t.info.kind, ns, name)
        return _json(_scale_of(obj))
    if request.method not in ("PUT", "PATCH"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "PUT", "PATCH"])
    body = await _body(request)
    fn = None if request.method == "PUT" else _patcher(request, body)

    def rescale(old: dict) -> dict:
        scale = body if fn is None else fn(_scale_of(old))
        if not isinstance(scale, dict):
            raise BadRequest(t.info.kind, ns, name, "the body must be an autoscaling/v1 Scale")
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise BadRequest(t.info.kind, ns, name, "spec.replicas must be an integer")
        meta = dict(old["metadata"])
        want_rv = (scale.get("metadata") or {}).get("resourceVersion")
        if want_rv:
            meta["resourceVersion"] = want_rv
        return {**old, "metadata": meta, "spec": {**(old.get("spec") or {}), "replicas": replicas}}

    stored = await reg.mutate(t.info.kind, ns, name, rescale, dry_run=_dry_run(request))
    return _json(_scale_of(stored))


# -- watch ------------------------------------------------------------------------------------


def _encode_event(app: web.Application, ev: Event) -> bytes:
    cache = app[_ENCODED]
    data = cache.get(ev.resource_version)
    if data is None:
        data = json.dumps({"type": ev.type, "object": ev.object}, separators=(",", ":")).encode() + b"\n"
        cache[ev.resource_version] = data
        if len(cache) > ENCODE_CACHE:
            cache.popitem(last=False)
    return data


async def _watch(request: web.Request, t: _Target) -> web.StreamResponse:
    reg = _registry(request)
    store = reg.store
    match = _filter(request, t)
    table = _wants_table(request)
    timeout = request.query.get("timeoutSeconds")
    rv_param = request.query.get("resourceVersion") or "0"
    try:
        since = int(rv_param)
    except ValueError:
        raise BadRequest(message=f"invalid resourceVersion {rv_param!r}") from None
    resp = web.StreamResponse(headers={"Content-Type": JSON, "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    first_table = [True]

    def encode(ev_type: str, obj: dict, ev: Event | None) -> bytes:
        if table:
            tbl = api_tables.table(t.info.kind, [obj], obj["metadata"].get("resourceVersion", ""),
                                   include_object=request.query.get("includeObject") == "Object",
                                   with_columns=first_table[0])
            first_table[0] = False
            return json.dumps({"type": ev_type, "object": tbl}, separators=(",", ":")).encode() + b"\n"
        if ev is not None:
            return _encode_event(request.app, ev)
        return json.dumps({"type": ev_type, "object": obj}, separators=(",", ":")).encode() + b"\n"

    async def pump() -> None:
        nonlocal since
        if since == 0:  # "any version": current state as synthetic ADDED events, then live
            snap = store.snapshot()
            for obj in snap.list(t.info.kind, t.namespace):
                if match(obj):
                    await resp.write(encode("ADDED", obj, None))
            since = snap.resource_version
        selective = bool(request.query.get("labelSelector") or request.query.get("fieldSelector"))
        try:
            async for ev in store.watch(since):
                now = match(ev.object)
                if selective and ev.type == "MODIFIED" and ev.previous is not None:
                    before = match(ev.previous)
                    if now and not before:  # moved into the selection
                        await resp.write(encode("ADDED", ev.object, None))
                    elif before and not now:  # moved out of it: gone, for this watcher
                        await resp.write(encode("DELETED", ev.object, None))
                    elif now:
                        await resp.write(encode(ev.type, ev.object, ev))
                elif now:
                    await resp.write(encode(ev.type, ev.object, ev))
        except Gone as exc:
            err = status_body(410, "Expired", str(exc))
            await resp.write(json.dumps({"type": "ERROR", "object": err}).encode() + b"\n")

    watchers = request.app[_WATCHERS]
    task = asyncio.ensure_future(pump())
    watchers.add(task)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(timeout) if timeout else None
    try:
        while not task.done():
            wait = WATCH_POLL if deadline is None else max(0.0, min(WATCH_POLL, deadline - loop.time()))
            await asyncio.wait({task}, timeout=wait)
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            if deadline is not None and loop.time() >= deadline:
                break
        if task.done() and not task.cancelled():
            exc = task.exception()
            if exc is not None and not isinstance(exc, (ConnectionError, asyncio.CancelledError)):
                log.error("watch %s failed", request.rel_url, exc_info=exc)
    finally:
        watchers.discard(task)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    try:
        await resp.write_eof()
    except (ConnectionError, RuntimeError):  # the client went away first
        pass
    return resp


# -- batch apply, discovery, health -----------------------------------------------------------


async def _apply(request: web.Request) -> web.Response:
    body = await _body(request)
    items = body.get("items") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise BadRequest(message='expected {"items": [...]}')
    if request.query.get("fieldValidation", "Strict") == "Strict":  # typos are refused before anything is stored
        for obj in items:
            info = discovery.kind_info(obj.get("kind", "")) if isinstance(obj, dict) else None
            bad = unknown_fields(obj) if info else []
            if bad:
                name = (obj.get("metadata") or {}).get("name", "")
                listed = ", ".join(f'unknown field "{b}"' for b in bad)
                raise BadRequest(info.kind, message=f'{info.kind} "{name}" in version "{info.version}" cannot be '
                                 f"handled as a {info.kind}: strict decoding error: {listed}")
    results = await _registry(request).apply(items, dry_run=_dry_run(request))
    if _truthy(request.query.get("brief")):  # identity only: 60,000 objects need not travel back
        results = [(action, _brief(obj)) for action, obj in results]
    return _json({"kind": "ApplyResult", "apiVersion": "kubelab.dev/v1",
                  "items": [{"action": action, "object": obj} for action, obj in results]})


def _brief(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta}}


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"{name}: invalid value {raw!r}: must be an integer") from None
    if value < 0:
        raise _bad_request(f"{name}: invalid value {value}: must be greater than or equal to 0")
    return value


def _bad_request(message: str) -> web.HTTPException:
    body = json.dumps(status_body(400, "BadRequest", message))
    return web.HTTPBadRequest(text=body, content_type=JSON)


def log_container(pod: dict, requested: str | None) -> tuple[str | None, str | None]:
    """(container, None) for ``pods/log?container=requested``, or (None, the apiserver's
    error message): without a name the pod must have exactly one container (pure)."""
    name = (pod.get("metadata") or {}).get("name")
    containers = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]
    if not requested:
        if len(containers) == 1:
            return containers[0], None
        return None, f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
    if requested not in containers:
        return None, f"container {requested} is not valid for pod {name}"
    return requested, None


async def _pod_log(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/namespaces/{ns}/pods/{name}/log``: ``kubectl logs``.

    ``container``, ``tailLines``, ``previous`` and ``limitBytes`` as in Kubernetes; the
    text is the runtime's log file as it is now (``follow`` returns it too and ends: the
    lab does not stream logs; ``sinceSeconds``, ``sinceTime`` and ``timestamps`` are
    ignored). Errors are the kubelet's messages, as kubectl prints them.
    """
    ns, name = request.match_info["namespace"], request.match_info["name"]
    pod = _registry(request).store.snapshot().get("Pod", ns, name)
    if pod is None:
        return status_response(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
    container, problem = log_container(pod, request.query.get("container") or None)
    if container is None:
        return status_response(400, "BadRequest", problem or "no container")
    tail = _int_param(request, "tailLines")
    limit = _int_param(request, "limitBytes")
    if limit == 0:
        raise _bad_request("limitBytes: Invalid value: 0: must be greater than 0")
    previous = _truthy(request.query.get("previous"))
    reader = request.app.get(LOG_READER)
    data = None
    if reader is not None:
        data = await asyncio.to_thread(reader, ns, name, container, previous=previous, tail_lines=tail,
                                       limit_bytes=limit, uid=(pod.get("metadata") or {}).get("uid"))
    if data is None:
        if previous:
            msg = f'previous terminated container "{container}" in pod "{name}" not found'
        else:
            state = next((cs.get("state") or {} for cs in (pod.get("status") or {}).get("containerStatuses") or []
                          if cs.get("name") == container), {})
            reason = (state.get("waiting") or {}).get("reason") or "ContainerCreating"
            msg = f'container "{container}" in pod "{name}" is waiting to start: {reason}'
        return status_response(400, "BadRequest", msg)
    if limit is not None:
        data = data[:limit]  # the reader should have cut it; a reader that ignores it is cut here
    return web.Response(body=data, content_type="text/plain", charset="utf-8")


async def _version(request: web.Request) -> web.Response:
    return _json(discovery.SERVER_VERSION)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    result = request.app[READY_CHECK]()
    if inspect.isawaitable(result):
        result = await result
    ok, detail = result
    return web.Response(text="ok" if ok else f"not ready: {detail}", status=200 if ok else 503)


async def _api(request: web.Request) -> web.Response:
    if discovery.wants_aggregated(request.headers.get("Accept", "")):
        return _json(discovery.aggregated(core=True), content_type=discovery.AGGREGATED_CONTENT_TYPE)
    return _json(discovery.api_versions(request.host))


async def _apis(request: web.Request) -> web.Response:
    if discovery.wants_aggregated(request.headers.get("Accept", "")):
        return _json(discovery.aggregated(core=False), content_type=discovery.AGGREGATED_CONTENT_TYPE)
    return _json(discovery.api_group_list())


async def _group_version(request: web.Request) -> web.Response:
    doc = discovery.api_resource_list(request.match_info.get("group", ""), request.match_info["version"])
    if doc is None:
        raise web.HTTPNotFound()
    return _json(doc)


async def _openapi_root(request: web.Request) -> web.Response:
    return _json(discovery.openapi_root())


async def _openapi_gv(request: web.Request) -> web.Response:
    parts = request.match_info["tail"].strip("/").split("/")
    if parts[0] == "api" and len(parts) == 2:
        doc = discovery.openapi_group("", parts[1])
    elif parts[0] == "apis" and len(parts) == 3:
        doc = discovery.openapi_group(parts[1], parts[2])
    else:
        doc = None
    if doc is None:
        raise web.HTTPNotFound()
    return _json(doc)


async def _on_startup(app: web.Application) -> None:
    await app[REGISTRY].start()


async def _on_shutdown(app: web.Application) -> None:
    """Long-lived watches would hold shutdown for its whole timeout: end them now."""
    for task in list(app[_WATCHERS]):
        task.cancel()


def make_app(registry: Registry, *, token: str | None = None, client_max_size: int = 1 << 30) -> web.Application:
    app = web.Application(middlewares=[_auth, _errors], client_max_size=client_max_size)
    app[REGISTRY] = registry
    app[TOKEN] = token
    app[READY_CHECK] = lambda: (True, "ok")
    app[LOG_READER] = None
    app[_WATCHERS] = set()
    app[_ENCODED] = OrderedDict()
    r = app.router
    r.add_get("/version", _version)
    r.add_get("/healthz", _healthz)
    r.add_get("/livez", _healthz)
    r.add_get("/readyz", _readyz)
    r.add_get("/api", _api)
    r.add_get("/api/", _api)
    r.add_get("/apis", _apis)
    r.add_get("/apis/", _apis)
    r.add_get("/api/{version}", _group_version)
    r.add_get("/apis/{group}/{version}", _group_version)
    r.add_get("/openapi/v3", _openapi_root)
    r.add_get("/openapi/v3/{tail:.*}", _openapi_gv)
    r.add_post("/kubelab/v1/apply", _apply)
    r.add_get("/api/v1/namespaces/{namespace}/pods/{name}/log", _pod_log)
    r.add_route("*", "/api/{version}/{tail:.+}", _resource)
    r.add_route("*", "/apis/{group}/{version}/{tail:.+}", _resource)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    return app


async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start ``app`` on ``host:port`` (enforcing :func:`check_listen`); returns (runner, base URL)."""
    check_listen(host, app[TOKEN])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    h = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return runner, f"http://{h}:{bound[1]}"
