"""The plan cache honours every value of a select, against a real PostgreSQL.

The same property as tests/unit/pagination/test_plan_cache.py: random selects
with literal and bound values in ORDER BY, WHERE and the select list, each
shape filled with several value sets, walked both ways and compared with the
plain query, on the one process-wide plan cache. psycopg sends every value as
a typed parameter, so a stale plan here would also show as wrong casts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from scalekit.pagination import paginate
from tests.unit.pagination._literal_selects import (
    LiteralQuery,
    check_walks,
    literal_queries,
    make_table,
    table_rows,
    value_sets,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def db(pg_url: str) -> Iterator[tuple[sa.Engine, sa.Table]]:
    engine = sa.create_engine(pg_url)
    metadata = sa.MetaData()
    table = make_table(metadata, f"pgn_values_{os.getpid()}")
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(table.insert(), table_rows())
    yield engine, table
    metadata.drop_all(engine)
    engine.dispose()


def test_select_order_by_with_another_literal_pages_in_its_own_order(
    db: tuple[sa.Engine, sa.Table],
) -> None:
    engine, table = db
    with engine.connect() as connection:
        pages = {}
        for target in (2, -3, 2):
            select = sa.select(table.c.id, table.c.v).order_by(
                sa.func.abs(table.c.v - target), table.c.id
            )
            expected = [tuple(row) for row in connection.execute(select)][:4]
            pages[target] = [tuple(row) for row in paginate(connection, select, limit=4).items]
            assert pages[target] == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=literal_queries, values=value_sets)
def test_selects_differing_only_in_values_page_like_their_plain_query(
    db: tuple[sa.Engine, sa.Table], query: LiteralQuery, values: list[list[int]]
) -> None:
    engine, table = db
    with engine.connect() as connection:
        check_walks(connection, table, query, values)
