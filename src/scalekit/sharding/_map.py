"""The pure shard map: which named target holds each logical shard, and how to rebalance.

Theory of operation. A :class:`ShardAssignment` is an immutable value: the
ordered target names, ``owners[logical] = target name`` for every logical
shard, and a version number. It does no I/O and knows nothing of engines;
the shells map names to engines or routing pools.

Balance means every target holds ``floor(n / k)`` or ``ceil(n / k)`` of the
``n`` logical shards when there are ``k`` targets. :func:`assign_balanced`
deals the shards round robin. :func:`rebalance` reaches balance from an
existing assignment moving the fewest whole logical shards: the targets that
already hold the most get the ``ceil`` quotas, each target over its quota
gives up its highest-numbered shards, a removed target gives up all of its
shards, and the freed shards go, in order, to the targets under quota.
Nothing else moves, so growing from ``N`` to ``N + 1`` targets moves exactly
the new target's share, about ``n / (N + 1)``. :func:`plan_rebalance` lists
the moves between two assignments of the same logical count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from scalekit.errors import ConfigurationError, UnknownShard
from scalekit.sharding._hash import (
    DEFAULT_LOGICAL_SHARDS,
    ShardKey,
    _check_logical_shards,
    logical_shard,
)

__all__ = [
    "ShardAssignment",
    "ShardMove",
    "assign_balanced",
    "plan_rebalance",
    "rebalance",
]


@dataclass(frozen=True, slots=True)
class ShardMove:
    """One logical shard moving from the ``source`` target to the ``target`` target."""

    logical: int
    source: str
    target: str


def _check_targets(targets: Iterable[str]) -> tuple[str, ...]:
    names = tuple(targets)
    if not names:
        raise ConfigurationError("a shard map needs at least one target", parameter="targets")
    bad = [name for name in names if type(name) is not str or not name]
    if bad:
        raise ConfigurationError(
            f"target names must be non-empty strings, got {', '.join(map(repr, bad))}",
            parameter="targets",
        )
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ConfigurationError(
            f"duplicate shard targets: {', '.join(duplicates)}", parameter="targets"
        )
    return names


@dataclass(frozen=True, slots=True)
class ShardAssignment:
    """Which named target holds each logical shard; an immutable, versioned value.

    ``targets`` are the target names in order (a target may hold no shard,
    for instance just before shards move to it); ``owners[logical]`` is the
    name of the target holding that logical shard; ``version`` grows by one
    with each :func:`rebalance`.

    Raises:
        ConfigurationError: no target, no logical shard, a duplicate or empty
            target name, a version below 1, or an owner that is not among
            ``targets`` (the message names them).
    """

    targets: tuple[str, ...]
    owners: tuple[str, ...]
    version: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", _check_targets(self.targets))
        object.__setattr__(self, "owners", tuple(self.owners))
        if not self.owners:
            raise ConfigurationError(
                "a shard map needs at least one logical shard", parameter="owners"
            )
        unknown = sorted(set(self.owners) - set(self.targets))
        if unknown:
            raise ConfigurationError(
                f"logical shards are assigned to unknown targets: {', '.join(map(repr, unknown))} "
                f"(targets are {', '.join(self.targets)})",
                parameter="owners",
            )
        if type(self.version) is not int or self.version < 1:
            raise ConfigurationError(
                f"version must be an int >= 1, got {self.version!r}", parameter="version"
            )

    @property
    def logical_shards(self) -> int:
        """The number of logical shards (fixed for the life of the data)."""
        return len(self.owners)

    def shard_for(self, key: ShardKey) -> int:
        """The logical shard of ``key``.

        Raises:
            ConfigurationError: ``key`` is not a valid shard key.
        """
        return logical_shard(key, len(self.owners))

    def name_for(self, key: ShardKey) -> str:
        """The name of the target holding ``key``.

        Raises:
            ConfigurationError: ``key`` is not a valid shard key.
        """
        return self.owners[logical_shard(key, len(self.owners))]

    def owner_of(self, logical: int) -> str:
        """The name of the target holding logical shard ``logical``.

        Raises:
            UnknownShard: ``logical`` is not in ``range(logical_shards)``.
        """
        if type(logical) is not int or not 0 <= logical < len(self.owners):
            raise UnknownShard(
                f"logical shard {logical!r} does not exist (the map has {len(self.owners)}, "
                f"0 to {len(self.owners) - 1})",
                shard=logical,
            )
        return self.owners[logical]

    def shards_of(self, name: str) -> tuple[int, ...]:
        """The logical shards that target ``name`` holds, ascending.

        Raises:
            UnknownShard: ``name`` is not a target of this map.
        """
        if name not in self.targets:
            raise UnknownShard(
                f"unknown shard target {name!r} (targets are {', '.join(self.targets)})",
                shard=name,
            )
        return tuple(logical for logical, owner in enumerate(self.owners) if owner == name)

    def counts(self) -> dict[str, int]:
        """Logical shards per target, every target listed (in ``targets`` order)."""
        held = Counter(self.owners)
        return {name: held[name] for name in self.targets}

    def with_owners(self, changes: Mapping[int, str]) -> ShardAssignment:
        """A copy with the given logical shards reassigned and the version bumped.

        Raises:
            UnknownShard: a logical shard or target name in ``changes`` is unknown.
        """
        owners = list(self.owners)
        for logical, name in changes.items():
            self.owner_of(logical)
            if name not in self.targets:
                raise UnknownShard(
                    f"unknown shard target {name!r} (targets are {', '.join(self.targets)})",
                    shard=name,
                )
            owners[logical] = name
        return ShardAssignment(self.targets, tuple(owners), self.version + 1)


def assign_balanced(
    targets: Sequence[str], logical_shards: int = DEFAULT_LOGICAL_SHARDS, *, version: int = 1
) -> ShardAssignment:
    """A fresh balanced assignment: logical shard ``i`` goes to ``targets[i % len(targets)]``.

    >>> assign_balanced(["a", "b"], 4).owners
    ('a', 'b', 'a', 'b')

    Raises:
        ConfigurationError: no target, a duplicate or empty target name, or
            ``logical_shards`` not a positive int.
    """
    names = _check_targets(targets)
    count = _check_logical_shards(logical_shards)
    return ShardAssignment(names, tuple(names[i % len(names)] for i in range(count)), version)


def rebalance(old: ShardAssignment, targets: Sequence[str]) -> ShardAssignment:
    """The balanced assignment over ``targets`` reached from ``old`` with the fewest moves.

    Targets of ``old`` missing from ``targets`` give up all their shards; new
    names start empty. The result has ``old.version + 1`` (even when nothing
    moves, so that a published map always has a new number).

    Raises:
        ConfigurationError: no target, or a duplicate or empty target name.
    """
    names = _check_targets(targets)
    logical_count = old.logical_shards
    base, extra = divmod(logical_count, len(names))
    held: dict[str, list[int]] = {name: [] for name in names}
    freed: list[int] = []
    for logical, owner in enumerate(old.owners):
        held.get(owner, freed).append(logical)
    # The ``extra`` larger quotas go to the targets already holding the most
    # (ties: the earlier name), so the fewest shards leave their place.
    by_size = sorted(names, key=lambda name: (-len(held[name]), names.index(name)))
    quota = {name: base + (1 if rank < extra else 0) for rank, name in enumerate(by_size)}
    for name in names:
        surplus = len(held[name]) - quota[name]
        if surplus > 0:
            freed.extend(held[name][-surplus:])
            del held[name][-surplus:]
    freed.sort()
    owners = list(old.owners)
    position = 0
    for name in names:
        for _ in range(quota[name] - len(held[name])):
            owners[freed[position]] = name
            position += 1
    return ShardAssignment(names, tuple(owners), old.version + 1)


def plan_rebalance(
    old: ShardAssignment, new: ShardAssignment | Sequence[str]
) -> tuple[ShardMove, ...]:
    """The logical shard moves that turn ``old`` into ``new``, by logical shard.

    ``new`` is an assignment, or a list of target names (then the
    :func:`rebalance` of ``old`` over them).

    Raises:
        ConfigurationError: ``new`` has a different number of logical shards
            (logical shards are fixed: changing the count would move almost
            every key), or bad target names.
    """
    target = new if isinstance(new, ShardAssignment) else rebalance(old, new)
    if target.logical_shards != old.logical_shards:
        raise ConfigurationError(
            f"the logical shard count changed from {old.logical_shards} (version {old.version}) "
            f"to {target.logical_shards} (version {target.version}); it is fixed once data exists",
            parameter="logical_shards",
        )
    return tuple(
        ShardMove(logical, source, destination)
        for logical, (source, destination) in enumerate(zip(old.owners, target.owners, strict=True))
        if source != destination
    )
