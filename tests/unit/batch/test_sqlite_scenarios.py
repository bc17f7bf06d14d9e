"""Batch inserts on SQLite: one scenario list, run through the sync and the async shell."""

from __future__ import annotations

from typing import Any

import pytest

from scalekit.batch import (
    BatchChunkWritten,
    BatchFinished,
    BatchProgress,
    BatchRowRejected,
    RejectedRow,
    Upsert,
)
from scalekit.errors import BatchChunkError, ConfigurationError, InvalidBatchRow
from scalekit.testing import capture_events
from tests.unit.batch.conftest import Loader, gen_items, items, serial


@pytest.mark.parametrize("target", ["engine", "connection", "session"])
async def test_plain_load_writes_exactly_the_input(loader: Loader, target: str) -> None:
    result = await loader.load(items, gen_items(2_500), target=target, chunk_size=1_000)
    assert result.method == "executemany"
    assert (result.rows, result.inserted, result.updated, result.chunks) == (2_500, 2_500, 0, 3)
    assert loader.contents() == {i: (f"sku-{i}", i) for i in range(2_500)}


async def test_tuples_and_explicit_columns(loader: Loader) -> None:
    result = await loader.load(items, [(1, "a", 5), (2, "b", None)])
    assert result.inserted == 2
    result = await loader.load(items, [("c", 3), ("d", 4)], columns=["sku", "id"])
    assert result.inserted == 2
    assert loader.contents() == {1: ("a", 5), 2: ("b", None), 3: ("c", None), 4: ("d", None)}


async def test_default_chunk_size_follows_bind_limit(loader: Loader) -> None:
    result = await loader.load(items, gen_items(12_000))
    # 3 columns: 32766 // 3 = 10922 rows per chunk on SQLite
    assert result.chunks == 2
    assert len(loader.contents()) == 12_000


async def test_empty_input(loader: Loader) -> None:
    result = await loader.load(items, iter(()))
    assert (result.rows, result.inserted, result.chunks, result.method) == (0, 0, 0, "executemany")


async def test_upsert_counts_inserted_and_updated(loader: Loader) -> None:
    await loader.load(items, gen_items(100))
    result = await loader.load(
        items, gen_items(100, start=50, qty=-1), on_conflict=Upsert(index=["id"], update=["qty"])
    )
    assert (result.inserted, result.updated, result.skipped) == (50, 50, 0)
    contents = loader.contents()
    assert len(contents) == 150
    assert contents[10] == ("sku-10", 10)
    assert contents[60] == ("sku-60", -1) and contents[149] == ("sku-149", -1)


async def test_upsert_where_skips_rows(loader: Loader) -> None:
    await loader.load(items, gen_items(10))
    rows = [{"id": i, "sku": f"sku-{i}", "qty": 100 if i % 2 else 0} for i in range(10)]
    result = await loader.load(
        items,
        rows,
        on_conflict=Upsert(index=["id"], update=["qty"], where="excluded.qty > items.qty"),
    )
    assert result.updated == 5 and result.inserted == 0 and result.skipped == 5
    assert {k: v[1] for k, v in loader.contents().items()} == {
        i: (100 if i % 2 else i) for i in range(10)
    }


async def test_do_nothing_skips_existing(loader: Loader) -> None:
    await loader.load(items, gen_items(10))
    result = await loader.load(items, gen_items(10, start=5, qty=0), on_conflict="nothing")
    assert (result.inserted, result.skipped, result.updated) == (5, 5, 0)
    assert loader.contents()[5] == ("sku-5", 5)


