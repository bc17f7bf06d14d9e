"""The catalog's tables and the encoding of a :class:`ShardAssignment` in them.

Theory of operation. The catalog is a table on a database the team chooses
(``scalekit_shard_catalog``): one row per published version of a named map,
``(map_name, version)`` the primary key, the target names and the owner of
each logical shard as JSON. Instances read the highest version; publishing
inserts ``version + 1``, and the primary key makes two publishers of the same
version collide instead of overwriting each other.

Each target database holds fences (``scalekit_shard_fence``), per map: a
row per logical shard that ever moved to or from that target, holding the
version of its last move (the lowest map version allowed to write that
shard there), and a target row (``logical = -1``) holding the newest version
that moved any shard to or from it. Publishing a version that moves logical
shards raises, on each target they leave or reach, the target row and then
the rows of those shards to the new version, in one transaction, *before*
the catalog row is written. A write transaction reads its target's fences at
commit: first the target row ``FOR SHARE`` on PostgreSQL (so a publisher's
update waits for commits in flight, and a commit that starts during a
publish waits for it), then, in a statement of its own (a fresh snapshot
under READ COMMITTED, so a publish that just committed is seen), the rows of
the logical shards it wrote. When one is above the instance's map version
the commit is refused with :class:`~scalekit.errors.StaleShardMap`: the
write is not lost in a database that no longer owns the shard. A stale
instance's writes to shards that did not move commit: its map still routes
them right. A write whose logical shard is unknown is checked against the
target row. Pure definitions here; the shells do the I/O.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from scalekit.errors import ConfigurationError, ShardingError
from scalekit.sharding._map import ShardAssignment

__all__ = [
    "CATALOG_TABLE",
    "FENCE_TABLE",
    "MOVES_TABLE",
    "TARGET_FENCE",
    "catalog_table",
    "decode_assignment",
    "encode_assignment",
    "fence_table",
    "moves_table",
]

CATALOG_TABLE = "scalekit_shard_catalog"
FENCE_TABLE = "scalekit_shard_fence"

catalog_metadata = sa.MetaData()
catalog_table = sa.Table(
    CATALOG_TABLE,
    catalog_metadata,
    sa.Column("map_name", sa.String(200), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("targets", sa.Text, nullable=False),
    sa.Column("owners", sa.Text, nullable=False),
)

MOVES_TABLE = "scalekit_shard_moves"
moves_table = sa.Table(
    MOVES_TABLE,
    catalog_metadata,
    sa.Column("map_name", sa.String(200), primary_key=True),
    sa.Column("logical", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("step", sa.String(20), nullable=False),
)
"""Moves in progress: one row per logical shard being moved, with the last step done."""

fence_metadata = sa.MetaData()
fence_table = sa.Table(
    FENCE_TABLE,
    fence_metadata,
    sa.Column("map_name", sa.String(200), primary_key=True),
    sa.Column("logical", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
)
"""Per map: ``logical = -1`` the target row, else one row per logical shard that moved."""

TARGET_FENCE = -1
"""The ``logical`` of a fence's target row."""


REDIS_CATALOG_PREFIX = "scalekit:shard-catalog"

REDIS_PUBLISH = """
local current = redis.call('HGET', KEYS[1], 'version')
local version = tonumber(ARGV[1])
if current then
    current = tonumber(current)
    if current == version then
        if redis.call('HGET', KEYS[1], 'targets') == ARGV[2]
                and redis.call('HGET', KEYS[1], 'owners') == ARGV[3] then
            return {0, current}
        end
        return {-1, current}
    end
    if version ~= current + 1 then
        return {-2, current}
    end
elseif version ~= 1 then
    return {-2, 0}
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'targets', ARGV[2], 'owners', ARGV[3])
return {1, version}
"""
"""Compare-and-set of a Redis catalog's hash: ``{1, v}`` stored, ``{0, v}`` the same
map was there, ``{-1, v}`` another map holds that version, ``{-2, v}`` not the next."""


