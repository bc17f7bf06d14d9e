"""Batch inserts on the harness's real PostgreSQL, through the sync and the async shell.

Every method loads exactly the input (the table is read back and compared);
upserts count inserted/updated rows right; duplicates inside a batch follow
the dedupe rule; returned keys come back in input order; bad rows are
isolated with their positions.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from scalekit.batch import BatchResult, Upsert, abatch_insert, batch_insert
from scalekit.errors import BatchChunkError, ConfigurationError, InvalidBatchRow

pytestmark = pytest.mark.integration

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def make_table(name: str, *, arrays: bool = False) -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    columns: list[Any] = [
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("sku", sa.Text, nullable=False, unique=True),
        sa.Column("qty", sa.Integer, sa.CheckConstraint("qty >= 0"), nullable=True),
        sa.Column("price", sa.Numeric(10, 2)),
        sa.Column("created", sa.DateTime(timezone=True)),
        sa.Column("ref", pg.UUID(as_uuid=True)),
        sa.Column("payload", pg.JSONB),
        sa.Column("serial", sa.BigInteger, sa.Identity(), nullable=False),
    ]
    if arrays:
        columns.append(sa.Column("tags", pg.ARRAY(sa.Text)))
    return metadata, sa.Table(name, metadata, *columns)


def row(i: int, *, qty: int | None = None, arrays: bool = False) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": i,
        "sku": f"sku-{i}",
        "qty": i % 1000 if qty is None else qty,
        "price": decimal.Decimal(i) / 100,
        "created": BASE + dt.timedelta(seconds=i),
        "ref": uuid.UUID(int=i),
        "payload": {"i": i, "tags": ["a", str(i)]},
    }
    if arrays:
        values["tags"] = [f"t{i}", None, "x"]
    return values


def rows_of(count: int, start: int = 0, **kwargs: Any) -> Iterator[dict[str, Any]]:
    for i in range(start, start + count):
        yield row(i, **kwargs)


class Pg:
    """One table on the harness primary, loaded through either shell."""

    def __init__(self, mode: str, url: str, *, arrays: bool = False) -> None:
        self.mode = mode
        self.engine = sa.create_engine(url)
        self.async_engine = create_async_engine(url)
        self.metadata, self.table = make_table(f"batch_{uuid.uuid4().hex[:10]}", arrays=arrays)
        self.metadata.create_all(self.engine)

    async def load(
        self, rows: Iterable[Any], *, target: str = "engine", **options: Any
    ) -> BatchResult:
        table = self.table
        if self.mode == "sync":
            if target == "connection":
                with self.engine.connect() as connection:
                    result = batch_insert(connection, table, rows, **options)
                    connection.commit()
                    return result
            if target == "session":
                with Session(self.engine) as session:
                    result = batch_insert(session, table, rows, **options)
                    session.commit()
                    return result
            return batch_insert(self.engine, table, rows, **options)
        if target == "connection":
            async with self.async_engine.connect() as aconnection:
                result = await abatch_insert(aconnection, table, _aiter(rows), **options)
                await aconnection.commit()
                return result
        if target == "session":
            async with AsyncSession(self.async_engine) as asession:
                result = await abatch_insert(asession, table, _aiter(rows), **options)
                await asession.commit()
                return result
        return await abatch_insert(self.async_engine, table, _aiter(rows), **options)

    def contents(self) -> dict[int, dict[str, Any]]:
        with self.engine.connect() as connection:
            out = {}
            for found in connection.execute(sa.select(self.table)).mappings():
                values = dict(found)
                values.pop("serial")
                out[values["id"]] = values
            return out

    async def close(self) -> None:
        self.metadata.drop_all(self.engine)
        self.engine.dispose()
        await self.async_engine.dispose()


async def _aiter(rows: Iterable[Any]) -> AsyncIterator[Any]:
    for item in rows:
        yield item


@pytest.fixture(params=["sync", "async"])
async def db(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[Pg]:
    instance = Pg(request.param, pg_url)
    yield instance
    await instance.close()


def expected(count: int, start: int = 0, **kwargs: Any) -> dict[int, dict[str, Any]]:
    return {r["id"]: r for r in rows_of(count, start, **kwargs)}


@pytest.mark.parametrize("method", ["copy", "copy_text", "copy_staging", "unnest", "executemany"])
async def test_every_method_loads_exactly_the_input(db: Pg, method: str) -> None:
    result = await db.load(rows_of(2_500), method=method, chunk_size=1_000)
    assert result.method == method
    assert (result.rows, result.inserted, result.chunks) == (2_500, 2_500, 3)
    assert db.contents() == expected(2_500)
    if method.startswith("copy"):
        assert result.bytes > 0


@pytest.mark.parametrize("target", ["connection", "session"])
async def test_connection_and_session_targets(db: Pg, target: str) -> None:
    result = await db.load(rows_of(300), target=target)
    assert result.method == "copy"
    result = await db.load(
        rows_of(300, start=200, qty=7), target=target, on_conflict=Upsert(index=["id"])
    )
    assert (result.inserted, result.updated) == (200, 100)
    want = expected(200) | expected(300, start=200, qty=7)
    assert db.contents() == want


async def test_auto_method_choice_is_reported(db: Pg) -> None:
    assert (await db.load(rows_of(10))).method == "copy"
    small = await db.load(rows_of(10, start=10), returning=["serial"])
    assert small.method == "unnest"
    large = await db.load(rows_of(3_000, start=20), on_conflict=Upsert(index=["id"]))
    assert large.method == "copy_staging"
    assert len(db.contents()) == 3_020


@pytest.mark.parametrize("method", ["copy_staging", "unnest", "executemany"])
async def test_upsert_counts_half_existing(db: Pg, method: str) -> None:
    await db.load(rows_of(1_000))
    result = await db.load(
        rows_of(1_000, start=500, qty=5),
        method=method,
        chunk_size=400,
        on_conflict=Upsert(index=["id"], update=["qty", "payload"]),
    )
    assert (result.inserted, result.updated, result.skipped) == (500, 500, 0)
    want = expected(500) | expected(1_000, start=500, qty=5)
    for i in range(500, 1_000):  # only qty and payload were updated
        want[i] = {**row(i), "qty": 5}
    assert db.contents() == want


@pytest.mark.parametrize("method", ["copy_staging", "unnest", "executemany"])
async def test_upsert_where_and_constraint_target(db: Pg, method: str) -> None:
    await db.load(rows_of(10))
    table = db.table.name
    rows = [{**row(i), "qty": 100 if i % 2 else 0} for i in range(12)]
    result = await db.load(
        rows,
        method=method,
        on_conflict=Upsert(
            constraint=f"{table}_pkey", update=["qty"], where=f"excluded.qty > {table}.qty"
        )
        if method != "executemany"
        else Upsert(index=["id"], update=["qty"], where=f"excluded.qty > {table}.qty"),
    )
    assert (result.inserted, result.updated, result.skipped) == (2, 5, 5)
    qty = {k: v["qty"] for k, v in db.contents().items()}
    assert qty == {i: (100 if i % 2 else (0 if i >= 10 else i)) for i in range(12)}


@pytest.mark.parametrize("method", ["copy_staging", "unnest", "executemany"])
async def test_duplicates_in_a_batch_follow_dedupe(db: Pg, method: str) -> None:
    rows = [row(1, qty=1), row(2), row(1, qty=2), row(1, qty=3)]
    last = await db.load(rows, method=method, on_conflict=Upsert(index=["id"]))
    assert last.duplicates == 2 and last.inserted == 2
    assert db.contents()[1]["qty"] == 3
    first = await db.load(rows, method=method, on_conflict=Upsert(index=["id"]), dedupe="first")
    assert first.updated == 2
    assert db.contents()[1]["qty"] == 1


@pytest.mark.parametrize("method", ["copy_staging", "unnest"])
async def test_without_dedupe_postgres_refuses_the_batch(db: Pg, method: str) -> None:
    rows = [row(1, qty=1), row(1, qty=2)]
    with pytest.raises(BatchChunkError, match="CardinalityViolation") as info:
        await db.load(rows, method=method, on_conflict=Upsert(index=["id"]), dedupe=None)
    assert getattr(info.value.__cause__, "sqlstate", None) == "21000"
    assert db.contents() == {}


@pytest.mark.parametrize("method", ["copy_staging", "unnest", "executemany"])
async def test_returned_keys_in_input_order_with_skips(db: Pg, method: str) -> None:
    await db.load([row(5), row(7)])
    rows = [row(i) for i in (9, 5, 8, 7, 6)] + [row(9)]
    result = await db.load(
        rows,
        method=method,
        on_conflict=Upsert(index=["id"], update=[]),
        returning=["id", "serial"],
        dedupe="first",
    )
    assert result.returned is not None
    ids = [None if r is None else r[0] for r in result.returned]
    assert ids == [9, None, 8, None, 6, None]
    serials = {r[0]: r[1] for r in result.returned if r is not None}
    with db.engine.connect() as connection:
        stored = dict(connection.execute(sa.select(db.table.c.id, db.table.c.serial)).all())
    assert all(stored[key] == value for key, value in serials.items())
    assert (result.inserted, result.skipped, result.duplicates) == (3, 2, 1)


@pytest.mark.parametrize(
    ("method", "chunk_size", "on_conflict"),
    [
        ("copy_staging", 700, "nothing"),
        ("copy_staging", None, Upsert(index=["id"], update=[])),
        ("unnest", 700, "nothing"),
        ("executemany", 700, "nothing"),
    ],
)
async def test_do_nothing_counts_from_the_row_count(
    db: Pg, method: str, chunk_size: int | None, on_conflict: Any
) -> None:
    """A DO NOTHING without returned keys counts inserted and skipped rows per chunk."""
    await db.load(rows_of(1_000, start=500, qty=1))
    # Two duplicates in the last chunk: a new key (the last copy is inserted), an existing one.
    rows = [*rows_of(2_000, qty=2), row(1_950, qty=9), row(1_450, qty=9)]
    result = await db.load(rows, method=method, chunk_size=chunk_size, on_conflict=on_conflict)
    # "nothing" has no conflict target here (id and sku are both unique): no
    # dedupe, the second copy of a key meets the first and is skipped.
    keyed = on_conflict != "nothing"
    assert (result.inserted, result.updated, result.skipped, result.duplicates) == (
        1_000,
        0,
        1_000 if keyed else 1_002,
        2 if keyed else 0,
    )
    stored = db.contents()
    new = 9 if keyed else 2
    expected = {i: new if i == 1_950 else 1 if 500 <= i < 1_500 else 2 for i in range(2_000)}
    assert {key: values["qty"] for key, values in stored.items()} == expected


@pytest.mark.parametrize("method", ["copy_staging", "unnest", "executemany"])
async def test_returned_keys_plain_insert(db: Pg, method: str) -> None:
    result = await db.load(rows_of(1_500), method=method, returning=["id"], chunk_size=600)
    assert result.returned == [(i,) for i in range(1_500)]


@pytest.mark.parametrize("method", ["copy", "copy_staging", "unnest", "executemany"])
async def test_isolate_finds_the_bad_rows(db: Pg, method: str) -> None:
    rows = list(rows_of(700))
    for bad in (3, 401, 402, 699):
        rows[bad] = {**rows[bad], "qty": -1}  # violates CHECK (qty >= 0)
    rows[500] = {**rows[500], "sku": "sku-1"}  # unique violation
    result = await db.load(rows, method=method, on_error="isolate", chunk_size=256)
    assert [r.position for r in result.rejected] == [3, 401, 402, 500, 699]
    assert all(r.row is rows[r.position] for r in result.rejected)
    assert "check constraint" in result.rejected[0].message
    assert result.inserted == 695
    good = expected(700)
    for bad in (3, 401, 402, 500, 699):
        del good[bad]
    assert db.contents() == good


async def test_copy_wrong_type_names_row_and_column(db: Pg) -> None:
    rows = list(rows_of(50))
    rows[37] = {**rows[37], "qty": "many"}
    with pytest.raises(InvalidBatchRow) as info:
        await db.load(rows, chunk_size=20, transaction="per_chunk")
    assert info.value.position == 37 and info.value.column == "qty"
    assert "row 37 column 'qty'" in str(info.value)
    assert info.value.rows_written == 20
    assert sorted(db.contents()) == list(range(20))


async def test_text_copy_fallback_for_values_binary_cannot_dump(db: Pg) -> None:
    rows = [{**row(i), "created": f"2024-01-01 00:00:{i:02d}+00", "ref": str(uuid.UUID(int=i))}
            for i in range(30)]  # fmt: skip
    result = await db.load(rows)
    assert result.method == "copy_text"
    assert db.contents() == expected(30)


async def test_invalid_rows_raise_before_writing(db: Pg) -> None:
    rows: list[Any] = list(rows_of(10))
    rows[6] = {"id": 6, "sku": "x"}
    with pytest.raises(InvalidBatchRow, match="row 6 has no column 'qty'"):
        await db.load(rows)
    with pytest.raises(ConfigurationError, match="required column 'sku'"):
        await db.load([{"id": 1}])
    assert db.contents() == {}


@pytest.fixture(params=["sync", "async"])
async def db_arrays(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[Pg]:
    instance = Pg(request.param, pg_url, arrays=True)
    yield instance
    await instance.close()


async def test_array_columns_use_copy_paths(db_arrays: Pg) -> None:
    plain = await db_arrays.load(rows_of(100, arrays=True))
    assert plain.method == "copy"
    upsert = await db_arrays.load(
        rows_of(100, start=50, arrays=True), on_conflict=Upsert(index=["id"])
    )
    assert upsert.method == "copy_staging" and (upsert.inserted, upsert.updated) == (50, 50)
    assert db_arrays.contents() == expected(150, arrays=True)
    with pytest.raises(ConfigurationError, match="array columns"):
        await db_arrays.load(rows_of(1, arrays=True), method="unnest")


@pytest.fixture(scope="module")
def property_table(pg_url: str) -> Iterator[tuple[sa.Engine, sa.Table]]:
    engine = sa.create_engine(pg_url)
    metadata, target = make_table(f"batch_prop_{uuid.uuid4().hex[:8]}")
    metadata.create_all(engine)
    yield engine, target
    metadata.drop_all(engine)
    engine.dispose()


key_rows = st.lists(st.tuples(st.integers(0, 25), st.integers(0, 9)), max_size=50)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    existing=st.lists(st.integers(0, 25), unique=True, max_size=12),
    rows=key_rows,
    chunk_size=st.integers(1, 20),
    dedupe=st.sampled_from(["first", "last"]),
    method=st.sampled_from(["copy_staging", "unnest", "executemany"]),
)
def test_upsert_property_on_postgres(
    property_table: tuple[sa.Engine, sa.Table],
    existing: list[int],
    rows: list[tuple[int, int]],
    chunk_size: int,
    dedupe: str,
    method: str,
) -> None:
    engine, target = property_table
    with engine.begin() as connection:
        connection.execute(sa.delete(target))
        if existing:
            connection.execute(
                sa.insert(target), [{"id": k, "sku": f"s{k}", "qty": 0} for k in existing]
            )
    want = dict.fromkeys(existing, 0)
    updated = 0
    for start in range(0, len(rows), chunk_size):
        winners: dict[int, int] = {}
        for key, qty in rows[start : start + chunk_size]:
            if dedupe == "last" or key not in winners:
                winners[key] = qty
        updated += sum(1 for key in winners if key in want)
        want.update(winners)
    result = batch_insert(
        engine,
        target,
        ({"id": k, "sku": f"s{k}", "qty": q} for k, q in rows),
        on_conflict=Upsert(index=["id"], update=["qty"]),
        method=method,  # type: ignore[arg-type]
        chunk_size=chunk_size,
        dedupe=dedupe,  # type: ignore[arg-type]
    )
    with engine.connect() as connection:
        got = dict(connection.execute(sa.select(target.c.id, target.c.qty)).all())
    assert got == want
    assert result.updated == updated
    assert result.inserted == len(want) - len(existing)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_lost_connection_is_retried_for_an_upsert(pg_url: str, mode: str) -> None:
    """The server ends the load's connection after chunk 2; the upsert retries on a new one."""
    from scalekit.retry import Backoff, RetryPolicy, RetryScheduled, transient
    from scalekit.testing import capture_events

    app = f"batch_victim_{uuid.uuid4().hex[:8]}"
    url = sa.engine.make_url(pg_url).update_query_dict({"application_name": app})
    metadata, target = make_table(f"batch_{uuid.uuid4().hex[:10]}")
    admin = sa.create_engine(pg_url)
    metadata.create_all(admin)
    terminated: list[int] = []

    def terminate(progress: Any) -> None:
        if progress.chunks == 2:
            with admin.connect() as connection:
                terminated.extend(
                    connection.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE application_name = :app"
                        ),
                        {"app": app},
                    ).scalars()
                )

    options: dict[str, Any] = {
        "chunk_size": 500,
        "transaction": "per_chunk",
        "on_conflict": Upsert(index=["id"]),
        "retry": RetryPolicy(attempts=3, backoff=Backoff.none(), retry_on=transient.database),
        "progress": terminate,
    }
    try:
        with capture_events() as events:
            if mode == "sync":
                engine = sa.create_engine(url)
                result = batch_insert(engine, target, rows_of(2_000), **options)
                engine.dispose()
            else:
                async_engine = create_async_engine(url)
                result = await abatch_insert(
                    async_engine, target, _aiter(rows_of(2_000)), **options
                )
                await async_engine.dispose()
        assert terminated == [True]
        assert sum(isinstance(e, RetryScheduled) for e in events) == 1
        assert (result.inserted, result.chunks, result.committed) == (2_000, 4, 2_000)
        with admin.connect() as connection:
            ids = connection.execute(sa.select(target.c.id).order_by(target.c.id)).scalars()
            assert list(ids) == list(range(2_000))
    finally:
        metadata.drop_all(admin)
        admin.dispose()