@pytest.mark.parametrize(
    ("policy", "expected_qty"),
    [("last", 3), ("first", 1), (lambda a, b: {**b, "qty": a["qty"] + b["qty"]}, 6)],
)
async def test_dedupe_within_a_chunk(loader: Loader, policy: Any, expected_qty: int) -> None:
    rows = [
        {"id": 1, "sku": "a", "qty": 1},
        {"id": 2, "sku": "b", "qty": 0},
        {"id": 1, "sku": "a", "qty": 2},
        {"id": 1, "sku": "a", "qty": 3},
    ]
    result = await loader.load(items, rows, on_conflict=Upsert(index=["id"]), dedupe=policy)
    assert result.duplicates == 2 and result.inserted == 2
    assert loader.contents() == {1: ("a", expected_qty), 2: ("b", 0)}


async def test_dedupe_none_lets_the_database_decide(loader: Loader) -> None:
    rows = [{"id": 1, "sku": "a", "qty": 1}, {"id": 1, "sku": "a", "qty": 2}]
    # SQLite applies both rows one after the other (PostgreSQL would refuse).
    result = await loader.load(items, rows, on_conflict=Upsert(index=["id"]), dedupe=None)
    assert result.duplicates == 0
    assert loader.contents() == {1: ("a", 2)}


async def test_returned_keys_in_input_order_with_skips_marked(loader: Loader) -> None:
    await loader.load(serial, [{"code": "b", "qty": 0}])
    rows = [{"code": c, "qty": 1} for c in "abcab"]
    result = await loader.load(
        serial, rows, on_conflict="nothing", returning=["id", "code"], dedupe="first"
    )
    assert result.returned is not None and len(result.returned) == 5
    a, b, c, a2, b2 = result.returned
    assert b is None and a2 is None and b2 is None  # existing, or deduplicated away
    assert a is not None and a[1] == "a" and c is not None and c[1] == "c"
    assert (result.inserted, result.skipped, result.duplicates) == (2, 1, 2)
    contents = loader.contents(serial)
    assert contents[a[0]] == ("a", 1) and contents[c[0]] == ("c", 1)


async def test_returned_keys_plain_insert(loader: Loader) -> None:
    result = await loader.load(
        serial, [{"code": f"c{i}", "qty": i} for i in range(50)], returning=["id", "code"]
    )
    assert result.returned is not None
    assert [row[1] for row in result.returned if row is not None] == [f"c{i}" for i in range(50)]
    contents = loader.contents(serial)
    assert all(contents[row[0]][0] == row[1] for row in result.returned if row is not None)


async def test_upsert_with_returning_counts(loader: Loader) -> None:
    await loader.load(serial, [{"code": "x", "qty": 0}])
    result = await loader.load(
        serial,
        [{"code": "x", "qty": 5}, {"code": "y", "qty": 6}],
        on_conflict=Upsert(index=["code"], update=["qty"]),
        returning=["code"],
    )
    assert (result.inserted, result.updated) == (1, 1)
    assert result.returned == [("x",), ("y",)]


@pytest.mark.parametrize("target", ["engine", "connection", "session"])
async def test_per_chunk_failure_reports_progress_and_resumes(loader: Loader, target: str) -> None:
    rows = list(gen_items(1_000))
    rows[650] = {"id": 3, "sku": "dup", "qty": 0}  # duplicate primary key in chunk 6
    with pytest.raises(BatchChunkError) as info:
        await loader.load(items, iter(rows), target=target, chunk_size=100, transaction="per_chunk")
    error = info.value
    assert error.chunk_index == 6 and error.position == 600 and error.rows_written == 600
    assert error.result is not None and error.result.resume_position == 600  # type: ignore[attr-defined]
    assert len(loader.contents()) == 600
    rows[650] = {"id": 650, "sku": "sku-650", "qty": 650}  # fixed
    result = await loader.load(
        items,
        iter(rows),
        target=target,
        chunk_size=100,
        transaction="per_chunk",
        resume=error.result,
    )
    assert result.inserted == 400 and result.resume_position == 1_000
    assert loader.contents() == {i: (f"sku-{i}", i) for i in range(1_000)}


