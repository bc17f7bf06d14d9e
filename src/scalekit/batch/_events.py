"""Events a batch insert emits: a chunk written, a chunk failed, rows rejected, a load done.

Events carry the table name, counts and the *class name* of an error, never
row values or error messages (which may hold customers' data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from scalekit.instrumentation import Event

__all__ = ["BatchChunkFailed", "BatchChunkWritten", "BatchFinished", "BatchRowRejected"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchChunkWritten(Event):
    """Chunk ``chunk_index`` of table ``name`` was written (``rows`` input rows)."""

    kind: ClassVar[str] = "batch.chunk_written"
    level: ClassVar[int] = logging.DEBUG

    chunk_index: int
    rows: int
    inserted: int
    updated: int
    skipped: int
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchChunkFailed(Event):
    """Chunk ``chunk_index`` failed with ``error`` (a class name).

    ``rows_written`` rows were committed before it.
    """

    kind: ClassVar[str] = "batch.chunk_failed"
    level: ClassVar[int] = logging.ERROR

    chunk_index: int
    position: int
    error: str
    rows_written: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchRowRejected(Event):
    """The row at input ``position`` was set aside by ``on_error="isolate"``."""

    kind: ClassVar[str] = "batch.row_rejected"
    level: ClassVar[int] = logging.WARNING

    position: int
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchFinished(Event):
    """A load of table ``name`` finished with ``method``."""

    kind: ClassVar[str] = "batch.finished"
    level: ClassVar[int] = logging.INFO

    method: str
    rows: int
    inserted: int
    updated: int
    skipped: int
    rejected: int
    chunks: int
    seconds: float
