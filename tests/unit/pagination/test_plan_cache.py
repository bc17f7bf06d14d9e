"""The plan cache honours every value of a select: in ORDER BY, WHERE and the select list.

Selects of one shape share a cached plan; selects that differ only in a value
must still page in their own order, over their own rows, with their own
columns. The property test fills random shapes with several value sets and
walks each both ways against the plain query, on one plan cache shared by
every example (the process-wide one, never cleared here).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from sqlalchemy.pool import StaticPool

from scalekit.errors import ConfigurationError
from scalekit.pagination import paginate
from tests.unit.pagination._literal_selects import (
    LiteralQuery,
    check_walks,
    literal_queries,
    make_table,
    table_rows,
    value_sets,
    walk_both_ways,
)


@pytest.fixture(scope="module")
def db() -> Iterator[tuple[sa.Engine, sa.Table]]:
    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    metadata = sa.MetaData()
    table = make_table(metadata, "plan_cache_values")
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(table.insert(), table_rows())
    yield engine, table
    engine.dispose()


@pytest.mark.parametrize("target", [2, 9])
def test_select_order_by_with_another_literal_pages_in_its_own_order(
    db: tuple[sa.Engine, sa.Table], target: int
) -> None:
    # issue 13, item 1: the second target used to page in the first one's order.
    engine, _ = db
    metadata = sa.MetaData()
    table = sa.Table(
        "plan_cache_abs",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("v", sa.Integer, nullable=False),
    )
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(table.delete())
        connection.execute(table.insert(), [{"id": i, "v": i} for i in range(1, 11)])
    with engine.connect() as connection:
        pages = {}
        for each in (2, 9, target):
            select = sa.select(table.c.id).order_by(sa.func.abs(table.c.v - each), table.c.id)
            pages[each] = [row.id for row in paginate(connection, select, limit=3).items]
    assert pages == {2: [2, 1, 3], 9: [9, 8, 10]}


def test_selected_label_in_the_selects_own_order_keeps_its_direction(
    db: tuple[sa.Engine, sa.Table],
) -> None:
    # select.order_by(label.desc()) wraps the label in a reference; its DESC counts.
    engine, table = db
    distance = (table.c.v - 1).label("distance")
    for order in ([distance.desc(), table.c.id], [sa.desc("distance"), table.c.id.desc()]):
        select = sa.select(table.c.id, distance).order_by(*order)
        with engine.connect() as connection:
            expected = [tuple(row) for row in connection.execute(select)]
            forward, backward = walk_both_ways(connection, select, None, 4)
        assert forward == expected == backward


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=literal_queries, values=value_sets)
def test_selects_differing_only_in_values_page_like_their_plain_query(
    db: tuple[sa.Engine, sa.Table], query: LiteralQuery, values: list[list[int]]
) -> None:
    engine, table = db
    with engine.connect() as connection:
        check_walks(connection, table, query, values)


@pytest.mark.parametrize(
    ("order_by", "message"),
    [
        ("created_at", r"not the string 'created_at'; write order_by=\['created_at'\]"),
        (sa.column("id"), "not a single ColumnClause"),
        (42, "not a single int"),
    ],
)
def test_order_by_that_is_not_a_list_is_one_clear_error(
    db: tuple[sa.Engine, sa.Table], order_by: object, message: str
) -> None:
    engine, table = db
    with engine.connect() as connection, pytest.raises(ConfigurationError, match=message):
        paginate(connection, sa.select(table), order_by=order_by, limit=3)  # type: ignore[arg-type]
