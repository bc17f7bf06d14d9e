"""Export on real PostgreSQL: queries holding ``%``, ``psql \\copy`` itself, 5,000,000 rows.

psycopg's SQLAlchemy dialect doubles ``%`` in compiled SQL for its
placeholders; a COPY sent without parameters must not keep the doubling.
The CSV is compared byte for byte with what the ``psql`` binary's ``\\copy``
writes to a file for the same query, and a 5,000,000-row export runs in a
subprocess whose peak RSS must stay flat.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.batch import aexport, export
from scalekit.testing.servers import PgBinaries, PgCluster

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


def test_csv_is_byte_identical_to_psql_copy(
    engine: sa.Engine, pg_cluster: PgCluster, pg_binaries: PgBinaries, pg_url: str, tmp_path: Path
) -> None:
    psql = pg_binaries.tool("psql")
    if not os.path.exists(psql):
        pytest.skip(f"no psql next to the server binaries ({pg_binaries.bindir})")
    select = query()
    sql = str(select.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    sql = sql.replace("%%", "%").replace("\n", " ")
    out = tmp_path / "psql.csv"
    url = sa.engine.make_url(pg_url)
    done = subprocess.run(
        [
            psql,
            "-X",
            "-q",
            "-h",
            str(url.host),
            "-p",
            str(url.port),
            "-U",
            str(url.username),
            "-d",
            str(url.database),
            "-c",
            f"\\copy ({sql}) TO '{out}' WITH (FORMAT csv, HEADER)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert b"".join(export(engine, select)) == out.read_bytes() == EXPECTED


RSS_SCRIPT = """
import resource, sys
import sqlalchemy as sa
from scalekit.batch import export

engine = sa.create_engine(sys.argv[1])

def run(rows):
    series = sa.func.generate_series(1, rows).table_valued("g").render_derived()
    select = sa.select(series.c.g, sa.literal("padding to make a row of some size").label("pad"))
    total = 0
    for chunk in export(engine, select):
        total += len(chunk)
    return total

run(50_000)  # warm: imports, the pool, psycopg's buffers
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
total = run(int(sys.argv[2]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, total)
"""


@pytest.mark.slow
def test_five_million_rows_with_flat_rss(pg_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RSS_SCRIPT), pg_url, "5000000"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    before, after, total = (int(v) for v in done.stdout.split())
    assert total > 200_000_000  # about 240 MB of CSV went through
    growth_kib = after - before  # ru_maxrss is in KiB on Linux
    print(f"\n[export 5M rows] peak RSS {before} KiB -> {after} KiB, {total:,} bytes exported")
    assert growth_kib < 16 * 1024, f"peak RSS grew by {growth_kib} KiB"
