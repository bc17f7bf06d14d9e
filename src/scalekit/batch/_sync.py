# This file is generated from src/scalekit/batch/_async.py by scripts/unasync.py.
# DO NOT EDIT; edit the async file and run: python scripts/unasync.py
"""The blocking shell: :func:`batch_insert` drives a :class:`~scalekit.batch._flow.Load`.

Only I/O lives here: reading input rows, running statements and COPY through
SQLAlchemy and psycopg, transactions, sleeping. Every decision is the flow's,
and what both shells share without I/O is in :mod:`._base`; the blocking
shell is generated from this file, so the two loads behave the same by
construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from scalekit._clock import SYSTEM_CLOCK
from scalekit.batch._base import (
    COPY_ABORTED,
    COPY_BINARY_HEADER,
    COPY_BINARY_TRAILER,
    DEFAULT,
    CopyAborted,
    binary_row_encoder,
    copy_blocks,
    dump_failure,
    encode_binary_copy,
    is_psycopg,
    make_options,
    probe_binary,
    unprepared,
    wrap_json,
    wrap_json_rows,
)
from scalekit.batch._core import (
    BatchProgress,
    BatchResult,
    Dedupe,
    Method,
    OnError,
    RejectedRow,
    TransactionPolicy,
    Upsert,
)
from scalekit.batch._flow import (
    Commit,
    Flush,
    Load,
    LoadOptions,
    Op,
    PgCopy,
    PgCopyBegin,
    PgCopyEnd,
    PgCopySend,
    PgEncode,
    PgFinish,
    PgProbe,
    PgQuery,
    PgStart,
    ReadRows,
    ReleaseSavepoint,
    Rollback,
    RollbackSavepoint,
    RowDumpError,
    SaExecute,
    Savepoint,
    Sleep,
    Withdraw,
)
from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Generator

    from scalekit.retry import RetryPolicy
    from scalekit.typing import Clock

__all__ = ["batch_insert"]

InputRows: TypeAlias = Iterable[Any]


class _Rows:
    """The input rows, read one chunk at a time (so memory stays bounded)."""

    def __init__(self, rows: InputRows) -> None:
        if not isinstance(rows, Iterable):
            raise ConfigurationError(
                f"rows must be an iterable of dicts or tuples, got {type(rows).__name__}",
                parameter="rows",
            )
        self._sync = iter(rows)

    def read(self, count: int) -> list[Any]:
        return list(islice(self._sync, count))


def _raw(connection: Any) -> Any:
    """The pool's wrapper of the DBAPI connection under a SQLAlchemy connection."""
    return connection.connection


class _Target:
    """The connection (or session) a load runs on, and its transaction primitives."""

    def __init__(self, executor: Any, *, session: bool) -> None:
        self.executor = executor
        self.session = session
        #: a statement sent by :meth:`start` whose result nobody has asked for yet
        self.pending: Any = None
        #: a COPY begun by :class:`PgCopyBegin` and not ended yet
        self.copying: _CopyStream | None = None

    def connection(self) -> Any:
        if self.session:
            return self.executor.connection()
        connection = self.executor
        if not connection.in_transaction():
            connection.begin()
        return connection

    def driver_connection(self) -> Any:
        return _raw(self.connection()).driver_connection

    def start(self, sql: str) -> Any:
        """Send ``sql`` and return a handle at once; :meth:`finish` waits for its result."""
        connection = self.driver_connection()
        from scalekit.batch._base import Background

        self.pending = Background(_query, connection, sql)
        return self.pending

    def finish(self, handle: Any) -> tuple[int, list[Any]]:
        """The ``(rowcount, rows)`` of the statement :meth:`start` sent, or its error."""
        self.pending = None
        result: tuple[int, list[Any]] = handle.result()
        return result

    def settle(self) -> None:
        """Wait for a statement still running (the load stopped while it ran): its error is moot.

        A COPY still open is aborted.
        """
        copying, self.copying = self.copying, None
        if copying is not None:
            copying.abort()
        pending, self.pending = self.pending, None
        if pending is None:
            return
        with contextlib.suppress(Exception):
            pending.result()

    def savepoint(self) -> Any:
        connection = self.connection()
        if connection.dialect.name == "sqlite":
            # pysqlite starts its transaction lazily, before the first DML: a
            # SAVEPOINT before it would open (and RELEASE would commit) one.
            raw = _raw(connection)
            if not raw.driver_connection.in_transaction:
                connection.exec_driver_sql("BEGIN")
        return self.executor.begin_nested()


