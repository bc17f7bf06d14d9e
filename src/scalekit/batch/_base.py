"""What the blocking and asyncio batch shells share: options, markers, psycopg helpers.

Nothing here waits on I/O of its own: it validates the keyword arguments of
:func:`~scalekit.batch.batch_insert` and :func:`~scalekit.batch.abatch_insert`,
wraps JSON values for psycopg, finds the value psycopg cannot dump, and turns
prepared statements off around a statement. The shells are ``_async.py`` (the
source) and ``_sync.py`` (generated from it by ``scripts/unasync.py``).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any, Literal

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
from scalekit.batch._flow import LoadOptions, RowDumpError, default_retry

if TYPE_CHECKING:
    from scalekit.retry import RetryPolicy

__all__ = [
    "COPY_ABORTED",
    "COPY_BINARY_HEADER",
    "COPY_BINARY_TRAILER",
    "COPY_FLUSH_BYTES",
    "DEFAULT",
    "Background",
    "binary_row_encoder",
    "copy_blocks",
    "CopyAborted",
    "encode_binary_copy",
    "is_psycopg",
    "make_options",
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


#: The binary COPY format's header (signature, flags, header extension length)
#: and trailer (a field count of -1): sent around rows encoded by
#: :func:`binary_row_encoder`, written straight to the COPY in block mode.
COPY_BINARY_HEADER = b"PGCOPY\n\xff\r\n\0" + bytes(8)
COPY_BINARY_TRAILER = b"\xff\xff"
#: Encoded rows are sent once the buffer holds this many bytes (psycopg's own size).
COPY_FLUSH_BYTES = 32 * 1024


def binary_row_encoder() -> Callable[[Sequence[Any], Any, bytearray], None] | None:
    """psycopg's binary COPY row encoder, ``encode(row, transformer, buffer)``, or ``None``.

    The encoder ``Copy.write_row`` calls for each row (the C one when psycopg's
    C extension is installed), for a loop that appends rows to one buffer and
    sends it with ``Copy.write`` (two Python frames less per row than
    ``write_row``). ``None`` when this psycopg does not expose it: the caller
    then writes rows with ``write_row``.
    """
    try:
        from psycopg import _copy_base
    except ImportError:  # pragma: no cover - a psycopg without the module
        return None
    encode = getattr(_copy_base, "format_row_binary", None)
    return encode if callable(encode) else None


#: Rows in the first block of :func:`copy_blocks`; later blocks are sized to
#: about :data:`COPY_FLUSH_BYTES` from the bytes per row seen so far.
_FIRST_BLOCK_ROWS = 64
_MAX_BLOCK_ROWS = 4096


def copy_blocks(
    encode: Callable[[Sequence[Any], Any, bytearray], Any],
    rows: Sequence[Sequence[Any]],
    transformer: Any,
    failed: Callable[[int, Sequence[Any], Exception], Exception],
    *,
    framed: bool = True,
) -> Iterator[bytearray]:
    """Binary COPY data of ``rows`` in blocks of about :data:`COPY_FLUSH_BYTES`.

    The first block starts with the format's header, the last ends with its
    trailer (``framed=False``: neither, for a COPY that sends them itself).
    A block's rows are encoded by ``encode`` (psycopg's ``format_row_binary``)
    in one C-level loop (``map`` drained by a zero-length ``deque``): no
    Python bytecode runs per row. A row that
    cannot be encoded is found again row by row, and ``failed(index, row,
    error)`` builds the exception raised for it.
    """
    buffer = bytearray(COPY_BINARY_HEADER if framed else b"")
    total = len(rows)
    start = 0
    size = _FIRST_BLOCK_ROWS
    while start < total:
        block = rows[start : start + size]
        try:
            deque(map(encode, block, repeat(transformer), repeat(buffer)), maxlen=0)
        except Exception as exc:
            scratch = bytearray()
            for offset, row in enumerate(block):
                try:
                    encode(row, transformer, scratch)
                except Exception as error:
                    raise failed(start + offset, row, error) from error
            raise failed(start, block[0], exc) from exc  # pragma: no cover - not reproduced
        start += len(block)
        if start < total:
            per_row = max(len(buffer) // len(block), 1)
            size = max(1, min(_MAX_BLOCK_ROWS, COPY_FLUSH_BYTES // per_row))
            yield buffer
            buffer = bytearray()
    if framed:
        buffer += COPY_BINARY_TRAILER
    yield buffer


def encode_binary_copy(
    connection: Any,
    oids: Sequence[int],
    rows: Sequence[Sequence[Any]],
    failed: Callable[[int, Sequence[Any], Exception], Exception],
) -> list[bytearray]:
    """The binary COPY data of ``rows`` for ``oids``, whole, as :func:`copy_blocks` makes it.

    For a COPY whose rows are encoded before it starts (while the server is
    busy with the statement before). Raises ``failed(index, row, error)`` for a
    row psycopg cannot encode, or ``LookupError`` when psycopg exposes no
    binary row encoder (the caller then encodes during the COPY).
    """
    from psycopg.adapt import Transformer
    from psycopg.pq import Format

    encode = binary_row_encoder()
    if encode is None:  # pragma: no cover - a psycopg without the encoder
        raise LookupError("no binary COPY row encoder in this psycopg")
    transformer = Transformer(connection.cursor())
    transformer.set_dumper_types(list(oids), Format.BINARY)
    return list(copy_blocks(encode, rows, transformer, failed))


class Background:
    """``call(*args)`` run in a thread: :meth:`result` waits for it, returns or raises.

    The blocking shell runs a statement so while its own thread prepares the
    next chunk (psycopg releases the GIL while it waits for the server). The
    call runs in a copy of the caller's context (``contextvars``), so what
    instruments the driver (a tracing span, say) sees the caller's.
    """

    def __init__(self, call: Callable[..., Any], *args: Any) -> None:
        import contextvars
        import threading

        self._value: Any = None
        self._error: BaseException | None = None
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run,
            args=(self._run, call, args),
            name="scalekit-batch",
            daemon=True,
        )
        self._thread.start()

    def _run(self, call: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._value = call(*args)
        except BaseException as exc:  # handed to the waiting thread
            self._error = exc

    def result(self) -> Any:
        """Wait for the call; its value, or raise its error."""
        self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._value


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


def dump_failure(
    connection: Any, oids: Sequence[int]
) -> Callable[[int, Sequence[Any], Exception], Exception]:
    """``failed`` for :func:`copy_blocks`: a ``RowDumpError`` naming the row's index
    and the first of its columns psycopg cannot dump (:func:`probe_binary`)."""

    def failed(index: int, row: Sequence[Any], exc: Exception) -> Exception:
        return RowDumpError(index, probe_binary(connection, oids, row), exc)

    return failed


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
