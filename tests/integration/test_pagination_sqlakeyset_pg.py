"""scalekit and sqlakeyset walk sqlakeyset's ordering cases to the same rows, on PostgreSQL.

The same cases as tests/unit/pagination/test_sqlakeyset_differential.py
(SQLite), through psycopg 3 against the harness's real server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.unit.pagination._sqlakeyset_cases import ORDERINGS, check_same_walks, make_table, rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def db(pg_url: str) -> Iterator[tuple[sa.Engine, sa.Table]]:
    engine = sa.create_engine(pg_url)
    metadata = sa.MetaData()
    table = make_table(metadata, f"pgn_books_{os.getpid()}")
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(table.insert(), rows())
    yield engine, table
    metadata.drop_all(engine)
    engine.dispose()


@pytest.mark.parametrize("per_page", [1, 5, 60])
@pytest.mark.parametrize("ordering", sorted(ORDERINGS))
def test_same_rows_in_the_same_order_as_sqlakeyset(
    db: tuple[sa.Engine, sa.Table], ordering: str, per_page: int
) -> None:
    engine, table = db
    with engine.connect() as connection:
        check_same_walks(connection, table, ORDERINGS[ordering], per_page)