def _counting_writer(cursor: Any) -> Any:
    """A COPY writer for ``cursor`` that counts the bytes it sends (``.sent``).

    An abort by an exception of ours tells the server why without any row's values.
    """
    from psycopg import Error
    from psycopg.copy import LibpqWriter

    class CountingWriter(LibpqWriter):
        sent = 0

        def write(self, data: Any) -> None:
            self.sent += len(data)
            super().write(data)

        def finish(self, exc: BaseException | None = None) -> None:
            if exc is None:
                super().finish(None)
                return
            # Stopped by an exception of ours: tell the server without the row's
            # values, and keep the server's own answer (it may have refused an
            # earlier row, its DETAIL holding that row's values) away from psycopg,
            # which would log it as a warning. The exception that stopped us wins.
            with contextlib.suppress(Error):
                super().finish(COPY_ABORTED)

    return CountingWriter(cursor)


class _CopyStream:
    """A binary COPY open across requests, from :class:`PgCopyBegin` to :class:`PgCopyEnd`."""

    def __init__(self, cursor: Any, writer: Any) -> None:
        self.cursor = cursor
        self.writer = writer
        self.stack = contextlib.ExitStack()
        self.copy: Any = None
        self.oids: Sequence[int] = ()

    def begin(self, sql: str, oids: Sequence[int]) -> None:
        self.copy = self.stack.enter_context(self.cursor.copy(sql, writer=self.writer))
        self.copy.set_types(list(oids))
        self.oids = oids
        self.copy.write(COPY_BINARY_HEADER)

    def send(self, rows: Sequence[Sequence[Any]]) -> int:
        """Encode and write one chunk's rows, a block at a time; the bytes sent."""
        connection = self.cursor.connection
        oids = self.oids
        encode = binary_row_encoder()
        assert encode is not None
        before = self.writer.sent
        write = self.copy.write
        transformer = self.copy.formatter.transformer
        failed = dump_failure(connection, oids)
        for block in copy_blocks(encode, rows, transformer, failed, framed=False):
            if block:
                write(block)
        sent: int = self.writer.sent - before
        return sent

    def end(self) -> tuple[int, int]:
        try:
            self.copy.write(COPY_BINARY_TRAILER)
        except BaseException:
            self.abort()
            raise
        self.stack.close()
        return self.cursor.rowcount, self.writer.sent

    def abort(self) -> None:
        """Stop the COPY (the server rolls it back); errors are moot."""
        with contextlib.suppress(Exception):
            self.stack.__exit__(CopyAborted, COPY_ABORTED, None)


def _copy_rows(connection: Any, op: PgCopy) -> tuple[int, int]:
    """COPY ``op.rows`` on a psycopg connection; ``(rowcount, bytes sent)``."""
    from psycopg import OperationalError

    cursor = connection.cursor()
    writer = _counting_writer(cursor)
    encode = binary_row_encoder() if op.oids is not None and op.blocks is None else None
    with cursor.copy(op.sql, writer=writer) as copy:
        if op.oids is not None:
            copy.set_types(list(op.oids))
        if op.blocks is not None:  # encoded beforehand (PgEncode)
            for data in op.blocks:
                copy.write(data)
        elif encode is not None:
            # Binary COPY in block mode: rows encoded by psycopg's own encoder,
            # a block at a time, sent with the format's header and trailer.
            assert op.oids is not None
            failed = dump_failure(connection, op.oids)
            for block in copy_blocks(encode, op.rows, copy.formatter.transformer, failed):
                copy.write(block)
        else:
            write_row = copy.write_row
            rows = op.rows if not op.json_columns else wrap_json_rows(op.rows, op.json_columns)
            for index, row in enumerate(rows):
                try:
                    write_row(row)
                except OperationalError:
                    raise
                except Exception as exc:
                    column = probe_binary(connection, op.oids, row) if op.oids is not None else None
                    raise RowDumpError(index, column, exc) from exc
    return cursor.rowcount, writer.sent


def _query(connection: Any, sql: str, params: Any = None) -> tuple[int, list[Any]]:
    """Run ``sql`` on a psycopg connection; ``(rowcount, rows)``."""
    cursor = connection.cursor()
    cursor.execute(sql, params, prepare=False)
    return cursor.rowcount, (cursor.fetchall() if cursor.description else [])


