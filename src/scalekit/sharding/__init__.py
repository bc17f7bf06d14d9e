"""Sharding over several databases: the stable shard key hash and the logical-to-physical map.

::

    from scalekit.sharding import logical_shard, shard_sql

    logical_shard(user_id)                          # 0..1023, the same everywhere
    select(users).where(shard_sql(users.c.id) == 7) # the same rule, on the server

    shards = ShardMap({"db0": engine0, "db1": engine1})
    with shards.session(user_id) as session: ...    # bound to the engine holding user_id

How the parts fit: ``_hash.py`` is the key hash (a documented construction
over MD5 that PostgreSQL computes with built-in functions); ``_map.py`` the
pure assignment of logical shards to named targets, its balancing and the
rebalance plan (pure values: ``ShardAssignment``, ``ShardMove``); ``_sync.py``
is ``ShardMap``, the engines behind the names (sync only for now; the
asyncio twin is planned, and then ``_sync.py`` is generated from it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

# Shard-aware IDs (issue 16): one block, so that it merges beside the map's exports.
# isort: split
from scalekit.errors import ClockMovedBackwards, WorkerLeaseError
from scalekit.sharding._ids import (
    DEFAULT_EPOCH_MS,
    DEFAULT_ID_LAYOUT,
    GENERATOR_ID_LAYOUT,
    IdIssuer,
    IdLayout,
    IdParts,
    IdRenew,
    IdWait,
    LeaseGrant,
    LeaseSettings,
    id_function_sql,
    shard_of_id,
)
from scalekit.sharding._ids_async import (
    AsyncIdGenerator,
    AsyncRedisWorkerLease,
    AsyncWorkerLease,
    ainstall_id_function,
)
from scalekit.sharding._ids_sync import (
    IdGenerator,
    RedisWorkerLease,
    WorkerLease,
    install_id_function,
)

if TYPE_CHECKING:
    from scalekit.sharding._sync import ShardMap

__all__ = [
    "DEFAULT_LOGICAL_SHARDS",
    "ShardAssignment",
    "ShardMap",
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

# Shard-aware IDs (issue 16).
__all__ += [
    "DEFAULT_EPOCH_MS",
    "DEFAULT_ID_LAYOUT",
    "GENERATOR_ID_LAYOUT",
    "AsyncIdGenerator",
    "AsyncRedisWorkerLease",
    "AsyncWorkerLease",
    "ClockMovedBackwards",
    "IdGenerator",
    "IdIssuer",
    "IdLayout",
    "IdParts",
    "IdRenew",
    "IdWait",
    "LeaseGrant",
    "LeaseSettings",
    "RedisWorkerLease",
    "WorkerLease",
    "WorkerLeaseError",
    "ainstall_id_function",
    "id_function_sql",
    "install_id_function",
    "shard_of_id",
]
__all__.sort()


def __getattr__(name: str) -> Any:
    # ShardMap imports SQLAlchemy's ORM; load it on first use so that the hash
    # and the pure map stay light.
    if name == "ShardMap":
        from scalekit.sharding._sync import ShardMap

        globals()[name] = ShardMap
        return ShardMap
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
