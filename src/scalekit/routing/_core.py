"""The routing pool's pure core: node health, lag, consistency and replica choice.

Theory of operation
-------------------

The core knows nodes by name only; it never sees an engine, a connection or
SQL. The shells (``_router.py`` for the session and Core paths, ``_sync.py``
and ``_async.py`` for the pools) do the I/O and report what they saw:

* ``record_failure(name)`` / ``record_success(name)``: a connection error
  blacklists a node for ``blacklist_seconds``, doubled on each consecutive
  failure up to ``max_blacklist_seconds``. When the period ends the node is
  *on probation*: it is offered again, and the next success readmits it for
  good while the next failure blacklists it for twice as long.
* ``observe_position(name, in_recovery, lsn, server_time, replay_time)``: a
  health check's answer. A replica's lag in seconds is "how long ago the
  primary first wrote past what the replica has replayed", and 0 while its
  replayed position has reached the primary's (so an idle primary means no
  lag). Two sources bound that moment: the primary's WAL positions sampled by
  this pool's checks (``(time, lsn)``: the first sample past the replica's
  position is a lower bound of its lag, the last one not past it an upper
  bound), and the commit time of the last transaction the replica replayed
  (``pg_last_xact_replay_timestamp()``, compared with the primary's clock), an
  upper bound that needs no history. The lag is that commit age, kept within
  the samples' bounds: right from a pool's first check, whoever wrote. Lag in
  bytes is the LSN difference. A replica beyond ``max_lag_seconds`` or
  ``max_lag_bytes`` leaves the rotation and comes back only below
  ``lag_readmit_ratio`` times the limit.
* ``apply_roles(roles, servers)``: which reachable node says it is a primary.
  Nodes that reach the same server (``servers`` gives each primary's server
  identity) count as one: a replica engine pointed at the primary server
  itself (a dev or staging set-up) simply serves reads, never behind. Exactly
  one primary server: writes go there (a promoted replica becomes the primary
  and leaves the read rotation). None: writes fail with ``NoHealthyNode``
  until a later check finds one. Two or more different servers: a split
  brain, writes are refused (reads may still use the last primary every node
  agreed on).

Routing a statement is two pure steps. :func:`decide` maps what the statement
does (:class:`Classification`, made by ``_statements.py``) and the context
(:class:`ContextState`: a forced role, a consistency token) to a
:class:`Target`. For a replica target, :meth:`RoutingCore.choose_read`
returns a :class:`ReadPlan`: the nodes to try in order (eligible replicas in
balancer order, then the primary when ``fallback_to_primary``), or a request
to probe some replicas' replayed positions first (read-your-writes), after
which the shell asks again with ``probed=True``.

The fast path: most reads come from a context with no forced role and no
token while every node is healthy. For those, :meth:`RoutingCore.fast_read`
returns the same plan as :meth:`RoutingCore.choose_read` in O(1), from a
rotation of plans precomputed by the last full plan. Anything that could
change a plan (a failure, a readmission, a lag flip, a role check wanted or
applied) drops the rotation, and a due health check declines the fast path,
so the full path runs again. A hypothesis test runs both paths side by side.

Invariants (checked by the hypothesis tests): a write never targets a
replica; a read plan never names a blacklisted node, a lagging node (except
the explicit, capped stale read when every replica lags and the spill share is
used up), or a replica whose known replayed position is behind the context's
token.
"""

from __future__ import annotations

import enum
import math
import random
import re
import threading
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeGuard

from scalekit.errors import ConfigurationError, NoHealthyNode, ReadOnlyViolation
from scalekit.typing import Clock

__all__ = [
    "Classification",
    "ConsistencyToken",
    "ContextState",
    "NodeState",
    "ReadPlan",
    "RoleChange",
    "RoutingConfig",
    "RoutingCore",
    "Target",
    "commit_position",
    "decide",
    "format_lsn",
    "parse_lsn",
]

BalancerName = Literal["round_robin", "random", "least_in_use"]
ConsistencyMode = Literal["auto", "lsn", "time", "none"]
_BALANCERS = ("round_robin", "random", "least_in_use")
_CONSISTENCY = ("auto", "lsn", "time", "none")
_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse_lsn(text: str) -> int:
    """Parse a PostgreSQL LSN (``"16/B374D848"``) into an integer byte position.

    >>> parse_lsn("1/0")
    4294967296

    Raises:
        ValueError: when ``text`` is not an LSN.
    """
    match = _LSN_RE.match(text.strip())
    if match is None:
        raise ValueError(f"not a PostgreSQL LSN: {text!r}")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def commit_position(insert_lsn: int, flush_lsn: int, *, block_size: int, segment_size: int) -> int:
    """The WAL position a read-your-writes token needs after a commit on the primary.

    ``insert_lsn`` and ``flush_lsn`` are ``pg_current_wal_insert_lsn()`` and
    ``pg_current_wal_flush_lsn()`` read after the commit returned. Under
    ``synchronous_commit=off`` a commit returns before its record is flushed,
    so the flush position may be behind the commit: only the insert position
    covers it. But the insert position is where the *next* record starts: when
    the last record ended exactly at a WAL page boundary it points past the
    next page's header, a position no replica reaches until more WAL is
    written (seconds on an idle server). The end of the last inserted record
    is what a replica's ``pg_last_wal_replay_lsn()`` reports once it has
    replayed that record, so that is the position returned (never below the
    flush position).

    >>> commit_position(0x3000018, 0x3000000, block_size=8192, segment_size=16 << 20)
    50331648
    >>> commit_position(0x30012E0, 0x3001278, block_size=8192, segment_size=16 << 20) == 0x30012E0
    True
    """
    end = insert_lsn
    if segment_size > 0 and insert_lsn % segment_size == _LONG_PAGE_HEADER:
        end = insert_lsn - _LONG_PAGE_HEADER
    elif block_size > 0 and insert_lsn % block_size == _SHORT_PAGE_HEADER:
        end = insert_lsn - _SHORT_PAGE_HEADER
    return max(end, flush_lsn)


