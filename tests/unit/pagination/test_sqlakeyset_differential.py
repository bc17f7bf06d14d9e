"""scalekit and sqlakeyset walk sqlakeyset's ordering cases to the same rows, on SQLite.

The PostgreSQL run is tests/integration/test_pagination_sqlakeyset_pg.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from tests.unit.pagination._sqlakeyset_cases import ORDERINGS, check_same_walks, make_table, rows


@pytest.fixture(scope="module")
def db() -> Iterator[tuple[sa.Engine, sa.Table]]:
    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    metadata = sa.MetaData()
    table = make_table(metadata, "pgn_books")
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(table.insert(), rows())
    yield engine, table
    engine.dispose()


@pytest.mark.parametrize("per_page", [1, 5, 47, 60])
@pytest.mark.parametrize("ordering", sorted(ORDERINGS))
def test_same_rows_in_the_same_order_as_sqlakeyset(
    db: tuple[sa.Engine, sa.Table], ordering: str, per_page: int
) -> None:
    engine, table = db
    with engine.connect() as connection:
        check_same_walks(connection, table, ORDERINGS[ordering], per_page)
