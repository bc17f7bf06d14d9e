# This file is generated from src/scalekit/batch/_export_async.py by scripts/unasync.py.
# DO NOT EDIT; edit the async file and run: python scripts/unasync.py
"""The blocking export shell: :func:`export` and :func:`export_rows`.

Only I/O lives here: opening the connection, running ``COPY ... TO STDOUT``
through psycopg or a streamed select through SQLAlchemy, and handing the
output on in chunks. The options, the COPY text and the CSV lines are
:mod:`._export`'s; the blocking shell is generated from this file.

The connection an export opens (an engine target) is held by the generator
and returned to the pool when it finishes, raises, or is closed early (a
consumer that stops reading, a client that disconnects mid-download: the
web frameworks close the response's iterator).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from typing import Any

from scalekit.batch._base import is_psycopg
from scalekit.batch._export import (
    DEFAULT_CHUNK_ROWS,
    Chunker,
    ExportFormat,
    ExportOptions,
    ExportProgress,
    check_select,
    copy_sql,
    csv_line,
    export_options,
    text_line,
)
from scalekit.batch._sync import _raw
from scalekit.errors import ConfigurationError

__all__ = ["export", "export_rows"]


def _check_target(target: Any) -> None:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import Session, scoped_session

    if not isinstance(target, (Engine, Connection, Session, scoped_session)):
        raise ConfigurationError(
            "target must be a SQLAlchemy Engine, Connection or Session, "
            f"got {type(target).__name__}",
            parameter="target",
        )


@contextlib.contextmanager
def _connection(target: Any) -> Iterator[Any]:
    """The connection to export on: a new one from an engine (returned on exit), or the target's."""
    from sqlalchemy import Connection, Engine

    if isinstance(target, Engine):
        with target.connect() as connection:
            yield connection
        return
    connection = target if isinstance(target, Connection) else target.connection()
    if not connection.in_transaction():
        connection.begin()  # what an execute would do: SQLAlchemy knows of the transaction
    yield connection


def export(
    target: Any,
    select: Any,
    *,
    format: ExportFormat = "csv",
    chunk_size: int | None = None,
    header: bool = True,
    progress: ExportProgress | None = None,
) -> Generator[bytes, None, None]:
    """Stream the result of ``select`` as CSV (or text, or binary COPY) bytes, in bounded memory.

    On PostgreSQL through psycopg this is ``COPY (select) TO STDOUT``: the
    server writes the rows and they are passed on as they arrive (no
    server-side cursor, so it works behind PgBouncer in transaction pooling).
    Elsewhere (SQLite, other drivers) the select is streamed ``chunk_size``
    rows at a time and written as PostgreSQL's COPY would write it (see
    ``docs/batch.md`` for where the two can differ).

    Use it with ``for``; nothing runs until the first chunk is asked
    for, and the connection is released when the iteration ends or the
    iterator is closed early.

    Parameters:
        target: an ``Engine`` (a connection is taken from its pool for the
            export and returned after), an ``Connection`` or an
            ``Session`` (the export runs in its transaction).
        select: a SQLAlchemy ``select()``, ``text()``, ``Table`` or mapped
            class. On PostgreSQL its bound values are rendered as SQL
            literals (COPY takes no parameters).
        format: ``"csv"`` (default, with a header line), ``"text"``
            (PostgreSQL's tab-separated format) or ``"binary"`` (PostgreSQL
            with psycopg only).
        chunk_size: the size of the chunks yielded, in bytes (each chunk holds
            whole rows, so it is a little larger); default 64 KiB.
        header: with ``format="csv"``, write the column names first.
        progress: called after each chunk with ``(rows, bytes)`` so far.

    Returns:
        an async generator of ``bytes`` chunks (``close()`` it to stop early).

    Raises:
        ConfigurationError: an unknown format, a bad ``chunk_size`` or
            ``progress``, a target or select of the wrong kind, a bound value
            that cannot be rendered as a safe literal, ``"binary"`` without
            PostgreSQL and psycopg (raised at once, not at the first chunk,
            except the last two).
    """
    options = export_options(format, chunk_size, header, progress)
    query = check_select(select)
    _check_target(target)
    return _export(target, query, options)


def _export(target: Any, select: Any, options: ExportOptions) -> Generator[bytes, None, None]:
    with _connection(target) as connection:
        chunker = Chunker(options.chunk_size, options.progress)
        size = options.chunk_size
        buffer = bytearray()
        rows = 0
        if is_psycopg(connection.dialect):
            sql = copy_sql(select, connection.dialect, options)
            driver = _raw(connection).driver_connection
            # One piece a row, but for the csv header and the binary trailer.
            extra = options.format == "binary" or (options.format == "csv" and options.header)
            rows = -1 if extra else 0
            # Closed early (GeneratorExit, or any error), psycopg cancels the
            # COPY and drains it, so the connection goes back to the pool usable.
            with driver.cursor().copy(sql) as copy:
                for data in copy:
                    buffer += data
                    rows += 1
                    if len(buffer) >= size:
                        yield chunker.take(buffer, rows)
                        rows = 0
        else:
            if options.format == "binary":
                raise ConfigurationError(
                    'format="binary" needs PostgreSQL with the psycopg driver '
                    f"(this is {connection.dialect.name}+{connection.dialect.driver})",
                    parameter="format",
                )
            line = csv_line if options.format == "csv" else text_line
            # fetches small enough that a chunk does not run far past chunk_size
            fetch = max(1, min(DEFAULT_CHUNK_ROWS, size // 64))
            result = _stream(connection, select, fetch)
            if options.format == "csv" and options.header:
                buffer += csv_line(list(result.keys())).encode()
            try:
                for batch in result.partitions():
                    buffer += "".join(map(line, batch)).encode()
                    rows += len(batch)
                    if len(buffer) >= size:
                        yield chunker.take(buffer, rows)
                        rows = 0
            finally:
                result.close()  # a server-side cursor, closed early, is closed now
        if buffer:
            yield chunker.take(buffer, rows)


def _stream(connection: Any, select: Any, rows: int) -> Any:
    """The result of ``select``, fetched ``rows`` at a time (server-side where possible)."""
    return connection.execute(select, execution_options={"yield_per": rows})


def export_rows(
    target: Any, select: Any, *, chunk_size: int | None = None
) -> Generator[Any, None, None]:
    """Stream the rows of ``select`` (SQLAlchemy ``Row`` objects, typed), ``chunk_size`` at a time.

    The rows are fetched in batches of ``chunk_size`` (default 1000) with
    SQLAlchemy's ``yield_per`` (a server-side cursor on PostgreSQL, inside
    the export's transaction), so memory stays bounded. Use it with
    ``for``; the connection is released when the iteration ends or the
    iterator is closed early.

    Parameters:
        target: an ``Engine``, ``Connection`` or ``Session``
            (as for :func:`export`).
        select: a SQLAlchemy ``select()``, ``text()``, ``Table`` or mapped class.
        chunk_size: rows fetched at a time.

    Raises:
        ConfigurationError: a bad ``chunk_size``, a target or select of the
            wrong kind (at once).
    """
    options = export_options("csv", chunk_size, True, None, rows=True)
    query = check_select(select)
    _check_target(target)
    return _rows(target, query, options.chunk_size)


def _rows(target: Any, select: Any, chunk_size: int) -> Generator[Any, None, None]:
    with _connection(target) as connection:
        result = _stream(connection, select, chunk_size)
        try:
            for rows in result.partitions():
                yield from rows
        finally:
            result.close()  # a server-side cursor, closed early, is closed now
