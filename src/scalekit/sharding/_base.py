"""What ``ShardMap`` and ``AsyncShardMap`` share without I/O of their own.

Construction and validation (targets are engines or routing pools of the
shell's colour), the key look-ups over the pure :class:`ShardAssignment`,
swapping in a newer assignment, and the commit-time fence check that both
colours run inside the ORM's sync session (the asyncio one in SQLAlchemy's
greenlet bridge).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event

from scalekit.errors import ConfigurationError, ShardingError, StaleShardMap, UnknownShard
from scalekit.routing._base import PoolBase
from scalekit.routing._statements import FLUSH, classify
from scalekit.sharding._catalog import TARGET_FENCE, check_map_name, fence_table
from scalekit.sharding._hash import DEFAULT_LOGICAL_SHARDS, ShardKey, _fast_md5, logical_shard
from scalekit.sharding._map import ShardAssignment, assign_balanced

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect
    from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

__all__ = ["ShardMapBase"]

_LOW_63 = (1 << 63) - 1
_CACHE_SIZE = 1 << 16
_md5 = _fast_md5()
_from_bytes = int.from_bytes

WROTE_INFO = "scalekit_shard_wrote"
"""``session.info`` key: target name -> the logical shards a transaction wrote to there."""


#: The shared advisory lock of each logical shard a commit wrote (``:shards``, an int list).
_SHARED_LOCKS = sa.text(
    "SELECT pg_advisory_xact_lock_shared(:cls, shard) FROM unnest(CAST(:shards AS int[])) AS shard"
)


class ShardMapBase:
    """Shared by :class:`ShardMap` and :class:`AsyncShardMap` (no I/O here)."""

    _async = False

    def __init__(
        self,
        targets: Mapping[str, Any],
        *,
        assignment: ShardAssignment | None = None,
        logical_shards: int | None = None,
        name: str = "default",
        fenced: bool = False,
        fan_out_timeout: float | None = None,
    ) -> None:
        self.name = check_map_name(name)
        given: dict[str, object] = dict(targets)
        wrong = [target for target, value in given.items() if not self._is_target(value)]
        if wrong:
            kind = "AsyncEngines or AsyncRoutingPools" if self._async else "Engines or RoutingPools"
            raise ConfigurationError(
                f"shard targets must be {kind}; not for {', '.join(map(repr, wrong))}",
                parameter="targets",
            )
        seen: dict[int, str] = {}
        for target, value in given.items():
            if id(value) in seen:
                raise ConfigurationError(
                    f"shard targets {seen[id(value)]!r} and {target!r} are the same object",
                    parameter="targets",
                )
            seen[id(value)] = target
        timeout: object = fan_out_timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ConfigurationError(
                f"fan_out_timeout must be a positive number or None, got {fan_out_timeout!r}",
                parameter="fan_out_timeout",
            )
        self._targets: dict[str, Any] = dict(targets)
        self.fan_out_timeout = fan_out_timeout
        self.fenced = fenced
        if assignment is None:
            assignment = assign_balanced(
                list(self._targets),
                DEFAULT_LOGICAL_SHARDS if logical_shards is None else logical_shards,
            )
        elif logical_shards is not None and logical_shards != assignment.logical_shards:
            raise ConfigurationError(
                f"logical_shards={logical_shards} but the assignment "
                f"(version {assignment.version}) has {assignment.logical_shards}",
                parameter="logical_shards",
            )
        self._install(assignment, exact=True)

    # -- construction helpers ------------------------------------------------------------------

    def _is_target(self, value: object) -> bool:
        if isinstance(value, PoolBase):
            return value._async is self._async
        if self._async:
            from sqlalchemy.ext.asyncio import AsyncEngine

            return isinstance(value, AsyncEngine)
        return isinstance(value, sa.Engine)

    def _check_known(self, assignment: ShardAssignment) -> None:
        """Raise ConfigurationError if ``assignment`` names a target without an engine or pool."""
        missing = [name for name in assignment.targets if name not in self._targets]
        if missing:
            raise ConfigurationError(
                f"shard map version {assignment.version} names targets with no engine or pool "
                f"here: {', '.join(map(repr, missing))}",
                parameter="targets",
            )

    def _dialect(self) -> Dialect:
        """The targets' dialect. Raises ConfigurationError when they differ."""
        dialects: dict[str, Dialect] = {}
        for value in self._targets.values():
            engine = value
            if isinstance(value, PoolBase):
                engine = next(iter(value.router.engines.values()))
            dialects[engine.dialect.name] = engine.dialect
        if len(dialects) > 1:
            raise ConfigurationError(
                f"the targets of a map must share one dialect, got {', '.join(sorted(dialects))}",
                parameter="targets",
            )
        return next(iter(dialects.values()))

    def _install(self, assignment: ShardAssignment, *, exact: bool = False) -> None:
        """Use ``assignment`` from now on. Raises ConfigurationError on a target mismatch."""
        missing = [name for name in assignment.targets if name not in self._targets]
        extra = [name for name in self._targets if name not in assignment.targets]
        if missing or (exact and extra):
            parts = []
            if missing:
                parts.append(f"no engine for {', '.join(map(repr, missing))}")
            if exact and extra:
                parts.append(f"{', '.join(map(repr, extra))} not in the assignment")
            raise ConfigurationError(
                f"shard targets do not match the assignment (version {assignment.version}): "
                f"{'; '.join(parts)}",
                parameter="targets",
            )
        current = getattr(self, "_assignment", None)
        if current is not None and assignment.logical_shards != current.logical_shards:
            raise ConfigurationError(
                f"the logical shard count changed from {current.logical_shards} "
                f"(version {current.version}) to {assignment.logical_shards} "
                f"(version {assignment.version}); it is fixed once data exists",
                parameter="logical_shards",
            )
        self._assignment = assignment
        # owners[logical] -> target: one index on the hot path.
        self._owners = tuple(self._targets[name] for name in assignment.owners)
        self._owner_names = assignment.owners
        self._count = count = assignment.logical_shards
        power_of_two = count & (count - 1) == 0
        # An int key's shard is the high bits of its 64-bit hash: ``h >> _shift``
        # for a power-of-two count (0: any other count, ``(h * count) >> 64``).
        self._shift = 65 - count.bit_length() if power_of_two and count <= 1 << 63 else 0
        self._mask = count - 1 if power_of_two and count <= 1 << 16 else -1
        self._cache: dict[str, int] = {}

    # -- look-ups ------------------------------------------------------------------------------

    @property
    def assignment(self) -> ShardAssignment:
        """The pure map in use (target names, owners, version)."""
        return self._assignment

    @property
    def version(self) -> int:
        """The version of the assignment in use."""
        return self._assignment.version

    @property
    def targets(self) -> dict[str, Any]:
        """The engines or pools by target name (a copy), in the assignment's order."""
        return {name: self._targets[name] for name in self._assignment.targets}

    def shard_for(self, key: ShardKey) -> int:
        """The logical shard of ``key``.

        Recent str keys are kept in a bounded cache (the same value as
        :func:`logical_shard`, a dict look-up instead of an MD5); an int key
        costs a multiplication, cheaper than the cache.

        Raises:
            ConfigurationError: ``key`` is not an int, str, bytes or UUID.
        """
        # The type test comes first: a bool is refused, and a dict would take 1.0 for 1.
        key_type = type(key)
        if key_type is int and -0x8000000000000000 <= key < 0x8000000000000000:  # type: ignore[operator]
            # logical_shard inlined (see _hash.py): the high bits of the 64-bit hash.
            hash64 = key * 0x4F1BBCDC3FA53E0B & 0xFFFFFFFFFFFFFFFF  # type: ignore[operator]
            shift = self._shift
            return hash64 >> shift if shift else hash64 * self._count >> 64
        if key_type is str:
            cache = self._cache
            logical = cache.get(key)  # type: ignore[arg-type]
            if logical is not None:
                return logical
            # logical_shard inlined for str keys (the same bytes, see _hash.py).
            try:
                data = b"\x02" + key.encode()  # type: ignore[union-attr]
            except UnicodeEncodeError:
                return logical_shard(key, self._count)  # raises the clear error
            if (mask := self._mask) >= 0:
                # A power-of-two count up to 2**16: the low bits of the hash's first
                # 8 bytes, i.e. of its bytes 6 and 7 (the 63-bit mask cannot matter).
                digest = _md5(data).digest()
                logical = (digest[6] << 8 | digest[7]) & mask
            else:
                logical = (_from_bytes(_md5(data).digest()[:8], "big") & _LOW_63) % self._count
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[key] = logical  # type: ignore[index]
            return logical
        return logical_shard(key, self._count)

    def name_for(self, key: ShardKey) -> str:
        """The name of the target holding ``key``.

        Raises:
            ConfigurationError: ``key`` is not an int, str, bytes or UUID.
        """
        if type(key) is int and -0x8000000000000000 <= key < 0x8000000000000000:
            # shard_for's int case inlined: one call less on the hot path.
            hash64 = key * 0x4F1BBCDC3FA53E0B & 0xFFFFFFFFFFFFFFFF
            shift = self._shift
            return self._owner_names[hash64 >> shift if shift else hash64 * self._count >> 64]
        return self._owner_names[self.shard_for(key)]

    def target_for(self, key: ShardKey) -> Any:
        """The engine or pool holding ``key``.

        Raises:
            ConfigurationError: ``key`` is not an int, str, bytes or UUID.
        """
        return self._owners[self.shard_for(key)]

    def target(self, name: str) -> Any:
        """The engine or pool of target ``name``.

        Raises:
            UnknownShard: no target has that name.
        """
        try:
            return self._targets[name]
        except KeyError:
            raise UnknownShard(
                f"unknown shard target {name!r} (targets are {', '.join(self._targets)})",
                shard=name,
            ) from None

    def _sync_bind(self, name: str, *, writes: bool) -> sa.Engine:
        """The sync engine a statement for target ``name`` runs on."""
        value = self.target(name)
        if isinstance(value, PoolBase):
            router = value.router
            node = router.route_write() if writes else router.route_read(frozenset(), fast=False)
            engine: sa.Engine = router.engines[node]
            return engine
        return value if isinstance(value, sa.Engine) else value.sync_engine

    # -- fences --------------------------------------------------------------------------------

    def _watch_writes(self, session: Session, target: str | None, logical: int = -1) -> None:
        """Check the fence of every target ``session`` wrote to when it commits.

        ``target`` None: the session routes itself (``ShardSession``) and
        records the targets and logical shards it writes to.
        """
        if not self.fenced:
            return

        def on_execute(state: ORMExecuteState) -> None:
            if target is not None and not state.is_select:
                record_write(state.session, target, logical)

        def after_flush(flushed: Session, context: UOWTransaction) -> None:
            if target is not None:
                record_write(flushed, target, logical)

        def before_commit(committing: Session) -> None:
            if committing.new or committing.dirty or committing.deleted:
                committing.flush()
            wrote: dict[str, set[int]] = committing.info.pop(WROTE_INFO, {})
            for name in sorted(wrote):
                self._check_fence(committing, name, sorted(wrote[name]))

        def after_rollback(rolled: Session) -> None:
            rolled.info.pop(WROTE_INFO, None)

        event.listen(session, "do_orm_execute", on_execute)
        event.listen(session, "after_flush", after_flush)
        event.listen(session, "before_commit", before_commit)
        event.listen(session, "after_soft_rollback", lambda s, _t: after_rollback(s))

    @property
    def lock_class(self) -> int:
        """The first key of this map's advisory locks (a stable 31-bit hash of its name)."""
        return _from_bytes(_md5(self.name.encode()).digest()[:4], "big") & 0x7FFFFFFF

    def _check_fence(self, session: Session, name: str, logicals: list[int]) -> None:
        connection = session.connection(bind_arguments={"shard_target": name})
        known = [logical for logical in logicals if logical >= 0]
        if connection.dialect.name == "postgresql" and known:
            # A mover holds the logical shard's advisory lock while it catches up and
            # switches: a commit writing to that shard waits here until it is done.
            # Every shard written, in one round trip.
            connection.execute(_SHARED_LOCKS, {"cls": self.lock_class, "shards": known})
        mine = fence_table.c.map_name == self.name
        # The target row FOR SHARE: a publish in flight there finishes first.
        target_row = sa.select(fence_table.c.version).where(
            mine, fence_table.c.logical == TARGET_FENCE
        )
        current = connection.execute(target_row.with_for_update(read=True)).scalar()
        if known and len(known) == len(logicals):
            # Only the shards written matter; read in a statement of its own so that
            # a publish that committed while this waited is seen.
            current = connection.execute(
                sa.select(sa.func.max(fence_table.c.version)).where(
                    mine, fence_table.c.logical.in_(known)
                )
            ).scalar()
        version = self._assignment.version
        if current is not None and current > version:
            shards = f"logical shard {known[0]}" if len(known) == 1 else "shards"
            raise StaleShardMap(
                f"shard map {self.name!r} version {version} is stale: {shards} on target "
                f"{name!r} requires version {current} (moved); the transaction was not "
                "committed; refresh the map and retry",
                target=name,
                version=version,
                current=int(current),
            )

    def _owner_of(self, logical: int) -> str:
        """The target name owning ``logical``. Raises UnknownShard outside the map."""
        if type(logical) is not int or not 0 <= logical < self._count:
            raise UnknownShard(
                f"logical shard {logical!r} is not in this map (0..{self._count - 1}); "
                "was the ID issued with another layout or map?",
                shard=logical,
            )
        return self._owner_names[logical]

    def _route_statement(
        self, session_key: ShardKey | None, shard_key: ShardKey | None, clause: Any
    ) -> tuple[str, int]:
        key = shard_key if shard_key is not None else session_key
        if key is None:
            kind = type(clause).__name__ if clause is not None else "flush"
            raise ShardingError(
                f"no shard key for this {kind}: pass execution_options(shard_key=...), "
                "open the session with shard_key=..., or read every shard with fan_out()"
            )
        logical = self.shard_for(key)
        return self._owner_names[logical], logical

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={count}" for name, count in self._assignment.counts().items())
        return (
            f"<{type(self).__name__} {self.name!r} version={self._assignment.version} "
            f"logical_shards={self._assignment.logical_shards} {counts}>"
        )


def record_write(session: Session, target: str, logical: int) -> None:
    """Remember in ``session.info`` that this transaction wrote to ``logical`` on ``target``."""
    session.info.setdefault(WROTE_INFO, {}).setdefault(target, set()).add(logical)


def writes(session: Session, clause: Any) -> bool:
    """Whether ``clause`` run in ``session`` writes (a flush or ``connection()`` does)."""
    return bool(session._flushing or (FLUSH if clause is None else classify(clause)).writes)
