"""Storage backends: the only code of the cache that talks to Redis.

A backend stores bytes under string keys with a millisecond TTL, and offers
the few atomic operations the cache needs: read a key together with tag
version counters in one round trip, write many keys in one round trip, bump
tag versions, and a lease (``SET NX PX`` with a token, released only by its
owner through a compare-and-delete Lua script).

:class:`RedisBackend` and :class:`AsyncRedisBackend` wrap a user's
``redis.Redis``/``RedisCluster`` and ``redis.asyncio`` clients (or fakeredis);
:class:`MemoryBackend` keeps everything in a bounded cachetools ``TLRUCache``
for tests and single-process use, with its time from a :class:`Clock`.
``errors`` lists the exception types that mean "the store is unavailable";
the cache turns them into its down-Redis policy.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit._redis_direct import (
    adirect_pool,
    asend_packed,
    direct_pool,
    send_packed,
)
from scalekit.typing import Clock

__all__ = ["AsyncMemoryBackend", "AsyncRedisBackend", "MemoryBackend", "RedisBackend"]

_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

Notify = tuple[str, str] | None


def _as_int(raw: bytes | str | None) -> int:
    if raw is None:
        return 0
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis import exceptions as rex

    return (rex.RedisError, OSError, asyncio.TimeoutError)


def _busy_errors() -> tuple[type[BaseException], ...]:
    # The client's own pool is full (redis-py's default holds 100 connections):
    # this call fails, Redis is not down.
    from redis import exceptions as rex

    return (rex.MaxConnectionsError,)


def _refusal_errors() -> tuple[type[BaseException], ...]:
    # An error reply: the server is up and refused this one command.
    from redis import exceptions as rex

    return (rex.ResponseError,)


def _unavailable_replies() -> tuple[type[BaseException], ...]:
    # Error replies that say the server cannot serve now (a failover, a cluster
    # reconfiguring): an outage like a refused connection.
    from redis import exceptions as rex

    return (rex.ReadOnlyError, rex.ClusterDownError, rex.TryAgainError, rex.AskError)


def decodes_responses(client: Any) -> bool:
    """Whether a redis-py (or fakeredis) client decodes replies to ``str``.

    Asks the client's encoder, else the connection settings of its pool
    (standalone) or of its nodes manager / itself (cluster).
    """
    get_encoder = getattr(client, "get_encoder", None)
    if callable(get_encoder):
        try:
            encoder = get_encoder()
        except Exception:  # a client that cannot say: look at its settings
            encoder = None
        if encoder is not None and hasattr(encoder, "decode_responses"):
            return bool(encoder.decode_responses)
    for holder in (
        getattr(client, "connection_pool", None),
        getattr(client, "nodes_manager", None),
        client,
    ):
        kwargs = getattr(holder, "connection_kwargs", None)
        if isinstance(kwargs, dict):
            return bool(kwargs.get("decode_responses", False))
    return False


class MemoryBackend:
    """An in-process store: a bounded ``cachetools.TLRUCache`` with per-key expiry.

    Thread-safe. Time comes from ``clock.time()`` so tests drive expiry with a
    :class:`~scalekit.testing.FakeClock`. Nothing is shared between processes.
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

    def _get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        return None if item is None else item[0]

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._get(key)

    def get_with_counters(
        self, key: str, counter_keys: Sequence[str]
    ) -> tuple[bytes | None, list[int]]:
        with self._lock:
            return self._get(key), [self._counters.get(k, 0) for k in counter_keys]

    def counters(self, keys: Sequence[str]) -> list[int]:
        with self._lock:
            return [self._counters.get(k, 0) for k in keys]

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            return [self._get(k) for k in keys]

    def set_many(self, items: Sequence[tuple[str, bytes, int]], notify: Notify = None) -> None:
        now = self._clock.time()
        with self._lock:
            for key, data, ttl_ms in items:
                self._data[key] = (data, now + ttl_ms / 1000.0)

    def delete(self, keys: Sequence[str], notify: Notify = None) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    def incr(self, keys: Sequence[str], notify: Notify = None) -> None:
        with self._lock:
            for key in keys:
                self._counters[key] = self._counters.get(key, 0) + 1

    def acquire(self, key: str, token: str, ttl_ms: int) -> bool:
        now = self._clock.time()
        with self._lock:
            if self._get(key) is not None:
                return False
            self._data[key] = (token.encode(), now + ttl_ms / 1000.0)
            return True

    def release(self, key: str, token: str) -> bool:
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


class AsyncMemoryBackend:
    """:class:`MemoryBackend` with ``async`` methods, for :class:`AsyncCache` in tests."""

    errors: tuple[type[BaseException], ...] = ()

    def __init__(self, *, maxsize: int = 100_000, clock: Clock = SYSTEM_CLOCK) -> None:
        self.sync = MemoryBackend(maxsize=maxsize, clock=clock)

    async def get(self, key: str) -> bytes | None:
        return self.sync.get(key)

    async def get_with_counters(
        self, key: str, counter_keys: Sequence[str]
    ) -> tuple[bytes | None, list[int]]:
        return self.sync.get_with_counters(key, counter_keys)

    async def counters(self, keys: Sequence[str]) -> list[int]:
        return self.sync.counters(keys)

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.sync.mget(keys)

    async def set_many(
        self, items: Sequence[tuple[str, bytes, int]], notify: Notify = None
    ) -> None:
        self.sync.set_many(items, notify)

    async def delete(self, keys: Sequence[str], notify: Notify = None) -> None:
        self.sync.delete(keys, notify)

    async def incr(self, keys: Sequence[str], notify: Notify = None) -> None:
        self.sync.incr(keys, notify)

    async def acquire(self, key: str, token: str, ttl_ms: int) -> bool:
        return self.sync.acquire(key, token, ttl_ms)

    async def release(self, key: str, token: str) -> bool:
        return self.sync.release(key, token)