async def test_all_or_nothing_failure_writes_nothing(loader: Loader) -> None:
    rows = list(gen_items(500))
    rows[450] = {"id": 1, "sku": "dup", "qty": 0}
    with pytest.raises(BatchChunkError) as info:
        await loader.load(items, rows, chunk_size=100)
    assert info.value.rows_written == 0 and info.value.position == 400
    assert loader.contents() == {}


@pytest.mark.parametrize("target", ["engine", "connection", "session"])
@pytest.mark.parametrize("on_error", ["raise", "isolate"])
async def test_savepoint_policy_loads_all(loader: Loader, target: str, on_error: str) -> None:
    rows = list(gen_items(300))
    if on_error == "isolate":
        rows[150] = {"id": 150, "sku": None, "qty": 0}
    result = await loader.load(
        items, rows, target=target, chunk_size=100, transaction="savepoint", on_error=on_error
    )
    assert result.chunks == 3
    assert len(loader.contents()) == (300 if on_error == "raise" else 299)
    assert [r.position for r in result.rejected] == ([] if on_error == "raise" else [150])


async def test_savepoint_failure_on_a_connection_keeps_earlier_chunks_for_the_caller(
    loader: Loader,
) -> None:
    rows = list(gen_items(300))
    rows[250] = {"id": 1, "sku": "dup", "qty": 0}
    if loader.mode == "sync":
        from scalekit.batch import batch_insert

        with loader.engine.connect() as connection:
            with pytest.raises(BatchChunkError) as info:
                batch_insert(connection, items, rows, chunk_size=100, transaction="savepoint")
            # the failing chunk was rolled back to its savepoint; the caller commits the rest
            connection.commit()
    else:
        from scalekit.batch import abatch_insert

        async with loader.async_engine.connect() as aconnection:
            with pytest.raises(BatchChunkError) as info:
                await abatch_insert(
                    aconnection, items, rows, chunk_size=100, transaction="savepoint"
                )
            await aconnection.commit()
    assert info.value.chunk_index == 2 and info.value.position == 200
    assert sorted(loader.contents()) == list(range(200))


async def test_async_shell_takes_a_plain_iterable(loader: Loader) -> None:
    from scalekit.batch import abatch_insert

    result = await abatch_insert(loader.async_engine, items, [(1, "a", 1), (2, "b", 2)])
    assert result.inserted == 2 and loader.contents() == {1: ("a", 1), 2: ("b", 2)}


async def test_a_scoped_session_is_a_target_in_both_shells(loader: Loader) -> None:
    # The sync shell took scoped_session and the async one refused
    # async_scoped_session: a drift, gone now that one source makes both.
    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session
    from sqlalchemy.orm import Session, scoped_session

    from scalekit.batch import abatch_insert, batch_insert

    rows = [(1, "a", 1), (2, "b", 2)]
    if loader.mode == "sync":
        session = scoped_session(lambda: Session(loader.engine))
        result = batch_insert(session, items, rows)
        session.commit()
        session.remove()
    else:
        asession = async_scoped_session(
            lambda: AsyncSession(loader.async_engine), scopefunc=lambda: "one"
        )
        result = await abatch_insert(asession, items, rows)
        await asession.commit()
        await asession.remove()
    assert result.inserted == 2 and loader.contents() == {1: ("a", 1), 2: ("b", 2)}


@pytest.mark.parametrize("transaction", ["all_or_nothing", "per_chunk", "savepoint"])
async def test_isolate_rejects_only_the_bad_rows(loader: Loader, transaction: str) -> None:
    rows = list(gen_items(400))
    bad = {17: {"id": 17, "sku": None, "qty": 1}, 250: {"id": 3, "sku": "dup", "qty": 1}}
    rows[17] = bad[17]
    rows[250] = bad[250]
    result = await loader.load(
        items, rows, chunk_size=64, on_error="isolate", transaction=transaction
    )
    assert [r.position for r in result.rejected] == [17, 250]
    assert [r.row for r in result.rejected] == [bad[17], bad[250]]
    assert all("constraint" in r.message.lower() for r in result.rejected)
    assert result.rejected_count == 2 and result.inserted == 398
    expected = {i: (f"sku-{i}", i) for i in range(400) if i not in (17, 250)}
    assert loader.contents() == expected


