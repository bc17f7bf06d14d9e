"""Write-behind on the harness's real PostgreSQL, through the sync and the asyncio shell.

Coalescing and counters merged by addition (``col = col + excluded.col``), bad
rows isolated and handed to ``on_rejected``, each back-pressure policy, the
flush on close and at interpreter exit (a subprocess that never closes its
write-behind), and
PostgreSQL stopped during a flush: retried, then written after the restart,
with every counter applied once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.batch import RejectedRow
from scalekit.errors import BufferFull
from scalekit.retry import Backoff, RetryPolicy, RetryScheduled, transient
from scalekit.testing import capture_events
from scalekit.testing.servers import PgCluster
from tests.writebehind_shell import Writer

pytestmark = pytest.mark.integration

MODES = pytest.mark.parametrize("mode", ["sync", "async"])


def counters_table(name: str | None = None) -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    return metadata, sa.Table(
        name or f"wb_counters_{uuid.uuid4().hex[:8]}",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("price", sa.Numeric(10, 2), nullable=False),
        sa.Column("hits", sa.BigInteger, sa.CheckConstraint("hits >= 0"), nullable=False),
    )


class Db:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url)
        self.async_engine = create_async_engine(url)
        self.metadata, self.table = counters_table()
        self.metadata.create_all(self.engine)

    def writer(self, mode: str, **options: Any) -> Writer:
        options.setdefault("key", ["id"])
        options.setdefault("update", ["price"])
        options.setdefault("increment", ["hits"])
        options.setdefault("flush_on_exit", False)
        return Writer(mode, self.engine, self.async_engine, self.table, **options)

    def rows(self) -> dict[int, tuple[float, int]]:
        reader = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        with reader.connect() as connection:
            return {
                r.id: (float(r.price), r.hits)
                for r in connection.execute(sa.select(self.table).order_by(self.table.c.id))
            }

    async def close(self) -> None:
        self.engine.dispose()
        await self.async_engine.dispose()


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Db]:
    instance = Db(pg_url)
    yield instance
    await instance.close()


@MODES
async def test_coalescing_and_counters_by_addition(db: Db, mode: str) -> None:
    writer = db.writer(mode)
    for i in range(3000):
        await writer.put({"id": i % 30, "price": i / 4, "hits": 1})
    assert await writer.flush() == 30
    for i in range(30):
        await writer.put({"id": i, "price": 1.5, "hits": 2})
    await writer.close()
    rows = db.rows()
    assert len(rows) == 30
    assert all(hits == 102 and price == 1.5 for price, hits in rows.values())
    m = writer.metrics()
    assert (m.puts, m.coalesced, m.flushed_rows, m.flushes) == (3030, 2970, 60, 2)


@MODES
async def test_the_last_value_put_wins(db: Db, mode: str) -> None:
    writer = db.writer(mode, flush_interval=0.01, flush_at=7)
    for i in range(2000):  # flushes run concurrently with the puts
        await writer.put({"id": i % 13, "price": i, "hits": 0})
    await writer.close()
    last = {i % 13: i for i in range(2000)}
    assert db.rows() == {k: (float(v), 0) for k, v in last.items()}


@MODES
async def test_bad_rows_are_isolated(db: Db, mode: str) -> None:
    rejected: list[RejectedRow] = []
    writer = db.writer(mode, on_rejected=rejected.append)
    await writer.put_many({"id": i, "price": 1, "hits": 1} for i in range(200))
    await writer.put({"id": 50, "price": 1, "hits": -10})  # coalesced to -9: the CHECK refuses
    await writer.put({"id": 201, "price": 10**9, "hits": 1})  # numeric overflow
    assert await writer.flush() == 199
    assert sorted(r.row["id"] for r in rejected) == [50, 201]
    assert set(db.rows()) == set(range(200)) - {50}
    assert writer.metrics().rejected == 2
    await writer.close()


EXIT_SCRIPT = """
import asyncio, sys
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from scalekit.batch import AsyncWriteBehind, WriteBehind

url, name, mode = sys.argv[1:]
metadata = sa.MetaData()
table = sa.Table(name, metadata, sa.Column("id", sa.BigInteger, primary_key=True),
                 sa.Column("price", sa.Numeric(10, 2)), sa.Column("hits", sa.BigInteger))
if mode == "sync":
    writer = WriteBehind(sa.create_engine(url), table, update=["price"], increment=["hits"],
                         flush_interval=3600)
    for i in range(1000):
        writer.put({"id": i % 10, "price": 2, "hits": 1})
