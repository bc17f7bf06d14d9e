"""Redis cache-aside with stampede protection, two tiers and safe serialisation.

::

    from scalekit.cache import Cache, LocalCache

    cache = Cache(redis_client, namespace="app", default_ttl=300,
                  local=LocalCache(maxsize=10_000, ttl=5.0))
    user = cache.get_or_set("user:1", lambda: load_user(1), ttl=60, tags=["user:1"])

    @cache.cached(ttl=60, tags=lambda user_id: [f"user:{user_id}"])
    def get_user(user_id: int) -> dict: ...

    cache.invalidate_tags("user:1")

How the parts fit: ``_core.py`` is the pure rule (keys, the envelope stored
with every value, jittered TTLs, the XFetch / stale / miss decision);
``_serializers.py`` turns values into bytes (JSON by default, msgpack,
HMAC-signed pickle); ``_backends.py`` is the only code that talks to Redis
(or to the in-process memory backend); ``_base.py`` holds what both shells
share, including how a :class:`~scalekit.breaker.CircuitBreaker` guards every
Redis call; :class:`Cache` (``_sync.py``) and :class:`AsyncCache`
(``_async.py``) add the I/O, single-flight and the lease; ``_local.py`` is the
in-process tier. See ``docs/cache.md``.
"""

from __future__ import annotations

from scalekit.cache._async import AsyncCache, AsyncCachedFunction
from scalekit.cache._backends import AsyncMemoryBackend, MemoryBackend
from scalekit.cache._base import CacheStats, DownPolicy
from scalekit.cache._core import NOT_FOUND, KeyBuilder, NotFound
from scalekit.cache._events import (
    CacheDecodeFailed,
    CacheLeaseWait,
    CacheLoaded,
    CacheRefreshFailed,
    CacheStaleServed,
)
from scalekit.cache._local import LocalCache
from scalekit.cache._serializers import (
    JsonSerializer,
    MsgpackSerializer,
    Serializer,
    SignedPickleSerializer,
)
from scalekit.cache._sync import Cache, CachedFunction
from scalekit.errors import CacheError, CacheUnavailable, SerializationError

__all__ = [
    "AsyncCache",
    "AsyncCachedFunction",
    "AsyncMemoryBackend",
    "Cache",
    "CacheDecodeFailed",
    "CacheError",
    "CacheLeaseWait",
    "CacheLoaded",
    "CacheRefreshFailed",
    "CacheStaleServed",
    "CacheStats",
    "CacheUnavailable",
    "CachedFunction",
    "DownPolicy",
    "JsonSerializer",
    "KeyBuilder",
    "LocalCache",
    "MemoryBackend",
    "MsgpackSerializer",
    "NOT_FOUND",
    "NotFound",
    "SerializationError",
    "Serializer",
    "SignedPickleSerializer",
]
