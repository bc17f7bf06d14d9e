"""Shard-aware IDs on the real PostgreSQL: the ID function (direct and through PgBouncer),
leases held in a real table, and IDs unique across 4 processes x 50,000."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.errors import WorkerLeaseError
from scalekit.sharding import (
    DEFAULT_ID_LAYOUT,
    GENERATOR_ID_LAYOUT,
    AsyncIdGenerator,
    AsyncWorkerLease,
    IdGenerator,
    WorkerLease,
    ainstall_id_function,
    install_id_function,
    shard_of_id,
)
from scalekit.testing.servers import PgCluster
from scalekit.testing.servers._pgbouncer import PgBouncer

pytestmark = pytest.mark.integration

# psycopg prepares a statement after 5 runs on a connection, which PgBouncer's
# transaction pooling cannot follow (see test_pagination_pgbouncer_pg.py).
NO_PREPARE: dict[str, Any] = {"connect_args": {"prepare_threshold": None}}


def _orders(name: str) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column(
            "id", sa.BigInteger, primary_key=True, server_default=sa.text("scalekit_next_id()")
        ),
        sa.Column("note", sa.Text),
    )


@pytest.fixture(scope="module")
def shard_urls(pg_cluster: PgCluster) -> list[str]:
    """Two shard databases on the primary: logical shards 3 and 4100."""
    assert pg_cluster.primary is not None
    urls = []
    for _ in range(2):
        dbname = f"scalekit_ids_{uuid.uuid4().hex[:8]}"
        pg_cluster.primary.execute(f'CREATE DATABASE "{dbname}"')
        urls.append(pg_cluster.primary.url_for(dbname))
    return urls


def _insert_many(engine: sa.Engine, table: sa.Table, count: int) -> list[int]:
    ids = []
    for i in range(count):
        with engine.begin() as connection:
            ids.append(
                connection.execute(table.insert().values(note=str(i))).inserted_primary_key[0]
            )
    return ids


def test_the_function_issues_unique_increasing_ids_that_carry_the_shard(
    shard_urls: list[str],
) -> None:
    table = _orders("orders_fn")
    seen: list[int] = []
    for url, shard in zip(shard_urls, (3, 4100), strict=True):
        engine = sa.create_engine(url)
        install_id_function(engine, shard=shard)
        table.metadata.create_all(engine)
        with ThreadPoolExecutor(8) as pool:
            batches = list(pool.map(_insert_many, [engine] * 8, [table] * 8, [300] * 8))
        ids = [i for batch in batches for i in batch]
        for batch in batches:
            assert batch == sorted(batch)  # each writer sees its IDs increase
        assert len(set(ids)) == len(ids) == 2400
        assert {shard_of_id(i) for i in ids} == {shard}
        with engine.connect() as connection:
            assert connection.scalar(sa.select(sa.func.count()).select_from(table)) == 2400
        created = DEFAULT_ID_LAYOUT.decompose(max(ids)).timestamp_ms / 1000
        assert abs(created - time.time()) < 60
        seen += ids
        engine.dispose()
    assert len(set(seen)) == len(seen)


def test_a_server_clock_behind_the_last_id_never_repeats_one(shard_urls: list[str]) -> None:
    """The sequence is put 3 s ahead of the clock, as if the server clock had stepped back."""
    engine = sa.create_engine(shard_urls[0])
    install_id_function(engine, shard=3, function="ids_stepped")
    with engine.begin() as connection:
        before = [connection.scalar(sa.text("SELECT ids_stepped()")) for _ in range(50)]
        ahead_ms = int(time.time() * 1000) + 3000 - DEFAULT_ID_LAYOUT.epoch_ms
        connection.execute(
            sa.text("SELECT setval('ids_stepped_seq', :low)"), {"low": ahead_ms << 10}
        )
        after = [connection.scalar(sa.text("SELECT ids_stepped()")) for _ in range(3000)]
    ids = before + after
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # More than 1024 IDs in a millisecond of the future: the time field runs ahead, no wrap.
    stamps = {DEFAULT_ID_LAYOUT.decompose(i).timestamp_ms for i in after}
    assert len(stamps) >= 3
    # Reinstalling keeps the sequence: no ID is issued again.
    install_id_function(engine, shard=3, function="ids_stepped")
    with engine.begin() as connection:
        assert connection.scalar(sa.text("SELECT ids_stepped()")) > max(ids)
    engine.dispose()


def test_the_function_through_pgbouncer_transaction_pooling(
    pgbouncer: PgBouncer, pg_url: str
) -> None:
    direct = sa.create_engine(pg_url)
    install_id_function(direct, shard=77, function="ids_bounced")
    direct.dispose()
    engine = sa.create_engine(pgbouncer.url_for("primary"), **NO_PREPARE)

    def issue(_: int) -> list[int]:
        out = []
        for _ in range(200):
            with engine.begin() as connection:
                out.append(connection.scalar(sa.text("SELECT ids_bounced()")))
        return out

    with ThreadPoolExecutor(6) as pool:
        batches = list(pool.map(issue, range(6)))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids) == 1200
    assert {shard_of_id(i) for i in ids} == {77}
    # Installing through PgBouncer works too (one transaction).
    install_id_function(engine, shard=77, function="ids_bounced")
    engine.dispose()


async def test_the_async_installer_and_generator_on_postgres(shard_urls: list[str]) -> None:
    url = shard_urls[1]
    engine = create_async_engine(url)
    await ainstall_id_function(engine, shard=4100, function="ids_async")
    async with engine.begin() as connection:
        await ainstall_id_function(connection, shard=4100, function="ids_async")
        first = await connection.scalar(sa.text("SELECT ids_async()"))
    assert shard_of_id(first) == 4100
    lease = AsyncWorkerLease(engine, pool="async-pg", ttl=30)
    await lease.acreate_table()
    async with AsyncIdGenerator(lease) as ids:
        issued = [await ids.anext_id(11) for _ in range(3000)]
    assert len(set(issued)) == 3000 and issued == sorted(issued)
    await engine.dispose()


# --- leases on PostgreSQL --------------------------------------------------------------


@pytest.fixture
def lease_engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url)
    yield engine
    engine.dispose()


def test_an_expired_lease_is_stolen_on_postgres(lease_engine: sa.Engine) -> None:
    pool = f"steal-{uuid.uuid4().hex[:6]}"
    lease = WorkerLease(lease_engine, pool=pool, workers=[5], ttl=0.4, renew_after=0.1)
    lease.create_table()
    old = IdGenerator(lease)
    old.start()
    old_ids = [old.next_id(1) for _ in range(200)]
    with pytest.raises(WorkerLeaseError):
        IdGenerator(WorkerLease(lease_engine, pool=pool, workers=[5])).start()  # still held
    time.sleep(0.6)  # not renewed: it expires on the server's clock
    thief = IdGenerator(WorkerLease(lease_engine, pool=pool, workers=[5], ttl=30))
    thief.start()
    new_ids = [thief.next_id(1) for _ in range(200)]
    assert min(new_ids) > max(old_ids)
    with pytest.raises(WorkerLeaseError, match="lost"):
        old.next_id(1)  # its renewal finds the row taken: it stops
    thief.close()


def _issue_in_process(args: tuple[str, str, int]) -> list[int]:
    url, pool, count = args
    engine = sa.create_engine(url)
    lease = WorkerLease(engine, pool=pool, ttl=5, renew_after=1)
    with IdGenerator(lease) as ids:
        out = [ids.next_id(n % 8192) for n in range(count)]
    engine.dispose()
    return out


@pytest.mark.slow
def test_ids_are_unique_across_four_processes(pg_url: str) -> None:
    pool = f"procs-{uuid.uuid4().hex[:6]}"
    engine = sa.create_engine(pg_url)
    WorkerLease(engine, pool=pool).create_table()
    engine.dispose()
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as processes:
        results = processes.map(_issue_in_process, [(pg_url, pool, 50_000)] * 4)
    ids = [i for result in results for i in result]
    assert len(ids) == 200_000
    assert len(set(ids)) == 200_000
    for result in results:
        # Many shards: IDs order by time (to the millisecond), then by shard.
        stamps = [GENERATOR_ID_LAYOUT.decompose(i).timestamp_ms for i in result]
        assert stamps == sorted(stamps)
        assert [shard_of_id(i) for i in result[:9000:1000]] == list(range(0, 9000, 1000))


def test_a_cancelled_call_leaves_no_lock_behind(shard_urls: list[str]) -> None:
    """A call cancelled by statement_timeout while another session holds the ID lock
    fails cleanly; the next calls (on the same pooled connection) work."""
    engine = sa.create_engine(shard_urls[0], pool_size=1, max_overflow=0)
    install_id_function(engine, shard=3, function="ids_cancel")
    with engine.connect() as connection:
        source = connection.scalar(
            sa.text("SELECT prosrc FROM pg_proc WHERE proname = 'ids_cancel'")
        )
    lock_key = int(source.split("pg_advisory_lock(")[1].split(")")[0])
    holder = sa.create_engine(shard_urls[0])
    with holder.connect() as blocking:
        blocking.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": lock_key})
        with engine.connect() as connection:
            connection.execute(sa.text("SET statement_timeout = 200"))
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                connection.execute(sa.text("SELECT ids_cancel()"))
            connection.rollback()
        blocking.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key})
        blocking.commit()
    with engine.connect() as connection:
        ids = [connection.scalar(sa.text("SELECT ids_cancel()")) for _ in range(10)]
        held = connection.scalar(
            sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        )
    assert len(set(ids)) == 10 and held == 0
    holder.dispose()
    engine.dispose()
