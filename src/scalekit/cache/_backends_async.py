"""The asyncio storage backends: ``redis.asyncio`` clients, and memory.

This file is the source of the blocking backends too (``scripts/unasync.py``
generates ``_backends_sync.py``); what both colours share (the error tuples,
the encoded GET, the release script) is in :mod:`._base`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit._redis_direct import AsyncKept, adirect_pool, is_final, send_packed
from scalekit._unasync import IS_ASYNC
from scalekit.cache._base import (
    _GET_FORMAT,
    _RELEASE_LUA,
    Notify,
    _as_int,
    _busy_errors,
    _is_cluster,
    _redis_errors,
    _refusal_errors,
    _unavailable_replies,
)
from scalekit.typing import Clock

if TYPE_CHECKING:  # unasync: async-only
    from scalekit.cache._backends_sync import MemoryBackend

__all__ = ["AsyncMemoryBackend", "AsyncRedisBackend"]

__unasync__ = {
    "adirect_pool": "direct_pool",
    "The asyncio storage backends: ``redis.asyncio`` clients, and memory.": (
        "The blocking storage backends: redis-py clients, and memory."
    ),
    "\n\nThis file is the source of the blocking backends too (``scripts/unasync.py``\n"
    "generates ``_backends_sync.py``); what both colours share (the error tuples,\n"
    "the encoded GET, the release script) is in :mod:`._base`.": "\n\n"
    "What both colours share (the error tuples, the encoded GET, the release\n"
    "script) is in :mod:`._base`.",
    "A user's ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``.": (
        "A user's ``redis.Redis`` or ``redis.cluster.RedisCluster`` (or fakeredis)."
    ),
}


class AsyncMemoryBackend:
    """An in-process store: a bounded ``cachetools.TLRUCache`` with per-key expiry.

    Thread-safe; no method does I/O. Time comes from ``clock.time()`` so tests drive
    expiry with a :class:`~scalekit.testing.FakeClock`. Nothing is shared
    between processes.
    """

    errors: tuple[type[BaseException], ...] = ()

    def __init__(self, *, maxsize: int = 100_000, clock: Clock = SYSTEM_CLOCK) -> None:
        from cachetools import TLRUCache

        self._clock = clock
        self._lock = threading.Lock()
        self._data: TLRUCache[str, tuple[bytes, float]] = TLRUCache(
            maxsize=maxsize, ttu=lambda _key, value, _now: value[1], timer=clock.time
        )
        self._counters: dict[str, int] = {}

    if IS_ASYNC:

        @property
        def sync(self) -> MemoryBackend:
            """A blocking :class:`MemoryBackend` over the same data."""
            from scalekit.cache._backends_sync import MemoryBackend

            view = MemoryBackend.__new__(MemoryBackend)
            view.__dict__.update(self.__dict__)
            return view

    def _get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        return None if item is None else item[0]

    async def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._get(key)

    async def get_with_counters(
        self, key: str, counter_keys: Sequence[str]
    ) -> tuple[bytes | None, list[int]]:
        with self._lock:
            return self._get(key), [self._counters.get(k, 0) for k in counter_keys]

    async def counters(self, keys: Sequence[str]) -> list[int]:
        with self._lock:
            return [self._counters.get(k, 0) for k in keys]

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            return [self._get(k) for k in keys]

    async def set_many(
        self, items: Sequence[tuple[str, bytes, int]], notify: Notify = None
    ) -> None:
        now = self._clock.time()
        with self._lock:
            for key, data, ttl_ms in items:
                self._data[key] = (data, now + ttl_ms / 1000.0)

    async def delete(self, keys: Sequence[str], notify: Notify = None) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    async def incr(self, keys: Sequence[str], notify: Notify = None) -> None:
        with self._lock:
            for key in keys:
                self._counters[key] = self._counters.get(key, 0) + 1

    async def acquire(self, key: str, token: str, ttl_ms: int) -> bool:
        now = self._clock.time()
        with self._lock:
            if self._get(key) is not None:
                return False
            self._data[key] = (token.encode(), now + ttl_ms / 1000.0)
            return True

    async def release(self, key: str, token: str) -> bool:
        with self._lock:
            if self._get(key) == token.encode():
                del self._data[key]
                return True
            return False

    def clear(self) -> None:
        """Drop everything (tests)."""
        with self._lock:
            self._data.clear()
            self._counters.clear()


class AsyncRedisBackend:
    """A user's ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``.

    Multi-key writes go through one non-transactional pipeline (one round
    trip; on a cluster, one per node involved). The client must return bytes
    (``decode_responses=False``, the default; the cache refuses others). The
    cache hands it a client bounded by its ``op_timeout`` (see
    :mod:`scalekit._redis_bounded`).
    """

    def __init__(self, client: Any) -> None:
        from redis import exceptions as rex

        self.client = client
        self.errors = _redis_errors()
        self.busy_errors = _busy_errors()
        self.refusals = _refusal_errors()
        self.unavailable_replies = _unavailable_replies()
        self.cluster = _is_cluster(client)
        self._release = client.register_script(_RELEASE_LUA)
        # GET is every read's one round trip: on a plain client it skips the
        # client's per-command machinery (see scalekit._redis_direct).
        self._pool = adirect_pool(client)
        if IS_ASYNC:
            #: The connections kept per event loop (see :class:`AsyncKept`).
            self._keeper = None if self._pool is None else AsyncKept(self._pool)
        self._response_error = rex.ResponseError
        self._connection_error = rex.ConnectionError
        self._timeout_error = rex.TimeoutError

    async def _finish(self, pipe: Any, notify: Notify) -> None:
        # Cluster pipelines refuse PUBLISH; a cluster broadcasts it to every node anyway.
        if notify is not None and not self.cluster:
            pipe.publish(*notify)
        await pipe.execute()
        if notify is not None and self.cluster:
            await self.client.publish(*notify)

    async def get(self, key: str) -> bytes | None:
        if self._pool is not None:
            raw = key.encode("utf-8")
            try:
                if IS_ASYNC:
                    return await self._keeper.send(  # type: ignore[no-any-return,union-attr]
                        _GET_FORMAT % (len(raw), raw), self._response_error
                    )
                else:
                    return send_packed(  # type: ignore[no-any-return]
                        self._pool, _GET_FORMAT % (len(raw), raw), self._response_error
                    )
            except self._timeout_error:
                raise
            except self._connection_error as exc:
                if is_final(exc):  # a kept connection, re-made for this read
                    raise
                # a stale pooled connection: once more, the client's way
        result: bytes | None = await self.client.get(key)
        return result

    async def aclose(self) -> None:  # unasync: async-only
        """Close the connections this backend keeps (it stays usable; the client is not closed)."""
        if self._keeper is not None:
            await self._keeper.aclose()

    async def get_with_counters(
        self, key: str, counter_keys: Sequence[str]
    ) -> tuple[bytes | None, list[int]]:
        if not counter_keys:
            return await self.get(key), []
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        for counter in counter_keys:
            pipe.get(counter)
        replies = await pipe.execute()
        return replies[0], [_as_int(raw) for raw in replies[1:]]

    async def counters(self, keys: Sequence[str]) -> list[int]:
        return [_as_int(raw) for raw in await self.mget(keys)] if keys else []

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if self.cluster:
            return list(await self.client.mget_nonatomic(list(keys)))
        return list(await self.client.mget(list(keys)))

    async def set_many(
        self, items: Sequence[tuple[str, bytes, int]], notify: Notify = None
    ) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, data, ttl_ms in items:
            pipe.set(key, data, px=max(ttl_ms, 1))
        await self._finish(pipe, notify)

    async def delete(self, keys: Sequence[str], notify: Notify = None) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        await self._finish(pipe, notify)

    async def incr(self, keys: Sequence[str], notify: Notify = None) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.incr(key)
        await self._finish(pipe, notify)

    async def acquire(self, key: str, token: str, ttl_ms: int) -> bool:
        return bool(await self.client.set(key, token, nx=True, px=max(ttl_ms, 1)))

    async def release(self, key: str, token: str) -> bool:
        return bool(await self._release(keys=[key], args=[token]))
