"""The load flow with no database at all: a fake PostgreSQL answers its requests.

:class:`~scalekit.batch._flow.Load` is a generator of I/O requests; driving
it by hand shows the PostgreSQL decisions (reflection, binary probe, one COPY
per chunk, savepoints and bisection for bad rows, commits) without a server.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from scalekit.batch._flow import (
    Commit,
    Load,
    LoadOptions,
    Op,
    PgCopy,
    PgCopyBegin,
    PgCopyEnd,
    PgCopySend,
    PgProbe,
    PgQuery,
    ReadRows,
    ReleaseSavepoint,
    Rollback,
    RollbackSavepoint,
    Savepoint,
)
from scalekit.batch._sync import drive
from scalekit.errors import BatchChunkError
from scalekit.testing import FakeClock

metadata = sa.MetaData()
table = sa.Table(
    "t",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("qty", sa.Integer),
)


class CheckViolation(Exception):
    sqlstate = "23514"


class Diag:
    def __init__(self, context: str | None) -> None:
        self.context = context


class FakePg:
    """Answers a load's requests; a COPY containing a negative qty fails like a CHECK.

    A COPY streamed over several chunks (:class:`PgCopyBegin`) fails when it
    ends, its error naming the COPY line as PostgreSQL's CONTEXT does.
    """

    def __init__(self, rows: list[tuple[int, int]]) -> None:
        self.input = iter(rows)
        self.ops: list[str] = []
        self.committed: list[tuple[Any, ...]] = []
        self.pending: list[list[tuple[Any, ...]]] = [[]]  # one level per open savepoint
        self.streamed: list[tuple[Any, ...]] | None = None

    def refuse(self, rows: list[tuple[Any, ...]]) -> Exception | None:
        """The error of a COPY of ``rows``, its CONTEXT naming the first bad row's line."""
        for line, row in enumerate(rows, 1):
            if row[1] < 0:
                error = CheckViolation("new row violates check constraint")
                error.diag = Diag(f"COPY t, line {line}: ...")  # type: ignore[attr-defined]
                return error
        return None

    def __call__(self, op: Op) -> Any:
        self.ops.append(type(op).__name__)
        if isinstance(op, ReadRows):
            return [row for _, row in zip(range(op.count), self.input, strict=False)]
        if isinstance(op, PgQuery):  # the reflection query
            return 2, [("id", 23, "integer"), ("qty", 23, "integer")]
        if isinstance(op, PgProbe):
            return None
        if isinstance(op, PgCopy):
            error = self.refuse(list(op.rows))
            if error is not None:
                raise error
            self.pending[-1].extend(op.rows)
            return len(op.rows), 10 * len(op.rows)
        if isinstance(op, PgCopyBegin):
            self.streamed = []
            return "copy"
        if isinstance(op, PgCopySend):  # 10 bytes a row
            assert self.streamed is not None
            self.streamed.extend(op.rows)
            return 10 * len(op.rows)
        if isinstance(op, PgCopyEnd):
            streamed, self.streamed = self.streamed, None
            assert streamed is not None
            if op.abort:
                return None
            error = self.refuse(streamed)
            if error is not None:
                raise error
            self.pending[-1].extend(streamed)
            return len(streamed), 21 + 10 * len(streamed)
        if isinstance(op, Savepoint):
            self.pending.append([])
            return len(self.pending)
        if isinstance(op, ReleaseSavepoint):
            done = self.pending.pop()
            self.pending[-1].extend(done)
            return None
        if isinstance(op, RollbackSavepoint):
            self.pending.pop()
            return None
        if isinstance(op, Commit):
            self.committed.extend(self.pending[0])
            self.pending = [[]]
            return None
        if isinstance(op, Rollback):
            self.pending = [[]]
            return None
        raise AssertionError(op)


def run(rows: list[tuple[int, int]], **options: Any) -> tuple[FakePg, Any]:
    fake = FakePg(rows)
    load = Load(
        table,
        LoadOptions(retry=None, **options),
        dialect="postgresql",
        copy_capable=True,
        owns_transaction=True,
        clock=FakeClock(),
    )
    return fake, drive(load.run(), fake)


def test_plain_load_is_one_binary_copy_per_chunk() -> None:
    fake, result = run([(i, i) for i in range(25)], chunk_size=10, transaction="per_chunk")
    assert result.method == "copy" and result.inserted == 25 and result.bytes == 250
    assert fake.ops == [
        "ReadRows",  # the first chunk (it also tells the method)
        "PgQuery",  # reflect the column types
        "PgProbe",  # can the first row go in binary?
        "PgCopy",
        "Commit",
        "ReadRows",
        "PgCopy",
        "Commit",
        "ReadRows",  # 5 rows of 10: the input is exhausted
        "PgCopy",
        "Commit",
    ]
    assert fake.committed == [(i, i) for i in range(25)]


def test_isolate_bisects_down_to_the_bad_rows() -> None:
    rows = [(i, -1 if i in (5, 6, 30) else i) for i in range(32)]
    fake, result = run(rows, chunk_size=32, on_error="isolate")
    assert [r.position for r in result.rejected] == [5, 6, 30]
    assert [r.row for r in result.rejected] == [(5, -1), (6, -1), (30, -1)]
    assert all(isinstance(r.error, CheckViolation) for r in result.rejected)
    assert sorted(fake.committed) == [r for r in rows if r[1] >= 0]
    # a binary search: far fewer COPYs than one per row
    assert fake.ops.count("PgCopy") < 32


