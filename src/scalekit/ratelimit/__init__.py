"""Rate limiting on Redis: GCRA, token bucket, sliding windows, fixed window, concurrency.

Many app instances share one limit per customer, IP or API key. Each check is
one EVALSHA running on Redis's clock, and returns the whole decision
(``allowed``, ``remaining``, ``reset_after``, ``retry_after``), so response
headers cost nothing extra. When Redis is down, a limiter follows its
``fallback`` policy (``local``, ``allow``, ``deny`` or ``raise``) without
adding latency, and emits an event when it falls back and when it recovers.

>>> from scalekit.ratelimit import Limit, MemoryBackend, RateLimiter
>>> limiter = RateLimiter(MemoryBackend())          # or RateLimiter(redis.Redis(...))
>>> decision = limiter.hit("customer:42", Limit.parse("100/hour"))
>>> decision.allowed, decision.remaining
(True, 99)

The pure rules are in ``_core`` (one pair of functions per algorithm), the Lua
scripts that mirror them in ``_lua/``, the stores in ``_backends/``, and the
thin shells: what both colours share without I/O in ``_base``, the asyncio
limiter in ``_async`` and the sync one in ``_sync`` (generated from it by
``scripts/unasync.py``); the concurrency limiters likewise: their logic in
``_concurrency_base``, the asyncio one in ``_concurrency_async`` and the sync
one in ``_concurrency_sync`` (generated).
"""

from __future__ import annotations

from scalekit.errors import RateLimiterUnavailable
from scalekit.ratelimit._async import AsyncRateLimiter
from scalekit.ratelimit._backends import AsyncRedisBackend, MemoryBackend, RedisBackend
from scalekit.ratelimit._base import FallbackPolicy, ShadowDenied
from scalekit.ratelimit._concurrency_async import AsyncConcurrencyLimiter, AsyncLease
from scalekit.ratelimit._concurrency_sync import ConcurrencyLimiter, Lease
from scalekit.ratelimit._core import (
    ALGORITHMS,
    Algorithm,
    Decision,
    HeaderStyle,
    Limit,
    hash_key_part,
    storage_key,
)
from scalekit.ratelimit._sync import RateLimiter

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "AsyncConcurrencyLimiter",
    "AsyncLease",
    "AsyncRateLimiter",
    "AsyncRedisBackend",
    "ConcurrencyLimiter",
    "Decision",
    "FallbackPolicy",
    "HeaderStyle",
    "Lease",
    "Limit",
    "MemoryBackend",
    "RateLimiter",
    "RateLimiterUnavailable",
    "RedisBackend",
    "ShadowDenied",
    "hash_key_part",
    "storage_key",
]
