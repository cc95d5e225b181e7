"""``pods/{name}/log``: which container (the apiserver's messages) and reading a log's tail
without reading the whole file."""

from __future__ import annotations

import builtins

import pytest

import kubelab.runtime.manager as manager
from kubelab.controller.api import log_container
from kubelab.runtime.manager import find_log, read_log_file


def pod(*containers: str) -> dict:
    return {"metadata": {"name": "p"}, "spec": {"containers": [{"name": c} for c in containers]}}


@pytest.mark.parametrize(
    "containers, requested, want",
    [
        (("main",), None, ("main", None)),
        (("main",), "main", ("main", None)),
        (("main", "side"), "side", ("side", None)),
        (("main", "side"), None, (None, "a container name must be specified for pod p, choose one of: [main side]")),
        ((), None, (None, "a container name must be specified for pod p, choose one of: []")),
        (("main",), "nope", (None, "container nope is not valid for pod p")),
        (("main",), "", ("main", None)),  # ?container= is "not given"
    ],
)
def test_log_container(containers, requested, want):
    assert log_container(pod(*containers), requested) == want


@pytest.fixture
def big_log(tmp_path):
    path = tmp_path / "0.log"
    path.write_bytes(b"".join(b"line %06d\n" % i for i in range(200_000)))  # 2.4 MB
    return path


def test_tail_reads_from_the_end(big_log, monkeypatch):
    read = 0
    real_open = builtins.open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def seek(self, *a):
            return self.f.seek(*a)

        def read(self, n=-1):
            nonlocal read
            data = self.f.read(n)
            read += len(data)
            return data

    monkeypatch.setattr(manager, "open", lambda p, mode="r": Counting(real_open(p, mode)), raising=False)
    assert read_log_file(big_log, tail_lines=2) == b"line 199998\nline 199999\n"
    assert read <= 64 * 1024
    read = 0
    assert read_log_file(big_log, limit_bytes=5) == b"line "
    assert read == 5


@pytest.mark.parametrize(
    "data, tail, limit, want",
    [
        (b"a\nb\nc\n", None, None, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 2, None, b"b\nc\n"),
        (b"a\nb\nc", 2, None, b"b\nc"),  # a last line without newline is a line
        (b"a\nb\nc\n", 0, None, b""),
        (b"a\nb\nc\n", 10, None, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 2, 3, b"b\nc"),  # tail first, then the limit (kubelet's order)
        (b"", 3, None, b""),
        (b"a\rb\nc\n", 2, None, b"a\rb\nc\n"),  # "\r" (a progress bar) does not end a line
    ],
)
def test_read_log_file(tmp_path, data, tail, limit, want):
    path = tmp_path / "0.log"
    path.write_bytes(data)
    assert read_log_file(path, tail_lines=tail, limit_bytes=limit, chunk=2) == want


def test_find_log_by_uid_skips_an_older_pod_of_the_same_name(tmp_path):
    import os

    for uid, text in (("old", b"old pod\n"), ("new", b"new pod\n")):
        d = tmp_path / f"default_web_{uid}" / "c"
        d.mkdir(parents=True)
        (d / "0.log").write_bytes(text)
    os.utime(tmp_path / "default_web_old", (2_000_000_000, 2_000_000_000))  # the deleted pod's dir is newest
    assert find_log(tmp_path, "default", "web", "c").read_bytes() == b"old pod\n"  # by name only: wrong
    assert find_log(tmp_path, "default", "web", "c", uid="new").read_bytes() == b"new pod\n"
    assert find_log(tmp_path, "default", "web", "c", uid="gone") is None
