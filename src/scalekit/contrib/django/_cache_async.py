"""The asyncio operations of the Django cache backend, over an :class:`~scalekit.cache.AsyncCache`.

This is the source of both colours: ``_cache_sync.py`` (``CacheOps``, over a
:class:`~scalekit.cache.Cache`) is generated from it by ``scripts/unasync.py``.
:class:`~scalekit.contrib.django.ScalekitCache` calls the blocking ones from its
Django methods (``get``, ``add``, ...) and these from their async twins
(``aget``, ``aadd``, ...): real coroutines on ``redis.asyncio``, not
``sync_to_async`` wrappers.

Reads and timed writes are the scalekit cache's own (its local tier, stampede
protection, breaker and fallback). What Django adds, ``add``, ``incr``,
``touch``, a value kept forever and a ``delete`` that says whether the key
existed, is one Redis command or script each, run through the same breaker
(``cache.guarded_call``), so an outage takes the cache's documented fallback here too.
Keys are whole Django keys (prefix, version and ``KEY_FUNCTION`` applied).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from scalekit.cache import AsyncCache
from scalekit.cache._core import ENVELOPE_PREFIX
from scalekit.contrib.django._cache_core import (
    FOREVER,
    INCR_LUA,
    TOUCH_LUA,
    DjangoCodec,
    expiry_patch,
    store_ms,
)

__all__ = ["AsyncCacheOps"]

__unasync__ = {
    "The asyncio operations of the Django cache backend, over an :class:`~scalekit.cache."
    "AsyncCache`.": "The blocking operations of the Django cache backend, over a "
    ":class:`~scalekit.cache.Cache`.",
    "This is the source of both colours: ``_cache_sync.py`` (``CacheOps``, over a\n"
    ":class:`~scalekit.cache.Cache`) is generated from it by ``scripts/unasync.py``.\n"
    ":class:`~scalekit.contrib.django.ScalekitCache` calls the blocking ones from its\n"
    "Django methods (``get``, ``add``, ...) and these from their async twins\n"
    "(``aget``, ``aadd``, ...): real coroutines on ``redis.asyncio``, not\n"
    "``sync_to_async`` wrappers.\n\n": "",
}

_MISSING = object()


class AsyncCacheOps:
    """Django's cache operations on one :class:`~scalekit.cache.AsyncCache` over Redis."""

    def __init__(self, cache: AsyncCache) -> None:
        self.cache = cache
        client = cache.backend.client
        self._client = client
        self._incr = client.register_script(INCR_LUA)
        self._touch = client.register_script(TOUCH_LUA)
        self._codec_id = str(DjangoCodec.codec_id)

    def _data(self, key: str) -> str:
        return self.cache.keys.data(key)

    def _forget(self, full: str) -> None:
        if self.cache.local is not None:
            self.cache.local.discard(full)

    def _encode(self, value: Any, ttl: float) -> bytes:
        return self.cache.encode_value(value, ttl)

    # ------------------------------------------------------------------ raw commands

    async def _set_raw(self, items: list[tuple[str, bytes, str]], nx: bool) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for full, data, px in items:
            pipe.set(full, data, nx=nx, px=int(px) if px else None)
        return list(await pipe.execute())

    async def _delete_raw(self, keys: list[str]) -> int:
        return int(await self._client.delete(*keys))

    async def _incr_raw(self, full: str, delta: int) -> Any:
        return await self._incr(keys=[full], args=[delta, ENVELOPE_PREFIX, self._codec_id])

    async def _touch_raw(self, full: str, patch: bytes, px: str) -> Any:
        return await self._touch(keys=[full], args=[ENVELOPE_PREFIX, patch, px])

    async def _flush_raw(self) -> None:
        await self._client.flushdb()

    # ------------------------------------------------------------------ Django's operations

    async def get(self, key: str, default: Any) -> Any:
        return await self.cache.get(key, default)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return await self.cache.get_many(keys)

    async def set_many(self, items: Mapping[str, Any], ttl: float | None) -> list[str]:
        """Store ``items`` (``ttl`` None: forever; 0: delete them); the keys not stored."""
        if not items:
            return []
        if ttl == 0:
            await self.delete_many(list(items))
            return []
        if ttl is not None:
            ok = await self.cache.set_many(items, ttl)
            return [] if ok else list(items)
        writes = []
        for key, value in items.items():
            full = self._data(key)
            self._forget(full)
            writes.append((full, self._encode(value, FOREVER), ""))
        ok, _ = await self.cache.guarded_call(self._set_raw, writes, False)
        return [] if ok else list(items)

    async def add(self, key: str, value: Any, ttl: float | None) -> bool:
        """Store ``value`` only if ``key`` holds nothing; whether it did."""
        lifetime = FOREVER if ttl is None else ttl
        if lifetime == 0:  # stored and expired at once: nothing to keep
            return not await self.has_key(key)
        full = self._data(key)
        data = self._encode(value, lifetime)
        write = [(full, data, store_ms(lifetime))]
        ok, replies = await self.cache.guarded_call(self._set_raw, write, True)
        if ok and replies[0]:
            self._forget(full)
            return True
        return False

    async def incr(self, key: str, delta: int) -> int | None:
        """``key``'s integer plus ``delta``, atomically on Redis, its TTL kept.

        ``None`` when there is no such key (or Redis is down).

        Raises:
            TypeError: the value is not an integer.
            ValueError: the result is past ±2**53 (what the script counts exactly).
        """
        full = self._data(key)
        ok, reply = await self.cache.guarded_call(self._incr_raw, full, delta)
        if not ok or reply is None:
            return None
        if isinstance(reply, int):
            if reply == 1:
                raise ValueError("the cached integer would pass ±2**53; incr refused")
            raise TypeError(f"the value of cache key {key!r} is not an integer")
        self._forget(full)
        return int(reply)

    async def touch(self, key: str, ttl: float | None) -> bool:
        """Give ``key`` a new lifetime (``None``: forever, 0: expire now); whether it exists."""
        full = self._data(key)
        self._forget(full)
        if ttl == 0:
            ok, count = await self.cache.guarded_call(self._delete_raw, [full])
            return bool(ok and count)
        lifetime = FOREVER if ttl is None else ttl
        patch = expiry_patch(self.cache.clock.time(), lifetime)
        ok, reply = await self.cache.guarded_call(self._touch_raw, full, patch, store_ms(lifetime))
        return bool(ok and reply)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""
        full = self._data(key)
        self._forget(full)
        ok, count = await self.cache.guarded_call(self._delete_raw, [full])
        return bool(ok and count)

    async def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            await self.delete(key)

    async def has_key(self, key: str) -> bool:
        return await self.cache.get(key, _MISSING) is not _MISSING

    async def get_or_set(self, key: str, loader: Callable[[], Any], ttl: float) -> Any:
        """The value of ``key``, loaded once across callers and instances when missing."""
        return await self.cache.get_or_set(key, loader, ttl)

    async def clear(self) -> None:
        """Empty the Redis database (as Django's own Redis backend) and the local tier."""
        if self.cache.local is not None:
            self.cache.local.clear()
        await self.cache.guarded_call(self._flush_raw)