def is_async_client(client: Any) -> bool:
    """Whether ``client`` is a ``redis.asyncio`` client (plain or cluster)."""
    import redis.asyncio
    import redis.asyncio.cluster

    return isinstance(client, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster)


def is_sync_client(client: Any) -> bool:
    """Whether ``client`` is a sync ``redis.Redis`` or ``redis.cluster.RedisCluster``."""
    import redis
    import redis.cluster

    return isinstance(client, redis.Redis | redis.cluster.RedisCluster)


_GET_HEAD = b"*2\r\n$3\r\nGET\r\n"
# pack_command(_GET_HEAD, (key,)) in one formatting step (keys are always str).
_GET_FORMAT = _GET_HEAD + b"$%d\r\n%s\r\n"


def _is_cluster(client: Any) -> bool:
    return hasattr(client, "get_nodes") and hasattr(client, "get_node_from_key")


class RedisBackend:
    """A user's ``redis.Redis`` or ``redis.cluster.RedisCluster`` (or fakeredis).

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
        # GET is every read's one round trip: on a plain redis.Redis it skips the
        # client's per-command machinery (see scalekit._redis_direct).
        self._pool = direct_pool(client)
        self._response_error = rex.ResponseError
        self._connection_error = rex.ConnectionError
        self._timeout_error = rex.TimeoutError

    def _finish(self, pipe: Any, notify: Notify) -> None:
        # Cluster pipelines refuse PUBLISH; a cluster broadcasts it to every node anyway.
        if notify is not None and not self.cluster:
            pipe.publish(*notify)
        pipe.execute()
        if notify is not None and self.cluster:
            self.client.publish(*notify)

    def get(self, key: str) -> bytes | None:
        if self._pool is not None:
            raw = key.encode("utf-8")
            try:
                return send_packed(  # type: ignore[no-any-return]
                    self._pool, _GET_FORMAT % (len(raw), raw), self._response_error
                )
            except self._timeout_error:
                raise
            except self._connection_error:
                pass  # a stale pooled connection: once more, the client's way
        result: bytes | None = self.client.get(key)
        return result

    def get_with_counters(
        self, key: str, counter_keys: Sequence[str]
    ) -> tuple[bytes | None, list[int]]:
        if not counter_keys:
            return self.get(key), []
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        for counter in counter_keys:
            pipe.get(counter)
        replies = pipe.execute()
        return replies[0], [_as_int(raw) for raw in replies[1:]]

    def counters(self, keys: Sequence[str]) -> list[int]:
        return [_as_int(raw) for raw in self.mget(keys)] if keys else []

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if self.cluster:
            return list(self.client.mget_nonatomic(list(keys)))
        return list(self.client.mget(list(keys)))

    def set_many(self, items: Sequence[tuple[str, bytes, int]], notify: Notify = None) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, data, ttl_ms in items:
            pipe.set(key, data, px=max(ttl_ms, 1))
        self._finish(pipe, notify)

    def delete(self, keys: Sequence[str], notify: Notify = None) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        self._finish(pipe, notify)

    def incr(self, keys: Sequence[str], notify: Notify = None) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.incr(key)
        self._finish(pipe, notify)

    def acquire(self, key: str, token: str, ttl_ms: int) -> bool:
        return bool(self.client.set(key, token, nx=True, px=max(ttl_ms, 1)))

    def release(self, key: str, token: str) -> bool:
        return bool(self._release(keys=[key], args=[token]))


class AsyncRedisBackend:
    """A user's ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``."""

    def __init__(self, client: Any) -> None:
        from redis import exceptions as rex

        self.client = client
        self.errors = _redis_errors()
        self.busy_errors = _busy_errors()
        self.refusals = _refusal_errors()
        self.unavailable_replies = _unavailable_replies()
        self.cluster = _is_cluster(client)
        self._release = client.register_script(_RELEASE_LUA)
        # GET is every read's one round trip: on a plain redis.asyncio.Redis it
        # skips the client's per-command machinery (see scalekit._redis_direct).
        self._pool = adirect_pool(client)
        self._response_error = rex.ResponseError
        self._connection_error = rex.ConnectionError
        self._timeout_error = rex.TimeoutError

    async def _finish(self, pipe: Any, notify: Notify) -> None:
        if notify is not None and not self.cluster:
            pipe.publish(*notify)
        await pipe.execute()
        if notify is not None and self.cluster:
            await self.client.publish(*notify)

    async def get(self, key: str) -> bytes | None:
        if self._pool is not None:
            raw = key.encode("utf-8")
            try:
                return await asend_packed(  # type: ignore[no-any-return]
                    self._pool, _GET_FORMAT % (len(raw), raw), self._response_error
                )
            except self._timeout_error:
                raise
            except self._connection_error:
                pass  # a stale pooled connection: once more, the client's way
        result: bytes | None = await self.client.get(key)
        return result

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