async def test_isolate_to_a_callable_sink_and_misfit_rows(loader: Loader) -> None:
    sink: list[RejectedRow] = []
    rows: list[Any] = list(gen_items(20))
    rows[4] = {"id": 4, "sku": "x"}  # missing qty
    rows[9] = {"id": 9, "sku": "y", "qty": 1, "colour": "red"}  # unknown column
    with capture_events() as events:
        result = await loader.load(items, rows, on_error="isolate", on_reject=sink.append)
    assert result.rejected == [] and result.rejected_count == 2
    assert [(r.position, r.row) for r in sink] == [(4, rows[4]), (9, rows[9])]
    assert "no column 'qty'" in sink[0].message and "'colour'" in sink[1].message
    assert [e.position for e in events if isinstance(e, BatchRowRejected)] == [4, 9]
    assert len(loader.contents()) == 18


async def test_misfit_row_raises_before_its_chunk_is_written(loader: Loader) -> None:
    rows: list[Any] = list(gen_items(30))
    rows[25] = {"id": 25, "sku": "s", "qty": 1, "colour": "red"}
    with pytest.raises(InvalidBatchRow) as info:
        await loader.load(items, rows, chunk_size=10, transaction="per_chunk")
    assert info.value.position == 25 and info.value.column == "colour"
    assert info.value.rows_written == 20
    assert "row 25" in str(info.value)
    assert sorted(loader.contents()) == list(range(20))


async def test_unknown_column_in_first_row_names_position(loader: Loader) -> None:
    with pytest.raises(InvalidBatchRow, match="row 0 has column 'colour'") as info:
        await loader.load(items, [{"id": 1, "sku": "a", "colour": "red"}])
    assert info.value.position == 0 and info.value.column == "colour"


async def test_tuple_of_wrong_length(loader: Loader) -> None:
    with pytest.raises(InvalidBatchRow, match="row 1 has 2 values, expected 3"):
        await loader.load(items, [(1, "a", 1), (2, "b")])
    assert loader.contents() == {}


async def test_configuration_errors_before_writing(loader: Loader) -> None:
    with pytest.raises(ConfigurationError, match="needs PostgreSQL"):
        await loader.load(items, gen_items(3), method="copy")
    with pytest.raises(ConfigurationError, match="required column 'sku'"):
        await loader.load(items, [{"id": 1}])
    with pytest.raises(ConfigurationError, match="has no column 'nope'"):
        await loader.load(items, gen_items(3), returning=["nope"])
    assert loader.contents() == {}


async def test_bad_target_and_rows() -> None:
    from scalekit.batch import abatch_insert, batch_insert

    with pytest.raises(ConfigurationError, match="target must be"):
        batch_insert("sqlite://", items, [])
    with pytest.raises(ConfigurationError, match="target must be"):
        await abatch_insert("sqlite://", items, [])
    with pytest.raises(ConfigurationError, match="rows must be"):
        await abatch_insert("sqlite://", items, 3)  # type: ignore[arg-type]


async def test_progress_and_events(loader: Loader) -> None:
    seen: list[BatchProgress] = []
    with capture_events() as events:
        result = await loader.load(items, gen_items(250), chunk_size=100, progress=seen.append)
    assert [p.rows for p in seen] == [100, 200, 250]
    assert [p.chunks for p in seen] == [1, 2, 3]
    assert all(p.elapsed >= 0 for p in seen)
    written = [e for e in events if isinstance(e, BatchChunkWritten)]
    assert [e.rows for e in written] == [100, 100, 50]
    finished = [e for e in events if isinstance(e, BatchFinished)]
    assert len(finished) == 1 and finished[0].inserted == 250 == result.inserted
    assert finished[0].method == "executemany" and finished[0].name == "items"


