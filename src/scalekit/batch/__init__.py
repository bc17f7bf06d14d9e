"""Batch inserts and upserts: COPY fast path, chunking, dedupe, bad-row isolation; sync and async.

:func:`batch_insert` / :func:`abatch_insert` load any iterable (or async
iterable) of dicts or tuples into a table, one bounded chunk at a time, with
the fastest method the database and driver allow::

    from scalekit.batch import Upsert, batch_insert

    result = batch_insert(engine, orders, rows,
                          on_conflict=Upsert(index=["id"], update=["amount"]))
    result.method, result.inserted, result.updated, result.skipped

On PostgreSQL through psycopg 3 a plain load is a binary ``COPY``; upserts
and returned keys go through ``unnest`` arrays (small inputs) or a COPY into
a temporary staging table followed by ``INSERT ... SELECT ... ON CONFLICT``
(large ones). Other dialects (SQLite...) and other PostgreSQL drivers use
SQLAlchemy's executemany. Guide: ``docs/batch.md``.

:func:`export` / :func:`aexport` stream a select out as CSV (or COPY text or
binary) bytes in bounded memory, with ``COPY ... TO STDOUT`` on PostgreSQL;
:func:`export_rows` / :func:`aexport_rows` stream its rows.

:class:`WriteBehind` / :class:`AsyncWriteBehind` buffer hot updates (a price,
a counter) in memory, coalesce them by key and upsert them in batches behind
the caller, with bad-row isolation, retries and back-pressure.

Parts: :mod:`._core` (options, rows, chunks, dedupe, method choice; pure),
:mod:`._sql` (statements; pure), :mod:`._flow` (the load as a generator of
I/O requests; pure), :mod:`._base` (options and psycopg helpers both drivers
share), :mod:`._async` (the driver that does the I/O) and :mod:`._sync` (the
blocking driver, generated from it by ``scripts/unasync.py``); the export's
pure part is :mod:`._export`, its shells :mod:`._export_async` and the
generated :mod:`._export_sync`; write-behind's is :mod:`._writebehind`, its
shells :mod:`._writebehind_async` and the generated :mod:`._writebehind_sync`.
"""

from __future__ import annotations

from scalekit.batch._async import abatch_insert
from scalekit.batch._core import (
    BatchProgress,
    BatchResult,
    Method,
    RejectedRow,
    TransactionPolicy,
    Upsert,
    chunked,
    dedupe,
)
from scalekit.batch._events import (
    BatchChunkFailed,
    BatchChunkWritten,
    BatchFinished,
    BatchRowRejected,
)
from scalekit.batch._export_async import aexport, aexport_rows
from scalekit.batch._export_sync import export, export_rows
from scalekit.batch._sync import batch_insert
from scalekit.batch._writebehind import WriteBehindMetrics
from scalekit.batch._writebehind_async import AsyncWriteBehind
from scalekit.batch._writebehind_sync import WriteBehind

__all__ = [
    "AsyncWriteBehind",
    "BatchChunkFailed",
    "BatchChunkWritten",
    "BatchFinished",
    "BatchProgress",
    "BatchResult",
    "BatchRowRejected",
    "Method",
    "RejectedRow",
    "TransactionPolicy",
    "Upsert",
    "WriteBehind",
    "WriteBehindMetrics",
    "abatch_insert",
    "aexport",
    "aexport_rows",
    "batch_insert",
    "chunked",
    "dedupe",
    "export",
    "export_rows",
]
