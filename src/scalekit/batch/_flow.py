"""The batch load as a generator of I/O requests, driven by a sync or an async shell.

:meth:`Load.run` is the whole algorithm (read a chunk, shape it, dedupe it,
write it with the chosen method, commit or savepoint per the transaction
policy, retry transient errors, bisect a failing chunk down to its bad rows,
report progress). It performs no I/O: it *yields* small request values
(:class:`ReadRows`, :class:`PgQuery`, :class:`PgCopy`, :class:`SaExecute`,
:class:`Commit`, :class:`Savepoint`, :class:`Sleep`...) and receives their
results via ``send()``, or their errors via ``throw()``. ``_sync.py`` and
``_async.py`` each hold a ~20-line driver loop and the I/O for each request;
the logic exists once (the shape of httpx's auth flows).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from scalekit.batch._core import (
    UNNEST_MAX_ROWS,
    BatchProgress,
    BatchResult,
    ConflictPlan,
    Dedupe,
    Method,
    OnError,
    RejectedRow,
    RowProblem,
    RowShaper,
    TableShape,
    TransactionPolicy,
    Upsert,
    _is_count,
    choose_method,
    dedupe,
    default_chunk_size,
    resolve_conflict,
    table_shape,
)
from scalekit.batch._events import (
    BatchChunkFailed,
    BatchChunkWritten,
    BatchFinished,
    BatchRowRejected,
)
from scalekit.batch._sql import CONSTRAINT_SQL, REFLECT_SQL, PgStatements, SaStatements
from scalekit.errors import BatchChunkError, ConfigurationError, InvalidBatchRow
from scalekit.instrumentation import emit
from scalekit.retry._flow import Flush, Sleep, Withdraw, retrying

if TYPE_CHECKING:
    from scalekit.retry import RetryPolicy
    from scalekit.typing import Clock

__all__ = [
    "Commit",
    "Flush",
    "Load",
    "LoadOptions",
    "Op",
    "PgCopy",
    "PgCopyBegin",
    "PgCopyEnd",
    "PgCopySend",
    "PgEncode",
    "PgFinish",
    "PgProbe",
    "PgQuery",
    "PgStart",
    "ReadRows",
    "ReleaseSavepoint",
    "Rollback",
    "RollbackSavepoint",
    "RowDumpError",
    "SaExecute",
    "Savepoint",
    "Sleep",
    "Withdraw",
    "is_row_error",
]

logger = logging.getLogger("scalekit.batch")

_INT8_OID = 20

# -- requests ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRows:
    """Read up to ``count`` input rows; a shorter list means the input is exhausted."""

    count: int


@dataclass(frozen=True, slots=True)
class PgQuery:
    """Run ``sql`` on the psycopg connection; result ``(rowcount, rows)``.

    ``json_params`` are indexes of ``params`` (lists) whose items are wrapped
    for a ``json`` or ``jsonb`` array.
    """

    sql: str
    params: Sequence[Any] | None = None
    json_params: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PgStart:
    """Send ``sql`` on the psycopg connection and return at once; result: a handle.

    The flow does the next chunk's client work (reading, shaping, encoding)
    while the server runs the statement, then asks for its result with
    :class:`PgFinish`. Nothing else uses the connection in between.
    """

    sql: str


@dataclass(frozen=True, slots=True)
class PgFinish:
    """Wait for the statement a :class:`PgStart` sent; result ``(rowcount, rows)`` or its error."""

    handle: Any


@dataclass(frozen=True, slots=True)
class PgEncode:
    """Encode ``rows`` as binary COPY data for ``oids``; result: the blocks, for :class:`PgCopy`.

    A row psycopg cannot encode raises :class:`RowDumpError`.
    """

    rows: Sequence[tuple[Any, ...]]
    oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PgCopy:
    """COPY ``rows`` with ``sql``: binary with ``oids``, text when ``None``.

    Result ``(rowcount, bytes sent)``. ``json_columns`` (text COPY only) are
    the indexes of json/jsonb columns whose values the shell wraps for psycopg
    (a text COPY has no types to choose a dumper by).

    A row psycopg cannot encode raises :class:`RowDumpError`. ``blocks``:
    ``rows`` already encoded by a :class:`PgEncode` (binary only), sent as they are.
    """

    sql: str
    rows: Sequence[tuple[Any, ...]]
    oids: tuple[int, ...] | None
    json_columns: tuple[tuple[int, str], ...] = ()
    blocks: Sequence[bytes] | None = None


@dataclass(frozen=True, slots=True)
class PgCopyBegin:
    """Start a binary COPY ``sql`` for ``oids`` that several chunks are sent through.

    Result: a handle for :class:`PgCopySend` and :class:`PgCopyEnd`, or
    ``None`` when the shell cannot send encoded blocks (the load then runs
    one COPY per chunk). Nothing else uses the connection until the COPY ends.
    """

    sql: str
    oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PgCopySend:
    """Encode one chunk's ``rows`` and send them through the open COPY ``handle``.

    Blocks are sent as they are encoded (the server writes meanwhile); the
    COPY's one header and trailer are sent by its begin and end. Result: the
    bytes sent. A row psycopg cannot encode raises :class:`RowDumpError`
    (the COPY then holds part of the chunk: abort it); the server's error
    may come too.
    """

    handle: Any
    rows: Sequence[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class PgCopyEnd:
    """End the open COPY ``handle``; result ``(rowcount, bytes sent)`` or the server's error.

    ``abort``: stop it instead (the server rolls it back); errors are then suppressed.
    """

    handle: Any
    abort: bool = False


@dataclass(frozen=True, slots=True)
class PgProbe:
    """Can psycopg encode ``row`` in binary for ``oids``?

    Result: the index of the first column it cannot encode, or ``None``.
    """

    oids: tuple[int, ...]
    row: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class SaExecute:
    """Execute a SQLAlchemy statement on the connection; result ``(rowcount, rows or None)``."""

    statement: Any
    params: Any = None
    fetch: bool = False


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit the connection's (or session's) transaction."""


