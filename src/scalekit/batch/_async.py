"""The asyncio shell: :func:`abatch_insert` drives the same :class:`~scalekit.batch._flow.Load`.

Only I/O lives here (awaited): reading rows from an iterable or an async
iterable, statements and COPY through SQLAlchemy's asyncio API and psycopg's
``AsyncConnection``, transactions, sleeping. Every decision is the flow's,
so the sync and async loads behave the same by construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
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
)
from scalekit.batch._sync import (
    COPY_ABORTED,
    DEFAULT,
    is_psycopg,
    make_options,
    probe_binary,
    unprepared,
    wrap_json,
    wrap_json_rows,
)
from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Generator

    from scalekit.retry import RetryPolicy
    from scalekit.typing import Clock

__all__ = ["abatch_insert"]


class _Rows:
    """Reads chunks from a sync or an async iterable."""

    def __init__(self, rows: Iterable[Any] | AsyncIterable[Any]) -> None:
        self._sync: Iterator[Any] | None = None
        self._async: AsyncIterator[Any] | None = None
        if isinstance(rows, AsyncIterable):
            self._async = aiter(rows)
        elif isinstance(rows, Iterable):
            self._sync = iter(rows)
        else:
            raise ConfigurationError(
                "rows must be an iterable or async iterable of dicts or tuples, "
                f"got {type(rows).__name__}",
                parameter="rows",
            )

    async def read(self, count: int) -> list[Any]:
        if self._sync is not None:
            from itertools import islice

            return list(islice(self._sync, count))
        assert self._async is not None
        out: list[Any] = []
        iterator = self._async
        while len(out) < count:
            try:
                out.append(await anext(iterator))
            except StopAsyncIteration:
                break
        return out


class _AsyncTarget:
    """The AsyncConnection (or AsyncSession) a load runs on, and its transaction primitives."""

    def __init__(self, executor: Any, *, session: bool) -> None:
        self.executor = executor
        self.session = session

    async def connection(self) -> Any:
        if self.session:
            return await self.executor.connection()
        connection = self.executor
        if not connection.in_transaction():
            await connection.begin()
        return connection

    async def driver_connection(self) -> Any:
        connection = await self.connection()
        raw = await connection.get_raw_connection()
        return raw.driver_connection

    async def savepoint(self) -> Any:
        connection = await self.connection()
        if connection.dialect.name == "sqlite":
            # As in the sync shell: open the transaction before the SAVEPOINT.
            raw = await connection.get_raw_connection()
            if not raw.driver_connection.in_transaction:
                await connection.exec_driver_sql("BEGIN")
        return await self.executor.begin_nested()


async def _copy_rows(connection: Any, op: PgCopy) -> tuple[int, int]:
    from psycopg import Error, OperationalError
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
            # As in the sync shell: no row values to the server or to psycopg's log.
            with contextlib.suppress(Error):
                await super().finish(COPY_ABORTED)

    cursor = connection.cursor()
    writer = CountingWriter(cursor)
    async with cursor.copy(op.sql, writer=writer) as copy:
        if op.oids is not None:
            copy.set_types(list(op.oids))
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


async def _perform(target: _AsyncTarget, rows: _Rows, op: Op, clock: Clock) -> Any:
    if isinstance(op, ReadRows):
        return await rows.read(op.count)
    if isinstance(op, PgCopy):
        return await _copy_rows(await target.driver_connection(), op)
    if isinstance(op, PgQuery):
        cursor = (await target.driver_connection()).cursor()
        params = op.params
        if params is not None and op.json_params:
            params = wrap_json(params, op.json_params)
        await cursor.execute(op.sql, params, prepare=False)
        return cursor.rowcount, (await cursor.fetchall() if cursor.description else [])
    if isinstance(op, SaExecute):
        connection = await target.connection()
        raw = await connection.get_raw_connection()
        with unprepared(raw.driver_connection):
            result = await connection.execute(op.statement, op.params)
        if op.fetch:
            fetched = result.all()
            return len(fetched), fetched
        return result.rowcount, None
    if isinstance(op, Commit):
        await target.executor.commit()
        return None
    if isinstance(op, Rollback):
        await target.executor.rollback()
        return None
    if isinstance(op, Savepoint):
        return await target.savepoint()
    if isinstance(op, ReleaseSavepoint):
        await op.handle.commit()
        return None
    if isinstance(op, RollbackSavepoint):
        await op.handle.rollback()
        return None
    if isinstance(op, Sleep):
        await clock.asleep(op.seconds)
        return None
    if isinstance(op, PgProbe):
        return probe_binary(await target.driver_connection(), op.oids, op.row)
    raise AssertionError(f"unknown request {op!r}")  # pragma: no cover


async def adrive(
    flow: Generator[Op, Any, BatchResult], perform: Callable[[Op], Any]
) -> BatchResult:
    """Run the flow, awaiting each request: the async twin of :func:`._sync.drive`."""
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
    rows: Iterable[Any] | AsyncIterable[Any],
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
    """The asyncio twin of :func:`~scalekit.batch.batch_insert`, with the same parameters.

    ``target`` is an ``AsyncEngine``, ``AsyncConnection`` or ``AsyncSession``;
    ``rows`` an iterable or an async iterable (an async generator of unknown
    length too), read one chunk at a time. On PostgreSQL the COPY fast paths
    need the ``postgresql+psycopg`` async driver; other drivers (asyncpg,
    aiosqlite) use ``unnest``/executemany as :func:`batch_insert` does.

    Raises:
        ConfigurationError: bad options or target (before anything is written).
        InvalidBatchRow: a row does not fit the table (``on_error="raise"``).
        BatchChunkError: the database refused a chunk; ``.result`` says
            where to resume.

    Example::

        result = await abatch_insert(async_engine, orders, rows_async_gen(),
                                     transaction="per_chunk")
    """
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

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
                connection, _AsyncTarget(connection, session=False), table, reader, options,
                owns=True, clock=clock,
            )  # fmt: skip
    if isinstance(target, AsyncConnection):
        return await _run(
            target, _AsyncTarget(target, session=False), table, reader, options,
            owns=False, clock=clock,
        )  # fmt: skip
    if isinstance(target, AsyncSession):
        return await _run(
            await target.connection(), _AsyncTarget(target, session=True), table, reader,
            options, owns=False, clock=clock,
        )  # fmt: skip
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
    return await adrive(load.run(), lambda op: _perform(target, rows, op, clock))