# PostgreSQL's SizeOfXLogShortPHD and SizeOfXLogLongPHD (MAXALIGN 8).
_SHORT_PAGE_HEADER = 24
_LONG_PAGE_HEADER = 40


def format_lsn(position: int) -> str:
    """Format an integer byte position as PostgreSQL writes an LSN.

    >>> format_lsn(4294967296 + 255)
    '1/FF'
    """
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


class Target(enum.Enum):
    """Which role a statement must run on."""

    PRIMARY = "primary"
    REPLICA = "replica"


@dataclass(frozen=True, slots=True)
class Classification:
    """What a statement does, as far as routing cares.

    ``writes`` is true for anything that must run on the primary (DML, a
    flush, ``FOR UPDATE``, ``nextval``, advisory locks, unmarked ``text()``);
    ``reason`` names the rule that decided (``"insert"``, ``"for_update"``,
    ``"function:nextval"``, ``"text"``, ``"select"``...).
    """

    writes: bool
    reason: str


READ = Classification(writes=False, reason="select")


@dataclass(frozen=True, slots=True)
class ConsistencyToken:
    """A point a later read must see: the primary's WAL position after a write.

    ``lsn`` is the primary's WAL position at the end of the commit (see
    :func:`commit_position`; None in time-based mode or on databases without
    LSNs); ``written_at`` the wall
    clock time of the commit, used by time-based stickiness. Tokens are small
    values that cross process boundaries: :meth:`encode` gives a short ASCII
    string for a cookie, a header or a job payload.

    >>> token = ConsistencyToken(lsn=parse_lsn("0/16B3748"), written_at=1700000000.25)
    >>> token.encode()
    '0/16B3748@1700000000250'
    >>> ConsistencyToken.decode(token.encode()) == token
    True
    """

    lsn: int | None
    written_at: float

    def encode(self) -> str:
        """A compact ASCII form: ``"<lsn>@<unix ms>"`` (``"-@<ms>"`` without an LSN)."""
        lsn = "-" if self.lsn is None else format_lsn(self.lsn)
        return f"{lsn}@{round(self.written_at * 1000)}"

    @classmethod
    def decode(cls, text: str) -> ConsistencyToken:
        """Parse the output of :meth:`encode`.

        Raises:
            ConfigurationError: (``parameter="token"``) when ``text`` is not a token.
        """
        raw: object = text
        if not isinstance(raw, str) or len(raw) > 64:
            raise ConfigurationError("malformed consistency token", parameter="token")
        lsn_text, sep, ms_text = text.partition("@")
        if not sep or not ms_text.isdigit():
            raise ConfigurationError("malformed consistency token", parameter="token")
        try:
            lsn = None if lsn_text == "-" else parse_lsn(lsn_text)
        except ValueError:
            raise ConfigurationError("malformed consistency token", parameter="token") from None
        return cls(lsn=lsn, written_at=int(ms_text) / 1000)

    def merge(self, other: ConsistencyToken | None) -> ConsistencyToken:
        """The later of two tokens (the one a read must satisfy to satisfy both)."""
        if other is None:
            return self
        if self.lsn is None or other.lsn is None:
            lsn = self.lsn if other.lsn is None else other.lsn
        else:
            lsn = max(self.lsn, other.lsn)
        return ConsistencyToken(lsn=lsn, written_at=max(self.written_at, other.written_at))


@dataclass(frozen=True, slots=True)
class ContextState:
    """The routing state of one context (a thread, a task, a request).

    ``force`` is set by ``use_primary()`` / ``use_replica()``; ``token`` is
    the latest consistency token; ``pending_write_at`` is the wall time of a
    committed write whose LSN has not been read yet (the shell resolves it
    into a token before the next read in this context).
    """

    force: Target | None = None
    token: ConsistencyToken | None = None
    pending_write_at: float | None = None


EMPTY_CONTEXT = ContextState()