def _perform(target: _Target, rows: _Rows, op: Op, clock: Clock) -> Any:
    kind = type(op)
    if kind is ReadRows:
        assert isinstance(op, ReadRows)
        return rows.read(op.count)
    if kind is PgCopy:
        assert isinstance(op, PgCopy)
        return _copy_rows(target.driver_connection(), op)
    if kind is PgCopySend:
        assert isinstance(op, PgCopySend)
        return op.handle.send(op.rows)
    if kind is PgCopyBegin:
        assert isinstance(op, PgCopyBegin)
        if binary_row_encoder() is None:  # pragma: no cover - a psycopg without the encoder
            return None
        cursor = target.driver_connection().cursor()
        stream = _CopyStream(cursor, _counting_writer(cursor))
        try:
            stream.begin(op.sql, op.oids)
        except BaseException:
            stream.abort()
            raise
        target.copying = stream
        return stream
    if kind is PgCopyEnd:
        assert isinstance(op, PgCopyEnd)
        target.copying = None
        if op.abort:
            op.handle.abort()
            return None
        return op.handle.end()
    if kind is PgQuery:
        assert isinstance(op, PgQuery)
        params = op.params
        if params is not None and op.json_params:
            params = wrap_json(params, op.json_params)
        return _query(target.driver_connection(), op.sql, params)
    if kind is PgStart:
        assert isinstance(op, PgStart)
        return target.start(op.sql)
    if kind is PgFinish:
        assert isinstance(op, PgFinish)
        return target.finish(op.handle)
    if kind is PgEncode:
        assert isinstance(op, PgEncode)
        connection = target.driver_connection()
        return encode_binary_copy(connection, op.oids, op.rows, dump_failure(connection, op.oids))
    if kind is SaExecute:
        assert isinstance(op, SaExecute)
        connection = target.connection()
        with unprepared(_raw(connection).driver_connection):
            result = connection.execute(op.statement, op.params)
        if op.fetch:
            fetched = result.all()
            return len(fetched), fetched
        return result.rowcount, None
    if kind is Commit:
        target.executor.commit()
        return None
    if kind is Rollback:
        target.executor.rollback()
        return None
    if kind is Savepoint:
        return target.savepoint()
    if kind is ReleaseSavepoint:
        assert isinstance(op, ReleaseSavepoint)
        op.handle.commit()
        return None
    if kind is RollbackSavepoint:
        assert isinstance(op, RollbackSavepoint)
        op.handle.rollback()
        return None
    if kind is Sleep:
        assert isinstance(op, Sleep)
        clock.sleep(op.seconds)
        return None
    if kind is Withdraw:  # the retry loop asks the policy's budget for a retry
        assert isinstance(op, Withdraw)
        return op.budget.try_withdraw()
    if kind is Flush:
        assert isinstance(op, Flush)
        op.budget.flush()
        return None
    if kind is PgProbe:
        assert isinstance(op, PgProbe)
        return probe_binary(target.driver_connection(), op.oids, op.row)
    raise AssertionError(f"unknown request {op!r}")  # pragma: no cover


