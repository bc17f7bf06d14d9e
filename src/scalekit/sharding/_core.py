"""The pure rules of reading across shards: merging aggregates and ordered pages.

Theory of operation. A fan-out runs the same ``SELECT`` on every target and
gets one list of rows per target. Plain rows merge by concatenation. A select
whose columns include aggregates does not: ``count(*)`` on four databases
gives four counts. :func:`aggregate_plan` reads the select's columns once:
``count``, ``sum``, ``min`` and ``max`` merge (counts and sums add, minima
and maxima take the extreme, NULLs ignored as SQL does), every other column
is a group key (it must be in the ``GROUP BY``), and aggregates that cannot
be merged from per-shard results (``avg``, ``count(DISTINCT ...)``,
``array_agg``, ``string_agg``, percentiles...) are refused with
:class:`~scalekit.errors.ShardingError` naming the column: select ``sum``
and ``count`` and divide. :func:`merge_aggregates` then combines the rows of
the same group. :func:`merge_ordered` is the ordered merge of sorted lists
(a heap, ``O(n log k)``) that cross-shard pagination uses. No I/O here.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from scalekit.errors import ShardingError

if TYPE_CHECKING:
    from scalekit.sharding._map import ShardAssignment

__all__ = ["AggregatePlan", "Distribution", "aggregate_plan", "merge_aggregates", "merge_ordered"]

MergeKind = Literal["key", "count", "sum", "min", "max"]

_MERGEABLE: dict[str, MergeKind] = {"count": "count", "sum": "sum", "min": "min", "max": "max"}
# Aggregates whose per-shard results cannot be combined into the global one.
_UNMERGEABLE = frozenset(
    {
        "avg",
        "array_agg",
        "string_agg",
        "json_agg",
        "jsonb_agg",
        "json_object_agg",
        "jsonb_object_agg",
        "group_concat",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "variance",
        "var_pop",
        "var_samp",
        "percentile_cont",
        "percentile_disc",
        "mode",
        "bool_and",
        "bool_or",
        "every",
        "bit_and",
        "bit_or",
        "xmlagg",
        "corr",
        "covar_pop",
        "covar_samp",
    }
)


@dataclass(frozen=True, slots=True)
class AggregatePlan:
    """How to merge the columns of one select: a :data:`MergeKind` per column."""

    kinds: tuple[MergeKind, ...]

    @property
    def grouped(self) -> bool:
        """Whether some columns are group keys (then one merged row per group)."""
        return "key" in self.kinds


def _function_of(column: Any) -> Any:
    from sqlalchemy.sql.elements import Label
    from sqlalchemy.sql.functions import FunctionElement

    while isinstance(column, Label):
        column = column.element
    return column if isinstance(column, FunctionElement) else None


def _is_distinct(function: Any) -> bool:
    from sqlalchemy.sql import operators
    from sqlalchemy.sql.elements import UnaryExpression

    return any(
        isinstance(clause, UnaryExpression) and clause.operator is operators.distinct_op
        for clause in function.clauses
    )


def aggregate_plan(select: Any) -> AggregatePlan | None:
    """The merge plan of ``select``'s columns, or None when rows just concatenate.

    Raises:
        ShardingError: a column is an aggregate that per-shard results cannot
            give (``avg``, ``count(DISTINCT ...)``...), or the select has
            aggregates and a LIMIT/OFFSET (a per-shard limit cuts groups).
    """
    kinds: list[MergeKind] = []
    for column in select.selected_columns:
        function = _function_of(column)
        name = getattr(function, "name", "").lower() if function is not None else ""
        if name in _UNMERGEABLE or (name in _MERGEABLE and _is_distinct(function)):
            label = getattr(column, "key", None) or name
            raise ShardingError(
                f"column {label!r} ({name}{'(DISTINCT)' if name in _MERGEABLE else ''}) cannot "
                "be merged across shards; select sum() and count() (or the rows) and combine them"
            )
        kinds.append(_MERGEABLE.get(name, "key"))
    if all(kind == "key" for kind in kinds):
        return None
    if (
        getattr(select, "_limit_clause", None) is not None
        or getattr(select, "_offset_clause", None) is not None
    ):
        raise ShardingError("a fan-out of aggregates cannot have LIMIT or OFFSET")
    return AggregatePlan(tuple(kinds))


def _combine(kind: MergeKind, left: Any, right: Any) -> Any:
    if left is None:
        return right
    if right is None:
        return left
    if kind in ("count", "sum"):
        return left + right
    if kind == "min":
        return right if right < left else left
    return right if right > left else left  # max


def merge_aggregates(plan: AggregatePlan, rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Combine the rows of every target into one row per group (one row without groups).

    Groups keep the order in which they are first seen. Without groups and
    without rows (no target answered), the result is one row with counts 0
    and the other aggregates NULL, as SQL gives on an empty table.
    """
    kinds = plan.kinds
    key_positions = [i for i, kind in enumerate(kinds) if kind == "key"]
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        group = tuple(row[i] for i in key_positions)
        current = merged.get(group)
        if current is None:
            merged[group] = list(row)
            continue
        for position, kind in enumerate(kinds):
            if kind != "key":
                current[position] = _combine(kind, current[position], row[position])
    if not merged and not key_positions:
        return [tuple(0 if kind == "count" else None for kind in kinds)]
    return [tuple(values) for values in merged.values()]


def merge_ordered(
    lists: Sequence[Sequence[Any]],
    key: Callable[[Any], Any],
    *,
    reverse: bool = False,
    take: int | None = None,
) -> list[Any]:
    """The first ``take`` items (all if None) of sorted ``lists`` merged in order."""
    merged = heapq.merge(*lists, key=key, reverse=reverse)
    return list(merged if take is None else itertools.islice(merged, take))


@dataclass(frozen=True, slots=True)
class Distribution:
    """Rows per logical shard and per physical target, from :meth:`ShardMap.distribution`.

    ``logical[shard]`` counts the rows of each logical shard that has rows
    (wherever they are); ``targets[name]`` the rows stored on each target;
    ``misplaced[name]`` the rows on a target that does not own their logical
    shard under ``version`` (non-zero during a move, or after a routing bug).
    """

    version: int
    logical: dict[int, int]
    targets: dict[str, int]
    misplaced: dict[str, int]

    @property
    def total(self) -> int:
        """Every row counted."""
        return sum(self.targets.values())

    @classmethod
    def build(cls, assignment: ShardAssignment, found: dict[str, dict[int, int]]) -> Distribution:
        """Combine the rows per logical shard found on each target."""
        logical: dict[int, int] = {}
        targets: dict[str, int] = {}
        misplaced: dict[str, int] = {}
        owners = assignment.owners
        for name, shards in found.items():
            targets[name] = sum(shards.values())
            misplaced[name] = sum(rows for shard, rows in shards.items() if owners[shard] != name)
            for shard, rows in shards.items():
                logical[shard] = logical.get(shard, 0) + rows
        return cls(assignment.version, dict(sorted(logical.items())), targets, misplaced)
