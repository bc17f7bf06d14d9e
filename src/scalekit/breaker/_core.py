"""The circuit breaker's pure core: a table-driven state machine.

Theory of operation
-------------------

The core decides; it never calls anything, never sleeps, never locks and
never reads a clock: every method that needs the time takes ``now`` (seconds
on a monotonic clock). The shells (:mod:`scalekit.breaker._sync`,
:mod:`scalekit.breaker._async`) hold a lock around each core call, read the
clock, run the user's function *outside* the lock, and emit the transitions
the core queued.

States and what moves between them are written once, in :data:`TRANSITIONS`::

    CLOSED     --TRIP-------------> OPEN        a trip rule fired
    OPEN       --OPEN_ELAPSED-----> HALF_OPEN   open duration over; a caller arrived
    HALF_OPEN  --PROBES_PASSED----> CLOSED      success_threshold probes succeeded
    HALF_OPEN  --PROBE_FAILED-----> OPEN        a probe failed or was slow
    any        --MANUAL_OPEN------> OPEN        open(): opens for the open duration
    any        --MANUAL_CLOSE-----> CLOSED      close(): resets everything
    any        --FORCE_OPEN-------> FORCED_OPEN rejects until close()
    any        --DISABLE----------> DISABLED    admits everything, never trips

A call first *acquires*: :meth:`BreakerCore.acquire` returns an int ticket
(admitted) or ``None`` (rejected; :meth:`BreakerCore.retry_after` says for how
long). The ticket comes back with the outcome in :meth:`BreakerCore.record`.
Tickets >= 0 are the *generation* the call was admitted in; every state
change starts a new generation, so a call admitted before a trip cannot sway
the state after it. Tickets < 0 name a half-open probe (``-probe_id``); the
core keeps each probe's deadline, so at most ``half_open_max_calls`` probes
are out at once and a probe that never reports frees its slot after
``probe_timeout``.

While CLOSED or DISABLED, admission needs no decision at all: the shells read
:attr:`BreakerCore.free_ticket` (an int, or ``None`` in other states) without
the lock. That single attribute read is the whole acquire on the hot path.

A success that cannot change any decision is not recorded under the lock
either. While the breaker is closed with no failure streak and its rate
window holds no failure and no slow call (a *clean* window), a success can
never trip it: the failure and slow-call counts stay zero and the rates
are positive. The core then publishes :attr:`BreakerCore.tally_until` (the
end of the current time bucket, or ``inf`` for a count window; ``-inf``
when a success must be recorded) and the shells count such a success with
``next(core.tally)`` alone, one atomic step of an ``itertools.repeat`` that
counts down (it returns ``None``: nothing is allocated per success). The core
folds the tally into the window (:meth:`BreakerCore.fold`) under the lock
before it records anything else or reads the window, so every decision and
snapshot sees the successes in arrival order. A success racing a failure
(it read ``tally_until`` just before the failure closed the tally) is folded
at the next fold: concurrent calls have no order to keep.
"""

from __future__ import annotations

import enum
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from scalekit.breaker._config import FAILURE, IGNORED, SUCCESS, BreakerPolicy

__all__ = [
    "CLOSED",
    "DISABLED",
    "FORCED_OPEN",
    "HALF_OPEN",
    "OPEN",
    "TRANSITIONS",
    "BreakerCore",
    "CountWindow",
    "State",
    "TimeWindow",
    "Transition",
    "Trigger",
    "is_slow",
]


