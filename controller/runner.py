"""BoundedFrequencyRunner: kube-proxy's sync coalescer, ported to asyncio.

Why: watch events arrive in bursts (one ``kubectl apply`` of 60,000 objects, a
Deployment scaling up). Handlers only call ``run()``; the runner then calls ``fn``
at most once per ``min_interval`` (measured from the end of one run to the start of
the next), so a burst costs one sync with the latest state. As in
``pkg/proxy/runner/bounded_frequency_runner.go``:

* ``run()`` never blocks and never queues more than one pending request.
* ``max_interval`` (optional) forces a periodic resync.
* ``fn`` raising one of ``retry_on`` schedules a retry after ``retry_interval``
  (with the state current *then*, because ``fn`` re-reads everything); a later
  successful run cancels it. Any other exception is a bug: it propagates out of
  ``loop()`` so the owner stops loudly instead of running half-broken.

The clock is injectable (``now()`` and ``async sleep(seconds)``) so tests drive time
by hand, narrating relative time like the Go tests do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Protocol

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class BoundedFrequencyRunner:
    def __init__(
        self,
        name: str,
        fn: Callable[[], Awaitable[object]],
        *,
        min_interval: float,
        max_interval: float | None = None,
        retry_interval: float = 1.0,
        retry_on: tuple[type[BaseException], ...] = (),
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.retry_interval = retry_interval
        self.retry_on = retry_on
        self.clock: Clock = clock or MonotonicClock()
        self.runs = 0  # completed calls of fn (successful or not)
        self.failures = 0
        self._pending = True  # the first run happens as soon as the loop starts
        self._retry_at: float | None = None
        self._last_start: float | None = None
        self._last_end: float | None = None
        self._wake = asyncio.Event()

    def run(self) -> None:
        """Request a run; coalesced with any request already pending."""
        self._pending = True
        self._wake.set()

    def _due(self) -> float | None:
        """When the next run should start (None: only when asked)."""
        due: float | None = None
        if self._pending:
            due = self._last_end + self.min_interval if self._last_end is not None else float("-inf")
        if self._retry_at is not None:
            due = self._retry_at if due is None else min(due, self._retry_at)
        if self.max_interval is not None and self._last_start is not None:
            periodic = self._last_start + self.max_interval
            due = periodic if due is None else min(due, periodic)
        if due is not None and self._last_end is not None:
            due = max(due, self._last_end + self.min_interval)
        return due

    async def _wait(self, delay: float | None) -> None:
        self._wake.clear()
        if delay is None:
            await self._wake.wait()
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, waker):
                if not t.done():
                    t.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    async def loop(self) -> None:
        """Run until cancelled; an unexpected exception from ``fn`` propagates."""
        while True:
            due = self._due()
            now = self.clock.now()
            if due is None or due > now:
                await self._wait(None if due is None else due - now)
                continue
            self._pending = False
            self._retry_at = None
            self._last_start = self.clock.now()
            try:
                await self.fn()
            except self.retry_on as exc:
                self.failures += 1
                self._retry_at = self.clock.now() + self.retry_interval
                log.warning("%s: sync failed, retrying in %.3gs: %s", self.name, self.retry_interval, exc)
            finally:
                self.runs += 1
                self._last_end = self.clock.now()
