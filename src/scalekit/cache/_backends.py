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

The asyncio backends are written in ``_backends_async.py``, the blocking ones
generated from it (``_backends_sync.py``); what both share is in ``_base.py``.
This module gathers them.
"""

from __future__ import annotations

from scalekit.cache._backends_async import AsyncMemoryBackend, AsyncRedisBackend
from scalekit.cache._backends_sync import MemoryBackend, RedisBackend
from scalekit.cache._base import (
    _GET_FORMAT,
    _GET_HEAD,
    _is_cluster,
    decodes_responses,
    is_async_client,
    is_sync_client,
)

__all__ = [
    "_GET_FORMAT",
    "_GET_HEAD",
    "AsyncMemoryBackend",
    "AsyncRedisBackend",
    "MemoryBackend",
    "RedisBackend",
    "_is_cluster",
    "decodes_responses",
    "is_async_client",
    "is_sync_client",
]