def drive(flow: Generator[Op, Any, BatchResult], perform: Callable[[Op], Any]) -> BatchResult:
    """Run the flow: perform each request, send back its result or throw its error."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as stop:
            result: BatchResult = stop.value
            return result
        error = None
        try:
            value = perform(op)
        except Exception as exc:
            value = None
            error = exc


def batch_insert(
    target: Any,
    table: Any,
    rows: InputRows,
    *,
    columns: Sequence[str] | None = None,
    on_conflict: Upsert | Literal["nothing"] | None = None,
    dedupe: Dedupe = "last",
    returning: Sequence[str] | None = None,
    method: Method = "auto",
    chunk_size: int | None = None,
    transaction: TransactionPolicy = "all_or_nothing",
    on_error: OnError = "raise",
    on_reject: Callable[[RejectedRow], None] | None = None,
    retry: RetryPolicy | None = DEFAULT,
    progress: Callable[[BatchProgress], None] | None = None,
    resume: BatchResult | int | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> BatchResult:
    """Insert (or upsert) ``rows`` into ``table``, in chunks, by the fastest method available.

    Parameters:
        target: an engine (``Engine``: the load opens its own connection
            and transaction), a connection (``Connection``) or a session
            (``Session``, scoped or not): the load runs in its transaction.
        table: a Core ``Table`` or a mapped ORM class.
        rows: any iterable (a generator of unknown length too) of dicts or
            tuples, read one chunk at a time so memory stays bounded.
        columns: the columns loaded, in the order of tuple rows. Default:
            the first dict row's keys, or every insertable column for tuples.
        on_conflict: ``None`` (a conflict is an error), ``"nothing"`` (skip
            rows whose key exists) or an :class:`Upsert`.
        dedupe: with ``on_conflict``, rows of one chunk with the same key:
            keep the ``"last"`` (default), the ``"first"``, merge them with
            ``callable(kept: dict, new: dict) -> dict | tuple``, or ``None``
            (let the database refuse them).
        returning: column names whose values to return in ``result.returned``,
            one entry per input row, in input order (``None`` for skipped rows).
        method: ``"auto"`` (default), ``"copy"``, ``"copy_text"``,
            ``"copy_staging"``, ``"unnest"`` or ``"executemany"``. On
            PostgreSQL the COPY methods need the ``postgresql+psycopg``
            driver; other drivers use ``unnest`` or executemany.
        chunk_size: rows per chunk; default from the method and the
            dialect's bind-parameter limit.
        transaction: ``"all_or_nothing"`` (one transaction), ``"per_chunk"``
            (commit after each chunk; ``result.resume_position`` says how far
            it got) or ``"savepoint"`` (one savepoint per chunk).
        on_error: ``"raise"`` (default) or ``"isolate"``: split a failing
            chunk until the bad rows are found, reject them, load the rest.
        on_reject: receives each rejected row; default: ``result.rejected``.
        retry: a :class:`scalekit.retry.RetryPolicy` for transient errors of a
            chunk under ``per_chunk`` or ``savepoint``; only idempotent writes
            (``on_conflict`` given) are retried for any transient error, plain
            inserts only after a serialization failure or deadlock. Default:
            3 attempts on ``transient.database``; ``None`` disables.
        progress: called after each chunk with a :class:`BatchProgress`.
        resume: a :class:`BatchResult` (or an input position) from a failed
            run: that many input rows are skipped.
        clock: where elapsed time and retry sleeps come from.

    Returns:
        a :class:`BatchResult` (method, inserted/updated/skipped counts,
        returned values, rejected rows).

    Raises:
        ConfigurationError: bad options, an unknown table or column, a
            method the dialect cannot run (before anything is written).
        InvalidBatchRow: a row does not fit the table (with
            ``on_error="raise"``); nothing of its chunk is written.
        BatchChunkError: the database refused a chunk; ``.rows_written`` rows
            were committed before it and ``.result`` says where to resume.

    >>> result = batch_insert(  # doctest: +SKIP
    ...     engine, orders, rows, on_conflict=Upsert(index=["id"], update=["amount"]))
    >>> result.method, result.inserted, result.updated  # doctest: +SKIP
    """
    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import Session, scoped_session

    options = make_options(
        columns=columns,
        on_conflict=on_conflict,
        dedupe=dedupe,
        returning=returning,
        method=method,
        chunk_size=chunk_size,
        transaction=transaction,
        on_error=on_error,
        on_reject=on_reject,
        retry=retry,
        progress=progress,
        resume=resume,
    )
    reader = _Rows(rows)
    if isinstance(target, Engine):
        with target.connect() as connection:
            return _run(
                connection,
                _Target(connection, session=False),
                table,
                reader,
                options,
                owns=True,
                clock=clock,
            )
    if isinstance(target, Connection):
        return _run(
            target,
            _Target(target, session=False),
            table,
            reader,
            options,
            owns=False,
            clock=clock,
        )
    if isinstance(target, (Session, scoped_session)):
        return _run(
            target.connection(),
            _Target(target, session=True),
            table,
            reader,
            options,
            owns=False,
            clock=clock,
        )
    raise ConfigurationError(
        f"target must be a SQLAlchemy Engine, Connection or Session, got {type(target).__name__}",
        parameter="target",
    )


def _run(
    connection: Any,
    target: _Target,
    table: Any,
    rows: _Rows,
    options: LoadOptions,
    *,
    owns: bool,
    clock: Clock,
) -> BatchResult:
    dialect = connection.dialect
    load = Load(
        table,
        options,
        dialect=dialect.name,
        copy_capable=is_psycopg(dialect),
        owns_transaction=owns,
        clock=clock,
    )
    try:
        return drive(load.run(), lambda op: _perform(target, rows, op, clock))
    finally:
        target.settle()
