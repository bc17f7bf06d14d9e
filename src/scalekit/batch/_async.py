"""The asyncio shell: :func:`abatch_insert` drives a :class:`~scalekit.batch._flow.Load`.

Only I/O lives here: reading input rows, running statements and COPY through
SQLAlchemy and psycopg, transactions, sleeping. Every decision is the flow's,
and what both shells share without I/O is in :mod:`._base`; the blocking
shell is generated from this file, so the two loads behave the same by
construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from scalekit._clock import SYSTEM_CLOCK
from scalekit._unasync import IS_ASYNC
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

__all__ = ["abatch_insert"]

__unasync__ = {
    "abatch_insert": "batch_insert",
    "adrive": "drive",
    "atry_withdraw": "try_withdraw",
    "aflush": "flush",
    "The asyncio shell": "The blocking shell",
    "an iterable or async iterable": "an iterable",
    "; or an\n            async iterable (an async generator too)": "",
}

if IS_ASYNC:
    InputRows: TypeAlias = Iterable[Any] | AsyncIterable[Any]
else:
    InputRows: TypeAlias = Iterable[Any]


class _Rows:
    """The input rows, read one chunk at a time (so memory stays bounded)."""

    def __init__(self, rows: InputRows) -> None:
        self._async: AsyncIterator[Any] | None = None  # unasync: async-only
        if isinstance(rows, AsyncIterable):  # unasync: async-only
            self._async = aiter(rows)
            self._sync: Iterator[Any] = iter(())
            return
        if not isinstance(rows, Iterable):
            raise ConfigurationError(
                "rows must be an iterable or async iterable of dicts or tuples, "
                f"got {type(rows).__name__}",
                parameter="rows",
            )
        self._sync = iter(rows)

    async def read(self, count: int) -> list[Any]:
        if self._async is not None:  # unasync: async-only
            out: list[Any] = []
            while len(out) < count:
                try:
                    out.append(await anext(self._async))
                except StopAsyncIteration:
                    break
            return out
        return list(islice(self._sync, count))


async def _raw(connection: Any) -> Any:
    """The pool's wrapper of the DBAPI connection under a SQLAlchemy connection."""
    if IS_ASYNC:
        return await connection.get_raw_connection()
    else:
        return connection.connection


class _AsyncTarget:
    """The connection (or session) a load runs on, and its transaction primitives."""

    def __init__(self, executor: Any, *, session: bool) -> None:
        self.executor = executor
        self.session = session
        #: a statement sent by :meth:`start` whose result nobody has asked for yet
        self.pending: Any = None
        #: a COPY begun by :class:`PgCopyBegin` and not ended yet
        self.copying: _CopyStream | None = None

    async def connection(self) -> Any:
        if self.session:
            return await self.executor.connection()
        connection = self.executor
        if not connection.in_transaction():
            await connection.begin()
        return connection

    async def driver_connection(self) -> Any:
        return (await _raw(await self.connection())).driver_connection

    async def start(self, sql: str) -> Any:
        """Send ``sql`` and return a handle at once; :meth:`finish` waits for its result."""
        connection = await self.driver_connection()
        if IS_ASYNC:
            import asyncio

            self.pending = asyncio.ensure_future(_query(connection, sql))
            await asyncio.sleep(0)  # the task sends the statement, then waits for the server
        else:
            from scalekit.batch._base import Background

            self.pending = Background(_query, connection, sql)
        return self.pending

    async def finish(self, handle: Any) -> tuple[int, list[Any]]:
        """The ``(rowcount, rows)`` of the statement :meth:`start` sent, or its error."""
        self.pending = None
        if IS_ASYNC:
            awaited: tuple[int, list[Any]] = await handle
            return awaited
        else:
            result: tuple[int, list[Any]] = handle.result()
            return result

    async def settle(self) -> None:
        """Wait for a statement still running (the load stopped while it ran): its error is moot.

        A COPY still open is aborted.
        """
        copying, self.copying = self.copying, None
        if copying is not None:
            await copying.abort()
        pending, self.pending = self.pending, None
        if pending is None:
            return
        if IS_ASYNC:
            with contextlib.suppress(Exception):
                await pending
        else:
            with contextlib.suppress(Exception):
                pending.result()

    async def savepoint(self) -> Any:
        connection = await self.connection()
        if connection.dialect.name == "sqlite":
            # pysqlite starts its transaction lazily, before the first DML: a
            # SAVEPOINT before it would open (and RELEASE would commit) one.
            raw = await _raw(connection)
            if not raw.driver_connection.in_transaction:
                await connection.exec_driver_sql("BEGIN")
        return await self.executor.begin_nested()


