"""Write-behind through both shells on SQLite: coalescing, counters, rejects, back-pressure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.batch import AsyncWriteBehind, RejectedRow, WriteBehind
from scalekit.errors import BufferFull, ConfigurationError
from tests.writebehind_shell import Writer

metadata = sa.MetaData()
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("hits", sa.Integer, sa.CheckConstraint("hits < 1000"), nullable=False),
)


class Db:
    def __init__(self, path: Path) -> None:
        self.engine = sa.create_engine(f"sqlite:///{path}")
        self.async_engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        metadata.create_all(self.engine)

    def writer(self, mode: str, **options: Any) -> Writer:
        options.setdefault("key", ["id"])
        options.setdefault("update", ["name"])
        options.setdefault("increment", ["hits"])
        options.setdefault("flush_on_exit", False)
        return Writer(mode, self.engine, self.async_engine, counters, **options)

    def rows(self) -> dict[int, tuple[str, int]]:
        with self.engine.connect() as connection:
            return {r.id: (r.name, r.hits) for r in connection.execute(sa.select(counters))}


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Db]:
    instance = Db(tmp_path / "wb.db")
    yield instance
    instance.engine.dispose()
    await instance.async_engine.dispose()


MODES = pytest.mark.parametrize("mode", ["sync", "async"])


@MODES
async def test_coalescing_and_counters(db: Db, mode: str) -> None:
    writer = db.writer(mode)
    for i in range(300):
        await writer.put({"id": i % 3, "name": f"n{i}", "hits": 1})
    assert await writer.flush() == 3
    await writer.put_many([{"id": 0, "name": "again", "hits": 5}])
    await writer.close()
    assert db.rows() == {0: ("again", 105), 1: ("n298", 100), 2: ("n299", 100)}
    m = writer.metrics()
    assert (m.puts, m.coalesced, m.flushed_rows, m.flushes, m.pending) == (301, 297, 4, 2, 0)


@MODES
async def test_bad_rows_are_isolated_and_handed_over(db: Db, mode: str) -> None:
    rejected: list[RejectedRow] = []
    writer = db.writer(mode, on_rejected=rejected.append)
    await writer.put_many({"id": i, "name": "ok", "hits": 1} for i in range(10))
    await writer.put({"id": 5, "name": "too many", "hits": 5000})
    assert await writer.flush() == 9
    assert [r.row["id"] for r in rejected] == [5]
    assert isinstance(rejected[0].error, sa.exc.IntegrityError)
    assert len(db.rows()) == 9 and writer.metrics().rejected == 1
    await writer.close()


@MODES
async def test_a_failed_flush_keeps_its_rows_pending(db: Db, mode: str) -> None:
    writer = db.writer(mode, retry=None)
    await writer.put({"id": 1, "name": "a", "hits": 1})
    metadata.drop_all(db.engine)
    with pytest.raises(sa.exc.OperationalError):
        await writer.flush()
    await writer.put({"id": 1, "name": "b", "hits": 2})
    assert writer.metrics().pending == 1 and writer.metrics().failed_flushes == 1
    metadata.create_all(db.engine)
    assert await writer.flush() == 1
    assert db.rows() == {1: ("b", 3)}
    await writer.close()


@MODES
async def test_raise_and_drop_oldest(db: Db, mode: str) -> None:
    writer = db.writer(mode, max_pending=2, overflow="raise")
    await writer.put_many([{"id": 1, "name": "a", "hits": 1}, {"id": 2, "name": "a", "hits": 1}])
    with pytest.raises(BufferFull):
        await writer.put({"id": 3, "name": "a", "hits": 1})
    await writer.close()
    assert set(db.rows()) == {1, 2}
    dropper = db.writer(mode, max_pending=2, overflow="drop_oldest")
    await dropper.put_many({"id": i, "name": "b", "hits": 1} for i in range(10, 15))
    await dropper.close()
    assert set(db.rows()) == {1, 2, 13, 14} and dropper.metrics().dropped == 3


@MODES
async def test_block_waits_for_a_flush_then_times_out(db: Db, mode: str) -> None:
    writer = db.writer(mode, max_pending=2, flush_at=100, flush_interval=3600)
    await writer.put_many(
        {"id": i, "name": "a", "hits": 1} for i in range(5)
    )  # the flusher makes room
    await writer.close()
    assert set(db.rows()) == {0, 1, 2, 3, 4}
    metadata.drop_all(db.engine)  # every flush now fails: room never comes
    stuck = db.writer(mode, max_pending=1, block_timeout=0.2, retry=None, flush_interval=3600)
    await stuck.put({"id": 1, "name": "a", "hits": 1})
    with pytest.raises(BufferFull):
        await stuck.put({"id": 2, "name": "a", "hits": 1})
    assert stuck.metrics().refused == 1
    metadata.create_all(db.engine)
    await stuck.close()
    assert set(db.rows()) == {1}


@MODES
async def test_the_flusher_runs_on_its_interval(db: Db, mode: str) -> None:
    writer = db.writer(mode, flush_interval=0.05)
    await writer.put({"id": 1, "name": "a", "hits": 1})
    for _ in range(200):
        if db.rows():
            break
        await asyncio.sleep(0.01)
    assert db.rows() == {1: ("a", 1)}
    await writer.close()


@MODES
async def test_put_after_close_is_refused(db: Db, mode: str) -> None:
    writer = db.writer(mode)
    await writer.close()
    with pytest.raises(ConfigurationError, match="closed"):
        await writer.put({"id": 1, "name": "a", "hits": 1})


def test_threads_putting_at_once_lose_nothing(db: Db) -> None:
    writer = WriteBehind(
        db.engine,
        counters,
        key=["id"],
        update=["name"],
        increment=["hits"],
        flush_interval=0.01,
        flush_at=5,
        flush_on_exit=False,
    )

    def work() -> None:
        for i in range(500):
            writer.put({"id": i % 7, "name": "t", "hits": 1})

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert sum(h for _, h in db.rows().values()) == 2000 > writer.metrics().flushed_rows


async def test_async_context_manager_and_repr(db: Db) -> None:
    async with AsyncWriteBehind(
        db.async_engine, counters, update=["name"], increment=["hits"], flush_on_exit=False
    ) as writer:
        await writer.put({"id": 1, "name": "a", "hits": 1})
        assert repr(writer) == "AsyncWriteBehind(table='counters', pending=1)"
        assert writer.pending == 1
    assert db.rows() == {1: ("a", 1)}


def test_bad_settings(db: Db) -> None:
    with pytest.raises(ConfigurationError):
        WriteBehind(db.engine, counters, update=["name"], flush_at=0)
    with pytest.raises(ConfigurationError):
        WriteBehind(db.engine, counters, update=["name"], merge="add")  # type: ignore[arg-type]


@MODES
async def test_durable_mode_on_fakeredis(db: Db, mode: str) -> None:
    import fakeredis

    server = fakeredis.FakeServer()
    rejected: list[RejectedRow] = []
    if mode == "sync":
        client: Any = fakeredis.FakeRedis(server=server)
    else:
        client = fakeredis.FakeAsyncRedis(server=server)
    options = {"durable": client, "partitions": 3, "on_rejected": rejected.append}
    writer = db.writer(mode, **options)
    await writer.put_many({"id": i % 5, "name": f"n{i}", "hits": 1} for i in range(100))
    await writer.put({"id": 9, "name": "bad", "hits": 5000})
    assert await writer.flush() == 5
    await writer.put({"id": 0, "name": "last", "hits": 1})
    await writer.close()
    assert db.rows() == {
        0: ("last", 21),
        1: ("n96", 20),
        2: ("n97", 20),
        3: ("n98", 20),
        4: ("n99", 20),
    }
    assert [r.row["id"] for r in rejected] == [9]
    m = writer.metrics()
    assert (m.puts, m.rejected, m.coalesced, m.flushed_rows) == (102, 1, 95, 6)
    sync = fakeredis.FakeRedis(server=server)
    assert sync.xlen("scalekit:wb:counters:dead") == 1


def test_durable_settings_are_checked(db: Db) -> None:
    import fakeredis

    client = fakeredis.FakeRedis()
    for bad in ({"partitions": 0}, {"read_count": 0}, {"lease": 0}, {"offsets_table": "x; drop"}):
        with pytest.raises(ConfigurationError):
            WriteBehind(db.engine, counters, update=["name"], durable=client, **bad)  # type: ignore[arg-type]
