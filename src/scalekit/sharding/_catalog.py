"""The catalog's tables and the encoding of a :class:`ShardAssignment` in them.

Theory of operation. The catalog is a table on a database the team chooses
(``scalekit_shard_catalog``): one row per published version of a named map,
``(map_name, version)`` the primary key, the target names and the owner of
each logical shard as JSON. Instances read the highest version; publishing
inserts ``version + 1``, and the primary key makes two publishers of the same
version collide instead of overwriting each other.

Each target database holds a fence (``scalekit_shard_fence``): one row per
map, the lowest map version allowed to write there. Publishing a version
that moves logical shards to or from a target raises that target's fence to
the new version *before* the catalog row is written. A write transaction
reads its target's fence at commit (``FOR SHARE`` on PostgreSQL, so a fence
update waits for commits in flight and every later commit sees it); when the
fence is above the instance's map version the commit is refused with
:class:`~scalekit.errors.StaleShardMap`: the write is not lost in a database
that no longer owns the shard. Pure definitions here; the shells do the I/O.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from scalekit.errors import ConfigurationError
from scalekit.sharding._map import ShardAssignment

__all__ = [
    "CATALOG_TABLE",
    "FENCE_TABLE",
    "MOVES_TABLE",
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
    sa.Column("version", sa.BigInteger, nullable=False),
)


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


def moved_targets(old: ShardAssignment, new: ShardAssignment) -> list[str]:
    """The targets that gain or lose a logical shard from ``old`` to ``new``, in ``new`` order.

    Raises:
        ConfigurationError: the logical shard count changed.
    """
    from scalekit.sharding._map import plan_rebalance

    touched: set[str] = set()
    for move in plan_rebalance(old, new):
        touched.update((move.source, move.target))
    order = [*new.targets, *(name for name in old.targets if name not in new.targets)]
    return [name for name in order if name in touched]
