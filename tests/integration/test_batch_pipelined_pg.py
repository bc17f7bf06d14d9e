"""A ``copy_staging`` load in one transaction overlaps the server's INSERT of a
chunk with the next chunk's client work (reading, shaping, COPY encoding;
issue 20), through both shells: it loads the same rows, reports the same
per-chunk events and progress, and every error of the next chunk (a bad row,
a value psycopg cannot encode, the input's own error) surfaces only after the
chunk before it was written, exactly where and as an unpipelined load reports
it. The load also works on a connection whose transaction the caller owns,
and a statement still running when the load is stopped is waited for."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from scalekit.batch import BatchChunkWritten, BatchProgress, Upsert, _async, _sync
from scalekit.errors import BatchChunkError, InvalidBatchRow
from scalekit.testing import capture_events
from tests.integration.test_batch_pg import Pg, row, rows_of

pytestmark = pytest.mark.integration

CHUNK = 400
UPSERT = Upsert(index=["id"], update=["qty", "price"])


@pytest.fixture(params=["sync", "async"])
async def db(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[Pg]:
    instance = Pg(request.param, pg_url)
    await instance.load(rows_of(1_000), method="copy")  # half of the 2,000 keys exist
    yield instance
    await instance.close()


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements sent to run while the next chunk is prepared."""
    sent: list[str] = []
    for target in (_sync._Target, _async._AsyncTarget):
        original = target.start

        def start(self: Any, sql: str, original: Any = original) -> Any:
            sent.append(sql)
            return original(self, sql)

        monkeypatch.setattr(target, "start", start)
    return sent


def updates(count: int = 2_000) -> list[dict[str, Any]]:
    return [row(i, qty=7) for i in range(count)]


async def test_loads_and_reports_every_chunk(db: Pg, starts: list[str]) -> None:
    progress: list[BatchProgress] = []
    with capture_events() as events:
        result = await db.load(
            updates(),
            on_conflict=UPSERT,
            chunk_size=CHUNK,
            method="copy_staging",
            progress=progress.append,
        )
    assert (result.method, result.inserted, result.updated, result.chunks) == (
        "copy_staging",
        1_000,
        1_000,
        5,
    )
    assert len(starts) == 5  # every chunk's INSERT overlapped the next chunk's preparation
    assert [p.rows for p in progress] == [400, 800, 1_200, 1_600, 2_000]
    written = [e for e in events if isinstance(e, BatchChunkWritten)]
    assert [(e.chunk_index, e.inserted, e.updated) for e in written] == [
        (0, 0, 400),
        (1, 0, 400),
        (2, 200, 200),
        (3, 400, 0),
        (4, 400, 0),
    ]
    assert all(v["qty"] == 7 for v in db.contents().values())
    assert len(db.contents()) == 2_000


async def test_returned_keys_and_dedupe_across_chunks(db: Pg, starts: list[str]) -> None:
    rows = updates(1_500)
    rows[900] = row(5, qty=9)  # a duplicate key in chunk 2 of a key of chunk 0
    result = await db.load(
        rows,
        on_conflict=Upsert(index=["id"], update=["qty"]),
        chunk_size=CHUNK,
        method="copy_staging",
        returning=["id"],
    )
    assert starts
    assert result.returned is not None
    assert [r[0] if r else None for r in result.returned] == [r["id"] for r in rows]
    assert db.contents()[5]["qty"] == 9


async def test_a_bad_row_of_the_next_chunk_fails_after_the_chunk_before(
    db: Pg, starts: list[str]
) -> None:
    rows = updates()
    rows[1_234] = {**rows[1_234], "nope": 1}
    before = db.contents()
    progress: list[BatchProgress] = []
    with pytest.raises(InvalidBatchRow) as info:
        await db.load(
            rows,
            on_conflict=UPSERT,
            chunk_size=CHUNK,
            method="copy_staging",
            progress=progress.append,
        )
    assert (info.value.chunk_index, info.value.position) == (3, 1_234)
    assert [p.rows for p in progress] == [400, 800, 1_200]  # chunks 0-2 were reported
    assert db.contents() == before  # nothing committed


async def test_a_value_that_cannot_be_encoded_names_its_row(db: Pg, starts: list[str]) -> None:
    rows = updates()
    rows[1_000] = {**rows[1_000], "qty": "many"}
    with pytest.raises(InvalidBatchRow) as info:
        await db.load(rows, on_conflict=UPSERT, chunk_size=CHUNK, method="copy_staging")
    assert (info.value.chunk_index, info.value.position, info.value.column) == (2, 1_000, "qty")
    assert len(db.contents()) == 1_000


async def test_a_server_error_of_a_chunk_wins_over_the_next_chunks(
    db: Pg, starts: list[str]
) -> None:
    rows = updates()
    rows[500] = {**rows[500], "qty": -1}  # the check constraint refuses it during the INSERT
    rows[900] = {**rows[900], "nope": 1}  # the next chunk's own problem, never reached
    with pytest.raises(BatchChunkError) as info:
        await db.load(rows, on_conflict=UPSERT, chunk_size=CHUNK, method="copy_staging")
    assert info.value.chunk_index == 1
    assert not isinstance(info.value, InvalidBatchRow)
    assert len(db.contents()) == 1_000


class InputBroke(Exception):
    pass


def breaking(after: int) -> Iterator[dict[str, Any]]:
    yield from updates(after)
    raise InputBroke


async def test_the_inputs_error_surfaces_after_the_chunks_read_before_it(
    db: Pg, starts: list[str]
) -> None:
    progress: list[BatchProgress] = []
    with pytest.raises(InputBroke):
        await db.load(
            breaking(1_000),
            on_conflict=UPSERT,
            chunk_size=CHUNK,
            method="copy_staging",
            progress=progress.append,
        )
    assert [p.rows for p in progress] == [400, 800]


@pytest.mark.parametrize("target", ["connection", "session"])
async def test_a_callers_transaction(db: Pg, starts: list[str], target: str) -> None:
    result = await db.load(
        updates(), on_conflict=UPSERT, chunk_size=CHUNK, method="copy_staging", target=target
    )
    assert (result.inserted, result.updated) == (1_000, 1_000)
    assert len(starts) == 5
    assert len(db.contents()) == 2_000


async def test_other_policies_do_not_overlap(db: Pg, starts: list[str]) -> None:
    for options in (
        {"transaction": "per_chunk"},
        {"transaction": "savepoint"},
        {"on_error": "isolate"},
        {"dedupe": lambda kept, new: new},
    ):
        result = await db.load(
            updates(), on_conflict=UPSERT, chunk_size=CHUNK, method="copy_staging", **options
        )
        assert result.updated + result.inserted == 2_000
    assert starts == []


def test_a_statement_still_running_is_waited_for(pg_url: str) -> None:
    """A load stopped between sending its INSERT and reading its result (here by
    an interrupt from the input) leaves no thread on the connection."""
    db = Pg("sync", pg_url)
    engine = db.engine
    try:

        def interrupted() -> Iterator[dict[str, Any]]:
            yield from updates(CHUNK)
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            _sync.batch_insert(
                engine,
                db.table,
                interrupted(),
                on_conflict=UPSERT,
                chunk_size=CHUNK,
                method="copy_staging",
            )
        with engine.connect() as connection:  # the pool's connection is usable
            assert connection.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        import asyncio

        asyncio.run(db.close())
