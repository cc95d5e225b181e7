"""Where desired state goes: the DNS server and the proxy, in process or over HTTP.

Why a protocol: the manager neither knows nor cares whether the data plane runs in the
same process (``kubelab up``: ``InProcessSink(name, dns.set_zone)``) or in its own
container (compose: ``HttpSink(name, url, "zone")`` PUTs ``{url}/v1/zone``). A sink's
``apply`` raises on failure; the manager's runner retries with the then-current state.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Callable, Protocol, runtime_checkable

import aiohttp

log = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    name: str

    async def apply(self, state: Any) -> None: ...  # ZoneData or RouteTable


class SinkError(Exception):
    """A data plane did not take the state (the manager retries)."""


class InProcessSink:
    """Calls ``fn(state)``; ``fn`` may be a plain function or a coroutine function."""

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        self.name = name
        self.fn = fn

    async def apply(self, state: Any) -> None:
        result = self.fn(state)
        if inspect.isawaitable(result):
            await result

    def __repr__(self) -> str:
        return f"InProcessSink({self.name!r})"


class HttpSink:
    """``PUT {url}/v1/zone`` or ``{url}/v1/routes`` with ``state.to_json()``.

    A 409 (the data plane already holds a newer generation) counts as delivered: a
    late retry must not fail forever. Anything else non-2xx raises ``SinkError``.
    """

    def __init__(self, name: str, url: str, what: str, *, timeout: float = 10.0, token: str | None = None) -> None:
        if what not in ("zone", "routes"):
            raise ValueError(f"HttpSink kind must be 'zone' or 'routes', not {what!r}")
        self.name = name
        self.url = url.rstrip("/") + f"/v1/{what}"
        self.what = what
        self.timeout = timeout
        self.token = token
        self._session: aiohttp.ClientSession | None = None

    async def apply(self, state: Any) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            async with self._session.put(self.url, json=state.to_json(), headers=headers) as resp:
                if resp.status == 409 or 200 <= resp.status < 300:
                    await resp.read()
                    return
                body = (await resp.text())[:200]
                raise SinkError(f"{self.name}: PUT {self.url}: HTTP {resp.status}: {body}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise SinkError(f"{self.name}: PUT {self.url}: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __repr__(self) -> str:
        return f"HttpSink({self.name!r}, {self.url!r})"