@dataclass(frozen=True, slots=True)
class Rollback:
    """Roll back the connection's (or session's) transaction."""


@dataclass(frozen=True, slots=True)
class Savepoint:
    """Begin a savepoint; result: a handle."""


@dataclass(frozen=True, slots=True)
class ReleaseSavepoint:
    """Release (commit) the savepoint ``handle``."""

    handle: Any


@dataclass(frozen=True, slots=True)
class RollbackSavepoint:
    """Roll back to the savepoint ``handle``."""

    handle: Any


Op: TypeAlias = (
    ReadRows
    | PgQuery
    | PgCopy
    | PgProbe
    | PgStart
    | PgFinish
    | PgEncode
    | PgCopyBegin
    | PgCopySend
    | PgCopyEnd
    | SaExecute
    | Commit
    | Rollback
    | Savepoint
    | ReleaseSavepoint
    | RollbackSavepoint
    | Sleep
    | Withdraw
    | Flush
)
Flow: TypeAlias = Generator[Op, Any, Any]


class RowDumpError(Exception):
    """Row ``index`` (of the COPY's rows) does not fit column ``column`` (an index, or ``None``).

    Raised when psycopg cannot encode a value, or when the server reports a
    data exception with the COPY line in its CONTEXT.
    """

    def __init__(self, index: int, column: int | None, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.index = index
        self.column = column
        self.cause = cause
        #: the input position, filled in by the flow
        self.position: int | None = None


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (exc, getattr(exc, "orig", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_row_error(exc: BaseException) -> bool:
    """Is ``exc`` about the data of some row (so bisecting can find the row)?

    Data exceptions (SQLSTATE class 22), integrity violations (class 23), a
    row COPY could not encode; on drivers without SQLSTATEs (sqlite3), the
    DB-API ``IntegrityError``/``DataError``.
    """
    if isinstance(exc, (RowDumpError, RowProblem)):
        return True
    code = _sqlstate(exc)
    if code is not None:
        return code[:2] in ("22", "23")
    names = {cls.__name__ for cls in type(exc).__mro__}
    orig = getattr(exc, "orig", None)
    if orig is not None:
        names |= {cls.__name__ for cls in type(orig).__mro__}
    return bool(names & {"IntegrityError", "DataError"})


_ROLLED_BACK_SQLSTATES = ("40001", "40P01")  # the server rolled the transaction back
_COPY_METHODS = ("copy", "copy_text", "copy_staging")
_COPY_CONTEXT = re.compile(r"^COPY .*?, line (\d+)(?:, column ([^:]+))?", re.MULTILINE)
#: A streamed COPY (see :meth:`Load._stream`) is ended, and its chunks
#: reported, once it holds this many rows: progress still comes along.
STREAM_ROWS = 1_000_000


def _copy_error_row(exc: BaseException, *, data_only: bool = True) -> tuple[int, str | None] | None:
    """``(line, column)`` of a COPY's data exception (SQLSTATE class 22), from its CONTEXT.

    ``data_only=False``: of any server error that names a COPY line (a
    constraint violation too).
    """
    code = _sqlstate(exc)
    if code is None or (data_only and not code.startswith("22")):
        return None
    for candidate in (exc, getattr(exc, "orig", None)):
        context = getattr(getattr(candidate, "diag", None), "context", None)
        if isinstance(context, str):
            match = _COPY_CONTEXT.search(context)
            if match:
                return int(match.group(1)), match.group(2)
    return None


# -- options -----------------------------------------------------------------------------

_POLICIES = ("all_or_nothing", "per_chunk", "savepoint")


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """The validated options of one ``batch_insert`` call."""

    columns: Sequence[str] | None = None
    on_conflict: Upsert | Literal["nothing"] | None = None
    dedupe: Dedupe = "last"
    returning: Sequence[str] | None = None
    method: Method = "auto"
    chunk_size: int | None = None
    transaction: TransactionPolicy = "all_or_nothing"
    on_error: OnError = "raise"
    on_reject: Callable[[RejectedRow], None] | None = None
    retry: Any = None
    progress: Callable[[BatchProgress], None] | None = None
    resume: int = 0
    clock: Clock | None = None

    def __post_init__(self) -> None:
        size = self.chunk_size
        if size is not None and not _is_count(size):
            raise ConfigurationError(
                f"chunk_size must be an int >= 1, got {size!r}", parameter="chunk_size"
            )
        if self.transaction not in _POLICIES:
            raise ConfigurationError(
                f"transaction must be one of {', '.join(_POLICIES)}; got {self.transaction!r}",
                parameter="transaction",
            )
        if self.on_error not in ("raise", "isolate"):
            raise ConfigurationError(
                f'on_error must be "raise" or "isolate", got {self.on_error!r}',
                parameter="on_error",
            )
        if self.dedupe not in ("last", "first", None) and not callable(self.dedupe):
            raise ConfigurationError(
                f'dedupe must be "last", "first", None or a callable, got {self.dedupe!r}',
                parameter="dedupe",
            )
        for name in ("on_reject", "progress"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigurationError(f"{name} must be callable, got {value!r}", parameter=name)
        if self.returning is not None:
            if isinstance(self.returning, str):
                object.__setattr__(self, "returning", (self.returning,))
            returning = tuple(self.returning)
            if not returning or not all(isinstance(n, str) for n in returning):
                raise ConfigurationError(
                    f"returning must be a list of column names, got {self.returning!r}",
                    parameter="returning",
                )
            object.__setattr__(self, "returning", returning)
        if self.retry is not None:
            from scalekit.retry import RetryPolicy

            if not isinstance(self.retry, RetryPolicy):
                raise ConfigurationError(
                    f"retry must be a scalekit.retry.RetryPolicy or None, got {self.retry!r}",
                    parameter="retry",
                )
        if not _is_count(self.resume, 0):
            raise ConfigurationError(
                f"resume must be a BatchResult or an int >= 0, got {self.resume!r}",
                parameter="resume",
            )
        if self.method not in (
            "auto",
            "copy",
            "copy_text",
            "copy_staging",
            "unnest",
            "executemany",
        ):
            raise ConfigurationError(f"unknown method {self.method!r}", parameter="method")


def default_retry() -> RetryPolicy:
    """Three attempts, 50 ms exponential backoff capped at 1 s, transient database errors."""
    from scalekit.retry import Backoff, RetryPolicy, transient

    return RetryPolicy(
        attempts=3,
        backoff=Backoff.exponential(0.05, cap=1.0),
        retry_on=transient.database,
        name="batch_insert",
    )


# -- the load ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Ahead:
    """The next chunk, read, shaped and encoded while the server wrote the one before.

    Errors are kept for the moment the load would have met them unpipelined:
    ``read_error`` (the input's own) after the chunk before is done,
    ``error`` (shaping, dedupe) when this chunk starts. A chunk that could not
    be encoded has no ``blocks``: its COPY encodes it again, and fails there.
    """

    raw: list[Any]
    read_error: Exception | None = None
    error: Exception | None = None
    shaped: tuple[list[tuple[Any, ...]], Sequence[int], int, int] | None = None
    blocks: Sequence[bytes] | None = None


@dataclass(slots=True)
class _Sent:
    """A chunk sent through a streamed COPY, reported once the COPY ended."""

    index: int
    first: int
    rows: int
    started: float
    bytes: int = 0


@dataclass(slots=True)
class _Outcome:
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    bytes: int = 0
    returned: list[tuple[int, tuple[Any, ...]]] = field(default_factory=list)
    rejected: int = 0

    def add(self, other: _Outcome) -> _Outcome:
        self.inserted += other.inserted
        self.updated += other.updated
        self.skipped += other.skipped
        self.bytes += other.bytes
        self.returned.extend(other.returned)
        self.rejected += other.rejected
        return self


class Load:
    """One batch load: call :meth:`run` and drive the generator it returns.

    ``dialect`` is the SQLAlchemy dialect name, ``copy_capable`` whether the
    driver is psycopg 3 (COPY available), ``owns_transaction`` whether the
    load opened the connection itself (an Engine target) and so commits at
    the end under ``all_or_nothing``/``savepoint``.
    """

    def __init__(
        self,
        table: object,
        options: LoadOptions,
        *,
        dialect: str,
        copy_capable: bool,
        owns_transaction: bool,
        clock: Clock,
    ) -> None:
        self.shape: TableShape = table_shape(table)
        self.options = options
        self.dialect = dialect
        self.copy_capable = copy_capable
        self.owns = owns_transaction
        self.clock = clock
        self.result = BatchResult(method=options.method)
        self._shaper: RowShaper | None = None
        self._conflict: ConflictPlan | None = None
        self._pg: PgStatements | None = None
        self._sa: SaStatements | None = None
        self._oids: tuple[int, ...] | None = None
        self._binary = True
        self._json_params: tuple[tuple[int, str], ...] = ()
        # The chunk being written and its first input position (to hand rejected rows back).
        self._raw: list[Any] = []
        self._raw_first = 0
        self._method: Method = options.method
        # The input rows read but not yet loaded, and whether the input is exhausted.
        self._buffer: list[Any] = []
        self._exhausted = False
        self._chunk_size = 0
        # Whether the next chunk is read, shaped and encoded while the server
        # runs this chunk's INSERT ... SELECT (see :meth:`_prefetch`).
        self._pipelined = False
        self._ahead: _Ahead | None = None
        # The rows of the chunk being written, already encoded for its COPY.
        self._blocks: Sequence[bytes] | None = None

    # -- driver entry --------------------------------------------------------------------

    def run(self) -> Generator[Op, Any, BatchResult]:
        """The load; yields requests, returns the :class:`BatchResult`."""
        options = self.options
        result = self.result
        start = self.clock.monotonic()
        position = 0
        while position < options.resume:
            skipped_rows = yield ReadRows(min(options.resume - position, 10_000))
            if not skipped_rows:
                break
            position += len(skipped_rows)
        result.rows = position
        result.resume_position = position
        if options.returning:
            result.returned = [None] * position

        peek_size = options.chunk_size or (UNNEST_MAX_ROWS + 1)
        buffer: list[Any] = list((yield ReadRows(peek_size)))
        exhausted = len(buffer) < peek_size
        needs_statement = options.on_conflict is not None or bool(options.returning)
        if not buffer:
            result.method = self._choose(needs_statement, small=True, has_array=False)
            result.elapsed = self.clock.monotonic() - start
            return result
        try:
            shaper = self._shaper = RowShaper(self.shape, buffer[0], options.columns)
        except RowProblem as problem:
            raise InvalidBatchRow(
                str(problem),
                chunk_index=0,
                rows_written=0,
                position=position + problem.position,
                column=problem.column,
                result=result,
            ) from None
        yield from self._find_constraint()
        self._conflict = resolve_conflict(options.on_conflict, self.shape, shaper.names)
        returning = self._check_returning()
        if returning and self._conflict is not None and not self._conflict.key:
            raise ConfigurationError(
                "returned keys with on_conflict need one conflict target: "
                'use Upsert(index=[...], update=[]) instead of "nothing"',
                parameter="on_conflict",
            )
        has_array = any(c.is_array for c in shaper.columns)
        small = (exhausted and len(buffer) <= UNNEST_MAX_ROWS) or (
            options.chunk_size is not None and options.chunk_size <= UNNEST_MAX_ROWS
        )
        method = self._choose(needs_statement, small=small, has_array=has_array)
        chunk_size = options.chunk_size or default_chunk_size(
            method, len(shaper.columns), self.dialect
        )
        if method in ("copy", "copy_text", "copy_staging", "unnest"):
            yield from self._prepare_pg(method, buffer[0], returning)
            if method == "copy" and not self._binary:
                method = "copy_text"
        else:
            self._sa = SaStatements.build(
                self.shape, shaper.names, self._conflict, returning, self.dialect
            )
        result.method = method
        self._method = method
        self._buffer, self._exhausted, self._chunk_size = buffer, exhausted, chunk_size
        # One transaction, no bisecting, no callable dedupe (user code runs in
        # the order it always did): the next chunk's client work can overlap
        # the server's work on this one, and any error still stops the load.
        self._pipelined = (
            method == "copy_staging"
            and self._binary
            and options.transaction == "all_or_nothing"
            and options.on_error == "raise"
            and not callable(options.dedupe)
        )

        chunk_index = 0
        if (
            method == "copy"
            and self._binary
            and options.transaction == "all_or_nothing"
            and options.on_error == "raise"
        ):
            position, chunk_index = yield from self._stream(position, start)
        while True:
            ahead, self._ahead = self._ahead, None
            if ahead is None:
                raw = yield from self._take()
            elif ahead.read_error is not None:
                raise ahead.read_error
            else:
                raw = ahead.raw
            if not raw:
                break
            yield from self._chunk(chunk_index, raw, position, start, ahead)
            position += len(raw)
            chunk_index += 1

        if options.transaction != "per_chunk" and self.owns:
            yield Commit()
            result.committed = result.written
        result.resume_position = position
        result.elapsed = self.clock.monotonic() - start
        emit(
            BatchFinished(
                name=self.shape.name,
                method=method,
                rows=result.rows,
                inserted=result.inserted,
                updated=result.updated,
                skipped=result.skipped,
                rejected=result.rejected_count,
                chunks=result.chunks,
                seconds=result.elapsed,
            )
        )
        return result

    def _take(self) -> Flow:
        """The next chunk's input rows; an empty list at the end of the input."""
        size = self._chunk_size
        buffer = self._buffer
        while len(buffer) < size and not self._exhausted:
            wanted = size - len(buffer)
            more = yield ReadRows(wanted)
            buffer.extend(more)
            self._exhausted = len(more) < wanted
        raw, self._buffer = buffer[:size], buffer[size:]
        return raw

    # -- setup ---------------------------------------------------------------------------

    def _choose(self, needs_statement: bool, *, small: bool, has_array: bool) -> Method:
        return choose_method(
            self.options.method,
            dialect=self.dialect,
            copy_capable=self.copy_capable,
            needs_statement=needs_statement,
            has_array_column=has_array,
            small_chunks=small,
        )

    def _find_constraint(self) -> Flow:
        """Read a named constraint's columns from PostgreSQL when the metadata lacks it.

        (A primary key PostgreSQL named ``<table>_pkey`` is rarely named in the model.)
        """
        upsert = self.options.on_conflict
        if not isinstance(upsert, Upsert) or upsert.constraint is None:
            return
        name = upsert.constraint
        if name in self.shape.constraints or self.dialect != "postgresql":
            return
        import dataclasses

        from sqlalchemy import text

        _, found = yield SaExecute(
            text(CONSTRAINT_SQL), {"table": self.shape.qualified_name, "name": name}, fetch=True
        )
        if found:
            constraints = {**self.shape.constraints, name: tuple(str(r[0]) for r in found)}
            self.shape = dataclasses.replace(self.shape, constraints=constraints)

    def _check_returning(self) -> tuple[str, ...] | None:
        if not self.options.returning:
            return None
        names = []
        for name in self.options.returning:
            column = self.shape.column(name)
            if column is None:
                raise ConfigurationError(
                    f"table {self.shape.name!r} has no column {name!r}", parameter="returning"
                )
            names.append(column.name)
        return tuple(names)

    def _prepare_pg(
        self, method: Method, first_row: Any, returning: tuple[str, ...] | None
    ) -> Flow:
        assert self._shaper is not None
        shaper = self._shaper
        _, reflected = yield PgQuery(REFLECT_SQL, (self.shape.qualified_name,))
        if not reflected:
            raise ConfigurationError(
                f"table {self.shape.qualified_name} does not exist in the database",
                parameter="table",
            )
        by_name = {str(r[0]): (int(r[1]), str(r[2])) for r in reflected}
        oids = []
        types = []
        for name in shaper.names:
            if name not in by_name:
                raise ConfigurationError(
                    f"column {name!r} is in the table's metadata but not in the database",
                    parameter="table",
                )
            oids.append(by_name[name][0])
            types.append(by_name[name][1])
        self._oids = tuple(oids)
        self._json_params = tuple(
            (i, c.json) for i, c in enumerate(shaper.columns) if c.json is not None
        )
        # A plain insert returning values joins them back through the primary
        # key when it is loaded (robust), else matches them by position.
        pk = self.shape.primary_key
        match_key = pk if pk and all(c in shaper.names for c in pk) else ()
        self._pg = PgStatements.build(
            self.shape, shaper.names, types, self._conflict, returning, match_key
        )
        if method == "copy_text":
            self._binary = False
        elif method in ("copy", "copy_staging"):
            try:
                row = shaper.shape_one(first_row, 0)
            except RowProblem:
                return  # reported with its position when its chunk is shaped
            bad = yield PgProbe(self._oids, row)
            self._binary = bad is None

    # -- one chunk -----------------------------------------------------------------------

    def _chunk(
        self, chunk_index: int, raw: list[Any], first: int, start: float, ahead: _Ahead | None
    ) -> Flow:
        options = self.options
        result = self.result
        shaper = self._shaper
        assert shaper is not None
        chunk_start = self.clock.monotonic()
        if options.returning:
            assert result.returned is not None
            result.returned.extend([None] * len(raw))
        self._raw, self._raw_first = raw, first
        try:
            if ahead is None:
                rows, positions, rejected = self._shape(raw, first)
                rows, positions, duplicates = self._dedupe(rows, positions)
            elif ahead.error is not None:
                raise ahead.error
            else:
                assert ahead.shaped is not None
                rows, positions, rejected, duplicates = ahead.shaped
                self._blocks = ahead.blocks
            outcome = _Outcome(rejected=rejected)
            if rows:
                outcome.add((yield from self._policy(rows, positions)))
        except Exception as exc:
            yield from self._fail(chunk_index, first, start, exc)
            raise AssertionError("unreachable") from exc  # pragma: no cover
        finally:
            self._raw = []
            self._blocks = None
        self._account(
            chunk_index,
            len(raw),
            first,
            outcome,
            duplicates,
            self.clock.monotonic() - chunk_start,
            start,
        )

    def _account(
        self,
        chunk_index: int,
        count: int,
        first: int,
        outcome: _Outcome,
        duplicates: int,
        seconds: float,
        start: float,
    ) -> None:
        """Add a written chunk of ``count`` input rows to the result; its event and progress."""
        options = self.options
        result = self.result
        result.rows += count
        result.inserted += outcome.inserted
        result.updated += outcome.updated
        result.skipped += outcome.skipped
        result.duplicates += duplicates
        result.rejected_count += outcome.rejected
        result.bytes += outcome.bytes
        result.chunks += 1
        if result.returned is not None:
            for position, values in outcome.returned:
                result.returned[position] = values
        if options.transaction == "per_chunk":
            result.committed += outcome.inserted + outcome.updated
            result.resume_position = first + count
        emit(
            BatchChunkWritten(
                name=self.shape.name,
                chunk_index=chunk_index,
                rows=count,
                inserted=outcome.inserted,
                updated=outcome.updated,
                skipped=outcome.skipped,
                seconds=seconds,
            )
        )
        if options.progress is not None:
            options.progress(
                BatchProgress(
                    rows=result.rows,
                    bytes=result.bytes,
                    chunks=result.chunks,
                    elapsed=self.clock.monotonic() - start,
                )
            )

    # -- one COPY for many chunks -----------------------------------------------------------

    def _stream(self, position: int, start: float) -> Generator[Op, Any, tuple[int, int]]:
        """Send the chunks through one binary COPY (per :data:`STREAM_ROWS` rows).

        A plain ``"copy"`` load in one transaction with ``on_error="raise"``:
        the client waits for the server once, when the COPY ends, instead of
        at every chunk's end. The chunks are the same. Once the COPY ended,
        its chunks are reported in order (events, progress: a chunk is
        reported when it was *written*). A chunk that does not fit, or an
        error of the input, ends the COPY first (the chunks before are
        written and reported), then raises as it would chunk by chunk. A value
        psycopg cannot encode aborts the COPY (part of its chunk was sent),
        the chunks before are reported, then it raises as chunk by chunk. A
        server error names the COPY line: it is mapped back to its chunk and
        input row. Returns ``(position, chunks)`` reached (the whole input,
        unless the shell cannot stream: then the rest is loaded chunk by chunk).
        """
        pg, oids, shaper = self._pg, self._oids, self._shaper
        assert pg is not None and oids is not None and shaper is not None
        clock = self.clock
        chunk_index = 0
        raw = yield from self._take()
        while raw:
            try:
                handle = yield PgCopyBegin(pg.copy, oids)
            except Exception as exc:
                yield from self._fail(chunk_index, position, start, exc)
                raise AssertionError("unreachable") from exc  # pragma: no cover
            if handle is None:
                self._buffer[:0] = raw
                return position, chunk_index
            sent: list[_Sent] = []
            stop: Exception | None = None  # met before its chunk was sent
            read_failed = False
            ended = False
            try:
                lines = 0
                while raw:
                    chunk_start = clock.monotonic()
                    try:
                        rows = shaper.shape_rows(raw, position)
                    except Exception as exc:
                        stop = exc
                        break
                    chunk = _Sent(chunk_index, position, len(raw), chunk_start)
                    sent.append(chunk)
                    chunk.bytes = yield PgCopySend(handle, rows)
                    position += len(raw)
                    chunk_index += 1
                    lines += len(raw)
                    if lines >= STREAM_ROWS:
                        break
                    try:
                        raw = yield from self._take()
                    except Exception as exc:
                        stop, read_failed = exc, True
                        raw = []
                ended = True
                _, total = yield PgCopyEnd(handle)
            except Exception as exc:
                if not ended:
                    yield PgCopyEnd(handle, abort=True)
                yield from self._stream_failed(sent, (chunk_index, position), start, exc)
                raise AssertionError("unreachable") from exc  # pragma: no cover
            if sent:  # the COPY's header and trailer
                sent[-1].bytes += total - sum(chunk.bytes for chunk in sent)
            self._report(sent, clock.monotonic(), start)
            if stop is not None:
                if not read_failed:
                    yield from self._fail(chunk_index, position, start, stop)
                raise stop
            if lines >= STREAM_ROWS:
                raw = yield from self._take()
        return position, chunk_index

    def _report(self, chunks: Sequence[_Sent], end: float, start: float) -> None:
        """Report ``chunks`` as written, in order; the last one's share ends at ``end``."""
        for i, chunk in enumerate(chunks):
            following = chunks[i + 1].started if i + 1 < len(chunks) else end
            outcome = _Outcome(inserted=chunk.rows, bytes=chunk.bytes)
            self._account(
                chunk.index, chunk.rows, chunk.first, outcome, 0, following - chunk.started, start
            )

    def _stream_failed(
        self, sent: list[_Sent], next_chunk: tuple[int, int], start: float, exc: Exception
    ) -> Flow:
        """Report the chunks of a streamed COPY before the failed one; raise for that one.

        A value psycopg could not encode is in the last chunk sent; a
        server's error names the COPY line in its CONTEXT (without one, the
        first chunk of the COPY is blamed; ``next_chunk``, ``(index,
        position)``, when none was sent).
        """
        if not sent:
            yield from self._fail(*next_chunk, start, exc)
        error: Exception = exc
        failed = 0
        if isinstance(exc, RowDumpError):
            failed = len(sent) - 1
            exc.position = sent[failed].first + exc.index
        else:
            found = _copy_error_row(exc, data_only=False)
            line = found[0] if found is not None else 0
            done = 0
            for i, chunk in enumerate(sent):
                if done < line <= done + chunk.rows:
                    failed = i
                    break
                done += chunk.rows
            else:
                found = None
            if found is not None and (_sqlstate(exc) or "").startswith("22"):
                column = found[1]
                names = self._shaper.names if self._shaper is not None else ()
                offset = line - 1 - done
                error = RowDumpError(offset, names.index(column) if column in names else None, exc)
                error.position = sent[failed].first + offset
        self._report(sent[:failed], sent[failed].started, start)
        yield from self._fail(sent[failed].index, sent[failed].first, start, error)

    def _dedupe(
        self, rows: list[tuple[Any, ...]], positions: Sequence[int]
    ) -> tuple[list[tuple[Any, ...]], Sequence[int], int]:
        """One row per conflict key, per the ``dedupe`` option; ``(rows, positions, dropped)``."""
        shaper = self._shaper
        conflict = self._conflict
        policy = self.options.dedupe
        if shaper is None or conflict is None or not conflict.key or policy is None or not rows:
            return rows, positions, 0
        return dedupe(
            rows,
            positions,
            conflict.key_indices,
            policy,
            shaper.as_dict,
            lambda value: shaper.shape_one(value, -1),
        )

    def _prefetch(self) -> Flow:
        """Read, shape, dedupe and encode the next chunk into ``self._ahead``.

        Runs while the server writes the current chunk (between :class:`PgStart`
        and :class:`PgFinish`); raises nothing: each error is kept in the
        :class:`_Ahead` for the moment the unpipelined load would meet it.
        """
        try:
            raw = yield from self._take()
        except Exception as exc:
            self._ahead = _Ahead([], read_error=exc)
            return
        ahead = self._ahead = _Ahead(raw)
        if not raw:
            return
        try:
            rows, positions, rejected = self._shape(raw, self._raw_first + len(self._raw))
            rows, positions, duplicates = self._dedupe(rows, positions)
        except Exception as exc:
            ahead.error = exc
            return
        ahead.shaped = (rows, positions, rejected, duplicates)
        if rows:
            staged, oids, _ = self._staged(rows)
            try:
                ahead.blocks = yield PgEncode(staged, oids)
            except Exception:  # the chunk's own COPY meets (and reports) it again
                ahead.blocks = None

    def _shape(
        self, raw: list[Any], first: int
    ) -> tuple[list[tuple[Any, ...]], Sequence[int], int]:
        shaper = self._shaper
        assert shaper is not None
        try:
            return shaper.shape_rows(raw, first), range(first, first + len(raw)), 0
        except RowProblem:
            if self.options.on_error != "isolate":
                raise
        rows: list[tuple[Any, ...]] = []
        positions: list[int] = []
        rejected = 0
        for offset, row in enumerate(raw):
            try:
                rows.append(shaper.shape_one(row, first + offset))
            except RowProblem as problem:
                self._reject(first + offset, problem)
                rejected += 1
                continue
            positions.append(first + offset)
        return rows, positions, rejected

    def _fail(self, chunk_index: int, first: int, start: float, exc: Exception) -> Flow:
        """Roll back what the policy says, then raise the error for ``exc``."""
        result = self.result
        options = self.options
        if options.transaction == "per_chunk" or self.owns:
            try:
                yield Rollback()
            except Exception as rollback_error:  # the connection may be gone; `exc` says why
                _log_failed("rollback after a failed chunk", rollback_error)
        if options.transaction != "per_chunk":
            result.committed = 0
            result.resume_position = 0
        result.elapsed = self.clock.monotonic() - start
        emit(
            BatchChunkFailed(
                name=self.shape.name,
                chunk_index=chunk_index,
                position=first,
                error=type(exc).__name__,
                rows_written=result.committed,
            )
        )
        if isinstance(exc, (ConfigurationError, InvalidBatchRow, BatchChunkError)):
            raise exc
        if isinstance(exc, RowProblem):
            raise InvalidBatchRow(
                str(exc),
                chunk_index=chunk_index,
                rows_written=result.committed,
                position=exc.position,
                column=exc.column,
                result=result,
            ) from None
        if isinstance(exc, RowDumpError):
            shaper = self._shaper
            assert shaper is not None
            position = exc.position if exc.position is not None else first + exc.index
            column = shaper.names[exc.column] if exc.column is not None else None
            where = f" column {column!r}" if column else ""
            raise InvalidBatchRow(
                f"row {position}{where}: the value does not fit the column's type "
                f"({type(exc.cause).__name__}: {_first_line(exc.cause)})",
                chunk_index=chunk_index,
                rows_written=result.committed,
                position=position,
                column=column,
                result=result,
            ) from exc.cause
        raise BatchChunkError(
            f"chunk {chunk_index} (rows from position {first}) failed: "
            f"{type(exc).__name__}: {_first_line(exc)}",
            chunk_index=chunk_index,
            rows_written=result.committed,
            position=first,
            result=result,
        ) from exc

    def _reject(self, position: int, error: BaseException) -> None:
        cause = error.cause if isinstance(error, RowDumpError) else error
        rejected = RejectedRow(
            position=position,
            row=self._raw[position - self._raw_first],
            error=cause,
            message=_first_line(cause),
        )
        if self.options.on_reject is not None:
            self.options.on_reject(rejected)
        else:
            self.result.rejected.append(rejected)
        emit(BatchRowRejected(name=self.shape.name, position=position, error=type(cause).__name__))

    # -- transaction policy and retries -----------------------------------------------------

    def _policy(self, rows: list[tuple[Any, ...]], positions: Sequence[int]) -> Flow:
        policy = self.options.transaction
        if policy == "per_chunk":

            def attempt() -> Flow:
                outcome = yield from self._write(rows, positions)
                yield Commit()
                return outcome

            return (yield from self._retrying(attempt, rollback=True))
        if policy == "savepoint":

            def attempt() -> Flow:
                handle = yield Savepoint()
                try:
                    outcome = yield from self._write(rows, positions)
                except Exception:
                    yield from self._rollback_savepoint(handle)
                    raise
                yield ReleaseSavepoint(handle)
                return outcome

            return (yield from self._retrying(attempt, rollback=False))
        return (yield from self._write(rows, positions))

    def _retryable(self, exc: Exception) -> bool:
        if isinstance(exc, (RowDumpError, RowProblem, ConfigurationError)):
            return False
        if self._conflict is not None:
            return True  # idempotent: the policy's retry_on decides
        return _sqlstate(exc) in _ROLLED_BACK_SQLSTATES

    def _retrying(self, attempt: Callable[[], Flow], *, rollback: bool) -> Flow:
        """Run ``attempt`` under the load's retry policy, through the one retry loop.

        The loop (``scalekit.retry._flow``) decides, withdraws from the
        policy's budget and sleeps (its requests: :class:`Withdraw`,
        :class:`Flush`, :class:`Sleep`); a chunk's own errors that cannot be
        retried (a bad row, a failure that did not roll back) are raised at once.
        """
        if rollback:
            attempt = self._rolling_back(attempt)
        policy = self.options.retry
        if policy is None:
            return (yield from attempt())
        return (yield from retrying(policy, attempt, self._retrying, self._retryable))

    @staticmethod
    def _rolling_back(attempt: Callable[[], Flow]) -> Callable[[], Flow]:
        def rolled_back() -> Flow:
            try:
                return (yield from attempt())
            except Exception:
                try:
                    yield Rollback()
                except Exception as rollback_error:
                    _log_failed("rollback before a retry", rollback_error)
                raise

        return rolled_back

    # -- writing ---------------------------------------------------------------------------

    def _write(self, rows: list[tuple[Any, ...]], positions: Sequence[int]) -> Flow:
        if self.options.on_error == "isolate":
            return (yield from self._isolate(rows, positions))
        return (yield from self._write_method(rows, positions))

    def _rollback_savepoint(self, handle: Any) -> Flow:
        """Roll back to ``handle``; ``False`` when that failed too (the connection is gone).

        The caller then re-raises its own error, which says what went wrong first.
        """
        try:
            yield RollbackSavepoint(handle)
        except Exception as rollback_error:
            _log_failed("rollback to a savepoint", rollback_error)
            return False
        return True

    def _isolate(self, rows: list[tuple[Any, ...]], positions: Sequence[int]) -> Flow:
        handle = yield Savepoint()
        try:
            outcome = yield from self._write_method(rows, positions)
        except Exception as exc:
            if not (yield from self._rollback_savepoint(handle)) or not is_row_error(exc):
                raise
            if len(rows) == 1:
                self._reject(positions[0], exc)
                return _Outcome(rejected=1)
            middle = len(rows) // 2
            left = yield from self._isolate(rows[:middle], positions[:middle])
            right = yield from self._isolate(rows[middle:], positions[middle:])
            return left.add(right)
        yield ReleaseSavepoint(handle)
        return outcome

    def _write_method(self, rows: list[tuple[Any, ...]], positions: Sequence[int]) -> Flow:
        method = self._method
        try:
            if method in ("copy", "copy_text"):
                return (yield from self._copy(rows))
            if method == "copy_staging":
                return (yield from self._staging(rows, positions))
            if method == "unnest":
                return (yield from self._unnest(rows, positions))
            return (yield from self._executemany(rows, positions))
        except RowDumpError as exc:
            exc.position = positions[exc.index]
            raise
        except Exception as exc:
            # A value the server could not parse during a COPY (text COPY, or a
            # binary value out of the column's range): its CONTEXT names the line.
            found = _copy_error_row(exc) if method in _COPY_METHODS else None
            if found is None or not 0 < found[0] <= len(rows):
                raise
            line, column = found
            names = self._shaper.names if self._shaper is not None else ()
            index = names.index(column) if column in names else None
            error = RowDumpError(line - 1, index, exc)
            error.position = positions[line - 1]
            raise error from exc

    def _copy(self, rows: list[tuple[Any, ...]]) -> Flow:
        pg = self._pg
        assert pg is not None
        if self._binary:
            count, sent = yield PgCopy(pg.copy, rows, self._oids)
        else:
            count, sent = yield PgCopy(pg.copy_text, rows, None, self._json_params)
        return _Outcome(inserted=count if count >= 0 else len(rows), bytes=sent)

    def _staging(self, rows: list[tuple[Any, ...]], positions: Sequence[int]) -> Flow:
        pg = self._pg
        assert pg is not None and self._oids is not None
        blocks, self._blocks = self._blocks, None
        yield PgQuery(pg.create_stage)
        staged, oids, json_params = self._staged(rows)
        if self._binary:
            _, sent = yield PgCopy(pg.copy_stage, staged, oids, blocks=blocks)
        else:
            _, sent = yield PgCopy(pg.copy_stage_text, staged, None, json_params)
        if self._pipelined:
            # The server runs the INSERT while the next chunk is made ready.
            handle = yield PgStart(pg.from_stage)
            yield from self._prefetch()
            count, result_rows = yield PgFinish(handle)
        else:
            count, result_rows = yield PgQuery(pg.from_stage)
        yield PgQuery(pg.drop_stage)
        outcome = self._interpret(count, result_rows, rows, positions)
        outcome.bytes = sent
        return outcome

    def _staged(
        self, rows: list[tuple[Any, ...]]
    ) -> tuple[list[tuple[Any, ...]], tuple[int, ...], tuple[tuple[int, str], ...]]:
        """The staging COPY's rows, type OIDs and json columns.

        Staged rows keep the chunk's order, so a RowDumpError's index is the chunk's.
        """
        assert self._oids is not None and self._pg is not None
        if not self._pg.stage_ordinal:
            return rows, self._oids, self._json_params
        # Returned rows are matched back through the ordinal.
        return (
            [(i, *row) for i, row in enumerate(rows, 1)],
            (_INT8_OID, *self._oids),
            tuple((i + 1, kind) for i, kind in self._json_params),
        )

    def _unnest(self, rows: list[tuple[Any, ...]], positions: Sequence[int]) -> Flow:
        pg = self._pg
        assert pg is not None
        arrays = [list(column) for column in zip(*rows, strict=True)]
        count, result_rows = yield PgQuery(pg.from_unnest, arrays, self._json_params)
        return self._interpret(count, result_rows, rows, positions)

    def _interpret(
        self,
        count: int,
        result_rows: Sequence[Sequence[Any]],
        rows: list[tuple[Any, ...]],
        positions: Sequence[int],
    ) -> _Outcome:
        pg = self._pg
        assert pg is not None
        total = len(rows)
        if pg.kind == "rowcount":
            return _Outcome(inserted=count if count >= 0 else total)
        if pg.kind == "inserted":
            assert count >= 0, "PostgreSQL reports an INSERT's row count"
            return _Outcome(inserted=count, skipped=total - count)
        if pg.kind == "ordered":
            returned = [
                (position, tuple(values))
                for position, values in zip(positions, result_rows, strict=True)
            ]
            return _Outcome(inserted=len(result_rows), returned=returned)
        if pg.kind == "counts":
            inserted, written = (int(v) for v in result_rows[0])
            return _Outcome(inserted=inserted, updated=written - inserted, skipped=total - written)
        inserted = updated = 0
        returned = []
        for ordinal, *values, was_inserted in result_rows:
            if was_inserted:
                inserted += 1
            else:
                updated += 1
            if ordinal is not None:
                returned.append((positions[int(ordinal) - 1], tuple(values)))
        written = inserted + updated
        return _Outcome(
            inserted=inserted, updated=updated, skipped=total - written, returned=returned
        )

    def _executemany(self, rows: list[tuple[Any, ...]], positions: Sequence[int]) -> Flow:
        sa_statements = self._sa
        assert sa_statements is not None
        keys = sa_statements.param_keys
        params = [dict(zip(keys, row, strict=True)) for row in rows]
        conflict = self._conflict
        total = len(rows)
        returning = bool(self.options.returning)
        if conflict is None:
            if returning:
                _, result_rows = yield SaExecute(sa_statements.insert, params, fetch=True)
                returned = [
                    (position, tuple(values))
                    for position, values in zip(positions, result_rows, strict=True)
                ]
                return _Outcome(inserted=total, returned=returned)
            count, _ = yield SaExecute(sa_statements.insert, params)
            return _Outcome(inserted=count if count >= 0 else total)
        if sa_statements.insert_counting is not None and not returning:
            _, flags = yield SaExecute(sa_statements.insert_counting, params, fetch=True)
            inserted = sum(1 for (flag,) in flags if flag)
            return _Outcome(
                inserted=inserted, updated=len(flags) - inserted, skipped=total - len(flags)
            )
        existing: set[Any] = set()
        if conflict.action == "update" or returning:
            wanted = [
                tuple(row[i] for i in conflict.key_indices)
                for row in rows
                if all(row[i] is not None for i in conflict.key_indices)
            ]
            if wanted:
                _, found = yield SaExecute(sa_statements.existing(wanted), fetch=True)
                existing = {tuple(r) for r in found}
        new = sum(1 for row in rows if tuple(row[i] for i in conflict.key_indices) not in existing)
        if returning:
            inserted = updated = 0
            returned = []
            for row, param, position in zip(rows, params, positions, strict=True):
                _, got = yield SaExecute(sa_statements.insert_one, param, fetch=True)
                if not got:
                    continue
                returned.append((position, tuple(got[0])))
                if tuple(row[i] for i in conflict.key_indices) in existing:
                    updated += 1
                else:
                    inserted += 1
            return _Outcome(
                inserted=inserted,
                updated=updated,
                skipped=total - inserted - updated,
                returned=returned,
            )
        count, _ = yield SaExecute(sa_statements.insert, params)
        if count < 0:
            count = total
        if conflict.action == "nothing":
            return _Outcome(inserted=count, skipped=total - count)
        inserted = min(new, count)
        return _Outcome(inserted=inserted, updated=count - inserted, skipped=total - count)


def _log_failed(what: str, error: BaseException) -> None:
    """Log a failed cleanup step by the error's class only.

    Never its message or traceback: the chain holds the chunk's own error,
    whose DETAIL may quote a row ("Failing row contains ..."), customers' data.
    """
    logger.debug("%s failed: %s", what, type(error).__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