def _counting_writer(cursor: Any) -> Any:
    """A COPY writer for ``cursor`` that counts the bytes it sends (``.sent``).

    An abort by an exception of ours tells the server why without any row's values.
    """
    from psycopg import Error
    from psycopg.copy import AsyncLibpqWriter

    class CountingWriter(AsyncLibpqWriter):
        sent = 0

        async def write(self, data: Any) -> None:
            self.sent += len(data)
            await super().write(data)

        async def finish(self, exc: BaseException | None = None) -> None:
            if exc is None:
                await super().finish(None)
                return
            # Stopped by an exception of ours: tell the server without the row's
            # values, and keep the server's own answer (it may have refused an
            # earlier row, its DETAIL holding that row's values) away from psycopg,
            # which would log it as a warning. The exception that stopped us wins.
            with contextlib.suppress(Error):
                await super().finish(COPY_ABORTED)

    return CountingWriter(cursor)


class _CopyStream:
    """A binary COPY open across requests, from :class:`PgCopyBegin` to :class:`PgCopyEnd`."""

    def __init__(self, cursor: Any, writer: Any) -> None:
        self.cursor = cursor
        self.writer = writer
        self.stack = contextlib.AsyncExitStack()
        self.copy: Any = None
        self.oids: Sequence[int] = ()

    async def begin(self, sql: str, oids: Sequence[int]) -> None:
        self.copy = await self.stack.enter_async_context(self.cursor.copy(sql, writer=self.writer))
        self.copy.set_types(list(oids))
        self.oids = oids
        await self.copy.write(COPY_BINARY_HEADER)

    async def send(self, rows: Sequence[Sequence[Any]]) -> int:
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
                await write(block)
        sent: int = self.writer.sent - before
        return sent

    async def end(self) -> tuple[int, int]:
        try:
            await self.copy.write(COPY_BINARY_TRAILER)
        except BaseException:
            await self.abort()
            raise
        await self.stack.aclose()
        return self.cursor.rowcount, self.writer.sent

    async def abort(self) -> None:
        """Stop the COPY (the server rolls it back); errors are moot."""
        with contextlib.suppress(Exception):
            await self.stack.__aexit__(CopyAborted, COPY_ABORTED, None)


async def _copy_rows(connection: Any, op: PgCopy) -> tuple[int, int]:
    """COPY ``op.rows`` on a psycopg connection; ``(rowcount, bytes sent)``."""
    from psycopg import OperationalError

    cursor = connection.cursor()
    writer = _counting_writer(cursor)
    encode = binary_row_encoder() if op.oids is not None and op.blocks is None else None
    async with cursor.copy(op.sql, writer=writer) as copy:
        if op.oids is not None:
            copy.set_types(list(op.oids))
        if op.blocks is not None:  # encoded beforehand (PgEncode)
            for data in op.blocks:
                await copy.write(data)
        elif encode is not None:
            # Binary COPY in block mode: rows encoded by psycopg's own encoder,
            # a block at a time, sent with the format's header and trailer.
            assert op.oids is not None
            failed = dump_failure(connection, op.oids)
            for block in copy_blocks(encode, op.rows, copy.formatter.transformer, failed):
                await copy.write(block)
        else:
            write_row = copy.write_row
            rows = op.rows if not op.json_columns else wrap_json_rows(op.rows, op.json_columns)
            for index, row in enumerate(rows):
                try:
                    await write_row(row)
                except OperationalError:
                    raise
                except Exception as exc:
                    column = probe_binary(connection, op.oids, row) if op.oids is not None else None
                    raise RowDumpError(index, column, exc) from exc
    return cursor.rowcount, writer.sent


async def _query(connection: Any, sql: str, params: Any = None) -> tuple[int, list[Any]]:
    """Run ``sql`` on a psycopg connection; ``(rowcount, rows)``."""
    cursor = connection.cursor()
    await cursor.execute(sql, params, prepare=False)
    return cursor.rowcount, (await cursor.fetchall() if cursor.description else [])


