"""The splice relay's pipe pool: only empty pipes are reused, and only up to the limit."""

from __future__ import annotations

import os

import pytest

from kubelab.proxy import zerocopy

pytestmark = pytest.mark.skipif(not zerocopy.available(), reason="splice(2) relay is Linux-only")


def test_pipe_pool_reuses_only_empty_pipes_up_to_limit() -> None:
    pool = zerocopy.PipePool(128 * 1024, limit=1)
    a, b, c = pool.get(), pool.get(), pool.get()
    assert pool.created == 3
    try:
        pool.put(a, empty=True)
        pool.put(b, empty=True)  # above the limit: closed
        pool.put(c, empty=False)  # bytes may be left in it: closed
        assert pool.free == [a]
        for fd in (*b, *c):
            with pytest.raises(OSError):
                os.fstat(fd)
        assert pool.get() == a and pool.created == 3
        pool.put(a, empty=True)
    finally:
        pool.close()
    assert pool.free == []
    with pytest.raises(OSError):
        os.fstat(a[0])
