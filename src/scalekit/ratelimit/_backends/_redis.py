"""Redis through redis-py: one EVALSHA per check, sync and asyncio.

Works with ``redis.Redis``, ``redis.cluster.RedisCluster``,
``redis.asyncio.Redis`` and ``redis.asyncio.cluster.RedisCluster`` (and
fakeredis with Lua support). The asyncio backend is written in
``_async.py``, the blocking one generated from it (``_sync.py``);
what both share is in ``_base.py``. This module gathers them.
"""

from __future__ import annotations

from scalekit.ratelimit._backends._async import AsyncRedisBackend
from scalekit.ratelimit._backends._base import (
    OneKeyRequest,
    _evaluate_args,
    _pack_evalsha,
    _pack_one,
    is_outage,
    one_key_request,
)
from scalekit.ratelimit._backends._sync import RedisBackend

__all__ = [
    "AsyncRedisBackend",
    "OneKeyRequest",
    "RedisBackend",
    "_evaluate_args",
    "_pack_evalsha",
    "_pack_one",
    "is_outage",
    "one_key_request",
]