class State(str, enum.Enum):
    """The states of a circuit breaker (values are the names used in events and Redis)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"

    def __str__(self) -> str:
        return self.value


# Enum member lookups (``State.CLOSED``) cost about 0.3 µs each on Python 3.11;
# the hot paths compare against these module constants instead.
CLOSED: Final = State.CLOSED
OPEN: Final = State.OPEN
HALF_OPEN: Final = State.HALF_OPEN
FORCED_OPEN: Final = State.FORCED_OPEN
DISABLED: Final = State.DISABLED


class Trigger(str, enum.Enum):
    """What moves a breaker from one state to another."""

    TRIP = "trip"
    OPEN_ELAPSED = "open_elapsed"
    PROBES_PASSED = "probes_passed"
    PROBE_FAILED = "probe_failed"
    MANUAL_OPEN = "manual_open"
    MANUAL_CLOSE = "manual_close"
    FORCE_OPEN = "force_open"
    DISABLE = "disable"

    def __str__(self) -> str:
        return self.value


_MANUAL: Final = {
    Trigger.MANUAL_OPEN: OPEN,
    Trigger.MANUAL_CLOSE: CLOSED,
    Trigger.FORCE_OPEN: FORCED_OPEN,
    Trigger.DISABLE: DISABLED,
}

#: The whole state machine: (state, trigger) -> next state. A pair missing
#: here cannot happen; :meth:`BreakerCore.fire` raises ``LookupError`` on it.
TRANSITIONS: Final[dict[tuple[State, Trigger], State]] = {
    (CLOSED, Trigger.TRIP): OPEN,
    (OPEN, Trigger.OPEN_ELAPSED): HALF_OPEN,
    (HALF_OPEN, Trigger.PROBES_PASSED): CLOSED,
    (HALF_OPEN, Trigger.PROBE_FAILED): OPEN,
    **{(state, trigger): target for state in State for trigger, target in _MANUAL.items()},
}


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, queued by the core for the shell to announce."""

    old: State
    new: State
    trigger: Trigger
    reason: str
    at: float
    open_for: float | None = None  # seconds it stays open, when it opened


# Window cell codes: bit 0 = failure, bit 1 = slow.
_SLOW: Final = 2
_INF: Final = float("inf")
_NO_TALLY: Final = float("-inf")
#: :attr:`BreakerCore.tally_ticket` when no success may be tallied (hot-path tickets are >= 0).
_NO_TICKET: Final = -1
#: The successes :attr:`BreakerCore.tally` can count (2**63 - 1: centuries of calls).
_TALLY_SPAN: Final = sys.maxsize
#: Whether the tally is that countdown: a 32-bit build's 2**31 steps could run
#: out in days, so there it is an ``itertools.count``, read through its repr.
_COUNTDOWN_TALLY = _TALLY_SPAN >= 2**63 - 1


