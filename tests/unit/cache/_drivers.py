"""Run one scenario list against both shells.

A scenario is an ``async def`` taking a ``make`` factory; ``make(**options)``
returns a :class:`Driver` around a :class:`Cache` or an :class:`AsyncCache`
that share one store (memory or fakeredis) and one :class:`FakeClock`. The
driver's methods are awaitable in both cases: for the sync shell they simply
call through, so the very same scenario checks the same behaviour twice.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import fakeredis

from scalekit.cache import AsyncCache, AsyncMemoryBackend, Cache, MemoryBackend
from scalekit.testing import FakeClock

KINDS = ("sync-memory", "sync-fakeredis", "async-memory", "async-fakeredis")


class Driver:
    """Awaitable access to one cache, whichever shell it is."""

    def __init__(self, cache: Cache | AsyncCache) -> None:
        self.cache = cache
        self.is_async = isinstance(cache, AsyncCache)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.cache, name)(*args, **kwargs)
        if self.is_async:
            result = await result
        return result

    async def get(self, key: str, default: Any = None) -> Any:
        return await self.call("get", key, default)

    async def set(self, key: str, value: Any, ttl: float | None = None, **kw: Any) -> bool:
        return bool(await self.call("set", key, value, ttl, **kw))

    async def get_or_set(self, key: str, loader: Callable[[], Any], **kw: Any) -> Any:
        return await self.call("get_or_set", key, loader, **kw)

    def decorate(self, body: Callable[..., Any], **options: Any) -> Any:
        """``body`` (a plain function) under the shell's ``cached``, called with ``await``."""
        if self.is_async:

            @functools.wraps(body)
            async def as_coroutine(*args: Any, **kwargs: Any) -> Any:
                return body(*args, **kwargs)

            return self.cache.cached(**options)(as_coroutine)
        wrapped = self.cache.cached(**options)(body)
        return _Awaitable(wrapped)

    async def settle(self, timeout: float = 30.0) -> None:  # a hang guard
        """Wait until background refreshes are done."""
        if isinstance(self.cache, AsyncCache):
            while self.cache._tasks:
                await asyncio.gather(*list(self.cache._tasks), return_exceptions=True)
            return
        deadline = time.monotonic() + timeout
        while self.cache._flights and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        assert not self.cache._flights

    async def close(self) -> None:
        if isinstance(self.cache, AsyncCache):
            await self.cache.aclose()
        else:
            self.cache.close()


class _Awaitable:
    """A sync ``CachedFunction`` made awaitable, keeping ``invalidate`` and ``key_for``."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped(*args, **kwargs)

    async def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        return bool(self.wrapped.invalidate(*args, **kwargs))

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        return str(self.wrapped.key_for(*args, **kwargs))


class HookedClock(FakeClock):
    """A :class:`FakeClock` that calls ``on_sleep`` after each sleep (another process's turn)."""

    __slots__ = ("on_sleep",)

    def __init__(self) -> None:
        super().__init__()
        self.on_sleep: Callable[[], None] | None = None

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if self.on_sleep is not None:
            self.on_sleep()

    async def asleep(self, seconds: float) -> None:
        await super().asleep(seconds)


class Factory:
    """Builds caches of one kind over one shared store and clock.

    Kinds: ``sync-memory``, ``async-memory``, ``sync-fakeredis``,
    ``async-fakeredis``; or ``sync-<name>``/``async-<name>`` with
    ``connect``/``aconnect`` building clients of a real server (integration).
    """

    def __init__(
        self,
        kind: str,
        *,
        connect: Callable[[], Any] | None = None,
        aconnect: Callable[[], Any] | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.defaults = dict(defaults or {})
        self.clock = HookedClock()
        self.server = fakeredis.FakeServer()
        self.memory = MemoryBackend(clock=self.clock)
        self.async_memory = AsyncMemoryBackend(clock=self.clock)
        self.drivers: list[Driver] = []
        self.clients: list[Any] = []
        self._connect = connect or (lambda: fakeredis.FakeRedis(server=self.server))
        self._aconnect = aconnect or (lambda: fakeredis.FakeAsyncRedis(server=self.server))
        self._raw: Any = None

    @property
    def is_async(self) -> bool:
        return self.kind.startswith("async")

    @property
    def is_redis(self) -> bool:
        return not self.kind.endswith("memory")

    def client(self) -> Any:
        if self.kind == "sync-memory":
            return self.memory
        if self.kind == "async-memory":
            return self.async_memory
        client = self._aconnect() if self.is_async else self._connect()
        self.clients.append(client)
        return client

    def _raw_client(self) -> Any:
        if self._raw is None:
            self._raw = self._connect()
        return self._raw

    def raw_set(self, key: str, data: bytes) -> None:
        """Write raw bytes under a stored key, behind the cache's back."""
        if self.is_redis:
            self._raw_client().set(key, data)
        else:
            store = self.memory if self.kind == "sync-memory" else self.async_memory.sync
            store.set_many([(key, data, 60_000)])

    def raw_get(self, key: str) -> bytes | None:
        if self.is_redis:
            value: bytes | None = self._raw_client().get(key)
            return value
        store = self.memory if self.kind == "sync-memory" else self.async_memory.sync
        return store.get(key)

    def __call__(self, **options: Any) -> Driver:
        options.setdefault("clock", self.clock)
        options.setdefault("jitter", 0.0)
        options.setdefault("namespace", "test")
        for name, value in self.defaults.items():
            options.setdefault(name, value)
        cls = AsyncCache if self.is_async else Cache
        driver = Driver(cls(self.client(), **options))
        self.drivers.append(driver)
        return driver

    async def close(self) -> None:
        for driver in self.drivers:
            await driver.close()
        for client in self.clients:
            if self.is_async:
                await client.aclose()
            else:
                client.close()
        if self._raw is not None:
            self._raw.close()
