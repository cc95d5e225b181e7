"""Manifest loading: files, directories, stdin, multi-document YAML, JSON, Lists."""

from __future__ import annotations

import io
import json

import pytest

from kubelab.controller.manifests import ManifestError, load_paths, load_sources, parse_documents

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}
SVC = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}}


def names(objs):
    return [o["metadata"]["name"] for o in objs]


def test_multi_document_yaml_skips_empty_documents():
    text = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n"
    assert names(parse_documents(text)) == ["a", "b"]


def test_json_object_array_and_stream():
    assert names(parse_documents(json.dumps(POD))) == ["a"]
    assert names(parse_documents(json.dumps([POD, SVC]))) == ["a", "b"]
    assert names(parse_documents(json.dumps(POD) + "\n" + json.dumps(SVC))) == ["a", "b"]


def test_list_is_unrolled():
    lst = {"apiVersion": "v1", "kind": "List", "items": [POD, SVC]}
    assert names(parse_documents(json.dumps(lst))) == ["a", "b"]
    podlist = {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [POD]}
    assert names(parse_documents(json.dumps(podlist))) == ["a"]


@pytest.mark.parametrize("text, index, fragment", [
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {name: b}\n", 1, "apiVersion"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {}\n", 0, "metadata.name"),
    ("- 1\n- 2\n", 0, "expected an object"),
])
def test_bad_documents_name_file_and_index(text, index, fragment):
    with pytest.raises(ManifestError) as exc:
        parse_documents(text, "x.yaml")
    assert exc.value.index == index and exc.value.source == "x.yaml" and fragment in str(exc.value)


def test_invalid_yaml():
    with pytest.raises(ManifestError, match="invalid YAML"):
        parse_documents("a: [1, 2\nb: c\n", "bad.yaml")


def test_paths_files_dirs_and_stdin(tmp_path, monkeypatch):
    d = tmp_path / "dir"
    d.mkdir()
    (d / "2.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: s2}\n")
    (d / "1.json").write_text(json.dumps(POD))
    (d / "notes.txt").write_text("ignored")
    f = tmp_path / "one.yml"
    f.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: lab}\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(SVC)))
    assert names(load_paths([str(d), str(f), "-"])) == ["a", "s2", "lab", "b"]
    assert [s for s, _ in load_sources([str(f)])] == [str(f)]
    with pytest.raises(ManifestError, match="no such file"):
        load_paths([str(tmp_path / "missing.yaml")])
