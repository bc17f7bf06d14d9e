"""Streaming export, the pure part: options, the COPY statement, CSV lines, chunking.

Nothing here does I/O. :func:`export_options` validates the arguments of
:func:`~scalekit.batch.export` / :func:`~scalekit.batch.aexport`,
:func:`copy_sql` renders a select as the text of a ``COPY (...) TO STDOUT``
(COPY takes no bind parameters: values are rendered as literals by the
dialect, and a type it cannot render safely is refused), :func:`csv_line`
writes one row the way PostgreSQL's ``COPY ... (FORMAT csv)`` does, and
:class:`Chunker` gathers small pieces into chunks of about ``chunk_size``
bytes. The shells are ``_export_async.py`` (the source) and
``_export_sync.py`` (generated from it by ``scripts/unasync.py``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scalekit.errors import ConfigurationError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_CHUNK_ROWS",
    "Chunker",
    "ExportFormat",
    "ExportOptions",
    "copy_sql",
    "csv_line",
    "export_options",
    "check_select",
    "pg_text",
    "text_line",
]

ExportFormat = Literal["csv", "text", "binary"]
ExportProgress = Callable[[int, int], None]

DEFAULT_CHUNK_BYTES = 64 * 1024
"""Default size of a chunk :func:`~scalekit.batch.export` yields, in bytes."""

DEFAULT_CHUNK_ROWS = 1000
"""Default rows fetched at a time by :func:`~scalekit.batch.export_rows` (and the CSV walk)."""

_FORMATS = ("csv", "text", "binary")


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """The validated options of one export."""

    format: ExportFormat
    chunk_size: int
    header: bool
    progress: ExportProgress | None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def export_options(
    format: str,
    chunk_size: int | None,
    header: bool,
    progress: ExportProgress | None,
    *,
    rows: bool = False,
) -> ExportOptions:
    """Validate the export arguments; ``rows`` for :func:`export_rows` (chunk_size in rows).

    Raises:
        ConfigurationError: an unknown format, a chunk_size that is not an
            int >= 1, a progress that is not callable.
    """
    if format not in _FORMATS:
        raise ConfigurationError(
            f"format must be one of {', '.join(_FORMATS)}; got {format!r}", parameter="format"
        )
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_ROWS if rows else DEFAULT_CHUNK_BYTES
    if not _is_count(chunk_size):
        raise ConfigurationError(
            f"chunk_size must be an int >= 1, got {chunk_size!r}", parameter="chunk_size"
        )
    if progress is not None and not callable(progress):
        raise ConfigurationError(
            f"progress must be callable, got {progress!r}", parameter="progress"
        )
    if not isinstance(header, bool):
        raise ConfigurationError(f"header must be a bool, got {header!r}", parameter="header")
    return ExportOptions(format, chunk_size, header, progress)  # type: ignore[arg-type]


def check_select(select: Any) -> Any:
    """The select, if it is a SQLAlchemy statement that returns rows.

    Raises:
        ConfigurationError: a plain string (use ``sqlalchemy.text()``), or
            anything that is not a SQLAlchemy SELECT (or ``text()``) construct.
    """
    from sqlalchemy.sql.elements import TextClause
    from sqlalchemy.sql.selectable import SelectBase

    if isinstance(select, (SelectBase, TextClause)):
        return select
    if isinstance(select, str):
        raise ConfigurationError(
            "select must be a SQLAlchemy select() or text(), not a string "
            "(wrap it in sqlalchemy.text() and bind its values)",
            parameter="select",
        )
    if hasattr(select, "__table__") or hasattr(select, "c"):
        from sqlalchemy import select as sa_select

        return sa_select(select)
    raise ConfigurationError(
        f"select must be a SQLAlchemy select(), text(), Table or mapped class, "
        f"got {type(select).__name__}",
        parameter="select",
    )


def copy_sql(select: Any, dialect: Any, options: ExportOptions) -> str:
    """``COPY (<select with literal values>) TO STDOUT WITH (FORMAT ...)``.

    COPY cannot take bind parameters, so each value is rendered by the
    dialect's literal renderer for its type (strings quoted and escaped by
    SQLAlchemy's PostgreSQL dialect).

    Raises:
        ConfigurationError: a bound value whose type has no safe literal
            rendering (say a custom type without ``process_literal_param``).
    """
    from sqlalchemy.exc import CompileError

    try:
        compiled = select.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        query = str(compiled)
    except (CompileError, NotImplementedError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            "export: the select has a bound value that cannot be rendered as a safe "
            f"SQL literal (COPY takes no bind parameters): {exc}",
            parameter="select",
        ) from exc
    if getattr(dialect, "paramstyle", None) in ("format", "pyformat"):
        # Such a dialect (psycopg's) doubles every "%" for the driver's
        # placeholders (LIKE 'a%', the modulo operator); a COPY is sent
        # without parameters, so the driver would keep them doubled.
        query = query.replace("%%", "%")
    with_ = [f"FORMAT {options.format}"]
    if options.format == "csv" and options.header:
        with_.append("HEADER")
    return f"COPY ({query}) TO STDOUT WITH ({', '.join(with_)})"


# -- CSV the way PostgreSQL writes it ------------------------------------------------------

_NEEDS_QUOTES = frozenset(',"\n\r')


def pg_text(value: Any) -> str:
    """``value`` as PostgreSQL's output function writes it, for the simple types.

    ``True``/``False`` -> ``t``/``f``; floats shortest round-trip with
    ``Infinity``/``NaN``; datetimes with a space and ``+00`` offsets; bytes
    as ``\\x`` hex; everything else ``str()``.
    """
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return "t" if value else "f"
    if kind is int or kind is decimal.Decimal or kind is uuid.UUID:
        return str(value)
    if kind is float:
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if kind is dt.datetime or kind is dt.time:
        text = value.isoformat(sep=" ") if kind is dt.datetime else value.isoformat()
        if value.microsecond:  # PostgreSQL drops the fraction's trailing zeros
            head, _, rest = text.partition(".")
            text = f"{head}.{rest[:6].rstrip('0')}{rest[6:]}"
        if value.utcoffset() is not None:
            text = _pg_offset(text)
        return text
    if kind is dt.date:
        return value.isoformat()  # type: ignore[no-any-return]
    if kind is bytes or kind is bytearray or kind is memoryview:
        return "\\x" + bytes(value).hex()
    return str(value)


def _pg_offset(text: str) -> str:
    # Python: +05:30 / +00:00; PostgreSQL: +05:30 / +00
    if text.endswith(":00") and text[-6] in "+-":
        return text[:-3]
    return text


def csv_line(values: Sequence[Any]) -> str:
    """One CSV line as ``COPY ... (FORMAT csv)`` writes it.

    NULL is an empty unquoted field; a value is quoted (quotes doubled) when
    it is empty, holds a comma, a quote, CR or LF, or is ``\\.`` alone on its line
    (the end-of-data marker).
    """
    out = []
    alone = len(values) == 1
    for value in values:
        if value is None:
            out.append("")
            continue
        text = pg_text(value)
        if not text or not _NEEDS_QUOTES.isdisjoint(text) or (alone and text == "\\."):
            text = '"' + text.replace('"', '""') + '"'
        out.append(text)
    return ",".join(out) + "\n"


class Chunker:
    """Counts the rows and bytes handed on, and turns a shell's buffer into a chunk.

    The shells gather output into a ``bytearray`` themselves (the COPY loop
    runs once a row: no call per row here) and call :meth:`take` when it
    holds ``size`` bytes or more.
    """

    __slots__ = ("bytes", "progress", "rows", "size")

    def __init__(self, size: int, progress: ExportProgress | None) -> None:
        self.size = size
        self.progress = progress
        self.rows = 0
        self.bytes = 0

    def take(self, buffer: bytearray, rows: int) -> bytes:
        """The buffer's content as a chunk (the buffer is emptied); ``rows`` more rows in it."""
        chunk = bytes(buffer)
        buffer.clear()
        self.rows += rows
        self.bytes += len(chunk)
        if self.progress is not None:
            self.progress(self.rows, self.bytes)
        return chunk


_TEXT_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def text_line(values: Sequence[Any]) -> str:
    """One line as ``COPY ... (FORMAT text)`` writes it: tabs, ``\\N`` for NULL, escapes."""
    return (
        "\t".join("\\N" if v is None else pg_text(v).translate(_TEXT_ESCAPES) for v in values)
        + "\n"
    )
