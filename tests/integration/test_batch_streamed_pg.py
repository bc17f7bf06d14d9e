"""A plain binary ``copy`` load in one transaction streams its chunks through
one COPY (issue 20), through both shells: the same rows, the same per-chunk
events and progress in order (fired once the COPY ended: a chunk event means
"written"), the server's refusals mapped back from the COPY line to their
chunk and input row, a value psycopg cannot encode and a row that does not
fit reported with their chunk index and row before anything is committed,
and an all-or-nothing rollback leaving nothing."""

from __future__ import annotations

import decimal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from scalekit.batch import (
    BatchChunkFailed,
    BatchChunkWritten,
    BatchFinished,
    BatchProgress,
    _async,
    _flow,
    _sync,
)
from scalekit.batch._base import COPY_BINARY_HEADER, COPY_BINARY_TRAILER
from scalekit.errors import BatchChunkError, InvalidBatchRow
from scalekit.testing import capture_events
from tests.integration.test_batch_pg import Pg, row

pytestmark = pytest.mark.integration

CHUNK = 400


@pytest.fixture(params=["sync", "async"])
async def db(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[Pg]:
    instance = Pg(request.param, pg_url)
    yield instance
    await instance.close()


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The streamed COPYs begun."""
    begun: list[str] = []
    for stream in (_sync._CopyStream, _async._CopyStream):
        original = stream.begin

        def begin(self: Any, sql: str, oids: Any, original: Any = original) -> Any:
            begun.append(sql)
            return original(self, sql, oids)

        monkeypatch.setattr(stream, "begin", begin)
    return begun


def rows(count: int = 2_000) -> list[dict[str, Any]]:
    return [{k: v for k, v in row(i).items() if k not in ("ref", "payload")} for i in range(count)]


def chunk_events(events: list[Any]) -> list[tuple[str, int]]:
    return [
        (type(e).__name__, e.chunk_index)
        for e in events
        if isinstance(e, (BatchChunkWritten, BatchChunkFailed))
    ]


async def test_one_copy_for_every_chunk(db: Pg, copies: list[str]) -> None:
    progress: list[BatchProgress] = []
    with capture_events() as events:
        result = await db.load(rows(), chunk_size=CHUNK, progress=progress.append)
    assert (result.method, result.inserted, result.rows, result.chunks) == ("copy", 2_000, 2_000, 5)
    assert len(copies) == 1
    assert [p.rows for p in progress] == [400, 800, 1_200, 1_600, 2_000]
    assert [p.chunks for p in progress] == [1, 2, 3, 4, 5]
    assert progress[-1].bytes == result.bytes > 0
    assert chunk_events(events) == [("BatchChunkWritten", i) for i in range(5)]
    assert isinstance(events[-1], BatchFinished)
    assert [e.rows for e in events if isinstance(e, BatchChunkWritten)] == [CHUNK] * 5
    stored = db.contents()
    assert len(stored) == 2_000
    assert stored[1_999]["price"] == decimal.Decimal("19.99")


async def test_the_bytes_of_one_copy(db: Pg, copies: list[str]) -> None:
    streamed = await db.load(rows(), chunk_size=CHUNK)
    with db.engine.begin() as connection:
        connection.execute(sa.delete(db.table))
    chunked = await db.load(rows(), chunk_size=CHUNK, transaction="per_chunk")
    assert len(copies) == 1
    frame = len(COPY_BINARY_HEADER) + len(COPY_BINARY_TRAILER)
    assert streamed.bytes == chunked.bytes - 4 * frame  # one header and trailer, not five


@pytest.mark.parametrize("target", ["connection", "session"])
async def test_a_callers_transaction(db: Pg, copies: list[str], target: str) -> None:
    result = await db.load(rows(), chunk_size=CHUNK, target=target)
    assert result.inserted == 2_000 and len(copies) == 1
    assert len(db.contents()) == 2_000


async def test_a_copy_per_stream_rows(
    db: Pg, copies: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_flow, "STREAM_ROWS", 1_000)
    progress: list[BatchProgress] = []
    result = await db.load(rows(), chunk_size=CHUNK, progress=progress.append)
    assert result.inserted == 2_000
    assert len(copies) == 2  # chunks 0-2 (1,200 rows), then 3-4
    assert [p.rows for p in progress] == [400, 800, 1_200, 1_600, 2_000]
    assert len(db.contents()) == 2_000


@pytest.mark.parametrize(
    ("bad", "change"),
    [
        (1_234, {"qty": -1}),  # check constraint
        (1_234, {"sku": None}),  # NOT NULL
        (1_234, {"sku": "sku-7"}),  # unique violation of a row of chunk 0
    ],
)
async def test_a_server_refusal_names_its_chunk(
    db: Pg, copies: list[str], bad: int, change: dict[str, Any]
) -> None:
    loaded = rows()
    loaded[bad] = {**loaded[bad], **change}
    progress: list[BatchProgress] = []
    with capture_events() as events, pytest.raises(BatchChunkError) as info:
        await db.load(loaded, chunk_size=CHUNK, progress=progress.append)
    assert not isinstance(info.value, InvalidBatchRow)
    assert (info.value.chunk_index, info.value.position, info.value.rows_written) == (3, 1_200, 0)
    assert len(copies) == 1
    assert [p.rows for p in progress] == [400, 800, 1_200]  # the chunks before it
    assert chunk_events(events) == [
        ("BatchChunkWritten", 0),
        ("BatchChunkWritten", 1),
        ("BatchChunkWritten", 2),
        ("BatchChunkFailed", 3),
    ]
    assert db.contents() == {}  # all or nothing


async def test_a_value_the_server_cannot_store_names_its_row(db: Pg, copies: list[str]) -> None:
    loaded = rows()
    loaded[1_777] = {**loaded[1_777], "price": decimal.Decimal("123456789012")}  # numeric(10, 2)
    with pytest.raises(InvalidBatchRow) as info:
        await db.load(loaded, chunk_size=CHUNK)
    assert (info.value.chunk_index, info.value.position, info.value.column) == (4, 1_777, "price")
    assert db.contents() == {}


async def test_a_value_that_cannot_be_encoded_names_its_row(db: Pg, copies: list[str]) -> None:
    loaded = rows()
    loaded[1_000] = {**loaded[1_000], "qty": "many"}
    progress: list[BatchProgress] = []
    with capture_events() as events, pytest.raises(InvalidBatchRow) as info:
        await db.load(loaded, chunk_size=CHUNK, progress=progress.append)
    assert (info.value.chunk_index, info.value.position, info.value.column) == (2, 1_000, "qty")
    assert [p.rows for p in progress] == [400, 800]
    assert chunk_events(events)[-1] == ("BatchChunkFailed", 2)
    assert db.contents() == {}


async def test_a_row_that_does_not_fit_fails_after_the_chunks_before(
    db: Pg, copies: list[str]
) -> None:
    loaded = rows()
    loaded[1_234] = {**loaded[1_234], "nope": 1}
    progress: list[BatchProgress] = []
    with pytest.raises(InvalidBatchRow) as info:
        await db.load(loaded, chunk_size=CHUNK, progress=progress.append)
    assert (info.value.chunk_index, info.value.position) == (3, 1_234)
    assert [p.rows for p in progress] == [400, 800, 1_200]
    assert db.contents() == {}


class InputBroke(Exception):
    pass


def breaking(after: int) -> Iterator[dict[str, Any]]:
    yield from rows(after)
    raise InputBroke


async def test_the_inputs_error_surfaces_after_the_chunks_read_before_it(
    db: Pg, copies: list[str]
) -> None:
    progress: list[BatchProgress] = []
    with pytest.raises(InputBroke):
        await db.load(breaking(1_000), chunk_size=CHUNK, progress=progress.append)
    assert [p.rows for p in progress] == [400, 800]
    assert db.contents() == {}


async def test_other_policies_copy_per_chunk(db: Pg, copies: list[str]) -> None:
    for options in ({"transaction": "per_chunk"}, {"transaction": "savepoint"}):
        with db.engine.begin() as connection:
            connection.execute(sa.delete(db.table))
        result = await db.load(rows(), chunk_size=CHUNK, **options)
        assert result.inserted == 2_000
    assert copies == []


def test_a_copy_still_open_is_aborted(pg_url: str) -> None:
    """A load stopped with its COPY open (here by an interrupt from the input)
    leaves the pool's connection usable and nothing written."""
    db = Pg("sync", pg_url)
    engine = db.engine
    try:

        def interrupted() -> Iterator[dict[str, Any]]:
            yield from rows(CHUNK * 2)
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            _sync.batch_insert(engine, db.table, interrupted(), chunk_size=CHUNK)
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT 1")).scalar() == 1
        assert db.contents() == {}
    finally:
        import asyncio

        asyncio.run(db.close())
