"""Sharding over several databases: the stable shard key hash and the logical-to-physical map.

::

    from scalekit.sharding import logical_shard, shard_sql

    logical_shard(user_id)                          # 0..1023, the same everywhere
    select(users).where(shard_sql(users.c.id) == 7) # the same rule, on the server

How the parts fit: ``_hash.py`` is the key hash (a documented construction
over MD5 that PostgreSQL computes with built-in functions); ``_map.py`` the
pure assignment of logical shards to named targets, its balancing and the
rebalance plan (pure values: ``ShardAssignment``, ``ShardMove``).
"""

from __future__ import annotations

from scalekit.errors import ShardingError, UnknownShard
from scalekit.sharding._hash import (
    DEFAULT_LOGICAL_SHARDS,
    key_hash,
    logical_shard,
    shard_sql,
)
from scalekit.sharding._map import (
    ShardAssignment,
    ShardMove,
    assign_balanced,
    plan_rebalance,
    rebalance,
)

__all__ = [
    "DEFAULT_LOGICAL_SHARDS",
    "ShardAssignment",
    "ShardMove",
    "ShardingError",
    "UnknownShard",
    "assign_balanced",
    "key_hash",
    "logical_shard",
    "plan_rebalance",
    "rebalance",
    "shard_sql",
]