def check_publish(name: str, latest: ShardAssignment | None, assignment: ShardAssignment) -> bool:
    """Whether ``assignment`` is still to be stored over ``latest`` (False: it is already).

    Raises:
        ConfigurationError: the logical shard count differs from the stored map's.
        ShardingError: the version does not follow the newest.
    """
    if latest is not None and latest.logical_shards != assignment.logical_shards:
        raise ConfigurationError(
            f"the logical shard count changed from {latest.logical_shards} "
            f"(version {latest.version}) to {assignment.logical_shards}; "
            "it is fixed once data exists",
            parameter="logical_shards",
        )
    if latest == assignment:
        return False
    expected = 1 if latest is None else latest.version + 1
    if assignment.version != expected:
        raise ShardingError(
            f"cannot publish version {assignment.version} of shard map {name!r}: "
            f"the next version is {expected}"
        )
    return True


def redis_catalog_key(name: str, prefix: str = REDIS_CATALOG_PREFIX) -> str:
    """The Redis key of map ``name``'s catalog hash (one key: cluster-safe)."""
    return f"{prefix}:{{{name}}}"


def decode_redis_catalog(name: str, fields: dict[Any, Any]) -> ShardAssignment | None:
    """The assignment in a Redis catalog hash (``HGETALL``), or None when it is empty.

    Raises:
        ConfigurationError: the hash does not hold a valid assignment.
    """
    if not fields:
        return None
    text = {
        (key.decode() if isinstance(key, bytes) else key): (
            value.decode() if isinstance(value, bytes) else value
        )
        for key, value in fields.items()
    }
    try:
        version = int(text["version"])
        row = SimpleNamespace(
            map_name=name, version=version, targets=text["targets"], owners=text["owners"]
        )
    except (KeyError, ValueError) as error:
        raise ConfigurationError(
            f"the Redis catalog of shard map {name!r} is corrupt: {error!r}", parameter="catalog"
        ) from error
    return decode_assignment(row)


def check_map_name(name: object) -> str:
    """``name`` if it is a usable map name. Raises ConfigurationError."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ConfigurationError(
            f"map name must be a non-empty str of at most 200 characters, got {name!r}",
            parameter="name",
        )
    return name


def encode_assignment(name: str, assignment: ShardAssignment) -> dict[str, Any]:
    """The catalog row of ``assignment`` (owners stored as indexes into the targets)."""
    index = {target: position for position, target in enumerate(assignment.targets)}
    return {
        "map_name": name,
        "version": assignment.version,
        "targets": json.dumps(list(assignment.targets)),
        "owners": json.dumps([index[owner] for owner in assignment.owners], separators=(",", ":")),
    }


def decode_assignment(row: Any) -> ShardAssignment:
    """The assignment stored in a catalog row.

    Raises:
        ConfigurationError: the row does not hold a valid assignment.
    """
    try:
        targets = tuple(json.loads(row.targets))
        owners = tuple(targets[position] for position in json.loads(row.owners))
    except (ValueError, TypeError, IndexError) as error:
        raise ConfigurationError(
            f"catalog row {row.map_name!r} version {row.version} is corrupt: {error}",
            parameter="catalog",
        ) from error
    return ShardAssignment(targets, owners, int(row.version))


def moved_shards(old: ShardAssignment, new: ShardAssignment) -> dict[str, list[int]]:
    """The logical shards each target gains or loses from ``old`` to ``new``, in ``new`` order.

    Raises:
        ConfigurationError: the logical shard count changed.
    """
    from scalekit.sharding._map import plan_rebalance

    touched: dict[str, list[int]] = {}
    for move in plan_rebalance(old, new):
        touched.setdefault(move.source, []).append(move.logical)
        touched.setdefault(move.target, []).append(move.logical)
    order = [*new.targets, *(name for name in old.targets if name not in new.targets)]
    return {name: sorted(touched[name]) for name in order if name in touched}


def fence_upserts(
    conn_rows: dict[int, int], map_name: str, logicals: list[int], version: int
) -> tuple[list[int], list[dict[str, Any]]]:
    """Raising fences to ``version``: the logicals to update, and the rows to insert.

    ``conn_rows`` is what the target holds (logical -> version) for the target
    row and ``logicals``; the target row comes first in both lists.
    """
    update: list[int] = []
    insert: list[dict[str, Any]] = []
    for logical in [TARGET_FENCE, *logicals]:
        present = conn_rows.get(logical)
        if present is None:
            insert.append({"map_name": map_name, "logical": logical, "version": version})
        elif present < version:
            update.append(logical)
    return update, insert