else:
    async def main():
        global writer
        writer = AsyncWriteBehind(create_async_engine(url), table, update=["price"],
                                  increment=["hits"], flush_interval=3600)
        for i in range(1000):
            await writer.put({"id": i % 10, "price": 2, "hits": 1})
    asyncio.run(main())
print("exiting with", writer.pending, "pending", flush=True)
"""


@MODES
def test_flush_at_interpreter_exit(pg_url: str, mode: str) -> None:
    metadata, table = counters_table()
    engine = sa.create_engine(pg_url)
    metadata.create_all(engine)
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(EXIT_SCRIPT), pg_url, table.name, mode],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "exiting with 10 pending" in done.stdout
        with engine.connect() as connection:
            found = connection.execute(sa.select(table.c.id, table.c.hits)).all()
        assert sorted(found) == [(i, 100) for i in range(10)]
    finally:
        metadata.drop_all(engine)
        engine.dispose()


@pytest.fixture
def cluster(pg_cluster_factory: Callable[..., PgCluster]) -> PgCluster:
    return pg_cluster_factory(replicas=0)


@MODES
async def test_postgres_stopped_during_a_flush(cluster: PgCluster, mode: str) -> None:
    primary = cluster.primary
    assert primary is not None
    db = Db(primary.url)
    retry = RetryPolicy(
        attempts=60, backoff=Backoff.constant(0.25), retry_on=transient.database, name="wb"
    )
    writer = db.writer(mode, retry=retry)
    try:
        for i in range(1000):
            await writer.put({"id": i % 100, "price": 3, "hits": 1})
        assert await writer.flush() == 100
        for i in range(1000):
            await writer.put({"id": i % 100, "price": 4, "hits": 1})
        primary.stop()
        restarter = threading.Timer(1.5, primary.start)
        restarter.start()
        started = time.perf_counter()
        with capture_events() as events:
            assert await writer.flush() == 100  # retried until the server is back
        restarter.join()
        retries = [e for e in events if isinstance(e, RetryScheduled)]
        assert retries, "the flush was not retried"
        assert db.rows() == dict.fromkeys(range(100), (4.0, 20))  # every counter applied once
        print(
            f"\n[write-behind pg stop {mode}] written {time.perf_counter() - started:.2f}s"
            f" after the stop, {len(retries)} retries"
        )
        # A flush that gives up keeps its rows for the next one.
        await writer.put({"id": 1, "price": 5, "hits": 1})
        primary.stop()
        writer_retry_off = db.writer(mode, retry=None)
        await writer_retry_off.put({"id": 2, "price": 5, "hits": 1})
        with pytest.raises(sa.exc.OperationalError):
            await writer_retry_off.flush()
        assert writer_retry_off.metrics().pending == 1
        primary.start()
        await db.async_engine.dispose()
        db.engine.dispose()
        await writer_retry_off.close()
        await writer.close()
        assert db.rows()[1] == (5.0, 21) and db.rows()[2] == (5.0, 21)
    finally:
        await db.close()


@MODES
async def test_back_pressure_policies(db: Db, mode: str) -> None:
    # raise: a new key over max_pending is refused, a pending key still coalesces
    raiser = db.writer(mode, max_pending=3, overflow="raise", flush_interval=3600, flush_at=100)
    await raiser.put_many({"id": i, "price": 1, "hits": 1} for i in range(3))
    with pytest.raises(BufferFull):
        await raiser.put({"id": 3, "price": 1, "hits": 1})
    await raiser.put({"id": 0, "price": 2, "hits": 1})
    await raiser.close()
    assert db.rows() == {0: (2.0, 2), 1: (1.0, 1), 2: (1.0, 1)}
    # drop_oldest: the oldest pending keys make room
    dropper = db.writer(mode, max_pending=3, overflow="drop_oldest", flush_interval=3600)
    await dropper.put_many({"id": i, "price": 5, "hits": 1} for i in range(10, 16))
    await dropper.close()
    assert set(db.rows()) == {0, 1, 2, 13, 14, 15} and dropper.metrics().dropped == 3
    # block: puts wait for the flusher, which writes to PostgreSQL, then go on
    blocker = db.writer(mode, max_pending=5, overflow="block", flush_interval=3600, flush_at=100)
    await blocker.put_many({"id": 100 + i, "price": 7, "hits": 1} for i in range(200))
    await blocker.close()
    assert set(range(100, 300)) <= set(db.rows())
    assert blocker.metrics().flushes >= 40