def test_chunk_failure_under_all_or_nothing_rolls_everything_back() -> None:
    rows = [(i, -1 if i == 17 else i) for i in range(30)]
    with pytest.raises(BatchChunkError) as info:
        run(rows, chunk_size=10)
    assert info.value.chunk_index == 1 and info.value.position == 10
    assert info.value.rows_written == 0
    assert isinstance(info.value.__cause__, CheckViolation)


class ConnectionGone(Exception):
    pass


class FailingCleanup(FakePg):
    """Rollbacks (whole and to a savepoint) fail, as on a lost connection."""

    def __call__(self, op: Op) -> Any:
        if isinstance(op, (Rollback, RollbackSavepoint)):
            self.ops.append(type(op).__name__)
            raise ConnectionGone("server closed the connection")
        return super().__call__(op)


@pytest.mark.parametrize("on_error", ["raise", "isolate"])
def test_a_failed_rollback_is_logged_without_the_row(
    caplog: pytest.LogCaptureFixture, on_error: str
) -> None:
    secret = "sk_live_5e4d3c2b"

    class Refused(Exception):
        sqlstate = "23514"

    class Quoting(FailingCleanup):
        def refuse(self, rows: list[tuple[Any, ...]]) -> Exception | None:
            if any(row[1] < 0 for row in rows):
                return Refused(f"violates check constraint\nDETAIL:  Failing row contains {secret}")
            return None

    caplog.set_level("DEBUG")
    fake = Quoting([(i, -1 if i == 3 else i) for i in range(8)])
    load = Load(
        table,
        LoadOptions(retry=None, on_error=on_error),  # type: ignore[arg-type]
        dialect="postgresql",
        copy_capable=True,
        owns_transaction=True,
        clock=FakeClock(),
    )
    with pytest.raises(BatchChunkError) as info:
        drive(load.run(), fake)
    assert "Rollback" in fake.ops
    cleanup = [r for r in caplog.records if "rollback" in r.getMessage()]
    assert cleanup, "the failed rollback is logged"
    assert all(r.exc_info is None and "ConnectionGone" in r.getMessage() for r in cleanup)
    assert not any(secret in r.getMessage() for r in caplog.records)
    # The caller's exception keeps the database's own words.
    assert info.value.__cause__ is not None


def test_unprepared_turns_psycopg_preparing_off_for_the_block_only() -> None:
    from scalekit.batch._sync import unprepared

    class PsycopgLike:
        prepare_threshold: int | None = 5

    connection = PsycopgLike()
    seen: list[int | None] = []

    def fail_inside() -> None:
        with unprepared(connection):
            seen.append(connection.prepare_threshold)
            raise ConnectionGone

    with pytest.raises(ConnectionGone):
        fail_inside()
    assert seen == [None]
    assert connection.prepare_threshold == 5
    already_off = PsycopgLike()
    already_off.prepare_threshold = None
    with unprepared(already_off):
        pass
    assert already_off.prepare_threshold is None
    other_driver = object()  # sqlite3, asyncpg...: nothing to turn off
    with unprepared(other_driver):
        pass


def test_one_transaction_streams_every_chunk_through_one_copy() -> None:
    fake, result = run([(i, i) for i in range(25)], chunk_size=10)
    assert result.method == "copy" and result.inserted == 25 and result.chunks == 3
    assert result.bytes == 21 + 250  # one header and trailer, as one COPY sends
    assert fake.ops == [
        "ReadRows",
        "PgQuery",
        "PgProbe",
        "PgCopyBegin",
        "PgCopySend",
        "ReadRows",
        "PgCopySend",
        "ReadRows",
        "PgCopySend",  # 5 rows of 10: the input is exhausted
        "PgCopyEnd",
        "Commit",
    ]
    assert fake.committed == [(i, i) for i in range(25)]


def test_a_streamed_copy_maps_the_line_back_to_its_row() -> None:
    rows = [(i, i) for i in range(30)]
    rows[23] = (23, -1)
    with pytest.raises(BatchChunkError) as info:
        run(rows, chunk_size=10)
    assert (info.value.chunk_index, info.value.position) == (2, 20)
    assert isinstance(info.value.__cause__, CheckViolation)


class NoStream(FakePg):
    """A shell that cannot stream (no binary row encoder): a COPY per chunk."""

    def __call__(self, op: Op) -> Any:
        if isinstance(op, PgCopyBegin):
            self.ops.append("PgCopyBegin")
            return None
        return super().__call__(op)


def test_a_shell_that_cannot_stream_copies_per_chunk() -> None:
    fake = NoStream([(i, i) for i in range(25)])
    load = Load(
        table,
        LoadOptions(retry=None, chunk_size=10),
        dialect="postgresql",
        copy_capable=True,
        owns_transaction=True,
        clock=FakeClock(),
    )
    result = drive(load.run(), fake)
    assert result.inserted == 25 and result.chunks == 3
    assert fake.ops.count("PgCopyBegin") == 1 and fake.ops.count("PgCopy") == 3
    assert fake.committed == [(i, i) for i in range(25)]