class CountWindow:
    """The outcomes of the last ``size`` calls, as running totals over a ring."""

    __slots__ = ("_cells", "_next", "calls", "failures", "size", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self._cells = bytearray(size)  # 0 = empty, else code + 4
        self._next = 0
        self.calls = self.failures = self.slow = 0

    def add(self, code: int, now: float) -> bool:
        """Count one call; False when the totals did not change (nothing to evaluate)."""
        index = self._next
        old = self._cells[index]
        cell = code + 4
        if old == cell:
            # Steady state (a success replacing a success): the totals do not move.
            self._next = index + 1 if index + 1 < self.size else 0
            return False
        if old:
            old -= 4
            self.calls -= 1
            self.failures -= old & 1
            self.slow -= old >> 1
        self._cells[index] = cell
        self.calls += 1
        self.failures += code & 1
        self.slow += code >> 1
        self._next = index + 1 if index + 1 < self.size else 0
        return True

    def totals(self, now: float) -> tuple[int, int, int]:
        """(calls, failures, slow calls) in the window."""
        return self.calls, self.failures, self.slow

    def add_successes(self, count: int, epoch: int) -> None:
        """Count ``count`` successes into a window holding no failure and no slow call.

        Such a window holds only successes, filled from cell 0 up while it is
        not full, so the new successes fill the empty cells after them and
        the ring position moves on by ``count`` (``epoch`` is unused).
        """
        calls = self.calls
        if calls < self.size:
            filled = min(self.size, calls + count)
            self._cells[calls:filled] = b"\x04" * (filled - calls)
            self.calls = filled
        self._next = (self._next + count) % self.size

    def reset(self) -> None:
        self._cells = bytearray(self.size)
        self._next = 0
        self.calls = self.failures = self.slow = 0


class TimeWindow:
    """The outcomes of the last ``seconds``, in ``buckets`` buckets of equal width.

    Buckets are reused round-robin; a bucket whose epoch is older than the
    window is subtracted from the totals before it is reused or read, so the
    totals always cover exactly the buckets of the last ``seconds``.
    """

    __slots__ = (
        "_bucket_calls",
        "_bucket_failures",
        "_bucket_slow",
        "_head",
        "_width",
        "buckets",
        "calls",
        "failures",
        "seconds",
        "slow",
    )

    def __init__(self, seconds: float, buckets: int) -> None:
        self.seconds = seconds
        self.buckets = buckets
        self._width = seconds / buckets
        self.reset()

    def reset(self) -> None:
        self._bucket_calls = [0] * self.buckets
        self._bucket_failures = [0] * self.buckets
        self._bucket_slow = [0] * self.buckets
        self._head: int | None = None  # epoch (bucket number) of the newest bucket
        self.calls = self.failures = self.slow = 0

    def _advance(self, now: float) -> int:
        epoch = int(now // self._width)
        head = self._head
        if head is None:
            self._head = epoch
            return epoch
        if epoch > head:
            # Clear every bucket between the old head and the new one (at most all).
            for stale in range(head + 1, min(epoch, head + self.buckets) + 1):
                slot = stale % self.buckets
                self.calls -= self._bucket_calls[slot]
                self.failures -= self._bucket_failures[slot]
                self.slow -= self._bucket_slow[slot]
                self._bucket_calls[slot] = self._bucket_failures[slot] = 0
                self._bucket_slow[slot] = 0
            self._head = epoch
            return epoch
        # A clock read before a concurrent later one: count it in the newest bucket.
        return head

    def add(self, code: int, now: float) -> bool:
        """Count one call at ``now``; True (buckets may have expired: always evaluate)."""
        epoch = int(now // self._width)
        if epoch != self._head:  # a new bucket (or a late clock read): move the window
            epoch = self._advance(now)
        slot = epoch % self.buckets
        self._bucket_calls[slot] += 1
        self.calls += 1
        if code & 1:
            self._bucket_failures[slot] += 1
            self.failures += 1
        if code & _SLOW:
            self._bucket_slow[slot] += 1
            self.slow += 1
        return True

    def totals(self, now: float) -> tuple[int, int, int]:
        """(calls, failures, slow calls) in the window ending at ``now``."""
        self._advance(now)
        return self.calls, self.failures, self.slow

    def add_successes(self, count: int, epoch: int) -> None:
        """Count ``count`` successes made in bucket ``epoch`` (dropped once it expired)."""
        head = self._head
        if head is None or epoch > head or epoch <= head - self.buckets:
            return
        self._bucket_calls[epoch % self.buckets] += count
        self.calls += count

    def bucket_end(self, now: float) -> tuple[int, float]:
        """The newest bucket's epoch and the time it ends (the window advanced to ``now``)."""
        epoch = self._advance(now)
        return epoch, (epoch + 1) * self._width


def is_slow(policy: BreakerPolicy, outcome: int, duration: float | None) -> bool:
    """Whether a call counts as slow: it took at least ``slow_call_seconds`` and
    was not ignored. The one slow-call rule, for the core and the Redis state."""
    seconds = policy.slow_call_seconds
    return (
        seconds is not None and duration is not None and duration >= seconds and outcome != IGNORED
    )


class BreakerCore:
    """The state machine of one circuit breaker. Not thread-safe: shells lock.

    >>> core = BreakerCore(BreakerPolicy(fail_max=2, reset_timeout=10.0))
    >>> ticket = core.acquire(now=0.0)
    >>> core.record(ticket, FAILURE, None, now=0.1)
    >>> core.record(core.acquire(0.2), FAILURE, None, now=0.3)
    >>> core.state, core.acquire(now=1.0), core.retry_after(now=1.0)
    (<State.OPEN: 'open'>, None, 9.3)
    """

    __slots__ = (
        "_folded",
        "_next_probe",
        "_probe_successes",
        "_probes",
        "_tally_epoch",
        "_tallying",
        "_untallied",
        "_window",
        "consecutive_openings",
        "failures",
        "free_ticket",
        "generation",
        "ignored",
        "open_for",
        "open_until",
        "opened_at",
        "policy",
        "rejected",
        "slow_calls",
        "state",
        "state_since",
        "streak",
        "successes",
        "tally",
        "tally_ticket",
        "tally_until",
        "transitions",
    )

    def __init__(self, policy: BreakerPolicy, now: float = 0.0) -> None:
        self.policy = policy
        self.state = CLOSED
        self.state_since = now
        self.generation = 0
        self.free_ticket: int | None = 0
        self.opened_at: float | None = None
        self.open_until = 0.0
        self.open_for = 0.0  # the open duration of the current opening, as configured
        self.consecutive_openings = 0
        #: Consecutive failures (public so a driver's hot path can read it).
        self.streak = 0
        self._probes: dict[int, float] = {}
        self._probe_successes = 0
        self._next_probe = 1
        self._window: CountWindow | TimeWindow | None = None
        if policy.trip_on_rate:
            if policy.window_seconds is not None:
                self._window = TimeWindow(policy.window_seconds, policy.window_buckets)
            else:
                assert policy.window is not None
                self._window = CountWindow(policy.window)
        self.transitions: list[Transition] = []
        self.successes = self.failures = self.ignored = self.rejected = self.slow_calls = 0
        #: Successes the shells counted without the lock (see the module docstring).
        self.tally: Iterator[object] = (
            itertools.repeat(None, _TALLY_SPAN) if _COUNTDOWN_TALLY else itertools.count()
        )
        self._folded = 0  # the tally's value already folded into the window
        self._tally_epoch = 0  # the time bucket the tallied successes belong to
        self._tallying = False  # whether tally_until admitted a tally since the last fold
        self._untallied = False  # the shell never tallies (stop_tally): skip the bookkeeping
        #: A success made before this monotonic time, with the current
        #: generation's ticket, may be counted with ``next(tally)`` alone.
        self.tally_until = _NO_TALLY
        #: The ticket a success may be tallied with when no clock is read:
        #: :attr:`free_ticket` while :attr:`tally_until` is ``inf``, else ``-1``
        #: (one attribute read on the clockless hot path, not two; ``-1``, not
        #: ``None``: no hot-path ticket is negative, and an int compares with
        #: an int in one specialised step).
        self.tally_ticket: int | None = _NO_TICKET
        self._open_tally(now)

    # -- the lock-free success tally --------------------------------------------------

    def tallied(self) -> int:
        """How many successes the shells counted through :attr:`tally` so far."""
        tally = self.tally
        if isinstance(tally, itertools.repeat):
            # The countdown's length hint is how many steps it has left.
            return _TALLY_SPAN - tally.__length_hint__()
        # repr() reads an itertools.count without advancing it: "count(42)".
        return int(repr(tally)[6:-1])

    def fold(self) -> None:
        """Count the tallied successes into the rate window (call under the lock)."""
        if not self._tallying:
            return
        done = self.tallied()
        pending = done - self._folded
        self._folded = done
        window = self._window
        if pending and window is not None:
            window.add_successes(pending, self._tally_epoch)
        self._tallying = False
        self.tally_until = _NO_TALLY
        self.tally_ticket = _NO_TICKET

    def stop_tally(self) -> None:
        """The shell records every success under the lock from now on (listeners, a
        result check, shared state): fold what was tallied and stop publishing a tally.
        """
        self.fold()  # a closed tally already publishes -inf and -1
        self._untallied = True

    def _open_tally(self, now: float) -> None:
        """Publish :attr:`tally_until`: when may a success skip the lock?"""
        if self._untallied:
            return
        state = self.state
        window = self._window
        if state is DISABLED or (window is None and state is CLOSED and self.streak == 0):
            self.tally_until = _INF
        elif (
            state is CLOSED
            and self.streak == 0
            and window is not None
            and window.failures == 0
            and window.slow == 0
        ):
            if isinstance(window, TimeWindow):
                self._tally_epoch, self.tally_until = window.bucket_end(now)
            else:
                self.tally_until = _INF
        else:
            self.tally_until = _NO_TALLY
            self.tally_ticket = _NO_TICKET
            return
        self.tally_ticket = self.free_ticket if self.tally_until == _INF else _NO_TICKET
        # _folded stays as the last fold left it: a success that raced past a closed
        # tally is folded at the next fold.
        self._tallying = True

    # -- admission -----------------------------------------------------------------

    def acquire(self, now: float) -> int | None:
        """Admit a call (an int ticket) or reject it (``None``)."""
        state = self.state
        if state is CLOSED or state is DISABLED:
            return self.generation
        if state is OPEN:
            if now < self.open_until:
                self.rejected += 1
                return None
            self.fire(Trigger.OPEN_ELAPSED, now, "open duration elapsed")
            state = self.state
        if state is HALF_OPEN:
            probes = self._probes
            if len(probes) >= self.policy.half_open_max_calls:
                self._expire_probes(now)
                if len(probes) >= self.policy.half_open_max_calls:
                    self.rejected += 1
                    return None
            probe = self._next_probe
            self._next_probe = probe + 1
            probes[probe] = now + self.policy.probe_timeout
            return -probe
        # FORCED_OPEN
        self.rejected += 1
        return None

    def _expire_probes(self, now: float) -> None:
        for probe, deadline in list(self._probes.items()):
            if deadline <= now:
                del self._probes[probe]

    def retry_after(self, now: float) -> float | None:
        """Seconds until a call could be admitted; ``0.0`` when it could be now,
        ``None`` when forced open (only :meth:`fire` with ``MANUAL_CLOSE`` ends it).

        In HALF_OPEN with every probe slot taken this is the time until the
        oldest probe times out: the latest moment a slot frees.
        """
        state = self.state
        if state is OPEN:
            # Never more than the opening's own duration: ``(t + 60) - t`` can
            # be 60.00000000000001, and callers compare this with their caps.
            return max(min(self.open_until - now, self.open_for), 0.0)
        if state is FORCED_OPEN:
            return None
        if state is HALF_OPEN and len(self._probes) >= self.policy.half_open_max_calls:
            return max(min(self._probes.values()) - now, 0.0)
        return 0.0

    def probes_in_flight(self) -> int:
        """How many half-open probes are out and have not reported or timed out."""
        return len(self._probes)

    # -- outcomes ------------------------------------------------------------------

    def count(self, outcome: int, duration: float | None) -> bool:
        """Count one outcome in the counters; return whether the call was slow.

        The one home of the counting and slow-call rules: a call is slow when
        it took at least ``slow_call_seconds`` (``duration`` measured) and was
        not ignored. :meth:`record` counts through it, and so does a shared
        (Redis) breaker for the calls Redis decides on.
        """
        # An unmeasured call (the hot path) is never slow: skip the call.
        slow = duration is not None and is_slow(self.policy, outcome, duration)
        if outcome == SUCCESS:
            self.successes += 1
        elif outcome == FAILURE:
            self.failures += 1
        else:
            self.ignored += 1
        if slow:
            self.slow_calls += 1
        return slow

    def record(self, ticket: int, outcome: int, duration: float | None, now: float) -> None:
        """Record the outcome of the call admitted with ``ticket``.

        ``outcome`` is ``SUCCESS``, ``FAILURE`` or ``IGNORED``; ``duration``
        (seconds, or ``None`` when not measured) makes a call slow when it
        reaches ``slow_call_seconds``. A ticket from an earlier generation, or
        of a probe that timed out, only updates the counters.
        """
        if self._tallying:
            self.fold()
        self._record(ticket, outcome, duration, now)
        self._open_tally(now)

    def _record(self, ticket: int, outcome: int, duration: float | None, now: float) -> None:
        policy = self.policy
        if outcome == SUCCESS and duration is None:
            # The common case needs no rule: an unmeasured success is never slow.
            self.successes += 1
            slow = False
        else:
            slow = self.count(outcome, duration)

        if ticket < 0:
            if self._probes.pop(-ticket, None) is None or self.state is not HALF_OPEN:
                return  # stale probe: timed out, or the state moved on
            if outcome == IGNORED:
                return
            if outcome == FAILURE or slow:
                # A failed probe extends the failure streak, as in pybreaker.
                self.streak += outcome == FAILURE
                self.fire(Trigger.PROBE_FAILED, now, "slow probe" if slow else "probe failed")
                return
            self.streak = 0
            self._probe_successes += 1
            if self._probe_successes >= policy.success_threshold:
                self.fire(Trigger.PROBES_PASSED, now, f"{self._probe_successes} probe(s) succeeded")
            return

        if ticket != self.generation or self.state is not CLOSED or outcome == IGNORED:
            return
        if outcome == FAILURE:
            self.streak += 1
            if policy.fail_max is not None and self.streak >= policy.fail_max:
                self.fire(Trigger.TRIP, now, f"{self.streak} consecutive failures")
                return
        else:
            self.streak = 0
        window = self._window
        if window is None:
            return
        if not window.add(outcome | (_SLOW if slow else 0), now):
            # Same totals as after the last call, which was evaluated and did not
            # trip (every change to the window in a closed period is evaluated).
            return
        # add() brought the window up to ``now``: its totals are current.
        calls = window.calls
        min_calls = policy.min_calls
        assert min_calls is not None
        if calls < min_calls:
            return
        failures, slow_calls = window.failures, window.slow
        if policy.failure_rate is not None and failures >= policy.failure_rate * calls:
            self.fire(Trigger.TRIP, now, f"failure rate {failures}/{calls}")
        elif policy.slow_call_rate is not None and slow_calls >= policy.slow_call_rate * calls:
            self.fire(Trigger.TRIP, now, f"slow-call rate {slow_calls}/{calls}")

    # -- transitions ---------------------------------------------------------------

    def fire(self, trigger: Trigger, now: float, reason: str) -> None:
        """Apply ``trigger`` through :data:`TRANSITIONS` and queue the transition.

        Raises:
            LookupError: ``trigger`` cannot happen in the current state (a bug
                in the caller, never a user error).
            ConfigurationError: a user ``reset_timeout`` function returned a
                bad duration (the core is left unchanged).
        """
        old = self.state
        try:
            new = TRANSITIONS[(old, trigger)]
        except KeyError:
            raise LookupError(f"no transition from {old} on {trigger}") from None
        if self._tallying:
            self.fold()
        if new is OPEN:
            # Computed before any change: a user reset_timeout function that
            # raises leaves the core exactly as it was.
            open_for = self.policy.open_duration(self.consecutive_openings + 1)
            open_until = now + open_for
        self.generation += 1
        self._probes.clear()
        self._probe_successes = 0
        self.state = new
        self.state_since = now
        if new is OPEN:
            self.consecutive_openings += 1
            self.opened_at = now
            self.open_until = open_until
            self.open_for = open_for
            self.free_ticket = None
        elif new is CLOSED:
            self._reset_counts()
            self.consecutive_openings = 0
            self.opened_at = None
            self.free_ticket = self.generation
        elif new is DISABLED:
            self._reset_counts()
            self.free_ticket = self.generation
        else:
            self.free_ticket = None
        if new is not old:
            announced = self.open_for if new is OPEN else None
            self.transitions.append(Transition(old, new, trigger, reason, now, announced))
        self._open_tally(now)

    def _reset_counts(self) -> None:
        self.streak = 0
        if self._window is not None:
            self._window.reset()

    def take_transitions(self) -> list[Transition]:
        """The queued transitions, oldest first; the queue is emptied."""
        transitions = self.transitions
        self.transitions = []
        return transitions

    # -- reading -------------------------------------------------------------------

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success (pybreaker's ``fail_counter``).

        Failed half-open probes count too, and a successful probe resets it;
        the circuit closing (or being disabled) resets it as well.
        """
        return self.streak

    def window_totals(self, now: float) -> tuple[int, int, int]:
        """(calls, failures, slow calls) in the rate window; zeros without one."""
        if self._window is None:
            return 0, 0, 0
        if self._tallying:
            self.fold()
            totals = self._window.totals(now)
            self._open_tally(now)
            return totals
        return self._window.totals(now)