@pytest.mark.parametrize("method", ["copy_text", "copy_staging"])
async def test_text_copy_bad_value_names_row_and_column(db: Pg, method: str) -> None:
    rows = [{**row(i), "created": f"2024-01-01 00:00:{i:02d}+00"} for i in range(40)]
    rows[23] = {**rows[23], "qty": "many"}  # only the server can tell, during a text COPY
    options: dict[str, Any] = {"chunk_size": 10, "transaction": "per_chunk"}
    if method == "copy_staging":
        options["on_conflict"] = Upsert(index=["id"])
        options["method"] = "copy_staging"
    with pytest.raises(InvalidBatchRow) as info:
        await db.load(rows, **options)
    assert info.value.position == 23 and info.value.column == "qty"
    assert info.value.rows_written == 20 and "row 23 column 'qty'" in str(info.value)
    assert "InvalidTextRepresentation" in str(info.value)
    assert sorted(db.contents()) == list(range(20))
    isolated = await db.load(rows, on_error="isolate", resume=info.value.result, **options)
    assert [r.position for r in isolated.rejected] == [23]
    assert isolated.inserted == 19
    assert sorted(db.contents()) == [i for i in range(40) if i != 23]


@pytest.mark.parametrize("method", ["copy_staging", "unnest", "executemany"])
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_returned_server_keys_in_input_order(pg_url: str, method: str, mode: str) -> None:
    """A server-generated key is not loaded: returned rows are matched by position."""
    metadata = sa.MetaData()
    target = sa.Table(
        f"batch_serial_{uuid.uuid4().hex[:8]}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.Text, nullable=False),
    )
    engine = sa.create_engine(pg_url)
    metadata.create_all(engine)
    rows = [{"code": f"c{i}"} for i in range(1_200)]
    try:
        if mode == "sync":
            result = batch_insert(engine, target, rows, method=method, returning=["id", "code"])
        else:
            async_engine = create_async_engine(pg_url)
            result = await abatch_insert(
                async_engine, target, rows, method=method, returning=["id", "code"]
            )
            await async_engine.dispose()
        assert result.returned is not None
        assert [r[1] for r in result.returned if r is not None] == [r["code"] for r in rows]
        with engine.connect() as connection:
            stored = dict(connection.execute(sa.select(target.c.id, target.c.code)).all())
        assert {r[0]: r[1] for r in result.returned if r is not None} == stored
    finally:
        metadata.drop_all(engine)
        engine.dispose()
