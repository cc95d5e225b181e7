"""BoundedFrequencyRunner with a fake clock: run / defer / nothing, narrated in relative time."""

import asyncio

import pytest

from kubelab.controller.runner import BoundedFrequencyRunner


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.sleepers = []

    def now(self):
        return self.t

    async def sleep(self, seconds):
        fut = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.t + seconds, fut))
        await fut

    def advance(self, seconds):
        self.t += seconds
        for due, fut in list(self.sleepers):
            if due <= self.t + 1e-9 and not fut.done():
                fut.set_result(None)
        self.sleepers = [(d, f) for d, f in self.sleepers if not f.done()]


class Flaky(Exception):
    pass


async def settle():
    for _ in range(20):  # let the loop task run to its next wait (no timed sleeps)
        await asyncio.sleep(0)


@pytest.fixture
async def harness():
    clock = FakeClock()
    calls = []
    errors = []

    async def fn():
        calls.append(clock.now())
        if errors:
            raise errors.pop(0)

    runner = BoundedFrequencyRunner("t", fn, min_interval=1.0, retry_interval=0.5, retry_on=(Flaky,), clock=clock)
    task = asyncio.create_task(runner.loop())
    await settle()
    yield clock, runner, calls, errors, task
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_first_run_immediate_then_coalesced(harness):
    clock, runner, calls, _, _ = harness
    assert calls == [0.0]  # rel=0: initial run
    runner.run()
    runner.run()
    runner.run()
    await settle()
    assert calls == [0.0]  # deferred: min_interval not passed
    clock.advance(0.5)  # rel=0.5
    await settle()
    assert calls == [0.0]
    clock.advance(0.5)  # rel=1.0: the three requests become one run
    await settle()
    assert calls == [0.0, 1.0]
    clock.advance(5)  # nothing requested: nothing runs
    await settle()
    assert calls == [0.0, 1.0]
    runner.run()  # rel=6: long after the last run -> runs at once
    await settle()
    assert calls == [0.0, 1.0, 6.0]


async def test_retry_after_failure(harness):
    clock, runner, calls, errors, _ = harness
    errors.append(Flaky("sink down"))
    clock.advance(1)
    runner.run()  # rel=1: runs and fails
    await settle()
    assert calls == [0.0, 1.0] and runner.failures == 1
    clock.advance(0.5)  # retry_interval elapsed but min_interval (1s) not yet
    await settle()
    assert calls == [0.0, 1.0]
    clock.advance(0.5)  # rel=2: retry
    await settle()
    assert calls == [0.0, 1.0, 2.0]
    clock.advance(10)  # success cancels further retries
    await settle()
    assert calls == [0.0, 1.0, 2.0]


async def test_unexpected_exception_propagates():
    clock = FakeClock()

    async def boom():
        raise RuntimeError("bug")

    runner = BoundedFrequencyRunner("t", boom, min_interval=0.01, clock=clock)
    with pytest.raises(RuntimeError, match="bug"):
        await asyncio.wait_for(runner.loop(), 5)


async def test_max_interval_resync():
    clock = FakeClock()
    calls = []

    async def fn():
        calls.append(clock.now())

    runner = BoundedFrequencyRunner("t", fn, min_interval=1, max_interval=10, clock=clock)
    task = asyncio.create_task(runner.loop())
    await settle()
    clock.advance(9)
    await settle()
    assert calls == [0.0]
    clock.advance(1)  # rel=10: periodic
    await settle()
    assert calls == [0.0, 10.0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
