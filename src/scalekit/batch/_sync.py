"""The blocking shell: :func:`batch_insert` drives a :class:`~scalekit.batch._flow.Load`.

Only I/O lives here: reading input rows, running statements and COPY through
SQLAlchemy and psycopg, transactions, sleeping. Every decision is the flow's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

from scalekit._clock import SYSTEM_CLOCK
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
    Load,
    LoadOptions,
    Op,
    PgCopy,
    PgProbe,
    PgQuery,
    ReadRows,
    ReleaseSavepoint,
    Rollback,
    RollbackSavepoint,
    RowDumpError,
    SaExecute,
    Savepoint,
    Sleep,
    default_retry,
)
from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Generator

    from scalekit.retry import RetryPolicy
    from scalekit.typing import Clock

__all__ = [
    "COPY_ABORTED",
    "DEFAULT",
    "batch_insert",
    "probe_binary",
    "unprepared",
    "wrap_json",
    "wrap_json_rows",
]


class _Default:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()
"""The default retry policy marker (see :func:`batch_insert`'s ``retry``)."""


def make_options(
    *,
    columns: Sequence[str] | None,
    on_conflict: Upsert | Literal["nothing"] | None,
    dedupe: Dedupe,
    returning: Sequence[str] | None,
    method: Method,
    chunk_size: int | None,
    transaction: TransactionPolicy,
    on_error: OnError,
    on_reject: Callable[[RejectedRow], None] | None,
    retry: RetryPolicy | None,
    progress: Callable[[BatchProgress], None] | None,
    resume: BatchResult | int | None,
) -> LoadOptions:
    """Validate the keyword arguments shared by both shells."""
    if retry is DEFAULT:
        retry = default_retry()
    if resume is None:
        resume_at = 0
    elif isinstance(resume, BatchResult):
        resume_at = resume.resume_position
    else:
        resume_at = resume
    return LoadOptions(
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
        resume=resume_at,
    )


def is_psycopg(dialect: Any) -> bool:
    """Does this SQLAlchemy dialect run on psycopg 3 (and so offer COPY)?"""
    return bool(dialect.name == "postgresql" and dialect.driver == "psycopg")


def wrap_json(params: Sequence[Any], json_params: Sequence[tuple[int, str]]) -> list[Any]:
    """Wrap the items of json/jsonb array parameters for psycopg."""
    from psycopg.types.json import Json, Jsonb

    out = list(params)
    for index, kind in json_params:
        wrapper = Jsonb if kind == "jsonb" else Json
        out[index] = [None if v is None else wrapper(v) for v in out[index]]
    return out


def wrap_json_rows(
    rows: Iterable[Sequence[Any]], json_columns: Sequence[tuple[int, str]]
) -> Iterator[tuple[Any, ...]]:
    """Rows with the values of json/jsonb columns wrapped for a text COPY."""
    from psycopg.types.json import Json, Jsonb

    wrappers = [(index, Jsonb if kind == "jsonb" else Json) for index, kind in json_columns]
    for row in rows:
        values = list(row)
        for index, wrapper in wrappers:
            if values[index] is not None:
                values[index] = wrapper(values[index])
        yield tuple(values)


def probe_binary(connection: Any, oids: Sequence[int], row: Sequence[Any]) -> int | None:
    """The index of the first value psycopg cannot dump in binary for its OID, or ``None``."""
    from psycopg.adapt import PyFormat, Transformer
    from psycopg.pq import Format

    for index, (oid, value) in enumerate(zip(oids, row, strict=True)):
        if value is None:
            continue
        transformer = Transformer(connection)
        try:
            transformer.set_dumper_types([oid], Format.BINARY)
            transformer.dump_sequence([value], [PyFormat.BINARY])
        except Exception:
            return index
    return None


class CopyAborted(Exception):
    """Why a COPY was stopped, as the server is told (and may log): never a row's values."""


COPY_ABORTED = CopyAborted("scalekit.batch stopped the COPY (a row it could not send)")


@contextlib.contextmanager
def unprepared(driver_connection: Any) -> Iterator[None]:
    """Turn psycopg's automatic prepared statements off on this connection for the block.

    A prepared statement lives on one server connection. Behind PgBouncer in
    transaction pooling mode (before 1.21, or without ``max_prepared_statements``)
    the next transaction of the same client connection runs on another one,
    where the statement does not exist, or where another client's statement of
    the same name does. A load runs each statement once per chunk: preparing
    it gains nothing. Other drivers (no ``prepare_threshold``) are left alone.
    """
    threshold = getattr(driver_connection, "prepare_threshold", None)
    if threshold is None:
        yield
        return
    driver_connection.prepare_threshold = None
    try:
        yield
    finally:
        driver_connection.prepare_threshold = threshold


def _counting_writer(cursor: Any) -> Any:
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


def copy_rows(connection: Any, op: PgCopy) -> tuple[int, int]:
    """COPY ``op.rows`` on a psycopg connection; ``(rowcount, bytes sent)``."""
    from psycopg import OperationalError

    cursor = connection.cursor()
    writer = _counting_writer(cursor)
    with cursor.copy(op.sql, writer=writer) as copy:
        if op.oids is not None:
            copy.set_types(list(op.oids))
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


class _Target:
    """The connection (or session) a load runs on, and its transaction primitives."""

    def __init__(self, executor: Any, *, session: bool) -> None:
        self.executor = executor
        self.session = session

    def connection(self) -> Any:
        if self.session:
            return self.executor.connection()
        connection = self.executor
        if not connection.in_transaction():
            connection.begin()
        return connection

    def driver_connection(self) -> Any:
        return self.connection().connection.driver_connection

    def savepoint(self) -> Any:
        connection = self.connection()
        if connection.dialect.name == "sqlite":
            # pysqlite starts its transaction lazily, before the first DML: a
            # SAVEPOINT before it would open (and RELEASE would commit) one.
            raw = connection.connection.driver_connection
            if not raw.in_transaction:
                connection.exec_driver_sql("BEGIN")
        return self.executor.begin_nested()


def _perform(target: _Target, rows: Any, op: Op, clock: Clock) -> Any:
    kind = type(op)
    if kind is ReadRows:
        assert isinstance(op, ReadRows)
        return list(islice(rows, op.count))
    if kind is PgCopy:
        assert isinstance(op, PgCopy)
        return copy_rows(target.driver_connection(), op)
    if kind is PgQuery:
        assert isinstance(op, PgQuery)
        cursor = target.driver_connection().cursor()
        params = op.params
        if params is not None and op.json_params:
            params = wrap_json(params, op.json_params)
        cursor.execute(op.sql, params, prepare=False)
        return cursor.rowcount, (cursor.fetchall() if cursor.description else [])
    if kind is SaExecute:
        assert isinstance(op, SaExecute)
        connection = target.connection()
        with unprepared(connection.connection.driver_connection):
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
    rows: Iterable[Any],
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
        target: an ``Engine`` (the load opens its own connection and
            transaction), a ``Connection`` or a ``Session`` (the load runs in
            its transaction).
        table: a Core ``Table`` or a mapped ORM class.
        rows: any iterable (a generator of unknown length too) of dicts or
            tuples; read one chunk at a time, so memory stays bounded.
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
            ``"copy_staging"``, ``"unnest"`` or ``"executemany"``.
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

    Example::

        result = batch_insert(engine, orders, rows,
                              on_conflict=Upsert(index=["id"], update=["amount"]))
        print(result.method, result.inserted, result.updated)
    """
    from sqlalchemy.engine import Connection, Engine
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
    if isinstance(target, Engine):
        with target.connect() as connection:
            return _run(
                connection,
                _Target(connection, session=False),
                table,
                rows,
                options,
                owns=True,
                clock=clock,
            )
    if isinstance(target, Connection):
        return _run(
            target, _Target(target, session=False), table, rows, options, owns=False, clock=clock
        )
    if isinstance(target, (Session, scoped_session)):
        return _run(
            target.connection(),
            _Target(target, session=True),
            table,
            rows,
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
    rows: Iterable[Any],
    options: LoadOptions,
    *,
    owns: bool,
    clock: Clock,
) -> BatchResult:
    if not isinstance(rows, Iterable):
        raise ConfigurationError(
            f"rows must be an iterable of dicts or tuples, got {type(rows).__name__}",
            parameter="rows",
        )
    dialect = connection.dialect
    load = Load(
        table,
        options,
        dialect=dialect.name,
        copy_capable=is_psycopg(dialect),
        owns_transaction=owns,
        clock=clock,
    )
    iterator = iter(rows)
    return drive(load.run(), lambda op: _perform(target, iterator, op, clock))
