"""``ShardMap``: the pure assignment with an ``Engine`` behind each target name.

Hand-written for now; when ``AsyncShardMap`` lands (planned) the asyncio shell
becomes the source in ``_async.py`` and this file is generated from it by
``scripts/unasync.py``. Everything here is a dictionary look-up over
:class:`~scalekit.sharding.ShardAssignment`; the only I/O is in the sessions
it hands out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from scalekit.errors import ConfigurationError, UnknownShard
from scalekit.sharding._hash import DEFAULT_LOGICAL_SHARDS, ShardKey, logical_shard
from scalekit.sharding._map import ShardAssignment, assign_balanced

__all__ = ["ShardMap"]


class ShardMap:
    """Logical shards assigned to named ``Engine`` targets; routes a key to its database.

    ::

        shards = ShardMap({"db0": engine0, "db1": engine1, "db2": engine2, "db3": engine3})
        with shards.session(user_id) as session:   # bound to the engine holding user_id
            session.add(User(id=user_id, ...))
            session.commit()

    ``assignment`` defaults to :func:`assign_balanced` over the names in
    ``targets`` order with ``logical_shards`` logical shards; pass one (a
    stored map, or the result of :func:`rebalance`) to use it. Its target
    names and the keys of ``targets`` must be the same set.

    Raises:
        ConfigurationError: no target, a value that is not an ``Engine``,
            ``logical_shards`` given with an assignment of another count, or
            target names that differ from the assignment's (the names are
            listed).
    """

    __slots__ = ("_assignment", "_engines", "_owners")

    def __init__(
        self,
        targets: Mapping[str, sa.Engine],
        *,
        assignment: ShardAssignment | None = None,
        logical_shards: int | None = None,
    ) -> None:
        engines = dict(targets)
        # Typed as Engines, but a config file or an AsyncEngine can hand us anything.
        given: dict[str, object] = dict(targets)
        not_engines = [name for name, engine in given.items() if not isinstance(engine, sa.Engine)]
        if not_engines:
            raise ConfigurationError(
                f"shard targets must be Engines; not for {', '.join(map(repr, not_engines))}",
                parameter="targets",
            )
        if assignment is None:
            assignment = assign_balanced(
                list(engines), DEFAULT_LOGICAL_SHARDS if logical_shards is None else logical_shards
            )
        elif logical_shards is not None and logical_shards != assignment.logical_shards:
            raise ConfigurationError(
                f"logical_shards={logical_shards} but the assignment "
                f"(version {assignment.version}) has {assignment.logical_shards}",
                parameter="logical_shards",
            )
        missing = [name for name in assignment.targets if name not in engines]
        extra = [name for name in engines if name not in assignment.targets]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"no engine for {', '.join(map(repr, missing))}")
            if extra:
                parts.append(f"{', '.join(map(repr, extra))} not in the assignment")
            raise ConfigurationError(
                f"shard targets do not match the assignment: {'; '.join(parts)}",
                parameter="targets",
            )
        self._assignment = assignment
        self._engines = engines
        # owners[logical] -> Engine: one index on the hot path.
        self._owners = tuple(engines[name] for name in assignment.owners)

    @property
    def assignment(self) -> ShardAssignment:
        """The pure map in use (target names, owners, version)."""
        return self._assignment

    @property
    def version(self) -> int:
        """The version of the assignment in use."""
        return self._assignment.version

    @property
    def targets(self) -> Mapping[str, sa.Engine]:
        """The engines by target name (a copy)."""
        return dict(self._engines)

    def shard_for(self, key: ShardKey) -> int:
        """The logical shard of ``key``.

        Raises:
            ConfigurationError: ``key`` is not an int, str, bytes or UUID.
        """
        return logical_shard(key, len(self._owners))

    def name_for(self, key: ShardKey) -> str:
        """The name of the target holding ``key``.

        Raises:
            ConfigurationError: ``key`` is not an int, str, bytes or UUID.
        """
        return self._assignment.owners[logical_shard(key, len(self._owners))]

    def target_for(self, key: ShardKey) -> sa.Engine:
        """The engine holding ``key``.

        Raises:
            ConfigurationError: ``key`` is not an int, str, bytes or UUID.
        """
        return self._owners[logical_shard(key, len(self._owners))]

    def target(self, name: str) -> sa.Engine:
        """The engine of target ``name``.

        Raises:
            UnknownShard: no target has that name.
        """
        try:
            return self._engines[name]
        except KeyError:
            raise UnknownShard(
                f"unknown shard target {name!r} (targets are {', '.join(self._engines)})",
                shard=name,
            ) from None

    def session(self, key: ShardKey, **session_options: Any) -> Session:
        """A new ``Session`` bound to the engine holding ``key``.

        ``session_options`` go to ``Session`` (``expire_on_commit=False``...).
        Use it as a context manager; everything it runs goes to that one
        database, so keep one session to the rows of one shard key.

        Raises:
            ConfigurationError: ``key`` is not an int, str, bytes or UUID.
        """
        return Session(bind=self.target_for(key), **session_options)

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={count}" for name, count in self._assignment.counts().items())
        return (
            f"<ShardMap version={self._assignment.version} "
            f"logical_shards={self._assignment.logical_shards} {counts}>"
        )
