"""Parse a zone from JSON text without materialising the whole JSON document.

``json.loads`` of a 10,000-service / 50,000-pod zone builds ~58 MB of dicts and lists
before ``ZoneData.from_json`` converts them, and the freed dicts leave the heap
fragmented: the standalone process ended up ~40 MB above what it needs. This parser
walks the top-level object with ``JSONDecoder.raw_decode`` and converts each service
and pod as soon as it is decoded, so only one raw service dict is alive at a time.

It accepts exactly what ``PUT /v1/zone`` accepts: ``ZoneData.to_json()`` itself, or
``{"generation": N, "zone": {...}}`` (the outer generation wins).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import sys
from typing import Any

from kubelab.dns.zone import Pod, Service, ZoneData, _service_from_json

_decoder = json.JSONDecoder()
_WS = " \t\n\r"


class ZoneJsonError(ValueError):
    """The body is not a zone (bad JSON, or a missing/invalid field)."""


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def _expect(text: str, i: int, ch: str) -> int:
    i = _skip_ws(text, i)
    if i >= len(text) or text[i] != ch:
        raise ZoneJsonError(f"expected {ch!r} at offset {i}")
    return i + 1


def _array(text: str, i: int, convert) -> tuple[list, int]:
    """Decode the array starting at ``text[i] == '['`` one element at a time."""
    out = []
    i = _expect(text, i, "[")
    i = _skip_ws(text, i)
    if i < len(text) and text[i] == "]":
        return out, i + 1
    while True:
        value, i = _decoder.raw_decode(text, _skip_ws(text, i))
        out.append(convert(value))
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        return out, _expect(text, i, "]")


def _object(text: str, i: int, ports_cache: dict) -> tuple[dict[str, Any], int]:
    fields: dict[str, Any] = {}
    i = _expect(text, i, "{")
    i = _skip_ws(text, i)
    if i < len(text) and text[i] == "}":
        return fields, i + 1
    while True:
        key, i = _decoder.raw_decode(text, _skip_ws(text, i))
        if not isinstance(key, str):
            raise ZoneJsonError("object key is not a string")
        i = _expect(text, i, ":")
        i = _skip_ws(text, i)
        if key == "services" and text.startswith("[", i):
            fields[key], i = _array(text, i, lambda d: _service_from_json(d, ports_cache))
        elif key == "pods" and text.startswith("[", i):
            fields[key], i = _array(text, i, lambda p: Pod(sys.intern(p[0]), p[1], p[2]))
        elif key == "zone" and text.startswith("{", i):
            fields[key], i = _object(text, i, ports_cache)
        else:
            fields[key], i = _decoder.raw_decode(text, i)
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        return fields, _expect(text, i, "}")


def parse_zone_json(body: str | bytes) -> ZoneData:
    """JSON text (``to_json`` shape, optionally wrapped in ``{"generation","zone"}``) -> ZoneData."""
    try:
        text = body.decode() if isinstance(body, (bytes, bytearray)) else body
        top, end = _object(text, 0, {})
        if _skip_ws(text, end) != len(text):
            raise ZoneJsonError("trailing data after the zone object")
        inner = top.get("zone", top)
        if not isinstance(inner, dict):
            raise ZoneJsonError("zone must be an object")
        generation = top.get("generation", inner.get("generation"))
        services: list[Service] = inner.get("services", [])
        pods = inner.get("pods", [])
        namespaces = inner.get("namespaces", [])
        if not all(isinstance(s, Service) for s in services) or not all(isinstance(p, Pod) for p in pods):
            raise ZoneJsonError("services/pods must be arrays")
        return ZoneData(int(generation), {s.key: s for s in services}, tuple(pods),
                        tuple(sys.intern(str(ns)) for ns in namespaces))
    except ZoneJsonError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ZoneJsonError(f"bad zone: {exc}") from exc


def release_memory() -> None:
    """Give freed heap back to the OS after a big zone swap (glibc ``malloc_trim``)."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
