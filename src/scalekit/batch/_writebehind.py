"""Write-behind's pure core: the pending map, coalescing, back-pressure and metrics.

No I/O and no threads: time comes from an injected clock, and the shells
(``_writebehind_async.py`` and its generated twin) hold the lock, run the
flushes and wait when the buffer is full.

One key has one pending row. A new row for a pending key is coalesced into
it: the ``update`` columns take the new values (last wins) and the
``increment`` columns add up (they are deltas, written with
``col = col + excluded.col``), or a ``merge(old, new)`` function decides.
A flush :meth:`WriteBehindBuffer.take` s every pending row at once; when it
fails for good, :meth:`WriteBehindBuffer.restore` puts them back under the
rows put since, merged in order, so nothing acknowledged is dropped and the
newest value still wins.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from scalekit._clock import SYSTEM_CLOCK
from scalekit.errors import BufferFull, ConfigurationError
from scalekit.retry import RetryPolicy

__all__ = [
    "LEASE_SCRIPT",
    "OFFSETS_TABLE",
    "RELEASE_SCRIPT",
    "EntryPlan",
    "Merge",
    "Overflow",
    "PendingBatch",
    "WriteBehindBuffer",
    "StreamLayout",
    "WriteBehindMetrics",
    "decode_row",
    "default_flush_retry",
    "encode_row",
    "plan_entries",
    "positive_int",
    "stream_id",
    "text",
    "validate_settings",
]

Merge = Callable[[dict[str, Any], dict[str, Any]], Mapping[str, Any]]
"""``merge(pending_row, new_row) -> row``: how a new row for a pending key combines."""

Overflow = Literal["block", "raise", "drop_oldest"]
_OVERFLOWS = ("block", "raise", "drop_oldest")


def default_flush_retry() -> RetryPolicy:
    """Five attempts, 100 ms exponential backoff capped at 2 s, transient database errors, budgeted.

    The budget (20% of flushes, plus a reserve of one retry a second) keeps a
    fleet of write-behinds from hammering a database that is down; a flush
    that still fails keeps its rows pending for the next one.
    """
    from scalekit.retry import Backoff, RetryBudget, transient

    return RetryPolicy(
        attempts=5,
        backoff=Backoff.exponential(0.1, cap=2.0),
        retry_on=transient.database,
        budget=RetryBudget(0.2, min_per_second=1.0),
        name="write_behind",
    )


@dataclass(frozen=True, slots=True)
class WriteBehindMetrics:
    """A snapshot of a write-behind buffer.

    ``pending``: keys waiting for a flush (including a flush in progress);
    ``puts``: rows accepted; ``coalesced``: of those, rows merged into a
    pending row of the same key (database writes saved); ``flushed_rows``:
    rows written by successful flushes; ``flushes`` / ``failed_flushes``;
    ``rejected``: rows the database refused (handed to ``on_rejected``);
    ``dropped``: rows dropped by ``overflow="drop_oldest"``; ``refused``:
    puts refused with :class:`~scalekit.errors.BufferFull`;
    ``last_flush_seconds``: how long the last successful flush took;
    ``oldest_pending_seconds``: the age of the oldest update not yet written
    (0 when nothing is pending).
    """

    pending: int
    puts: int
    coalesced: int
    flushed_rows: int
    flushes: int
    failed_flushes: int
    rejected: int
    dropped: int
    refused: int
    last_flush_seconds: float
    oldest_pending_seconds: float


@dataclass(slots=True)
class PendingBatch:
    """The rows one flush writes, taken out of the pending map.

    ``rows`` in the order their keys were first put; ``keys`` and ``since``
    (when each key's oldest unwritten update was put) parallel to it.
    """

    rows: list[dict[str, Any]]
    keys: list[Hashable]
    since: list[float]
    started: float = 0.0


def validate_settings(
    key: Sequence[str],
    update: Sequence[str],
    increment: Sequence[str],
    max_pending: int,
    overflow: str,
    flush_interval: float,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Check the write-behind's settings; return ``key``, ``update``, ``increment`` as tuples.

    Raises:
        ConfigurationError: an empty ``key``, a column both in the key and
            updated, no column to write, ``max_pending`` < 1, an unknown
            ``overflow``, ``flush_interval`` <= 0.
    """
    names = []
    for parameter, value in (("key", key), ("update", update), ("increment", increment)):
        if isinstance(value, str) or not all(isinstance(c, str) for c in value):
            raise ConfigurationError(
                f"{parameter} must be a list of column names, got {value!r}", parameter=parameter
            )
        names.append(tuple(value))
    keys, updates, increments = names
    if not keys:
        raise ConfigurationError("key must name at least one column", parameter="key")
    if not updates and not increments:
        raise ConfigurationError(
            "name the columns to write in update=[...] or increment=[...]", parameter="update"
        )
    seen = set(keys)
    for column in updates + increments:
        if column in seen:
            raise ConfigurationError(
                f"column {column!r} is named twice in key/update/increment", parameter="update"
            )
        seen.add(column)
    if not positive_int(max_pending):
        raise ConfigurationError(
            f"max_pending must be a positive int, got {max_pending!r}", parameter="max_pending"
        )
    if overflow not in _OVERFLOWS:
        raise ConfigurationError(
            f"overflow must be one of {', '.join(map(repr, _OVERFLOWS))}, got {overflow!r}",
            parameter="overflow",
        )
    if not flush_interval > 0:
        raise ConfigurationError(
            f"flush_interval must be > 0 seconds, got {flush_interval!r}",
            parameter="flush_interval",
        )
    return keys, updates, increments


def positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(slots=True)
class WriteBehindBuffer:
    """The pending map of a write-behind: coalescing, back-pressure and counters.

    Not thread-safe by itself: the shells call it under their lock.

    >>> buffer = WriteBehindBuffer(key=("id",), columns=("id", "hits"), increment=("hits",))
    >>> buffer.put({"id": 1, "hits": 1}); buffer.put({"id": 1, "hits": 2})
    True
    False
    >>> buffer.take().rows
    [{'id': 1, 'hits': 3}]
    """

    key: tuple[str, ...]
    columns: tuple[str, ...]
    increment: tuple[str, ...] = ()
    merge: Merge | None = None
    max_pending: int = 10_000
    overflow: Overflow = "block"
    clock: Any = SYSTEM_CLOCK
    _column_set: frozenset[str] = field(default=frozenset(), init=False)
    _pending: dict[Hashable, dict[str, Any]] = field(default_factory=dict, init=False)
    _since: dict[Hashable, float] = field(default_factory=dict, init=False)
    _in_flight: int = field(default=0, init=False)
    _in_flight_since: float | None = field(default=None, init=False)
    puts: int = field(default=0, init=False)
    coalesced: int = field(default=0, init=False)
    flushed_rows: int = field(default=0, init=False)
    flushes: int = field(default=0, init=False)
    failed_flushes: int = field(default=0, init=False)
    rejected: int = field(default=0, init=False)
    dropped: int = field(default=0, init=False)
    refused: int = field(default=0, init=False)
    last_flush_seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._column_set = frozenset(self.columns)

    # -- putting ---------------------------------------------------------------------------

    def row_key(self, row: Mapping[str, Any]) -> Hashable:
        """The key of ``row`` (its one key value, or a tuple for a composite key).

        Raises:
            ConfigurationError: ``row`` is not a mapping, or lacks a column.
        """
        if type(row) is not dict and not isinstance(row, Mapping):
            raise ConfigurationError(
                f"write-behind rows are mappings of column to value, got {type(row).__name__}",
                parameter="row",
            )
        try:
            if len(self.key) == 1:
                return row[self.key[0]]  # type: ignore[no-any-return]
            return tuple(row[c] for c in self.key)
        except KeyError as exc:
            raise ConfigurationError(
                f"row lacks the key column {exc.args[0]!r}", parameter="row"
            ) from None

    def has_room(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` can be put without going over ``max_pending``."""
        return (
            len(self._pending) + self._in_flight < self.max_pending
            or self.row_key(row) in self._pending
        )

    def full(self) -> bool:
        """Whether ``max_pending`` keys are pending (a new key would not fit)."""
        return len(self._pending) + self._in_flight >= self.max_pending

    def put(self, row: Mapping[str, Any]) -> bool:
        """Add ``row`` to the pending map; ``True`` for a new key, ``False`` when coalesced.

        When the buffer is full and the key is new: ``overflow="raise"``
        raises, ``"drop_oldest"`` drops the oldest pending key, ``"block"``
        raises too (the shell waits with :meth:`has_room` first, and only a
        flush in progress can make room).

        Raises:
            ConfigurationError: a row that is not a mapping, lacks a key column
                or holds a column that is not written.
            BufferFull: the buffer is full (``overflow`` ``"raise"`` or ``"block"``).
        """
        # The hot path of every put: one call, no helper calls for a well-formed dict row.
        if type(row) is not dict or row.keys() != self._column_set:
            key = self.row_key(row)
            self.check_columns(row)
        else:
            key_columns = self.key
            try:
                key = row[key_columns[0]] if len(key_columns) == 1 else self.row_key(row)
            except KeyError:  # pragma: no cover - the column check above holds the key
                key = self.row_key(row)
        pending = self._pending
        old = pending.get(key)
        if old is None:
            if len(pending) + self._in_flight >= self.max_pending:
                if self.overflow != "drop_oldest" or not pending:
                    self.refused += 1
                    raise BufferFull(
                        f"write-behind buffer full ({self.max_pending} keys pending)",
                        pending=len(pending) + self._in_flight,
                    )
                oldest = next(iter(pending))
                del pending[oldest]
                del self._since[oldest]
                self.dropped += 1
            pending[key] = dict(row)
            self._since[key] = self.clock.monotonic()
            self.puts += 1
            return True
        new = dict(row)
        if self.merge is not None:
            new = self._combine(old, new)
        else:
            for column in self.increment:
                new[column] = old[column] + new[column]
        pending[key] = new
        self.puts += 1
        self.coalesced += 1
        return False

    def _shape(self, row: Mapping[str, Any]) -> dict[str, Any]:
        self.check_columns(row)
        return dict(row)

    def check_columns(self, row: Mapping[str, Any]) -> None:
        """Check that ``row`` holds exactly the written columns.

        Raises:
            ConfigurationError: a column missing or one that is not written.
        """
        if row.keys() != self._column_set:
            extra = [c for c in row if c not in self.columns]
            if extra:
                raise ConfigurationError(
                    f"row holds column {extra[0]!r}, which this write-behind does not write",
                    parameter="row",
                )
            missing = [c for c in self.columns if c not in row]
            raise ConfigurationError(f"row lacks the column {missing[0]!r}", parameter="row")

    def _combine(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        if self.merge is not None:
            merged = dict(self.merge(dict(old), new))
            for c in self.key:
                merged[c] = new[c]
            return merged
        for c in self.increment:
            new[c] = old[c] + new[c]
        return new

    # -- flushing --------------------------------------------------------------------------

    def take(self) -> PendingBatch | None:
        """Move every pending row into a batch for one flush; ``None`` when nothing is pending."""
        if not self._pending:
            return None
        keys = list(self._pending)
        batch = PendingBatch(
            rows=list(self._pending.values()),
            keys=keys,
            since=[self._since[k] for k in keys],
            started=self.clock.monotonic(),
        )
        self._in_flight = len(keys)
        self._in_flight_since = batch.since[0] if batch.since else None
        self._pending = {}
        self._since = {}
        return batch

    def done(self, batch: PendingBatch, written: int, rejected: int) -> None:
        """Record a flush that committed: ``written`` rows written, ``rejected`` refused."""
        self._in_flight = 0
        self._in_flight_since = None
        self.flushes += 1
        self.flushed_rows += written
        self.rejected += rejected
        self.last_flush_seconds = self.clock.monotonic() - batch.started

    def restore(self, batch: PendingBatch) -> None:
        """Put a failed flush's rows back, before (and merged with) the rows put since."""
        self._in_flight = 0
        self._in_flight_since = None
        self.failed_flushes += 1
        newer, newer_since = self._pending, self._since
        pending: dict[Hashable, dict[str, Any]] = {}
        since: dict[Hashable, float] = {}
        for key, row, at in zip(batch.keys, batch.rows, batch.since, strict=True):
            later = newer.get(key)
            pending[key] = row if later is None else self._combine(row, dict(later))
            since[key] = at
        for key, row in newer.items():
            if key not in pending:
                pending[key] = row
                since[key] = newer_since[key]
        self._pending, self._since = pending, since

    # -- reading ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Keys waiting, including those of a flush in progress."""
        return len(self._pending) + self._in_flight

    @property
    def waiting(self) -> int:
        """Keys waiting for the next flush (not those of a flush in progress)."""
        return len(self._pending)

    def oldest_pending_seconds(self) -> float:
        """The age of the oldest update not yet written; 0 when nothing is pending."""
        oldest = self._in_flight_since
        if self._since:
            first = next(iter(self._since.values()))
            oldest = first if oldest is None else min(oldest, first)
        return 0.0 if oldest is None else max(0.0, self.clock.monotonic() - oldest)

    def metrics(self) -> WriteBehindMetrics:
        """A snapshot of the counters."""
        return WriteBehindMetrics(
            pending=self.pending,
            puts=self.puts,
            coalesced=self.coalesced,
            flushed_rows=self.flushed_rows,
            flushes=self.flushes,
            failed_flushes=self.failed_flushes,
            rejected=self.rejected,
            dropped=self.dropped,
            refused=self.refused,
            last_flush_seconds=self.last_flush_seconds,
            oldest_pending_seconds=self.oldest_pending_seconds(),
        )


# -- durable mode: rows in Redis streams -------------------------------------------------------

OFFSETS_TABLE = "scalekit_writebehind_offsets"

LEASE_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""
"""Take or renew a lease: 1 renewed, 2 newly taken (claim its pending entries), 0 held elsewhere."""

RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class StreamLayout:
    """Where a durable write-behind keeps its updates in Redis.

    One stream per partition, each under its own hash tag (``prefix:{3}``)
    so that on Redis Cluster the partitions spread over the masters while a
    partition's stream and lease share a slot; a key always goes to the same
    partition, so its updates keep their order.
    """

    prefix: str
    partitions: int
    group: str

    def stream(self, partition: int) -> str:
        return f"{self.prefix}:{{{partition}}}"

    def lease(self, partition: int) -> str:
        return f"{self.prefix}:{{{partition}}}:lease"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}:dead"

    def partition_of(self, key: Hashable) -> int:
        if self.partitions == 1:
            return 0
        return zlib.crc32(json.dumps(_encode(key)).encode()) % self.partitions


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return _tagged(value)


def _tagged(value: Any) -> Any:
    """JSON's ``default`` hook: a value JSON has no type for, as a one-key tagged object."""
    if isinstance(value, decimal.Decimal):
        return {"$d": str(value)}
    if isinstance(value, dt.datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"$u": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode()}
    raise ConfigurationError(
        f"durable write-behind cannot store a {type(value).__name__} value "
        "(None, bool, int, float, str, Decimal, date, datetime, UUID, bytes)",
        parameter="row",
    )


_DECODERS: dict[str, Callable[[str], Any]] = {
    "$d": decimal.Decimal,
    "$dt": dt.datetime.fromisoformat,
    "$date": dt.date.fromisoformat,
    "$u": uuid.UUID,
    "$b": base64.b64decode,
}


def _decode(value: Any) -> Any:
    if type(value) is dict and len(value) == 1:
        ((tag, tagged),) = value.items()
        decoder = _DECODERS.get(tag)
        if decoder is not None:
            return decoder(tagged)
    return value


def encode_row(row: Mapping[str, Any]) -> str:
    """A row as the JSON a stream entry holds (Decimal, dates, UUID and bytes tagged).

    Raises:
        ConfigurationError: a value of another type.
    """
    return _dumps(row)


_dumps = json.JSONEncoder(separators=(",", ":"), default=_tagged).encode


def decode_row(text: str | bytes) -> dict[str, Any]:
    """The row :func:`encode_row` wrote."""
    return {c: _decode(v) for c, v in json.loads(text).items()}


def stream_id(entry_id: str | bytes) -> tuple[int, int]:
    """A stream entry ID as a comparable ``(milliseconds, sequence)``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def text(value: str | bytes) -> str:
    """A Redis reply as ``str``, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class EntryPlan:
    """What one durable flush of a partition writes: the coalesced ``rows`` of the entries
    after the committed offset, the offset to commit (``last_id``), and every entry ID to
    acknowledge (those at or before the offset were committed by an earlier flusher)."""

    rows: list[dict[str, Any]]
    last_id: str
    ack: list[str]
    skipped: int
    coalesced: int = 0


def plan_entries(
    entries: Sequence[tuple[str, str | None]],
    committed: str,
    make_buffer: Callable[[], WriteBehindBuffer],
) -> EntryPlan:
    """Coalesce the stream entries a flusher read (ID, encoded row or ``None`` if deleted).

    Entries at or before ``committed`` (the partition's offset, updated in
    the same transaction as the rows) are acknowledged but not applied
    again: a flusher that died after its commit and before its ``XACK``
    applies nothing twice, counters included.
    """
    floor = stream_id(committed)
    buffer = make_buffer()
    last = floor
    last_text = committed
    ack: list[str] = []
    skipped = 0
    for entry_id, payload in entries:
        ack.append(entry_id)
        position = stream_id(entry_id)
        if position <= floor or payload is None:
            skipped += 1
            continue
        buffer.put(decode_row(payload))
        if position > last:
            last, last_text = position, entry_id
    batch = buffer.take()
    return EntryPlan(
        rows=batch.rows if batch is not None else [],
        last_id=last_text,
        ack=ack,
        skipped=skipped,
        coalesced=buffer.coalesced,
    )
