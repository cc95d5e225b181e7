"""Pure parts of the splice relay: epoll masks, pipe sizing, RLIMIT_NOFILE, config checks."""

from __future__ import annotations

import fcntl
import logging
import os
from types import SimpleNamespace
from typing import Any

import pytest

from kubelab.proxy import zerocopy
from kubelab.proxy.config import ProxyConfig, privileged

IN, OUT = zerocopy._EPOLLIN, zerocopy._EPOLLOUT
linux_pipes = pytest.mark.skipif(zerocopy._SETPIPE_SZ is None, reason="pipe sizing is Linux-only")


def flow(reads: bool, inpipe: int) -> Any:
    return SimpleNamespace(wants_read=lambda: reads, inpipe=inpipe)


@pytest.mark.parametrize(
    "c2b, b2c, want",
    [
        ((True, 0), (True, 0), (IN, IN)),  # idle: read both
        ((True, 10), (True, 0), (IN, IN | OUT)),  # client bytes wait for the backend
        ((False, 10), (True, 0), (0, IN | OUT)),  # c2b pipe full: client not read
        ((True, 0), (False, 5), (IN | OUT, 0)),  # b2c full: backend not read, client writable wanted
        ((False, 0), (False, 0), (0, 0)),  # both ended: unregister both
    ],
)
def test_masks(c2b: tuple[bool, int], b2c: tuple[bool, int], want: tuple[int, int]) -> None:
    assert zerocopy.masks(flow(*c2b), flow(*b2c)) == want


def test_masks_never_ask_for_rdhup_on_relayed_sockets() -> None:
    assert not zerocopy._IN & zerocopy._RDHUP


class FakeResource:
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, fail: bool = False) -> None:
        self.limits = (soft, hard)
        self.fail = fail

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if self.fail:
            raise ValueError("not allowed")
        self.limits = limits


@pytest.mark.parametrize(
    "soft, hard, fail, want",
    [(1024, 524288, False, 524288), (4096, 4096, False, 4096), (1024, -1, False, 1024), (1024, 4096, True, 1024)],
)
def test_raise_nofile(soft: int, hard: int, fail: bool, want: int) -> None:
    res = FakeResource(soft, hard, fail)
    assert zerocopy.raise_nofile(res) == want
    assert res.limits[0] == want


@linux_pipes
def test_pipe_pool_reads_back_the_real_size_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = fcntl.fcntl
    setsz = zerocopy._SETPIPE_SZ

    def fake(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == setsz:
            raise PermissionError(1, "Operation not permitted")  # user pipe pages used up
        return real(fd, cmd, arg)

    monkeypatch.setattr(zerocopy.fcntl, "fcntl", fake)
    pool = zerocopy.PipePool(256 * 1024)
    try:
        with caplog.at_level(logging.WARNING, logger="kubelab.proxy.zerocopy"):
            pipes = [pool.get() for _ in range(3)]
        for r, w, cap in pipes:
            assert cap == real(w, zerocopy._GETPIPE_SZ) == 65536
        assert len([r for r in caplog.records if "cannot size relay pipes" in r.getMessage()]) == 1
        for pipe in pipes:
            pool.put(pipe, empty=False)
    finally:
        pool.close()


@linux_pipes
def test_pipe_pool_capacity_follows_the_requested_size() -> None:
    pool = zerocopy.PipePool(128 * 1024)
    r, w, cap = pool.get()
    try:
        assert cap == fcntl.fcntl(w, zerocopy._GETPIPE_SZ) == 128 * 1024
    finally:
        os.close(r)
        os.close(w)


def test_pipe_pool_keeps_a_bounded_idle_pool() -> None:
    assert zerocopy.PipePool(65536, limit=64).limit == 64
    assert zerocopy.PipePool(65536).limit == (256 if privileged() else 64)


def test_a_pipe_below_a_page_is_refused_for_splice() -> None:
    for relay in ("auto", "splice"):
        with pytest.raises(ValueError, match="4096"):
            ProxyConfig(tcp_relay=relay, pipe_size=1000)
    assert ProxyConfig(tcp_relay="transport", pipe_size=1000).pipe_size == 1000
    assert ProxyConfig(tcp_relay="splice", high_water=1000, low_water=100).high_water == 1000  # transport's knob
