# This file is generated from src/scalekit/batch/_writebehind_async.py by scripts/unasync.py.
# DO NOT EDIT; edit the async file and run: python scripts/unasync.py
"""The blocking write-behind shell: :class:`WriteBehind`.

Only I/O and waiting live here: the lock around the pending map, the
background flusher (a daemon thread), waiting when the buffer is full, and
the flush itself, one :func:`batch_insert` upsert with bad-row isolation
under a retry policy. Coalescing, back-pressure and the counters are
:mod:`._writebehind`'s; the blocking shell is generated from this file.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from scalekit._clock import SYSTEM_CLOCK
from scalekit.batch._base import DEFAULT
from scalekit.batch._core import BatchResult, RejectedRow, Upsert
from scalekit.batch._sync import batch_insert
from scalekit.batch._writebehind import (
    LEASE_SCRIPT,
    OFFSETS_TABLE,
    RELEASE_SCRIPT,
    EntryPlan,
    Merge,
    Overflow,
    PendingBatch,
    StreamLayout,
    WriteBehindBuffer,
    WriteBehindMetrics,
    default_flush_retry,
    encode_row,
    plan_entries,
    positive_int,
    text,
    validate_settings,
)
from scalekit.errors import BatchChunkError, BufferFull, ConfigurationError
from scalekit.retry import RetryPolicy

__all__ = ["WriteBehind"]

logger = logging.getLogger("scalekit.batch.writebehind")


class WriteBehind:
    """Buffer updates in memory and write them to a table in batches, behind the caller.

    ``put(row)`` returns at once; rows for the same key coalesce (the
    ``update`` columns keep the last value put, the ``increment`` columns add
    up, or ``merge(old, new)`` decides), and a flusher (a daemon thread)
    writes everything pending every ``flush_interval`` seconds, or sooner
    when ``flush_at`` keys are waiting, with one upsert
    (``INSERT ... ON CONFLICT (key) DO UPDATE``; increments as
    ``col = col + excluded.col``) through :func:`batch_insert`.

    Parameters:
        engine: the ``Engine`` to write through (each flush is one transaction).
        table: a Core ``Table`` or a mapped ORM class, with a unique key on ``key``.
        key: the key columns; every row holds them.
        update: columns overwritten by the last value put.
        increment: columns that are deltas: summed while pending, added to the
            stored value on flush (counters).
        merge: ``merge(pending_row, new_row) -> row`` instead of the rule above.
        flush_interval: seconds between background flushes.
        flush_at: waiting keys that start a flush early (default ``max_pending // 2``).
        max_pending: the most keys pending (waiting or being flushed).
        overflow: when ``max_pending`` is reached and a new key is put:
            ``"block"`` (wait for a flush, up to ``block_timeout``),
            ``"raise"`` (:class:`~scalekit.errors.BufferFull`) or
            ``"drop_oldest"`` (drop the oldest pending key, counted in
            ``metrics().dropped``).
        block_timeout: the longest ``put`` waits under ``"block"`` (``None``:
            no limit), then raises :class:`~scalekit.errors.BufferFull`.
        retry: the :class:`~scalekit.retry.RetryPolicy` around each flush
            (default: :func:`default_flush_retry`, budgeted); ``None``: no
            retry. A flush that fails for good keeps its rows pending, merged
            under the newer ones, for the next flush.
        on_rejected: receives each :class:`~scalekit.batch.RejectedRow` the
            database refused for its own reasons (bad-row isolation); the other
            rows of the flush are written. Default: a warning is logged (the
            error's class, never the row).
        flush_on_exit: flush what is pending when the interpreter exits.
        clock: where the metrics' times come from.
        durable: a Redis client (``redis.Redis`` or ``RedisCluster``):
            durable mode. ``put`` appends the row to a Redis stream before it
            returns; flushers (this one and every other instance's, in one
            consumer group) read the streams, coalesce, upsert and record the
            stream offset in ``offsets_table`` in one transaction, and
            acknowledge after the commit. A flusher that dies loses nothing:
            its partitions' leases expire and another flusher claims their
            pending entries; entries already committed are not applied again.
            Refused rows go to ``on_rejected`` and the dead-letter stream
            ``{stream}:dead``. Back-pressure settings do not apply (Redis holds
            the backlog).
        stream: the streams' key prefix (default ``scalekit:wb:{table name}``).
        partitions: streams, one per hash tag (``{stream}:{0}``...): flushers
            share the partitions, one at a time each; on Redis Cluster they
            spread over the masters.
        group: the consumer group's name.
        lease: seconds a flusher owns a partition without renewing it; longer
            than a flush takes.
        read_count: stream entries one flush of a partition reads at most.
        offsets_table: the table of committed stream offsets (created if missing).

    In memory mode what is pending when the process dies (killed, out of
    memory) is lost, and two instances writing the same key race; durable
    mode has neither problem. See ``docs/batch.md``, "Write-behind".

    Raises:
        ConfigurationError: bad settings (see
            :func:`~scalekit.batch._writebehind.validate_settings`).
    """

    def __init__(
        self,
        engine: Any,
        table: Any,
        *,
        key: Sequence[str] = ("id",),
        update: Sequence[str] = (),
        increment: Sequence[str] = (),
        merge: Merge | None = None,
        flush_interval: float = 5.0,
        flush_at: int | None = None,
        max_pending: int = 10_000,
        overflow: Overflow = "block",
        block_timeout: float | None = None,
        retry: RetryPolicy | None = DEFAULT,
        on_rejected: Callable[[RejectedRow], None] | None = None,
        flush_on_exit: bool = True,
        clock: Any = SYSTEM_CLOCK,
        durable: Any = None,
        stream: str | None = None,
        partitions: int = 1,
        group: str = "scalekit-wb",
        lease: float = 30.0,
        read_count: int = 10_000,
        offsets_table: str = OFFSETS_TABLE,
    ) -> None:
        keys, updates, increments = validate_settings(
            key, update, increment, max_pending, overflow, flush_interval
        )
        if merge is not None and not callable(merge):
            raise ConfigurationError(f"merge must be callable, got {merge!r}", parameter="merge")
        if flush_at is None:
            flush_at = max(1, max_pending // 2)
        if not positive_int(flush_at):
            raise ConfigurationError(
                f"flush_at must be a positive int, got {flush_at!r}", parameter="flush_at"
            )
        self._engine = engine
        self._table = table
        self._columns = keys + updates + increments
        self._upsert = Upsert(index=keys, update=updates, increment=increments)
        self._buffer = WriteBehindBuffer(
            key=keys,
            columns=self._columns,
            increment=increments,
            merge=merge,
            max_pending=max_pending,
            overflow=overflow,
            clock=clock,
        )
        self._blocks = overflow == "block"
        self._interval = float(flush_interval)
        self._flush_at = flush_at
        self._block_timeout = block_timeout
        self._retry = default_flush_retry() if retry is DEFAULT else retry
        self._on_rejected = on_rejected
        self._clock = clock
        self._redis = durable
        if durable is not None:
            if not positive_int(partitions):
                raise ConfigurationError(
                    f"partitions must be a positive int, got {partitions!r}",
                    parameter="partitions",
                )
            if not positive_int(read_count):
                raise ConfigurationError(
                    f"read_count must be a positive int, got {read_count!r}",
                    parameter="read_count",
                )
            if not lease > 0:
                raise ConfigurationError(f"lease must be > 0, got {lease!r}", parameter="lease")
            if not offsets_table.replace("_", "a").isalnum() or not offsets_table.isascii():
                raise ConfigurationError(
                    f"offsets_table must be a plain table name, got {offsets_table!r}",
                    parameter="offsets_table",
                )
        table_name = getattr(table, "name", None) or getattr(table, "__tablename__", "table")
        self._layout = StreamLayout(
            prefix=stream or f"scalekit:wb:{table_name}", partitions=partitions, group=group
        )
        self._lease_ms = int(lease * 1000)
        self._read_count = read_count
        self._offsets = offsets_table
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._ready = False
        self._offsets_ready = False
        # puts take the lock alone; waiting for room and flushes use the condition on it
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._flusher: Any = None
        self._exit_hook: Callable[[], None] | None = None
        if flush_on_exit:
            self._exit_hook = _exit_hook(weakref.ref(self))
            atexit.register(self._exit_hook)

    # -- putting ---------------------------------------------------------------------------

    def put(self, row: Mapping[str, Any]) -> None:
        """Queue ``row`` (a mapping of column to value) for the next flush; returns at once.

        Raises:
            ConfigurationError: the row is not a mapping, lacks a column or
                holds one that is not written; the write-behind is closed.
            BufferFull: the buffer is full and ``overflow`` is ``"raise"`` (or
                ``"block"`` and ``block_timeout`` passed).
        """
        if self._redis is not None:
            self._append([row])
            return
        with self._lock:  # _put_locked inlined: this is the hot path
            if self._closed:
                raise ConfigurationError("this write-behind is closed", parameter="row")
            buffer = self._buffer
            if self._blocks and buffer.full() and not buffer.has_room(row):
                self._wait_for_room(row)
            if buffer.put(row) and buffer.waiting >= self._flush_at:
                self._wake.set()
            if self._flusher is None:
                self._start_flusher()

    def put_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Queue every row of ``rows``, in order (see :meth:`put`); durable: one pipeline."""
        if self._redis is not None:
            self._append(list(rows))
            return
        with self._lock:
            for row in rows:
                self._put_locked(row)

    def _append(self, rows: list[Mapping[str, Any]]) -> None:
        if self._closed:
            raise ConfigurationError("this write-behind is closed", parameter="row")
        buffer, layout = self._buffer, self._layout
        entries = []
        for row in rows:
            key = buffer.row_key(row)
            buffer.check_columns(row)
            entries.append((layout.stream(layout.partition_of(key)), {"r": encode_row(row)}))
        if not self._ready:
            self._prepare_streams()
        if len(entries) == 1:
            self._redis.xadd(entries[0][0], entries[0][1])
        else:
            pipe = self._redis.pipeline(transaction=False)
            for name, fields in entries:
                pipe.xadd(name, fields)
            pipe.execute()
        buffer.puts += len(entries)
        if self._flusher is None:
            self._start_flusher()

    def _prepare_streams(self) -> None:
        for partition in range(self._layout.partitions):
            try:
                self._redis.xgroup_create(
                    self._layout.stream(partition), self._layout.group, id="0", mkstream=True
                )
            except Exception as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._ready = True

    def _put_locked(self, row: Mapping[str, Any]) -> None:
        if self._closed:
            raise ConfigurationError("this write-behind is closed", parameter="row")
        buffer = self._buffer
        if self._blocks and buffer.full() and not buffer.has_room(row):
            self._wait_for_room(row)
        if buffer.put(row) and buffer.waiting >= self._flush_at:
            self._wake.set()
        if self._flusher is None:
            self._start_flusher()

    def _wait_for_room(self, row: Mapping[str, Any]) -> None:
        deadline = None
        if self._block_timeout is not None:
            deadline = self._clock.monotonic() + self._block_timeout
        while not self._buffer.has_room(row):
            if self._flusher is None:
                self._start_flusher()
            self._wake.set()
            timeout = None if deadline is None else deadline - self._clock.monotonic()
            if timeout is not None and timeout <= 0:
                self._buffer.refused += 1
                raise BufferFull(
                    f"write-behind buffer full for {self._block_timeout} s "
                    f"({self._buffer.pending} keys pending)",
                    pending=self._buffer.pending,
                )
            self._condition.wait(timeout)

    # -- flushing --------------------------------------------------------------------------

    def _start_flusher(self) -> None:
        self._flusher = threading.Thread(
            target=self._run, name="scalekit-write-behind", daemon=True
        )
        self._flusher.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._closed:
                return
            try:
                self.flush()
            except Exception as exc:  # the rows stay pending; the next flush tries again
                logger.warning(
                    "write-behind flush failed (%s); %d keys stay pending",
                    type(exc).__name__,
                    self._buffer.pending,
                )

    def flush(self) -> int:
        """Write every pending row now, in one transaction; return how many rows were written.

        Rows the database refuses for their own reasons go to ``on_rejected``.
        Raises the driver's error (``sqlalchemy.exc.OperationalError``...)
        when the flush fails after the retry policy's attempts; its rows then
        stay pending (nothing is dropped).
        """
        if self._redis is not None:
            with self._flushing:
                total = 0
                for partition in range(self._layout.partitions):
                    total += self._flush_partition(partition)
                return total
        with self._flushing:
            with self._condition:
                batch = self._buffer.take()
            if batch is None:
                return 0
            rejected: list[RejectedRow] = []
            try:
                result = self._write(batch, rejected)
            except BaseException:
                with self._condition:
                    self._buffer.restore(batch)
                    self._condition.notify_all()
                raise
            written = result.inserted + result.updated + result.skipped
            with self._condition:
                self._buffer.done(batch, written=written, rejected=len(rejected))
                self._condition.notify_all()
        for item in rejected:
            self._reject(item)
        return written

    def _write(self, batch: PendingBatch, rejected: list[RejectedRow]) -> BatchResult:
        def attempt() -> BatchResult:
            return self._upsert_rows(self._engine, batch.rows, rejected)

        if self._retry is None:
            return attempt()
        return self._retry.call(attempt)

    def _upsert_rows(
        self, target: Any, rows: list[dict[str, Any]], rejected: list[RejectedRow]
    ) -> BatchResult:
        rejected.clear()
        try:
            return batch_insert(
                target,
                self._table,
                rows,
                columns=self._columns,
                on_conflict=self._upsert,
                dedupe=None,
                on_error="isolate",
                on_reject=rejected.append,
                retry=None,
                clock=self._clock,
            )
        except BatchChunkError as exc:
            # The driver's error is what retry_on rules (transient.database) judge.
            if isinstance(exc.__cause__, Exception):
                raise exc.__cause__ from None
            raise

    # -- durable mode ----------------------------------------------------------------------

    def _flush_partition(self, partition: int) -> int:
        """Write a partition's entries while this flusher holds its lease; rows written."""
        if not self._ready:
            self._prepare_streams()
        if not self._offsets_ready:
            self._create_offsets()
        layout, client = self._layout, self._redis
        stream = layout.stream(partition)
        written = 0
        while True:
            held = client.eval(
                LEASE_SCRIPT, 1, layout.lease(partition), self._consumer, self._lease_ms
            )
            if not held:
                return written
            if held == 2:  # newly ours: take over every entry another flusher left pending
                cursor = "0-0"
                while True:
                    # (not justid=True: redis-py then drops the cursor from the reply)
                    reply = client.xautoclaim(
                        stream, layout.group, self._consumer, 0, cursor, count=1000
                    )
                    cursor = text(reply[0]) if reply else "0-0"
                    if cursor == "0-0":
                        break
            entries = self._read(stream, "0")  # ours and not acknowledged first
            if not entries:
                entries = self._read(stream, ">")
            if not entries:
                return written
            written += self._commit_entries(stream, entries)
            if len(entries) < self._read_count:
                return written

    def _read(self, stream: str, start: str) -> list[tuple[str, str | None]]:
        reply = self._redis.xreadgroup(
            self._layout.group, self._consumer, {stream: start}, count=self._read_count
        )
        if not reply:
            return []
        items = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        entries: list[tuple[str, str | None]] = []
        for entry_id, fields in items:
            payload = None
            if fields:
                payload = text(fields.get("r", fields.get(b"r", b"")))
            entries.append((text(entry_id), payload))
        return entries

    def _commit_entries(self, stream: str, entries: list[tuple[str, str | None]]) -> int:
        rejected: list[RejectedRow] = []
        started = self._clock.monotonic()

        def attempt() -> tuple[EntryPlan, int]:
            with self._engine.begin() as connection:
                committed = self._offset(connection, stream)
                plan = plan_entries(entries, committed, self._coalescer)
                written = 0
                if plan.rows:
                    result = self._upsert_rows(connection, plan.rows, rejected)
                    written = result.inserted + result.updated + result.skipped
                if plan.last_id != committed:
                    connection.execute(
                        sa.text(
                            f"UPDATE {self._offsets} SET last_id = :last WHERE stream = :stream"
                        ),
                        {"last": plan.last_id, "stream": stream},
                    )
            return plan, written

        plan, written = attempt() if self._retry is None else self._retry.call(attempt)
        client = self._redis
        for item in rejected:
            client.xadd(
                self._layout.dead_letter,
                {
                    "r": encode_row(item.row),
                    "stream": stream,
                    "error": type(item.error).__name__,
                    "message": item.message,
                },
            )
            self._reject(item)
        client.xack(stream, self._layout.group, *plan.ack)
        client.xtrim(stream, minid=plan.last_id)
        buffer = self._buffer
        buffer.flushes += 1
        buffer.coalesced += plan.coalesced
        buffer.flushed_rows += written
        buffer.rejected += len(rejected)
        buffer.last_flush_seconds = self._clock.monotonic() - started
        return written

    def _coalescer(self) -> WriteBehindBuffer:
        buffer = self._buffer
        return WriteBehindBuffer(
            key=buffer.key,
            columns=buffer.columns,
            increment=buffer.increment,
            merge=buffer.merge,
            max_pending=1 << 62,
            overflow="raise",
            clock=buffer.clock,
        )

    def _offset(self, connection: Any, stream: str) -> str:
        """The partition's committed offset, its row locked until the commit (made if missing)."""
        offsets = self._offsets
        lock = " FOR UPDATE" if connection.dialect.name == "postgresql" else ""
        select = sa.text(f"SELECT last_id FROM {offsets} WHERE stream = :stream{lock}")
        found = connection.execute(select, {"stream": stream}).scalar()
        if found is not None:
            return str(found)
        connection.execute(
            sa.text(f"INSERT INTO {offsets} (stream, last_id) VALUES (:stream, '0-0')"),
            {"stream": stream},
        )
        return "0-0"

    def _create_offsets(self) -> None:
        create = sa.text(
            f"CREATE TABLE IF NOT EXISTS {self._offsets}"
            " (stream VARCHAR(512) PRIMARY KEY, last_id VARCHAR(64) NOT NULL)"
        )
        try:
            with self._engine.begin() as connection:
                connection.execute(create)
        except sa.exc.IntegrityError:  # another instance created it at the same moment
            pass
        self._offsets_ready = True

    def _reject(self, item: RejectedRow) -> None:
        if self._on_rejected is not None:
            self._on_rejected(item)
            return
        logger.warning(
            "write-behind: the database refused a row (%s); pass on_rejected to keep it",
            type(item.error).__name__,
        )

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the flusher and flush what is pending; later puts raise.

        Raises the final flush's error (its rows stay in :meth:`metrics`'s
        ``pending``); a second call flushes again.
        """
        self._closed = True
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
            self._exit_hook = None
        flusher, self._flusher = self._flusher, None
        self._wake.set()
        if flusher is not None:
            flusher.join()
        self.flush()
        if self._redis is not None:
            for partition in range(self._layout.partitions):
                self._redis.eval(RELEASE_SCRIPT, 1, self._layout.lease(partition), self._consumer)

    def __enter__(self) -> WriteBehind:
        if self._redis is not None and self._flusher is None:
            self._start_flusher()  # a durable flusher works for every instance's puts
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def metrics(self) -> WriteBehindMetrics:
        """Pending keys, flushed rows, flush time, the oldest pending update's age, rejections."""
        return self._buffer.metrics()

    @property
    def pending(self) -> int:
        """Keys waiting for a flush (including a flush in progress)."""
        return self._buffer.pending

    def __repr__(self) -> str:
        name = getattr(self._table, "name", None) or getattr(self._table, "__tablename__", "?")
        return f"{type(self).__name__}(table={name!r}, pending={self._buffer.pending})"


def _exit_hook(ref: weakref.ref[WriteBehind]) -> Callable[[], None]:
    """What ``atexit`` runs: flush what the write-behind still holds, if it is alive."""

    def flush_at_exit() -> None:
        writer = ref()
        if writer is None or writer._buffer.pending == 0:
            return
        try:
            writer.close()
        except Exception as exc:
            logger.error(
                "write-behind: the flush at exit failed (%s); %d keys were not written",
                type(exc).__name__,
                writer._buffer.pending,
            )

    return flush_at_exit
