"""Property tests of the pure fan-out rules: aggregate merging, ordered merging, row sort keys."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError, ShardingError
from scalekit.pagination import KeysetPlan
from scalekit.sharding import ShardAssignment, ShardMap, assign_balanced, logical_shard
from scalekit.sharding._core import (
    AggregatePlan,
    Distribution,
    aggregate_plan,
    merge_aggregates,
    merge_ordered,
)

t = sa.table(
    "t",
    sa.column("id", sa.Integer),
    sa.column("g", sa.Integer),
    sa.column("v", sa.Integer),
)

values = st.one_of(st.none(), st.integers(-1000, 1000))
row_lists = st.lists(st.lists(st.tuples(st.integers(0, 3), values), max_size=20), max_size=5)


def test_aggregate_plan_reads_the_columns() -> None:
    assert aggregate_plan(sa.select(t.c.id, t.c.v)) is None
    plan = aggregate_plan(
        sa.select(t.c.g, sa.func.count().label("n"), sa.func.sum(t.c.v), sa.func.MAX(t.c.v))
    )
    assert plan == AggregatePlan(("key", "count", "sum", "max"))
    assert plan is not None and plan.grouped
    for bad in (sa.func.avg(t.c.v), sa.func.count(sa.distinct(t.c.v)), sa.func.string_agg(t.c.v)):
        with pytest.raises(ShardingError, match="cannot be merged"):
            aggregate_plan(sa.select(bad))
    with pytest.raises(ShardingError, match="LIMIT"):
        aggregate_plan(sa.select(sa.func.count()).limit(1))


@given(row_lists)
def test_merged_aggregates_equal_aggregates_of_the_union(shards: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    plan = AggregatePlan(("key", "count", "sum", "min", "max"))
    per_shard = []
    for rows in shards:
        groups: dict[int, list[int | None]] = {}
        for group, value in rows:
            groups.setdefault(group, []).append(value)
        per_shard.append([(g, len(vs), *_sql_aggregates(vs)) for g, vs in groups.items()])
    merged = merge_aggregates(plan, (row for rows in per_shard for row in rows))
    union: dict[int, list[int | None]] = {}
    for rows in shards:
        for group, value in rows:
            union.setdefault(group, []).append(value)
    assert sorted(merged) == sorted((g, len(vs), *_sql_aggregates(vs)) for g, vs in union.items())


def _sql_aggregates(items: list[int | None]) -> tuple[int | None, int | None, int | None]:
    present = [v for v in items if v is not None]
    if not present:
        return None, None, None
    return sum(present), min(present), max(present)


def test_ungrouped_merge_of_nothing_is_the_empty_table_answer() -> None:
    plan = AggregatePlan(("count", "sum", "min"))
    assert merge_aggregates(plan, []) == [(0, None, None)]
    assert merge_aggregates(plan, [(2, 5, 1), (0, None, None), (1, 7, 0)]) == [(3, 12, 0)]


table = sa.Table(
    "r",
    sa.MetaData(),
    sa.Column("a", sa.Integer, nullable=False),
    sa.Column("b", sa.Integer, nullable=True),
    sa.Column("id", sa.Integer, primary_key=True),
)
order_rows = st.lists(
    st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(0, 5)), st.integers()),
    unique_by=lambda row: row[2],
    max_size=40,
)


@given(order_rows, st.integers(1, 4), st.booleans(), st.booleans(), st.integers(1, 50))
def test_merge_ordered_equals_sorting_the_union(
    rows: list[tuple[int, int | None, int]],
    parts: int,
    descending: bool,
    nulls_last: bool,
    take: int,
) -> None:
    b = table.c.b.desc() if descending else table.c.b.asc()
    b = b.nulls_last() if nulls_last else b.nulls_first()
    plan = KeysetPlan(
        sa.select(table.c.a, table.c.b, table.c.id),
        [table.c.a, b, table.c.id.desc()],
        limit=10,
    )
    key = plan.row_sort_key()

    def reference(row: tuple[int, int | None, int]) -> tuple[int, int, int, int]:
        a, value, ident = row
        if value is None:
            null_rank, sort_value = (1 if nulls_last else -1), 0
        else:
            null_rank, sort_value = 0, (-value if descending else value)
        return a, null_rank, sort_value, -ident

    expected = sorted(rows, key=reference)
    shards = [sorted(rows[i::parts], key=key) for i in range(parts)]
    assert merge_ordered(shards, key, take=take) == expected[:take]
    backwards = [list(reversed(shard)) for shard in shards]
    assert merge_ordered(backwards, key, reverse=True) == list(reversed(expected))


def test_distribution_counts_misplaced_rows() -> None:
    assignment: ShardAssignment = assign_balanced(["a", "b"], 4)
    found = {"a": {0: 3, 2: 1, 1: 2}, "b": {1: 5, 3: 1}}
    distribution = Distribution.build(assignment, found)
    assert distribution.logical == {0: 3, 1: 7, 2: 1, 3: 1}
    assert distribution.targets == {"a": 6, "b": 6}
    assert distribution.misplaced == {"a": 2, "b": 0}
    assert distribution.total == 12


keys = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(),
    st.binary(),
    st.uuids(),
)


# str keys: power-of-two counts up to 2**16 take the low bits of the digest, others the
# modulo; int keys: a power-of-two count a shift of the hash, others a multiplication.
LOOKUP_MAPS = [
    ShardMap(
        {"a": sa.create_engine("sqlite://"), "b": sa.create_engine("sqlite://")},
        logical_shards=count,
    )
    for count in (1024, 1000, 1, 3, 1 << 16, 1 << 17)
]


@settings(deadline=None)
@given(st.lists(keys, max_size=30), st.sampled_from(LOOKUP_MAPS))
def test_the_map_look_up_cache_agrees_with_logical_shard(
    batch: list[object], shards: ShardMap
) -> None:
    count = shards.assignment.logical_shards
    for _ in range(2):  # the second pass hits the cache
        for key in batch:
            try:
                expected = logical_shard(key, count)  # type: ignore[arg-type]
            except ConfigurationError:
                with pytest.raises(ConfigurationError):
                    shards.shard_for(key)  # type: ignore[arg-type]
                continue
            assert shards.shard_for(key) == expected  # type: ignore[arg-type]
            assert shards.name_for(key) == shards.assignment.owners[expected]  # type: ignore[arg-type]
    for bad in (True, False, 1.0, 2**63, -(2**63) - 1, "\ud800"):
        with pytest.raises(ConfigurationError):
            shards.shard_for(bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            shards.name_for(bad)  # type: ignore[arg-type]
