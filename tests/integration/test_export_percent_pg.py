"""Export queries holding ``%`` (LIKE patterns, the modulo operator) on real PostgreSQL.

psycopg's SQLAlchemy dialect doubles ``%`` in compiled SQL for its
placeholders; a COPY sent without parameters must not keep the doubling.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.batch import aexport, export

pytestmark = pytest.mark.integration

metadata = sa.MetaData()
names = sa.Table(
    f"export_percent_{uuid.uuid4().hex[:8]}",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text),
)


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url)
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            names.insert(),
            [{"id": i, "name": n} for i, n in enumerate(["a%b", "ab", "100%", "abc", "a%%b"])],
        )
    yield engine
    metadata.drop_all(engine)
    engine.dispose()


def query() -> sa.Select[tuple[int, str]]:
    return (
        sa.select(names.c.id, names.c.name, (names.c.id % 2).label("parity"), sa.literal("x%y"))
        .where(names.c.name.like("a%"))
        .order_by(names.c.id)
    )


EXPECTED = b"id,name,parity,anon_1\n0,a%b,0,x%y\n1,ab,1,x%y\n3,abc,1,x%y\n4,a%%b,0,x%y\n"


def test_percent_signs_in_a_sync_export(engine: sa.Engine) -> None:
    assert b"".join(export(engine, query())) == EXPECTED


async def test_percent_signs_in_an_async_export(engine: sa.Engine, pg_url: str) -> None:
    async_engine = create_async_engine(pg_url)
    try:
        assert b"".join([chunk async for chunk in aexport(async_engine, query())]) == EXPECTED
    finally:
        await async_engine.dispose()