async def _perform(target: _AsyncTarget, rows: _Rows, op: Op, clock: Clock) -> Any:
    kind = type(op)
    if kind is ReadRows:
        assert isinstance(op, ReadRows)
        return await rows.read(op.count)
    if kind is PgCopy:
        assert isinstance(op, PgCopy)
        return await _copy_rows(await target.driver_connection(), op)
    if kind is PgCopySend:
        assert isinstance(op, PgCopySend)
        return await op.handle.send(op.rows)
    if kind is PgCopyBegin:
        assert isinstance(op, PgCopyBegin)
        if binary_row_encoder() is None:  # pragma: no cover - a psycopg without the encoder
            return None
        cursor = (await target.driver_connection()).cursor()
        stream = _CopyStream(cursor, _counting_writer(cursor))
        try:
            await stream.begin(op.sql, op.oids)
        except BaseException:
            await stream.abort()
            raise
        target.copying = stream
        return stream
    if kind is PgCopyEnd:
        assert isinstance(op, PgCopyEnd)
        target.copying = None
        if op.abort:
            await op.handle.abort()
            return None
        return await op.handle.end()
    if kind is PgQuery:
        assert isinstance(op, PgQuery)
        params = op.params
        if params is not None and op.json_params:
            params = wrap_json(params, op.json_params)
        return await _query(await target.driver_connection(), op.sql, params)
    if kind is PgStart:
        assert isinstance(op, PgStart)
        return await target.start(op.sql)
    if kind is PgFinish:
        assert isinstance(op, PgFinish)
        return await target.finish(op.handle)
    if kind is PgEncode:
        assert isinstance(op, PgEncode)
        connection = await target.driver_connection()
        return encode_binary_copy(connection, op.oids, op.rows, dump_failure(connection, op.oids))
    if kind is SaExecute:
        assert isinstance(op, SaExecute)
        connection = await target.connection()
        with unprepared((await _raw(connection)).driver_connection):
            result = await connection.execute(op.statement, op.params)
        if op.fetch:
            fetched = result.all()
            return len(fetched), fetched
        return result.rowcount, None
    if kind is Commit:
        await target.executor.commit()
        return None
    if kind is Rollback:
        await target.executor.rollback()
        return None
    if kind is Savepoint:
        return await target.savepoint()
    if kind is ReleaseSavepoint:
        assert isinstance(op, ReleaseSavepoint)
        await op.handle.commit()
        return None
    if kind is RollbackSavepoint:
        assert isinstance(op, RollbackSavepoint)
        await op.handle.rollback()
        return None
    if kind is Sleep:
        assert isinstance(op, Sleep)
        await clock.asleep(op.seconds)
        return None
    if kind is Withdraw:  # the retry loop asks the policy's budget for a retry
        assert isinstance(op, Withdraw)
        return await op.budget.atry_withdraw()
    if kind is Flush:
        assert isinstance(op, Flush)
        await op.budget.aflush()
        return None
    if kind is PgProbe:
        assert isinstance(op, PgProbe)
        return probe_binary(await target.driver_connection(), op.oids, op.row)
    raise AssertionError(f"unknown request {op!r}")  # pragma: no cover


async def adrive(
    flow: Generator[Op, Any, BatchResult], perform: Callable[[Op], Any]
) -> BatchResult:
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
            value = await perform(op)
        except Exception as exc:
            value = None
            error = exc


async def abatch_insert(
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
        target: an engine (``AsyncEngine``: the load opens its own connection
            and transaction), a connection (``AsyncConnection``) or a session
            (``AsyncSession``, scoped or not): the load runs in its transaction.
        table: a Core ``Table`` or a mapped ORM class.
        rows: any iterable (a generator of unknown length too) of dicts or
            tuples, read one chunk at a time so memory stays bounded; or an
            async iterable (an async generator too).
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

    >>> result = await abatch_insert(  # doctest: +SKIP
    ...     engine, orders, rows, on_conflict=Upsert(index=["id"], update=["amount"]))
    >>> result.method, result.inserted, result.updated  # doctest: +SKIP
    """
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncEngine,
        AsyncSession,
        async_scoped_session,
    )

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
    if isinstance(target, AsyncEngine):
        async with target.connect() as connection:
            return await _run(
                connection,
                _AsyncTarget(connection, session=False),
                table,
                reader,
                options,
                owns=True,
                clock=clock,
            )
    if isinstance(target, AsyncConnection):
        return await _run(
            target,
            _AsyncTarget(target, session=False),
            table,
            reader,
            options,
            owns=False,
            clock=clock,
        )
    if isinstance(target, (AsyncSession, async_scoped_session)):
        return await _run(
            await target.connection(),
            _AsyncTarget(target, session=True),
            table,
            reader,
            options,
            owns=False,
            clock=clock,
        )
    raise ConfigurationError(
        "target must be a SQLAlchemy AsyncEngine, AsyncConnection or AsyncSession, "
        f"got {type(target).__name__}",
        parameter="target",
    )


async def _run(
    connection: Any,
    target: _AsyncTarget,
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
        return await adrive(load.run(), lambda op: _perform(target, rows, op, clock))
    finally:
        await target.settle()
