"""Shard-aware 64-bit IDs: the layout, the issuing rule and the SQL, with no I/O.

Theory of operation. An ID is a positive 64-bit integer (it fits PostgreSQL's
``bigint``) made of fields, from the high bits down::

    | time: ms since the layout's epoch | logical shard | worker | sequence |
    |             41 bits               |    13 bits    | 0 bits |  10 bits |

the layout of Instagram's sharded IDs by default (:class:`IdLayout` makes
each width and the epoch configurable). Because time is the high field, IDs
sort by creation time (to the millisecond), a B-tree index stays
append-mostly, and ``WHERE id >= layout.min_id_at(t)`` is a time range. The
shard field names the logical shard the row lives on, so
:func:`shard_of_id` routes by primary key alone. An ID must stay below
``2**63`` (a signed ``bigint``): with the default 41/13/10 layout that leaves
40 bits of time, 2**40 ms = 34.8 years after the epoch (2025-01-01 UTC);
:attr:`IdLayout.max_timestamp_ms` is the last millisecond a layout can encode.

Who issues the sequence. Two issuers never share a (time, shard, worker)
triple, and each issuer never repeats a sequence within its millisecond:

- **The database** (:func:`id_function_sql`): a PL/pgSQL function installed
  on each shard database. Its state is one sequence holding the last issued
  ``time << sequence_bits | sequence`` value; under a short advisory lock it
  takes ``max(last + 1, now << sequence_bits)``. When more IDs are asked in a
  millisecond than the sequence field holds, or the server clock steps back,
  the time field runs ahead of the clock instead of repeating a value: no
  duplicate, ever, and IDs stay increasing per database. The worker field
  (if the layout has one) is a constant, ``0`` by default.
- **Python** (:class:`IdIssuer`, driven by ``IdGenerator``): the worker field
  is a worker id leased from a catalog, so two processes never issue with the
  same worker id at the same time. The rule below keeps it unique over time
  too: a millisecond is used by a worker id at most once, by one holder.

The issuing rule (:class:`IdIssuer`). State: the last millisecond issued and
its sequence, a floor (the previous holder of the worker id used no
millisecond above it, so this holder starts above it), a ceiling (the last
millisecond this holder has recorded in the catalog; a later holder's floor)
and the lease's renewal and expiry times on the monotonic clock. For the
current wall-clock millisecond ``now``:

=================================== ==========================================
condition                           decision
=================================== ==========================================
the lease expired locally           :class:`IdRenew` (the shell renews or fails)
renewal is due, or ``now > ceiling`` :class:`IdRenew`
``now < last`` by at most the bound  :class:`IdWait` until ``last``
``now < last`` by more              raise :class:`~scalekit.errors.ClockMovedBackwards`
``now == last``, sequence left       issue ``(last, sequence + 1)``
``now == last``, sequence exhausted  :class:`IdWait` one millisecond
``now > last``                      issue ``(now, 0)``
=================================== ==========================================

A clock stepped backwards therefore never yields a duplicate: the issuer
waits for the clock to catch up when the step is small and refuses when it is
not. The same check guards a new holder whose clock is behind the previous
holder's (its floor).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Final

from scalekit.errors import ClockMovedBackwards, ConfigurationError, WorkerLeaseError

__all__ = [
    "DEFAULT_EPOCH_MS",
    "DEFAULT_ID_LAYOUT",
    "GENERATOR_ID_LAYOUT",
    "IdIssuer",
    "IdLayout",
    "IdParts",
    "IdRenew",
    "IdWait",
    "LeaseGrant",
    "LeaseSettings",
    "id_function_sql",
    "shard_of_id",
]

DEFAULT_EPOCH_MS: Final = 1_735_689_600_000
"""2025-01-01T00:00:00Z in milliseconds since the Unix epoch: the default custom epoch."""

_MAX_ID: Final = (1 << 63) - 1
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class IdParts:
    """The fields of one ID. ``timestamp_ms`` is milliseconds since the Unix epoch."""

    timestamp_ms: int
    shard: int
    worker: int
    sequence: int

    @property
    def created_at(self) -> datetime:
        """``timestamp_ms`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=timezone.utc)


@dataclass(frozen=True, slots=True)
class IdLayout:
    """How a 64-bit ID splits into time, logical shard, worker and sequence.

    The default is Instagram's layout: 41 bits of milliseconds since
    ``epoch_ms``, 13 bits of logical shard (8192 shards), 10 bits of sequence
    (1024 IDs per millisecond per shard) and no worker field. IDs issued in
    Python need a worker field (see :data:`GENERATOR_ID_LAYOUT`). The widths
    add up to at most 64, and every ID stays below ``2**63``.

    >>> layout = IdLayout()
    >>> i = layout.compose(DEFAULT_EPOCH_MS + 1000, shard=7, sequence=3)
    >>> layout.decompose(i).shard, layout.shard_of(i)
    (7, 7)

    Raises:
        ConfigurationError: a negative width, widths over 64 bits, no time or
            shard bits, or a negative epoch.
    """

    epoch_ms: int = DEFAULT_EPOCH_MS
    time_bits: int = 41
    shard_bits: int = 13
    worker_bits: int = 0
    sequence_bits: int = 10
    _shard_shift: int = field(init=False, repr=False, compare=False)
    _time_shift: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("epoch_ms", "time_bits", "shard_bits", "worker_bits", "sequence_bits"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ConfigurationError(
                    f"IdLayout.{name} must be an int >= 0, got {value!r}", parameter=name
                )
        if self.time_bits == 0 or self.shard_bits == 0:
            raise ConfigurationError(
                "IdLayout needs time_bits and shard_bits above 0", parameter="time_bits"
            )
        total = self.time_bits + self.shard_bits + self.worker_bits + self.sequence_bits
        if total > 64:
            raise ConfigurationError(
                f"IdLayout widths add up to {total} bits; at most 64 fit an ID",
                parameter="time_bits",
            )
        object.__setattr__(self, "_shard_shift", self.worker_bits + self.sequence_bits)
        object.__setattr__(self, "_time_shift", self._shard_shift + self.shard_bits)

    @property
    def shard_count(self) -> int:
        """How many logical shards the shard field holds (``2**shard_bits``)."""
        return 1 << self.shard_bits

    @property
    def worker_count(self) -> int:
        """How many worker ids the worker field holds (``1`` when it has no bits)."""
        return 1 << self.worker_bits

    @property
    def sequence_count(self) -> int:
        """IDs per millisecond per (shard, worker): ``2**sequence_bits``."""
        return 1 << self.sequence_bits

    @property
    def max_timestamp_ms(self) -> int:
        """The last Unix millisecond this layout encodes (time field and ``2**63`` bound)."""
        by_field = (1 << self.time_bits) - 1
        by_sign = _MAX_ID >> self._time_shift
        return self.epoch_ms + min(by_field, by_sign)

    def compose(self, timestamp_ms: int, shard: int, sequence: int, worker: int = 0) -> int:
        """The ID for these fields; ``timestamp_ms`` is milliseconds since the Unix epoch.

        Raises:
            ConfigurationError: a field out of its range (the time before the
                epoch or after :attr:`max_timestamp_ms`).
        """
        elapsed = timestamp_ms - self.epoch_ms
        if not 0 <= elapsed <= self.max_timestamp_ms - self.epoch_ms:
            raise ConfigurationError(
                f"timestamp {timestamp_ms} ms is outside this layout's range "
                f"[{self.epoch_ms}, {self.max_timestamp_ms}]",
                parameter="timestamp_ms",
            )
        _check_field("shard", shard, self.shard_count)
        _check_field("worker", worker, self.worker_count)
        _check_field("sequence", sequence, self.sequence_count)
        return (
            (elapsed << self._time_shift)
            | (shard << self._shard_shift)
            | (worker << self.sequence_bits)
            | sequence
        )

    def decompose(self, id_: int) -> IdParts:
        """The fields of ``id_``.

        Raises:
            ConfigurationError: ``id_`` is not an int in ``[0, 2**63)``.
        """
        _check_id(id_)
        return IdParts(
            timestamp_ms=self.epoch_ms + (id_ >> self._time_shift),
            shard=(id_ >> self._shard_shift) & (self.shard_count - 1),
            worker=(id_ >> self.sequence_bits) & (self.worker_count - 1),
            sequence=id_ & (self.sequence_count - 1),
        )

    def shard_of(self, id_: int) -> int:
        """The logical shard encoded in ``id_`` (see :func:`shard_of_id`)."""
        _check_id(id_)
        return (id_ >> self._shard_shift) & (self.shard_count - 1)

    def min_id_at(self, timestamp_ms: int) -> int:
        """The smallest ID of ``timestamp_ms`` or later: ``id >= min_id_at(t)`` is a time range."""
        return self.compose(timestamp_ms, shard=0, sequence=0)


def _check_field(name: str, value: int, count: int) -> None:
    if type(value) is not int or not 0 <= value < count:
        raise ConfigurationError(
            f"{name} must be an int in [0, {count}), got {value!r}", parameter=name
        )


def _check_id(id_: int) -> None:
    if type(id_) is not int or not 0 <= id_ <= _MAX_ID:
        raise ConfigurationError(f"an ID is an int in [0, 2**63), got {id_!r}", parameter="id")


DEFAULT_ID_LAYOUT: Final = IdLayout()
"""41 bits of time, 13 of logical shard, 10 of sequence; the layout of :func:`id_function_sql`."""

GENERATOR_ID_LAYOUT: Final = IdLayout(worker_bits=4, sequence_bits=6)
"""The default layout of Python-issued IDs: 41 time, 13 shard, 4 worker, 6 sequence.

The time and shard fields sit where :data:`DEFAULT_ID_LAYOUT` has them, so
:func:`shard_of_id` reads both; 16 worker ids (worker 0 is left to the
database function, so 15 can be leased) of 64 IDs per millisecond each.
"""


def shard_of_id(id_: int, layout: IdLayout = DEFAULT_ID_LAYOUT) -> int:
    """The logical shard an ID was issued for, so a row can be routed by its key alone.

    >>> shard_of_id(DEFAULT_ID_LAYOUT.compose(DEFAULT_EPOCH_MS, shard=42, sequence=0))
    42

    Raises:
        ConfigurationError: ``id_`` is not an int in ``[0, 2**63)``.
    """
    return layout.shard_of(id_)


@dataclass(frozen=True, slots=True)
class IdWait:
    """Decision: sleep ``seconds``, then ask again (sequence exhausted, clock behind)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class IdRenew:
    """Decision: renew the worker lease (``expired``: it has lapsed locally), then ask again."""

    expired: bool


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """What a lease store answers on acquire or renew.

    ``floor_ms``: the previous holder used no millisecond above it.
    ``ceiling_ms``: the highest millisecond this holder may use, as recorded.
    """

    worker: int
    floor_ms: int
    ceiling_ms: int


class LeaseSettings:
    """What every worker lease store shares: the pool, its worker ids, the timing, the holder.

    Raises:
        ConfigurationError: an empty worker range, a worker id below 0, a
            ``ttl`` that is not positive, or ``renew_after`` outside ``(0, ttl)``.
    """

    def __init__(
        self,
        *,
        pool: str,
        workers: Iterable[int],
        ttl: float,
        renew_after: float | None,
    ) -> None:
        self.pool = pool
        self.workers = tuple(workers)
        if not self.workers or any(type(w) is not int or w < 0 for w in self.workers):
            raise ConfigurationError(
                f"workers must be a non-empty set of ints >= 0, got {workers!r}",
                parameter="workers",
            )
        if not ttl > 0:
            raise ConfigurationError(f"ttl must be > 0, got {ttl!r}", parameter="ttl")
        self.ttl = float(ttl)
        self.renew_after = self.ttl / 3 if renew_after is None else float(renew_after)
        if not 0 < self.renew_after < self.ttl:
            raise ConfigurationError(
                f"renew_after must be in (0, ttl), got {renew_after!r}", parameter="renew_after"
            )
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    @property
    def ttl_ms(self) -> int:
        """``ttl`` in whole milliseconds."""
        return int(self.ttl * 1000)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pool={self.pool!r}, workers={len(self.workers)})"


_RENEW_DUE: Final = IdRenew(expired=False)
_RENEW_EXPIRED: Final = IdRenew(expired=True)


class IdIssuer:
    """The issuing rule of Python-side IDs for one leased worker id (no I/O).

    The shell reads the clocks and asks :meth:`step`; an ``int`` is the next
    ID, :class:`IdWait` and :class:`IdRenew` say what to do first. Not
    thread-safe: the shell serialises calls.

    Raises:
        ConfigurationError: a layout with no worker bits, a worker id out of
            range, or a negative bound.
    """

    __slots__ = (
        "_ceiling_ms",
        "_epoch_ms",
        "_expires_at",
        "_last_ms",
        "_max_ms",
        "_renew_at",
        "_seq_max",
        "_sequence",
        "_shard_count",
        "_shard_shift",
        "_time_shift",
        "_worker_part",
        "layout",
        "max_backwards_ms",
        "worker",
    )

    def __init__(self, layout: IdLayout, *, max_backwards_ms: int) -> None:
        if layout.worker_bits == 0:
            raise ConfigurationError(
                "IDs issued in Python need a layout with worker_bits > 0 (see GENERATOR_ID_LAYOUT)",
                parameter="layout",
            )
        if max_backwards_ms < 0:
            raise ConfigurationError(
                f"max_backwards_ms must be >= 0, got {max_backwards_ms!r}",
                parameter="max_backwards_ms",
            )
        self.layout = layout
        self.max_backwards_ms = max_backwards_ms
        self.worker = -1
        self._seq_max = layout.sequence_count - 1
        # The layout's arithmetic, inlined in step() (the hot path).
        self._epoch_ms = layout.epoch_ms
        self._max_ms = layout.max_timestamp_ms
        self._shard_count = layout.shard_count
        self._shard_shift = layout._shard_shift
        self._time_shift = layout._time_shift
        self._worker_part = 0
        self._last_ms = -1
        self._sequence = 0
        self._ceiling_ms = -1
        self._renew_at = float("-inf")
        self._expires_at = float("-inf")

    @property
    def last_ms(self) -> int:
        """The last millisecond used (``-1`` before the first ID): a clean release records it."""
        return self._last_ms

    @property
    def has_lease(self) -> bool:
        """Whether a lease was granted and not dropped."""
        return self.worker >= 0

    def ceiling_for(self, now_ms: int, ttl_ms: int) -> int:
        """The ceiling to record when asking for a lease at ``now_ms``."""
        return max(now_ms, self._last_ms) + ttl_ms

    def granted(
        self, grant: LeaseGrant, *, asked_at: float, ttl: float, renew_after: float
    ) -> None:
        """Take a lease (new or renewed) asked for at monotonic ``asked_at``.

        Raises:
            WorkerLeaseError: a renewal came back with another worker id.
        """
        if self.worker >= 0 and grant.worker != self.worker:
            raise WorkerLeaseError(
                f"renewed worker {grant.worker} while holding {self.worker}", worker=self.worker
            )
        _check_field("worker", grant.worker, self.layout.worker_count)
        if self.worker < 0:
            # A new holder never goes back to a millisecond the previous one may have used.
            self._last_ms = max(self._last_ms, grant.floor_ms)
            self._sequence = self._seq_max
        self.worker = grant.worker
        self._worker_part = grant.worker << self.layout.sequence_bits
        self._ceiling_ms = grant.ceiling_ms
        # Measured from before the request: the local view ends no later than the store's.
        self._renew_at = asked_at + renew_after
        self._expires_at = asked_at + ttl

    @property
    def ceiling_ms(self) -> int:
        """The highest millisecond this holder may use, as last recorded in the catalog."""
        return self._ceiling_ms

    def needs_renewal(self, now_ms: int, monotonic: float) -> bool:
        """Whether the lease is due for renewal (by time, or ``now_ms`` past the ceiling)."""
        return monotonic >= self._renew_at or now_ms > self._ceiling_ms

    def expired(self, monotonic: float) -> bool:
        """Whether the lease has lapsed on the local monotonic clock."""
        return monotonic >= self._expires_at

    def defer_renewal(self, until: float) -> None:
        """Retry the renewal at monotonic ``until`` (the store failed; the lease still holds)."""
        self._renew_at = min(until, self._expires_at)

    def lost(self) -> None:
        """Drop the lease: no ID is issued until a new one is granted."""
        self.worker = -1
        self._renew_at = self._expires_at = float("-inf")

    def step(self, shard: int, now_ms: int, monotonic: float) -> int | IdWait | IdRenew:
        """The next ID for logical ``shard`` at ``now_ms`` and ``monotonic``, or what to do first.

        One sequence serves every shard, so IDs of one worker are unique
        whatever the shard.

        Raises:
            ConfigurationError: ``shard`` is outside the layout.
            ClockMovedBackwards: the wall clock is behind the last millisecond
                used by more than ``max_backwards_ms``.
            WorkerLeaseError: no lease is held.
        """
        if self.worker < 0:
            raise WorkerLeaseError("no worker lease is held; acquire one first", worker=None)
        if type(shard) is not int or not 0 <= shard < self._shard_count:
            _check_field("shard", shard, self._shard_count)
        if monotonic >= self._renew_at:
            return _RENEW_EXPIRED if monotonic >= self._expires_at else _RENEW_DUE
        last = self._last_ms
        if now_ms > last:
            if now_ms > self._ceiling_ms:
                return _RENEW_DUE
            if not self._epoch_ms <= now_ms <= self._max_ms:
                self.layout.compose(now_ms, shard, 0)  # raises, naming the range
            self._last_ms = now_ms
            self._sequence = 0
            return (
                ((now_ms - self._epoch_ms) << self._time_shift)
                | (shard << self._shard_shift)
                | self._worker_part
            )
        if now_ms < last:
            behind = last - now_ms
            if behind > self.max_backwards_ms:
                raise ClockMovedBackwards(
                    f"the clock is {behind} ms behind the last ID's time "
                    f"(bound: {self.max_backwards_ms} ms)",
                    behind_ms=behind,
                )
            return IdWait(behind / 1000)
        if self._sequence >= self._seq_max:
            return IdWait(0.001)
        self._sequence += 1
        return (
            ((last - self._epoch_ms) << self._time_shift)
            | (shard << self._shard_shift)
            | self._worker_part
            | self._sequence
        )


def id_function_sql(
    *,
    shard: int,
    layout: IdLayout = DEFAULT_ID_LAYOUT,
    worker: int = 0,
    function: str = "scalekit_next_id",
    sequence: str | None = None,
    schema: str | None = None,
) -> list[str]:
    """The statements that install the ID function on one shard database (PostgreSQL).

    ``function()`` returns the next ID for logical ``shard`` (``bigint``), for
    use as a column default: ``server_default=text("scalekit_next_id()")``.
    See the module docstring for why it never repeats a value. Re-running the
    statements replaces the function and keeps the sequence.

    Raises:
        ConfigurationError: a shard or worker out of the layout's range, or a
            name that is not a plain SQL identifier.
    """
    _check_field("shard", shard, layout.shard_count)
    _check_field("worker", worker, layout.worker_count)
    sequence = sequence or f"{function}_seq"
    for name, value in (("function", function), ("sequence", sequence), ("schema", schema)):
        if value is not None and not _IDENTIFIER.match(value):
            raise ConfigurationError(
                f"{name} must be a plain SQL identifier, got {value!r}", parameter=name
            )
    prefix = f"{schema}." if schema else ""
    qualified_sequence = f"{prefix}{sequence}"
    # One advisory lock key per sequence, the same on every shard.
    lock_key = int.from_bytes(
        hashlib.md5(qualified_sequence.encode(), usedforsecurity=False).digest()[:8],
        "big",
        signed=True,
    )
    seq_bits = layout.sequence_bits
    fixed = (shard << layout._shard_shift) | (worker << seq_bits)
    max_elapsed = layout.max_timestamp_ms - layout.epoch_ms
    return [
        f"CREATE SEQUENCE IF NOT EXISTS {qualified_sequence} AS bigint MINVALUE 0 START 0",
        f"""CREATE OR REPLACE FUNCTION {prefix}{function}() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $scalekit_id$
DECLARE
    low bigint;
    clock_low bigint;
BEGIN
    -- low = time << {seq_bits} | sequence; the lock makes "max(last + 1, now)" atomic.
    -- It is a session lock held for these few lines only, never to commit.
    PERFORM pg_advisory_lock({lock_key});
    BEGIN
        clock_low := (floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint
                      - {layout.epoch_ms}) << {seq_bits};
        low := nextval('{qualified_sequence}');
        IF low < clock_low THEN
            PERFORM setval('{qualified_sequence}', clock_low);
            low := clock_low;
        END IF;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock({lock_key});
        RAISE;
    END;
    PERFORM pg_advisory_unlock({lock_key});
    IF low < 0 OR (low >> {seq_bits}) > {max_elapsed} THEN
        RAISE EXCEPTION 'scalekit ID time field out of range (clock before the epoch or past it)';
    END IF;
    RETURN ((low >> {seq_bits}) << {layout._time_shift}) | {fixed}
           | (low & {layout.sequence_count - 1});
END
$scalekit_id$""",
    ]
