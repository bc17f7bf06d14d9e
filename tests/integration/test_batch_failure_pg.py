"""Batch inserts when PostgreSQL dies mid-load, on a private cluster.

With ``transaction="per_chunk"`` the primary is killed (SIGKILL) right after a
chunk commits. The load must fail with :class:`BatchChunkError` saying how
far it got; after a restart, a rerun from ``resume_position`` must complete
the table with no duplicate and no lost row. Then the same with the primary
stopped (fast shutdown) under an idempotent upsert.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.batch import BatchProgress, BatchResult, Upsert, abatch_insert, batch_insert
from scalekit.errors import BatchChunkError
from scalekit.retry import Backoff, RetryGaveUp, RetryPolicy, RetryScheduled, transient
from scalekit.testing import capture_events
from tests.harness.postgres import PgCluster

pytestmark = pytest.mark.integration

ROWS = 20_000
CHUNK = 2_000
FAST_RETRY = RetryPolicy(attempts=2, backoff=Backoff.none(), retry_on=transient.database)


def table(name: str) -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    return metadata, sa.Table(
        name,
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("body", sa.Text, nullable=False),
    )


def rows(count: int = ROWS) -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield {"id": i, "body": f"row {i}"}


async def aiter_rows() -> AsyncIterator[dict[str, Any]]:
    for item in rows():
        yield item


async def load(mode: str, url: str, target: sa.Table, **options: Any) -> BatchResult:
    if mode == "sync":
        engine = sa.create_engine(url)
        try:
            return batch_insert(engine, target, rows(), **options)
        finally:
            engine.dispose()
    async_engine = create_async_engine(url)
    try:
        return await abatch_insert(async_engine, target, aiter_rows(), **options)
    finally:
        await async_engine.dispose()


def killer(after_rows: int, action: Callable[[], None]) -> Callable[[BatchProgress], None]:
    def progress(done: BatchProgress) -> None:
        if done.rows == after_rows:
            action()

    return progress


def read_ids(url: str, name: str) -> list[int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.text(f"SELECT id FROM {name} ORDER BY id")).scalars())
    finally:
        engine.dispose()


@pytest.fixture
def cluster(pg_cluster_factory: Callable[..., PgCluster]) -> PgCluster:
    return pg_cluster_factory(replicas=0)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_kill_mid_load_per_chunk_then_resume(cluster: PgCluster, mode: str) -> None:
    primary = cluster.primary
    assert primary is not None
    metadata, target = table(f"killed_{uuid.uuid4().hex[:8]}")
    engine = primary.engine()
    metadata.create_all(engine)
    engine.dispose()

    started = time.perf_counter()
    with pytest.raises(BatchChunkError) as info:
        await load(
            mode,
            primary.url,
            target,
            chunk_size=CHUNK,
            transaction="per_chunk",
            retry=FAST_RETRY,
            progress=killer(3 * CHUNK, primary.kill),
        )
    failed_after = time.perf_counter() - started
    error = info.value
    partial = error.result
    assert isinstance(partial, BatchResult)
    assert error.chunk_index == 3 and error.position == 3 * CHUNK
    assert error.rows_written == 3 * CHUNK == partial.committed
    assert partial.resume_position == 3 * CHUNK

    primary.start()
    assert read_ids(primary.url, target.name) == list(range(3 * CHUNK))  # nothing committed lost
    result = await load(
        mode, primary.url, target, chunk_size=CHUNK, transaction="per_chunk", resume=partial
    )
    assert result.inserted == ROWS - 3 * CHUNK and result.resume_position == ROWS
    assert read_ids(primary.url, target.name) == list(range(ROWS))  # no duplicate, no gap
    print(f"\n[batch kill {mode}] failed {failed_after:.2f}s after start; resumed at {3 * CHUNK}")


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_stop_mid_upsert_gives_up_after_retries_then_resume(
    cluster: PgCluster, mode: str
) -> None:
    primary = cluster.primary
    assert primary is not None
    metadata, target = table(f"stopped_{uuid.uuid4().hex[:8]}")
    engine = primary.engine()
    metadata.create_all(engine)
    engine.dispose()

    with capture_events() as events, pytest.raises(BatchChunkError) as info:
        await load(
            mode,
            primary.url,
            target,
            chunk_size=CHUNK,
            transaction="per_chunk",
            on_conflict=Upsert(index=["id"]),
            retry=FAST_RETRY,
            progress=killer(5 * CHUNK, lambda: primary.stop("fast")),
        )
    partial = info.value.result
    assert isinstance(partial, BatchResult)
    assert partial.resume_position == 5 * CHUNK == partial.committed
    assert transient.database(info.value.__cause__)  # type: ignore[arg-type]
    # the idempotent chunk was retried with the policy before giving up
    assert sum(isinstance(e, RetryScheduled) for e in events) == 1
    assert sum(isinstance(e, RetryGaveUp) for e in events) == 1

    primary.start()
    # An upsert is idempotent: rerunning from the start is also safe.
    result = await load(
        mode, primary.url, target, chunk_size=CHUNK, transaction="per_chunk",
        on_conflict=Upsert(index=["id"]), resume=partial.resume_position - CHUNK,
    )  # fmt: skip
    assert (result.inserted, result.updated) == (ROWS - 5 * CHUNK, CHUNK)
    assert read_ids(primary.url, target.name) == list(range(ROWS))
