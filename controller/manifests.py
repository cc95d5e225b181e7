"""Reading manifests the way ``kubectl apply -f`` does: files, directories, ``-``.

Multi-document YAML, JSON (one object, an array, or a stream of objects) and ``kind:
List`` (or any ``*List`` with ``items``) are accepted. Directories are read one level
deep, ``.yaml``/``.yml``/``.json`` files in name order. Any malformed document raises
:class:`ManifestError` naming the file and the document index, before anything is sent
anywhere: a file is validated as a whole.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

EXTENSIONS = (".yaml", ".yml", ".json")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(ValueError):
    def __init__(self, source: str, index: int | None, message: str) -> None:
        self.source, self.index, self.message = source, index, message
        where = source if index is None else f"{source} (document {index})"
        super().__init__(f"error parsing {where}: {message}")


def _json_documents(text: str) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            return
        obj, pos = decoder.raw_decode(text, pos)
        yield obj


def parse_documents(text: str, source: str = "<input>") -> list[dict]:
    """All objects in ``text`` (YAML or JSON), Lists unrolled, each checked for shape."""
    stripped = text.lstrip()
    docs: list[Any]
    if stripped.startswith(("{", "[")):
        try:
            docs = list(_json_documents(stripped))
        except ValueError:
            docs = _yaml_documents(text, source)  # YAML flow style also starts with { or [
        else:
            if len(docs) == 1 and isinstance(docs[0], list):
                docs = docs[0]
    else:
        docs = _yaml_documents(text, source)
    out: list[dict] = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        _check(doc, source, i)
        if doc["kind"] == "List" or (doc["kind"].endswith("List") and isinstance(doc.get("items"), list)):
            for item in doc.get("items") or []:
                _check(item, source, i)
                out.append(item)
        else:
            out.append(doc)
    return out


def _yaml_documents(text: str, source: str) -> list[Any]:
    try:
        return list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ManifestError(source, None, f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def _check(doc: Any, source: str, index: int) -> None:
    if not isinstance(doc, dict):
        raise ManifestError(source, index, f"expected an object, got {type(doc).__name__}")
    for field in ("apiVersion", "kind"):
        if not isinstance(doc.get(field), str) or not doc[field]:
            raise ManifestError(source, index, f"{field} not set in {_preview(doc)}")
    if doc["kind"].endswith("List") and isinstance(doc.get("items"), list):
        return
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not (meta.get("name") or meta.get("generateName")):
        raise ManifestError(source, index, f"{doc['kind']}: metadata.name is required")


def _preview(doc: dict) -> str:
    text = json.dumps(doc, separators=(",", ":"))
    return text if len(text) < 80 else text[:77] + "..."


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in EXTENSIONS)
    return [path]


def load_paths(paths: list[str]) -> list[dict]:
    """Every object in ``paths`` (files, directories, ``-`` for stdin), in order."""
    return [obj for _, obj in load_sources(paths)]


def load_sources(paths: list[str]) -> list[tuple[str, dict]]:
    """Like :func:`load_paths`, with each object's source file (for per-object messages)."""
    out: list[tuple[str, dict]] = []
    for p in paths:
        if p == "-":
            out.extend(("STDIN", o) for o in parse_documents(sys.stdin.read(), "STDIN"))
            continue
        path = Path(p)
        if not path.exists():
            raise ManifestError(p, None, "no such file or directory")
        for f in _files(path):
            try:
                text = f.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ManifestError(str(f), None, str(exc)) from None
            out.extend((str(f), o) for o in parse_documents(text, str(f)))
    return out
