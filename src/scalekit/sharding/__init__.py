"""Sharding over several databases: the stable shard key hash and the logical-to-physical map.

::

    from scalekit.sharding import logical_shard, shard_sql

    logical_shard(user_id)                          # 0..1023, the same everywhere
    select(users).where(shard_sql(users.c.id) == 7) # the same rule, on the server

    shards = ShardMap({"db0": engine0, "db1": engine1})
    with shards.session(user_id) as session: ...    # bound to the engine holding user_id

How the parts fit: ``_hash.py`` is the key hash (documented constructions,
a multiplication for ints and MD5 for the others, that PostgreSQL computes
with built-in functions); ``_map.py`` the
pure assignment of logical shards to named targets, its balancing and the
rebalance plan (pure values: ``ShardAssignment``, ``ShardMove``); ``_core.py``
merges rows read from several shards (aggregates, ordered pages) and
``_catalog.py`` holds the catalog and fence tables; ``_base.py`` is what
both maps share without I/O (look-ups, the commit-time fence check) and
``_orm.py`` the ``ShardSession`` routing statements by ``shard_key``;
``_async.py`` is ``AsyncShardMap``, ``AsyncShardCatalog`` and
``AsyncRedisShardCatalog`` (the engines and routing pools behind the names)
and ``_sync.py``, generated from it by ``scripts/unasync.py``, is
``ShardMap``, ``ShardCatalog`` and ``RedisShardCatalog``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalekit.errors import FanOutError, ShardingError, StaleShardMap, UnknownShard
from scalekit.sharding._core import Distribution
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
    from scalekit.sharding._async import (
        AsyncRedisShardCatalog,
        AsyncShardCatalog,
        AsyncShardMap,
    )
    from scalekit.sharding._orm import ShardSession
    from scalekit.sharding._sync import RedisShardCatalog, ShardCatalog, ShardMap

__all__ = [
    "AsyncRedisShardCatalog",
    "AsyncShardCatalog",
    "AsyncShardMap",
    "DEFAULT_LOGICAL_SHARDS",
    "Distribution",
    "FanOutError",
    "RedisShardCatalog",
    "ShardAssignment",
    "ShardCatalog",
    "ShardMap",
    "ShardMove",
    "ShardSession",
    "ShardingError",
    "StaleShardMap",
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


_LAZY = {
    "AsyncRedisShardCatalog": "scalekit.sharding._async",
    "AsyncShardCatalog": "scalekit.sharding._async",
    "AsyncShardMap": "scalekit.sharding._async",
    "RedisShardCatalog": "scalekit.sharding._sync",
    "ShardCatalog": "scalekit.sharding._sync",
    "ShardMap": "scalekit.sharding._sync",
    "ShardSession": "scalekit.sharding._orm",
}


def __getattr__(name: str) -> Any:
    # The maps import SQLAlchemy's ORM; load them on first use so that the hash
    # and the pure map stay light.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