class Flaky(Exception):
    """A transient error the test's retry policy retries."""


def fail_inserts(loader: Loader, failures: list[int]) -> None:
    """Make the next INSERTs fail with :class:`Flaky`, once per entry of ``failures``."""
    import sqlalchemy as sa

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT") and failures:
            failures.pop()
            raise Flaky("connection reset")

    for engine in (loader.engine, loader.async_engine.sync_engine):
        sa.event.listen(engine, "before_cursor_execute", before)


async def test_idempotent_chunk_is_retried_with_the_policy(loader: Loader) -> None:
    from scalekit.retry import Backoff, RetryPolicy, RetryScheduled
    from scalekit.testing import FakeClock

    clock = FakeClock()
    policy = RetryPolicy(attempts=3, backoff=Backoff.constant(0.5), retry_on=Flaky)
    fail_inserts(loader, [1, 1])
    with capture_events() as events:
        result = await loader.load(
            items,
            gen_items(300),
            chunk_size=100,
            transaction="per_chunk",
            on_conflict=Upsert(index=["id"]),
            retry=policy,
            clock=clock,
        )
    assert result.inserted == 300 and len(loader.contents()) == 300
    assert len([e for e in events if isinstance(e, RetryScheduled)]) == 2
    assert clock.monotonic() >= 1.0  # two backoff sleeps, on the injected clock


async def test_plain_insert_is_not_retried_after_an_unknown_failure(loader: Loader) -> None:
    from scalekit.retry import RetryPolicy

    fail_inserts(loader, [1])
    with pytest.raises(BatchChunkError) as info:
        await loader.load(
            items,
            gen_items(300),
            chunk_size=100,
            transaction="per_chunk",
            retry=RetryPolicy(attempts=3, retry_on=Flaky),
        )
    assert isinstance(info.value.__cause__, Flaky)
    assert info.value.rows_written == 0 and loader.contents() == {}


async def test_retries_give_up_with_the_chunk_error(loader: Loader) -> None:
    from scalekit.retry import Backoff, RetryPolicy
    from scalekit.testing import FakeClock

    fail_inserts(loader, [1, 1, 1])
    with pytest.raises(BatchChunkError) as info:
        await loader.load(
            items,
            gen_items(300),
            chunk_size=100,
            transaction="per_chunk",
            on_conflict="nothing",
            retry=RetryPolicy(attempts=2, backoff=Backoff.none(), retry_on=Flaky),
            clock=FakeClock(),
        )
    assert info.value.chunk_index == 0 and isinstance(info.value.__cause__, Flaky)
    assert loader.contents() == {}


async def test_a_chunk_retry_withdraws_from_the_policy_budget(loader: Loader) -> None:
    # Issue 14: the batch flow had its own retry loop that never asked the budget.
    import uuid

    from scalekit.retry import Backoff, RetryBudget, RetryBudgetExhausted, RetryPolicy
    from scalekit.testing import FakeClock

    clock = FakeClock()
    name = f"batch-budget-{uuid.uuid4().hex}"  # budgets are shared by name; one per run
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, name=name, clock=clock)
    policy = RetryPolicy(attempts=3, backoff=Backoff.none(), retry_on=Flaky, budget=budget)
    fail_inserts(loader, [1])
    with capture_events() as events, pytest.raises(BatchChunkError) as info:
        await loader.load(
            items,
            gen_items(100),
            chunk_size=100,
            transaction="per_chunk",
            on_conflict=Upsert(index=["id"]),
            retry=policy,
            clock=clock,
        )
    assert isinstance(info.value.__cause__, Flaky)
    refused = [e for e in events if isinstance(e, RetryBudgetExhausted)]
    assert [e.budget for e in refused] == [name]
    assert loader.contents() == {}
