"""Stores the limiters run against: Redis (sync and asyncio, standalone or cluster) and memory.

A backend does the I/O of one check: it runs an algorithm's script (or, in
memory, the pure core) and returns an :class:`~scalekit.ratelimit._core.Outcome`.
Outages surface as :class:`StoreUnavailable`; every other error is a bug and
propagates.
"""

from __future__ import annotations

from scalekit.ratelimit._backends._base import AsyncBackend, StoreUnavailable, SyncBackend
from scalekit.ratelimit._backends._memory import MemoryBackend
from scalekit.ratelimit._backends._redis import AsyncRedisBackend, RedisBackend

__all__ = [
    "AsyncBackend",
    "AsyncRedisBackend",
    "MemoryBackend",
    "RedisBackend",
    "StoreUnavailable",
    "SyncBackend",
]
