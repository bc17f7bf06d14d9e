"""scalekit through PgBouncer in transaction pooling mode (the harness's ``pgbouncer`` fixture).

PgBouncer hands each *transaction* of a client connection to whichever server
connection is free (the harness makes that a different one each time), so
session state does not follow the client. What that breaks, and what works:

- psycopg's automatic prepared statements (``prepare_threshold=5``, the
  default of ``create_engine(url)``) fail once a statement has run five times
  on one client connection: the statement was prepared on another server
  connection (``InvalidSqlStatementName``) or a server already has one of that
  name (``DuplicatePreparedStatement``). PgBouncer 1.21+ with
  ``max_prepared_statements`` handles them; older ones (Debian 12 ships 1.18)
  need ``connect_args={"prepare_threshold": None}``.
- routing with LSN tokens and pagination work with that engine setting.
- batch inserts and upserts work with ``create_engine(url)`` defaults: the
  load never prepares a statement.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from scalekit.batch import BatchResult, Upsert, abatch_insert, batch_insert
from scalekit.errors import BatchChunkError
from scalekit.pagination import paginate
from scalekit.routing import AsyncRoutingPool, RoutingPool
from tests.harness import PgCluster, wait_until
from tests.harness.pgbouncer import PgBouncer

pytestmark = pytest.mark.integration

# What the docs tell users of PgBouncer < 1.21 in transaction mode.
NO_PREPARE: dict[str, Any] = {"connect_args": {"prepare_threshold": None}}
IN_RECOVERY = sa.select(sa.func.pg_is_in_recovery())


def _table(prefix: str) -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    return metadata, sa.Table(
        f"{prefix}_{uuid.uuid4().hex[:8]}",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("qty", sa.Integer, sa.CheckConstraint("qty >= 0"), nullable=False),
    )


@pytest.fixture
def table(pgbouncer: PgBouncer, pg_cluster: PgCluster) -> Iterator[sa.Table]:
    """A table on the primary (made directly, not through PgBouncer), replicated."""
    assert pg_cluster.primary is not None
    direct = sa.create_engine(pgbouncer.url_for("primary"), **NO_PREPARE)
    metadata, created = _table("bouncer")
    metadata.create_all(direct)
    pg_cluster.wait_for_replicas()
    try:
        yield created
    finally:
        metadata.drop_all(direct)
        direct.dispose()


def _backend_pids(engine: sa.Engine, transactions: int) -> set[int]:
    pids = set()
    with engine.connect() as connection:
        for _ in range(transactions):
            pids.add(int(connection.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()))
            connection.commit()
    return pids


# -- the harness itself -------------------------------------------------------------------------


def test_pgbouncer_pools_transactions_over_several_server_connections(
    pgbouncer: PgBouncer,
) -> None:
    config = {row["key"]: row["value"] for row in pgbouncer.show("CONFIG")}
    assert config["pool_mode"] == "transaction"
    engine = sa.create_engine(pgbouncer.url_for("primary"), **NO_PREPARE)
    try:
        # One client connection, consecutive transactions: more than one server backend.
        wait_until(
            lambda: len(_backend_pids(engine, 6)) > 1,
            timeout=30,
            what="PgBouncer to spread transactions over its server connections",
        )
        with engine.connect() as connection:
            assert connection.execute(IN_RECOVERY).scalar_one() is False
    finally:
        engine.dispose()
    replica = sa.create_engine(pgbouncer.url_for("replica"), **NO_PREPARE)
    try:
        with replica.connect() as connection:
            assert connection.execute(IN_RECOVERY).scalar_one() is True
    finally:
        replica.dispose()


# -- prepared statements: what create_engine(url) defaults do -------------------------------------


def test_default_engine_fails_once_psycopg_prepares_a_statement(
    pgbouncer: PgBouncer, table: sa.Table
) -> None:
    """The outcome docs/routing.md and docs/pagination.md describe, and its remedy."""
    statement = sa.select(table.c.id).where(table.c.id == sa.bindparam("wanted"))

    def run(engine: sa.Engine) -> None:
        with engine.connect() as connection:
            for wanted in range(20):  # separate transactions, as separate requests would be
                connection.execute(statement, {"wanted": wanted}).all()
                connection.commit()

    default = sa.create_engine(pgbouncer.url_for("primary"))
    try:
        with pytest.raises(sa.exc.ProgrammingError) as failure:
            run(default)
        assert isinstance(
            failure.value.orig,
            (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement),
        )
    finally:
        default.dispose()
    unprepared = sa.create_engine(pgbouncer.url_for("primary"), **NO_PREPARE)
    try:
        run(unprepared)
    finally:
        unprepared.dispose()


# -- routing with LSN tokens ------------------------------------------------------------------


@pytest.fixture
def routed(pgbouncer: PgBouncer, table: sa.Table) -> Iterator[RoutingPool]:
    primary = sa.create_engine(pgbouncer.url_for("primary"), **NO_PREPARE)
    replica = sa.create_engine(pgbouncer.url_for("replica"), **NO_PREPARE)
    pool = RoutingPool(primary=primary, replicas=[replica], consistency="lsn", max_lag_seconds=30)
    try:
        yield pool
    finally:
        pool.close()
        primary.dispose()
        replica.dispose()


def test_routing_reads_your_writes_through_pgbouncer(
    routed: RoutingPool, table: sa.Table, pg_cluster: PgCluster
) -> None:
    Session_ = routed.sessionmaker()
    replica = pg_cluster.replicas[0]
    for index in range(12):
        with Session_() as session:
            session.execute(table.insert().values(id=index, body=f"row {index}", qty=index))
            session.commit()
        with Session_() as session:
            body = session.execute(sa.select(table.c.body).where(table.c.id == index)).scalar()
            assert body == f"row {index}"
    # With the replica's replay paused, the read that follows a write goes to the primary.
    replica.pause_replay()
    try:
        with Session_() as session:
            session.execute(table.insert().values(id=100, body="behind", qty=1))
            session.commit()
        with Session_() as session:
            row = session.execute(
                sa.select(table.c.body, sa.func.pg_is_in_recovery()).where(table.c.id == 100)
            ).one()
            assert tuple(row) == ("behind", False)
    finally:
        replica.resume_replay()
    # Once the replica has replayed the token, the same context reads from it again.
    pg_cluster.wait_for_replicas(nodes=[replica])
    wait_until(
        lambda: _read_on(Session_, table, 100) == ("behind", True),
        timeout=30,
        what="the read to return to the replica",
    )
    assert routed.export_token() is not None


def _read_on(Session_: Any, table: sa.Table, row_id: int) -> tuple[Any, ...]:
    with Session_() as session:
        row = session.execute(
            sa.select(table.c.body, sa.func.pg_is_in_recovery()).where(table.c.id == row_id)
        ).one()
        return tuple(row)


async def test_async_routing_reads_your_writes_through_pgbouncer(
    pgbouncer: PgBouncer, table: sa.Table
) -> None:
    primary = create_async_engine(pgbouncer.url_for("primary"), **NO_PREPARE)
    replica = create_async_engine(pgbouncer.url_for("replica"), **NO_PREPARE)
    pool = AsyncRoutingPool(primary=primary, replicas=[replica], consistency="lsn")
    try:
        Session_ = pool.sessionmaker()
        for index in range(12):
            async with Session_() as session:
                await session.execute(table.insert().values(id=index, body=f"a{index}", qty=0))
                await session.commit()
            async with Session_() as session:
                body = await session.scalar(sa.select(table.c.body).where(table.c.id == index))
                assert body == f"a{index}"
    finally:
        pool.close()
        await primary.dispose()
        await replica.dispose()


# -- pagination --------------------------------------------------------------------------------


def test_pagination_walks_through_pgbouncer(pgbouncer: PgBouncer, table: sa.Table) -> None:
    engine = sa.create_engine(pgbouncer.url_for("primary"), **NO_PREPARE)
    try:
        with engine.begin() as connection:
            connection.execute(
                table.insert(), [{"id": i, "body": f"b{i % 7}", "qty": i % 5} for i in range(200)]
            )
        query = sa.select(table.c.id, table.c.qty)
        order = [table.c.qty.desc(), table.c.id]
        with engine.connect() as connection:
            expected = [tuple(r) for r in connection.execute(query.order_by(*order)).all()]
        # Each page in its own session, as each request of an API would be.
        forward: list[tuple[Any, ...]] = []
        cursor = None
        while True:
            with Session(engine) as session:
                page = paginate(session, query, order_by=order, limit=9, after=cursor)
            forward.extend(tuple(r) for r in page.items)
            if not page.has_next:
                break
            cursor = page.next_cursor
        assert forward == expected
        backward: list[tuple[Any, ...]] = []
        with Session(engine) as session:
            page = paginate(session, query, order_by=order, limit=9, last=True)
            backward[:0] = [tuple(r) for r in page.items]
            while page.has_prev:
                page = paginate(session, query, order_by=order, limit=9, before=page.prev_cursor)
                backward[:0] = [tuple(r) for r in page.items]
        assert backward == expected
    finally:
        engine.dispose()


# -- batch inserts and upserts with create_engine(url) defaults ----------------------------------

PLAIN_METHODS = ("auto", "copy", "copy_text", "executemany")
UPSERT_METHODS = ("auto", "copy_staging", "unnest", "executemany")


def _rows(count: int, version: int) -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield {"id": i, "body": f"v{version} row {i}", "qty": i}


def _read(engine: sa.Engine, table: sa.Table) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(sa.select(table).order_by(table.c.id))]


@pytest.mark.parametrize("method", PLAIN_METHODS)
def test_batch_copy_and_inserts_through_pgbouncer(
    pgbouncer: PgBouncer, table: sa.Table, method: str
) -> None:
    engine = sa.create_engine(pgbouncer.url_for("primary"))  # defaults: prepare_threshold=5
    try:
        # Many small chunks, each committed: each lands on another server connection.
        result = batch_insert(
            engine, table, _rows(120, 1), method=method, chunk_size=10, transaction="per_chunk"
        )
        assert (result.inserted, result.chunks) == (120, 12)
        assert _read(engine, table) == [(i, f"v1 row {i}", i) for i in range(120)]
    finally:
        engine.dispose()


@pytest.mark.parametrize("method", UPSERT_METHODS)
@pytest.mark.parametrize("transaction", ["per_chunk", "all_or_nothing"])
def test_batch_upserts_through_pgbouncer(
    pgbouncer: PgBouncer, table: sa.Table, method: str, transaction: str
) -> None:
    engine = sa.create_engine(pgbouncer.url_for("primary"))
    upsert = Upsert(index=["id"], update=["body"])
    try:
        # The same statements again, on the same pooled client connection.
        results: list[BatchResult] = [
            batch_insert(
                engine,
                table,
                _rows(60 * version, version),
                method=method,
                chunk_size=10,
                transaction=transaction,
                on_conflict=upsert,
            )
            for version in (1, 2, 3)
        ]
        assert [(r.inserted, r.updated) for r in results] == [(60, 0), (60, 60), (60, 120)]
        assert _read(engine, table) == [(i, f"v3 row {i}", i) for i in range(180)]
    finally:
        engine.dispose()


def test_batch_isolates_bad_rows_through_pgbouncer(pgbouncer: PgBouncer, table: sa.Table) -> None:
    engine = sa.create_engine(pgbouncer.url_for("primary"))
    try:
        rows = [{"id": i, "body": "ok", "qty": -1 if i in (7, 45) else 1} for i in range(60)]
        result = batch_insert(
            engine, table, rows, chunk_size=20, on_error="isolate", transaction="per_chunk"
        )
        assert [r.position for r in result.rejected] == [7, 45]
        assert result.inserted == 58
        assert len(_read(engine, table)) == 58
    finally:
        engine.dispose()


@pytest.fixture
async def async_engine(pgbouncer: PgBouncer) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(pgbouncer.url_for("primary"))  # defaults
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize("method", ["copy", "copy_staging", "unnest", "executemany"])
async def test_async_batch_through_pgbouncer(
    async_engine: AsyncEngine, pgbouncer: PgBouncer, table: sa.Table, method: str
) -> None:
    upsert = None if method == "copy" else Upsert(index=["id"], update=["body"])
    for version in (1, 2):
        result = await abatch_insert(
            async_engine,
            table,
            _rows(60, version),
            method=method,
            chunk_size=10,
            transaction="per_chunk",
            on_conflict=upsert,
        )
        if upsert is None:
            break
        assert result.written == 60
    engine = sa.create_engine(pgbouncer.url_for("primary"), **NO_PREPARE)
    try:
        final = 1 if upsert is None else 2
        assert _read(engine, table) == [(i, f"v{final} row {i}", i) for i in range(60)]
    finally:
        engine.dispose()


async def test_batch_streamed_copy_through_pgbouncer(
    async_engine: AsyncEngine, pgbouncer: PgBouncer, table: sa.Table
) -> None:
    """A plain load in one transaction streams its chunks through one COPY (both
    shells); a refused row rolls it back and the pooled connection stays usable."""
    engine = sa.create_engine(pgbouncer.url_for("primary"))
    try:
        bad = [{"id": i, "body": "x", "qty": -1 if i == 37 else i} for i in range(60)]
        with pytest.raises(BatchChunkError) as info:
            batch_insert(engine, table, bad, chunk_size=10)
        assert (info.value.chunk_index, info.value.position) == (3, 30)
        with pytest.raises(BatchChunkError):
            await abatch_insert(async_engine, table, bad, chunk_size=10)
        assert _read(engine, table) == []
        result = batch_insert(engine, table, _rows(60, 1), chunk_size=10)
        assert (result.method, result.inserted, result.chunks) == ("copy", 60, 6)
        more = [{"id": i, "body": "y", "qty": i} for i in range(60, 120)]
        result = await abatch_insert(async_engine, table, more, chunk_size=10)
        assert result.inserted == 60
        assert len(_read(engine, table)) == 120
    finally:
        engine.dispose()