def decide(classification: Classification, state: ContextState, *, wrote: bool) -> Target:
    """The role a statement must run on.

    ``wrote`` is true inside a transaction that has already written (its
    reads must see its own uncommitted writes, so they stay on the primary).

    Raises:
        ReadOnlyViolation: a statement that writes inside ``use_replica()``.
    """
    if classification.writes:
        if state.force is Target.REPLICA:
            raise ReadOnlyViolation(
                f"a statement that writes ({classification.reason}) was routed to a replica "
                "inside use_replica(); run it outside that block"
            )
        return Target.PRIMARY
    if wrote or state.force is Target.PRIMARY:
        return Target.PRIMARY
    return Target.REPLICA


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_seconds(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None:
        if allow_none:
            return
        raise ConfigurationError(f"{name} must be a number of seconds", parameter=name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, got {value!r}", parameter=name)
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be >= 0 and finite, got {value!r}", parameter=name)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingConfig:
    """The routing pool's tunables, validated once at construction.

    Durations are seconds. ``None`` for ``max_lag_seconds``/``max_lag_bytes``
    disables that limit; ``check_interval=None`` disables the automatic
    health/lag checks (call ``pool.refresh()`` yourself).

    Raises:
        ConfigurationError: naming the parameter, for a negative or non-finite
            duration, an unknown balancer or consistency mode, a share outside
            ``(0, 1]``, or weights that are not positive.
    """

    blacklist_seconds: float = 10.0
    max_blacklist_seconds: float = 300.0
    max_lag_seconds: float | None = 5.0
    max_lag_bytes: int | None = None
    lag_readmit_ratio: float = 0.8
    consistency: ConsistencyMode = "auto"
    sticky_seconds: float = 2.0
    sticky_timeout: float = 0.0
    lsn_probe_interval: float = 0.02
    balancer: BalancerName = "round_robin"
    weights: Mapping[str, float] | None = None
    fallback_to_primary: bool = True
    max_primary_read_share: float = 1.0
    spill_window_seconds: float = 10.0
    check_interval: float | None = 1.0
    role_check_interval: float = 0.5

    def __post_init__(self) -> None:
        for name in (
            "blacklist_seconds",
            "max_blacklist_seconds",
            "sticky_seconds",
            "sticky_timeout",
            "lsn_probe_interval",
            "role_check_interval",
        ):
            _check_seconds(name, getattr(self, name))
        _check_seconds("max_lag_seconds", self.max_lag_seconds, allow_none=True)
        _check_seconds("check_interval", self.check_interval, allow_none=True)
        _check_seconds("spill_window_seconds", self.spill_window_seconds)
        if self.spill_window_seconds == 0:
            raise ConfigurationError(
                "spill_window_seconds must be > 0", parameter="spill_window_seconds"
            )
        if self.max_blacklist_seconds < self.blacklist_seconds:
            raise ConfigurationError(
                "max_blacklist_seconds must be >= blacklist_seconds",
                parameter="max_blacklist_seconds",
            )
        lag_bytes: object = self.max_lag_bytes
        if lag_bytes is not None and (
            isinstance(lag_bytes, bool) or not isinstance(lag_bytes, int) or lag_bytes < 0
        ):
            raise ConfigurationError(
                f"max_lag_bytes must be an int >= 0, got {self.max_lag_bytes!r}",
                parameter="max_lag_bytes",
            )
        ratio: object = self.lag_readmit_ratio
        if not _is_number(ratio) or not 0 < ratio <= 1:
            raise ConfigurationError(
                f"lag_readmit_ratio must be a number in (0, 1], got {ratio!r}",
                parameter="lag_readmit_ratio",
            )
        share: object = self.max_primary_read_share
        if not _is_number(share) or not 0 <= share <= 1:
            raise ConfigurationError(
                f"max_primary_read_share must be a number in [0, 1], got {share!r}",
                parameter="max_primary_read_share",
            )
        fallback: object = self.fallback_to_primary
        if not isinstance(fallback, bool):
            raise ConfigurationError(
                f"fallback_to_primary must be True or False, got {fallback!r}",
                parameter="fallback_to_primary",
            )
        if self.balancer not in _BALANCERS:
            raise ConfigurationError(
                f"balancer must be one of {', '.join(_BALANCERS)}, got {self.balancer!r}",
                parameter="balancer",
            )
        if self.consistency not in _CONSISTENCY:
            raise ConfigurationError(
                f"consistency must be one of {', '.join(_CONSISTENCY)}, got {self.consistency!r}",
                parameter="consistency",
            )
        weights: object = self.weights
        if weights is not None and not isinstance(weights, Mapping):
            raise ConfigurationError(
                f"weights must be a dict of node name -> positive number, got {weights!r}",
                parameter="weights",
            )
        if self.weights is not None:
            for node, raw_weight in self.weights.items():
                key: object = node
                if not isinstance(key, str):
                    raise ConfigurationError(
                        f"weights must name nodes by their str name, got {key!r}",
                        parameter="weights",
                    )
                weight: object = raw_weight
                if (
                    isinstance(weight, bool)
                    or not isinstance(weight, (int, float))
                    or not math.isfinite(weight)
                    or weight <= 0
                ):
                    raise ConfigurationError(
                        f"weight of {node!r} must be a positive number, got {weight!r}",
                        parameter="weights",
                    )


@dataclass(slots=True)
class NodeState:
    """What the core knows about one node. Read it through :meth:`RoutingCore.snapshot`."""

    name: str
    role: Target
    configured_role: Target
    failures: int = 0
    down_until: float | None = None
    down_since: float | None = None
    replay_lsn: int | None = None
    position_checked_at: float | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    lagging: bool = False
    reachable: bool = True
    same_server_as: str | None = None

    def copy(self) -> NodeState:
        return NodeState(
            self.name,
            self.role,
            self.configured_role,
            self.failures,
            self.down_until,
            self.down_since,
            self.replay_lsn,
            self.position_checked_at,
            self.lag_bytes,
            self.lag_seconds,
            self.lagging,
            self.reachable,
            self.same_server_as,
        )


class ReadPlan(NamedTuple):
    """Where a read goes: ``attempts`` in order, or replicas to ``probe`` first.

    (A named tuple rather than a frozen dataclass: one is built per routed read,
    and a tuple is several times cheaper to make.)

    ``reason`` says why the first attempt was chosen (``"replica"``,
    ``"caught_up"``, ``"forced_primary"``, ``"sticky"``, ``"token_ahead"``,
    ``"no_replica"``, ``"all_lagging"``, ``"spill_capped"``). ``spill`` is true
    when a read that wanted a replica was sent to the primary because every
    replica lags.
    """

    attempts: tuple[str, ...]
    reason: str
    probe: tuple[str, ...] = ()
    spill: bool = False


@dataclass(frozen=True, slots=True)
class RoleChange:
    """The outcome of :meth:`RoutingCore.apply_roles`."""

    old_primary: str | None
    new_primary: str | None
    split_brain: bool
    primaries_seen: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.old_primary != self.new_primary


@dataclass(slots=True)
class _SpillWindow:
    """Two-bucket sliding counter of reads that wanted a replica, and of those spilled."""

    window: float
    started: float = 0.0
    reads: float = 0.0
    spilled: float = 0.0
    prev_reads: float = 0.0
    prev_spilled: float = 0.0

    def _roll(self, now: float) -> float:
        elapsed = now - self.started
        if elapsed >= 2 * self.window:
            self.prev_reads = self.prev_spilled = self.reads = self.spilled = 0.0
            self.started = now
            elapsed = 0.0
        elif elapsed >= self.window:
            self.prev_reads, self.prev_spilled = self.reads, self.spilled
            self.reads = self.spilled = 0.0
            self.started += self.window
            elapsed -= self.window
        return 1.0 - elapsed / self.window

    def share_if_spilled(self, now: float) -> float:
        weight = self._roll(now)
        reads = self.reads + self.prev_reads * weight + 1
        spilled = self.spilled + self.prev_spilled * weight + 1
        return spilled / reads

    def record(self, now: float, *, spilled: bool) -> None:
        self._roll(now)
        self.reads += 1
        if spilled:
            self.spilled += 1


@dataclass(slots=True)
class _Samples:
    """The primary's recent WAL positions, to turn a replica's LSN into seconds of lag."""

    # (first seen, last seen, lsn): an idle primary keeps one sample, seen again and again.
    items: deque[tuple[float, float, int]] = field(default_factory=lambda: deque(maxlen=256))

    def add(self, now: float, lsn: int) -> None:
        if self.items:
            first, _, latest = self.items[-1]
            if latest >= lsn:
                self.items[-1] = (first, now, latest)
                return
        self.items.append((now, now, lsn))

    @property
    def latest(self) -> int | None:
        return self.items[-1][2] if self.items else None

    def bounds(self, now: float, replay_lsn: int) -> tuple[float, float | None]:
        """Bounds of how long ago the primary first wrote past ``replay_lsn``.

        The first sample past it is a lower bound (the write came before that
        sample); the last sample not past it an upper bound (the write came
        after), None when the history does not reach back that far.
        """
        upper = None
        for first, last, lsn in self.items:
            if lsn > replay_lsn:
                return max(0.0, now - first), upper
            upper = max(0.0, now - last)
        return 0.0, 0.0


def _out(state: NodeState, now: float) -> bool:
    """Whether ``state`` is blacklisted at ``now``."""
    return state.down_until is not None and now < state.down_until


class RoutingCore:
    """Node health, lag, roles and replica choice; no I/O, time from ``clock``.

    Thread-safe: every method takes a short internal lock.

    >>> from scalekit.testing import FakeClock
    >>> core = RoutingCore(["primary"], ["r1", "r2"], RoutingConfig(), FakeClock())
    >>> core.choose_read(EMPTY_CONTEXT).attempts
    ('r1', 'r2', 'primary')
    >>> core.choose_read(EMPTY_CONTEXT).attempts
    ('r2', 'r1', 'primary')

    Raises:
        ConfigurationError: no primary, duplicate names, or weights for unknown nodes.
    """

    def __init__(
        self,
        primaries: Sequence[str],
        replicas: Sequence[str],
        config: RoutingConfig,
        clock: Clock,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not primaries:
            raise ConfigurationError("at least one primary is required", parameter="primary")
        names = [*primaries, *replicas]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"node names must be unique: {names}", parameter="replicas")
        if config.weights is not None:
            unknown = sorted(set(config.weights) - set(names))
            if unknown:
                raise ConfigurationError(
                    f"weights name unknown nodes: {unknown}", parameter="weights"
                )
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._order = tuple(names)
        self._nodes: dict[str, NodeState] = {}
        for name in primaries:
            self._nodes[name] = NodeState(name, Target.PRIMARY, Target.PRIMARY)
        for name in replicas:
            self._nodes[name] = NodeState(name, Target.REPLICA, Target.REPLICA)
        self._primary: str | None = primaries[0]
        self._standby_primaries = tuple(primaries[1:])
        self._split_brain = False
        self._rr = 0
        self._wrr: dict[str, float] = {}
        self._samples = _Samples()
        # The primary's clock at its last check: (our monotonic time, its epoch seconds).
        self._primary_clock: tuple[float, float] | None = None
        self._spill = _SpillWindow(config.spill_window_seconds, started=clock.monotonic())
        self._role_check_wanted = False
        self._last_role_check: float | None = None
        self._last_check: float | None = None
        # The fast path (see fast_read): one precomputed plan per rotation start, valid
        # while every node is healthy and roles are settled. Any change of health, lag or
        # roles drops it; the next full plan rebuilds it.
        self._fast: tuple[tuple[str, ...], ...] | None = None
        # The lowest replayed position among the fast plans' replicas, cached with
        # them: a token at or below it is satisfied by every one of them.
        self._fast_reached: int | float = -1
        self._fast_random = config.balancer == "random"
        self._fast_allowed = config.weights is None and config.balancer != "least_in_use"
        self._track_spill = config.max_primary_read_share < 1.0

    # -- views ---------------------------------------------------------------------------------

    @property
    def primary(self) -> str | None:
        """The node writes go to now (None while no primary is known or in a split brain)."""
        return None if self._split_brain else self._primary

    @property
    def split_brain(self) -> bool:
        return self._split_brain

    @property
    def names(self) -> tuple[str, ...]:
        return self._order

    def replicas(self) -> tuple[str, ...]:
        """Nodes currently in the replica role (a promoted one leaves, a demoted one joins)."""
        return tuple(
            n for n in self._order if self._nodes[n].role is Target.REPLICA and n != self._primary
        )

    def snapshot(self) -> dict[str, NodeState]:
        """A copy of every node's state, by name, in configuration order."""
        with self._lock:
            return {name: self._nodes[name].copy() for name in self._order}

    def is_blacklisted(self, name: str) -> bool:
        state = self._nodes[name]
        return state.down_until is not None and self._clock.monotonic() < state.down_until

    def weight(self, name: str) -> float:
        weights = self.config.weights
        return 1.0 if weights is None else float(weights.get(name, 1.0))

    # -- health --------------------------------------------------------------------------------

    def record_failure(self, name: str) -> float | None:
        """A connection to ``name`` failed: blacklist it; returns the blacklist seconds.

        Returns None when the node was already blacklisted (another failure of
        the same incident, which does not extend the period).

        A failure of the primary also asks for a role check (it may have been
        demoted or replaced).
        """
        with self._lock:
            state = self._nodes[name]
            now = self._clock.monotonic()
            if state.down_until is not None and now < state.down_until:
                # Already out: other in-flight failures of the same incident do not extend it.
                return None
            self._fast = None
            state.failures += 1
            period = float(
                min(
                    self.config.blacklist_seconds * 2 ** min(state.failures - 1, 32),
                    self.config.max_blacklist_seconds,
                )
            )
            state.down_until = now + period
            if state.down_since is None:
                state.down_since = now
            if name == self._primary or name in self._standby_primaries:
                self._role_check_wanted = True
            return period

    def record_success(self, name: str) -> float | None:
        """A connection to ``name`` worked; returns the seconds it was down if it was readmitted."""
        state = self._nodes[name]
        if state.failures == 0 and state.down_until is None:
            return None  # the fast path: no lock
        with self._lock:
            if state.down_until is not None and self._clock.monotonic() < state.down_until:
                return None  # an old connection succeeded; the node stays out until probed
            self._fast = None
            down_for = None
            if state.down_since is not None:
                down_for = self._clock.monotonic() - state.down_since
            state.failures = 0
            state.down_until = None
            state.down_since = None
            return down_for

    def request_role_check(self) -> None:
        """Ask for a role check at the next chance (e.g. after SQLSTATE 25006 on the primary)."""
        self._role_check_wanted = True
        self._fast = None

    def role_check_due(self) -> bool:
        """Whether the shell should check every node's role now."""
        if not self._role_check_wanted and self._primary is not None and not self._split_brain:
            return False
        last = self._last_role_check
        return last is None or self._clock.monotonic() - last >= self.config.role_check_interval

    def check_due(self) -> bool:
        """Whether the periodic health/lag check should run now."""
        interval = self.config.check_interval
        if interval is None:
            return False
        last = self._last_check
        return last is None or self._clock.monotonic() - last >= interval

    def mark_checked(self) -> None:
        self._last_check = self._clock.monotonic()

    def observe_position(
        self,
        name: str,
        *,
        in_recovery: bool,
        lsn: int | None,
        server_time: float | None = None,
        replay_time: float | None = None,
    ) -> bool:
        """Record a health check's answer for ``name``; returns True when its lag state flipped.

        ``in_recovery`` is ``pg_is_in_recovery()``; ``lsn`` the primary's flushed
        WAL position, or a replica's replayed one; ``server_time`` the node's
        clock (Unix seconds) and ``replay_time`` a replica's
        ``pg_last_xact_replay_timestamp()`` (Unix seconds, None when unknown).
        Check the primary first: a replica's lag is measured against it.
        """
        with self._lock:
            now = self._clock.monotonic()
            state = self._nodes[name]
            state.reachable = True
            if not in_recovery:
                if name == self._primary:
                    if lsn is not None:
                        self._samples.add(now, lsn)
                    if server_time is not None:
                        self._primary_clock = (now, server_time)
                elif state.same_server_as is not None:
                    flipped = state.lagging
                    state.lag_bytes, state.lag_seconds, state.lagging = 0, 0.0, False
                    if flipped:
                        self._fast = None
                    return flipped
                return False
            state.replay_lsn = (
                lsn if state.replay_lsn is None or lsn is None else max(lsn, state.replay_lsn)
            )
            self._refresh_reached()
            state.position_checked_at = now
            commit_age = None
            if replay_time is not None:
                clock = self._primary_clock
                primary_now = server_time if clock is None else clock[1] + (now - clock[0])
                if primary_now is not None:
                    commit_age = max(0.0, primary_now - replay_time)
            flipped = self._update_lag(state, now, commit_age)
            if flipped:
                self._fast = None
            return flipped

    def observe_replay(self, name: str, lsn: int | None) -> None:
        """Record a replica's replayed position seen by a read-your-writes probe."""
        with self._lock:
            state = self._nodes[name]
            state.position_checked_at = self._clock.monotonic()
            if lsn is not None and (state.replay_lsn is None or lsn > state.replay_lsn):
                state.replay_lsn = lsn
                self._refresh_reached()

    def _refresh_reached(self) -> None:
        # Under the lock, after a replica's replayed position changed: the plans'
        # cached position follows (a lower one, too, should a position ever drop).
        plans = self._fast
        if plans is not None:
            self._fast_reached = self._reached([n for n in plans[0] if n != self._primary])

    def observe_unreachable(self, name: str) -> None:
        with self._lock:
            self._nodes[name].reachable = False

    def _update_lag(self, state: NodeState, now: float, commit_age: float | None) -> bool:
        latest = self._samples.latest
        if state.replay_lsn is None or latest is None:
            state.lag_bytes = None
            state.lag_seconds = None
            return False
        state.lag_bytes = max(0, latest - state.replay_lsn)
        lower, upper = self._samples.bounds(now, state.replay_lsn)
        if commit_age is not None and state.lag_bytes > 0:
            # Behind the primary: the last replayed commit's age is an upper bound that
            # holds from the first check; the samples keep it within what they prove.
            lower = max(lower, commit_age if upper is None else min(commit_age, upper))
        state.lag_seconds = lower
        over = self._over_limit(state, ratio=1.0)
        if state.lagging:
            still = self._over_limit(state, ratio=self.config.lag_readmit_ratio, inclusive=True)
            if not still:
                state.lagging = False
                return True
            return False
        if over:
            state.lagging = True
            return True
        return False

    def _over_limit(self, state: NodeState, *, ratio: float, inclusive: bool = False) -> bool:
        def beyond(value: float, limit: float) -> bool:
            return value >= limit * ratio if inclusive else value > limit * ratio

        config = self.config
        if (
            config.max_lag_seconds is not None
            and state.lag_seconds is not None
            and beyond(state.lag_seconds, config.max_lag_seconds)
        ):
            return True
        return (
            config.max_lag_bytes is not None
            and state.lag_bytes is not None
            and beyond(state.lag_bytes, config.max_lag_bytes)
        )

    def apply_roles(
        self,
        roles: Mapping[str, Target | None],
        servers: Mapping[str, Hashable] | None = None,
    ) -> RoleChange:
        """Apply a role check: ``roles[name]`` is the role a node reported, None if unreachable.

        ``servers`` gives the server identity of nodes that reported being a
        primary (the shell reads it when several did); nodes with one identity
        reach one server, which counts once. Of those, the current primary (or
        the first configured primary, or the first node) takes the writes and
        the others serve reads as replicas that are never behind
        (``same_server_as``).

        Nodes missing from ``roles`` keep their role. Exactly one primary server
        seen: writes go there. None: no primary until a later check. Several:
        split brain, writes are refused (reads carry on).
        """
        with self._lock:
            self._fast = None
            self._last_role_check = self._clock.monotonic()
            reported = tuple(n for n in self._order if roles.get(n, None) is Target.PRIMARY)
            aliases = self._same_server(reported, servers or {})
            for name, role in roles.items():
                state = self._nodes[name]
                state.reachable = role is not None
                if role is not None:
                    state.same_server_as = aliases.get(name)
                    state.role = Target.REPLICA if name in aliases else role
            primaries = tuple(n for n in reported if n not in aliases)
            old = None if self._split_brain else self._primary
            if len(primaries) == 1:
                self._primary = primaries[0]
                self._split_brain = False
                self._role_check_wanted = False
            elif len(primaries) > 1:
                self._split_brain = True
            else:
                self._primary = None
                self._split_brain = False
            return RoleChange(old, self.primary, self._split_brain, primaries)

    def _same_server(
        self, reported: tuple[str, ...], servers: Mapping[str, Hashable]
    ) -> dict[str, str]:
        """Nodes among ``reported`` that reach the server of another one: alias -> kept node."""
        groups: dict[Hashable, list[str]] = {}
        for name in reported:
            identity = servers.get(name)
            if identity is not None:
                groups.setdefault(identity, []).append(name)
        aliases: dict[str, str] = {}
        for members in groups.values():
            if len(members) < 2:
                continue
            kept = next(
                (n for n in members if n == self._primary),
                next(
                    (n for n in members if self._nodes[n].configured_role is Target.PRIMARY),
                    members[0],
                ),
            )
            for name in members:
                if name != kept:
                    aliases[name] = kept
        return aliases

    # -- choice --------------------------------------------------------------------------------

    def choose_write(self) -> str:
        """The node a write goes to.

        Raises:
            NoHealthyNode: (``role="primary"``) when no primary is known, in a
                split brain, or the primary is blacklisted.
        """
        if self._split_brain:
            raise NoHealthyNode(
                "primary",
                tried=tuple(n for n in self._order if self._nodes[n].role is Target.PRIMARY),
                reason="more than one node reports being a primary; writes are refused",
            )
        primary = self._primary
        if primary is None:
            raise NoHealthyNode("primary", tried=self._order, reason="no node accepts writes")
        return primary

    def _eligible(self, now: float) -> list[str]:
        out = []
        for name in self._order:
            state = self._nodes[name]
            if state.role is not Target.REPLICA or name == self._primary:
                continue
            if _out(state, now):
                continue
            if state.lagging:
                continue
            out.append(name)
        return out

    def _balance(self, candidates: list[str], in_use: Mapping[str, int] | None) -> list[str]:
        """Order ``candidates``: the balancer's choice first, then the others."""
        if len(candidates) <= 1:
            return candidates
        balancer = self.config.balancer
        weights = self.config.weights
        if balancer == "least_in_use" and in_use is not None:
            start = self._rr % len(candidates)
            self._rr += 1
            rotated = candidates[start:] + candidates[:start]
            return sorted(rotated, key=lambda n: in_use.get(n, 0) / self.weight(n))
        if balancer == "random":
            if weights is None:
                first = self._rng.randrange(len(candidates))
            else:
                first = self._rng.choices(
                    range(len(candidates)), [self.weight(n) for n in candidates]
                )[0]
            return [candidates[first], *candidates[first + 1 :], *candidates[:first]]
        if weights is not None:
            # Smooth weighted round robin (nginx): even spread, exact proportions.
            total = 0.0
            best = candidates[0]
            for name in candidates:
                weight = self.weight(name)
                total += weight
                self._wrr[name] = self._wrr.get(name, 0.0) + weight
                if self._wrr[name] > self._wrr[best]:
                    best = name
            self._wrr[best] -= total
            first = candidates.index(best)
        else:
            first = self._rr % len(candidates)
            self._rr += 1
        return [*candidates[first:], *candidates[:first]]

    def choose_read(
        self,
        context: ContextState,
        *,
        in_use: Mapping[str, int] | None = None,
        probed: bool = False,
        exclude: frozenset[str] = frozenset(),
    ) -> ReadPlan:
        """Plan a read for ``context``.

        ``in_use`` gives checked-out connections per node (for
        ``least_in_use``); ``probed`` says the shell has just probed the
        replicas this plan asked for; ``exclude`` names nodes that already
        failed for this read.

        Raises:
            NoHealthyNode: (``role="replica"``) when no replica can serve and
                ``fallback_to_primary`` is off, or there is no primary either.
        """
        with self._lock:
            return self._choose_read(context, in_use, probed, exclude)

    def _primary_fallback(self, exclude: frozenset[str]) -> tuple[str, ...]:
        # In a split brain writes are refused, but reads may still use the last primary
        # every node agreed on: reading cannot make the divergence worse.
        primary = self._primary
        if primary is None or primary in exclude:
            return ()
        return (primary,)

    def _choose_read(
        self,
        context: ContextState,
        in_use: Mapping[str, int] | None,
        probed: bool,
        exclude: frozenset[str],
    ) -> ReadPlan:
        now = self._clock.monotonic()
        config = self.config
        if context.force is Target.PRIMARY:
            return self._on_primary("forced_primary", exclude)
        token = None if config.consistency == "none" else context.token
        forced_replica = context.force is Target.REPLICA
        # Time-based stickiness: asked for, or a token without an LSN (no PostgreSQL).
        if (
            token is not None
            and not forced_replica
            and (config.consistency == "time" or token.lsn is None)
            and self._clock.time() < token.written_at + config.sticky_seconds
        ):
            return self._on_primary("sticky", exclude)
        if token is not None and config.consistency == "time":
            token = None  # past the sticky period: any replica will do
        eligible = [n for n in self._eligible(now) if n not in exclude]
        reason = "replica"
        if eligible and token is not None and token.lsn is not None and not forced_replica:
            caught_up = [
                n
                for n in eligible
                if self._nodes[n].same_server_as is not None
                or ((lsn := self._nodes[n].replay_lsn) is not None and lsn >= token.lsn)
            ]
            if not caught_up:
                if not probed:
                    interval = config.lsn_probe_interval
                    stale = tuple(
                        n
                        for n in eligible
                        if (at := self._nodes[n].position_checked_at) is None
                        or now - at >= interval
                    )
                    if stale:
                        probe = tuple(self._balance(list(stale), in_use))
                        return ReadPlan((), "probe", probe=probe)
                return self._on_primary("token_ahead", exclude)
            eligible = caught_up
            reason = "caught_up"
        if eligible:
            self._spill.record(now, spilled=False)
            fallback = () if not config.fallback_to_primary else self._primary_fallback(exclude)
            if (
                self._fast is None
                and token is None
                and context.force is None
                and not exclude
                and self._fast_allowed
            ):
                self._build_fast(eligible, fallback)
            return ReadPlan((*self._balance(eligible, in_use), *fallback), reason)
        # No eligible replica: lagging ones may still be up.
        lagging = [
            n
            for n in self.replicas()
            if n not in exclude and self._nodes[n].lagging and not _out(self._nodes[n], now)
        ]
        if lagging and token is None:
            share = self._spill.share_if_spilled(now)
            if share > config.max_primary_read_share or not config.fallback_to_primary:
                self._spill.record(now, spilled=False)
                least = min(lagging, key=lambda n: self._nodes[n].lag_bytes or 0)
                return ReadPlan((least,), "spill_capped")
            self._spill.record(now, spilled=True)
            attempts = self._require_primary("all_lagging", exclude)
            return ReadPlan(attempts, "all_lagging", spill=True)
        return self._on_primary("no_replica", exclude)

    def _build_fast(self, eligible: list[str], fallback: tuple[str, ...]) -> None:
        # Only when nothing can change the plan but the rotation: every node up and not on
        # probation, none lagging, one settled primary. Then every replica is eligible.
        if self._split_brain or self._role_check_wanted or self._primary is None:
            return
        for state in self._nodes.values():
            if state.down_until is not None or state.lagging or state.failures:
                return
        self._fast_reached = self._reached(eligible)
        self._fast = tuple(
            (*eligible[start:], *eligible[:start], *fallback) for start in range(len(eligible))
        )

    def _reached(self, replicas: Sequence[str]) -> int | float:
        """The position every one of ``replicas`` has replayed (-1: unknown, or no LSN mode)."""
        mode = self.config.consistency
        if mode == "none":
            return math.inf  # tokens are ignored: every read may take the fast path
        if mode == "time":
            return -1
        reached: int | float = math.inf
        for name in replicas:
            state = self._nodes[name]
            if state.same_server_as is not None:
                continue  # the primary's own server: never behind
            if state.replay_lsn is None:
                return -1
            reached = min(reached, state.replay_lsn)
        return reached

    def fast_read(self, context: ContextState) -> tuple[str, ...] | None:
        """The attempts of a plain read, in O(1), or None when the full plan is needed.

        Gives exactly what :meth:`choose_read` would give (same balancer order, no
        probe, reason ``"replica"`` or ``"caught_up"``) when ``context`` has no forced
        role or pending write, no token or one every replica is known to have
        replayed (compared with the position cached with the plans), and every
        node is healthy, no replica lags, roles are settled and no health check
        is due; returns None otherwise. The shells call it first
        and fall back to the full plan on None.
        """
        plans = self._fast
        if plans is None or context.force is not None or context.pending_write_at is not None:
            return None
        token = context.token
        if token is not None:
            # Satisfied when every replica of the plans has replayed past it: one
            # comparison with the cached position (an LSN-less token never is).
            lsn = token.lsn
            if lsn is None or lsn > self._fast_reached:
                return None
        interval = self.config.check_interval
        if interval is not None or self._track_spill:
            now = self._clock.monotonic()
            if interval is not None:
                last = self._last_check
                if last is None or now - last >= interval:
                    return None  # the shell must run the health check first
            if self._track_spill:
                with self._lock:
                    self._spill.record(now, spilled=False)
        count = len(plans)
        if count == 1:
            return plans[0]
        if self._fast_random:
            return plans[self._rng.randrange(count)]
        # Unlocked on purpose: a lost increment under a race only skews the rotation once.
        start = self._rr
        self._rr = start + 1
        return plans[start % count]

    def _require_primary(self, reason: str, exclude: frozenset[str]) -> tuple[str, ...]:
        attempts = self._primary_fallback(exclude)
        if not attempts:
            raise NoHealthyNode(
                "replica", tried=tuple(sorted(exclude)) or self.replicas(), reason=reason
            )
        return attempts

    def _on_primary(self, reason: str, exclude: frozenset[str]) -> ReadPlan:
        if reason == "no_replica" and not self.config.fallback_to_primary:
            raise NoHealthyNode(
                "replica",
                tried=tuple(sorted(exclude)) or self.replicas(),
                reason="no healthy replica and fallback_to_primary is off",
            )
        return ReadPlan(self._require_primary(reason, exclude), reason)
