"""What a breaker's two call drivers share, with no I/O: the one record path.

A :class:`Recorder` is built once per :class:`~scalekit.breaker.CircuitBreaker`
and holds what the drivers (``_async.py`` and the generated ``_sync.py``)
read on every call, bound once, so that the drivers never reach into the
breaker itself. :meth:`Recorder.record` is the one place an outcome enters
the local core (the lock, the core, the transitions it caused); the shared
(Redis) path goes through :class:`~scalekit.breaker._redis.SharedState`,
whose I/O the drivers await or call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit.breaker._config import SUCCESS
from scalekit.breaker._core import _NO_TALLY, BreakerCore, Trigger

if TYPE_CHECKING:
    import threading

    from scalekit.breaker._breaker import CircuitBreaker
    from scalekit.breaker._config import BreakerPolicy
    from scalekit.breaker._core import State
    from scalekit.breaker._pybreaker import ListenerBridge
    from scalekit.breaker._redis import SharedState
    from scalekit.typing import Clock

__all__ = ["Recorder"]


class Recorder:
    """One breaker's record path and the settings its drivers read, bound once.

    ``fast``: a consecutive-failure breaker with local state, no listeners,
    no result check and no timing (a success only ends a failure streak).
    ``local``: local state and no listeners, so an outcome goes straight to
    :meth:`record`. ``tally``: local and no result check, so the drivers'
    hot path applies: a success the core says cannot change anything (see
    :attr:`BreakerCore.tally_until <scalekit.breaker._core.BreakerCore>`) is
    counted with ``next(successes)`` alone (``next()`` on the core's
    ``itertools.repeat`` is one atomic step: no lock). ``clocked``: that hot path
    reads the clock (a time window, or slow-call timing); ``slow_below`` is
    the slow-call threshold (``inf`` without one).

    The drivers' hot path (``tally``, closed) reads one attribute to be
    admitted, runs the function with no lock held, and counts a success with
    that one atomic step or else records it under the lock; it reads the clock
    only for a time window or slow-call timing. Core calls stay synchronous and
    short (the lock is never held around the function, nor across an
    ``await``), so one breaker serves threads and tasks at once. A cancelled
    asyncio call counts as neither success nor failure and frees its permit.
    """

    __slots__ = (
        "announce",
        "breaker",
        "check_result",
        "classify",
        "classify_result",
        "clock",
        "clocked",
        "core",
        "emit_transition",
        "fallback",
        "fast",
        "listeners",
        "local",
        "lock",
        "monotonic",
        "reject",
        "shared",
        "slow_below",
        "successes",
        "tally",
        "timed",
    )

    def __init__(
        self,
        breaker: CircuitBreaker,
        core: BreakerCore,
        lock: threading.Lock,
        policy: BreakerPolicy,
        clock: Clock,
        fallback: Callable[..., Any] | None,
        listeners: ListenerBridge | None,
    ) -> None:
        self.breaker = breaker
        self.core = core
        self.lock = lock
        self.clock = clock
        # The system clock's method is a Python wrapper; the hot paths skip it.
        self.monotonic = time.monotonic if clock is SYSTEM_CLOCK else clock.monotonic
        self.classify = policy.classify_exception
        self.classify_result = policy.classify_result
        self.check_result = policy.failure_result is not None
        self.timed = policy.timed
        self.fallback = fallback
        self.listeners = listeners
        self.announce = breaker._announce
        self.reject = breaker._reject
        self.emit_transition = breaker._emit_transition
        self.successes = core.tally
        self.shared: SharedState | None = None
        self.local = listeners is None
        self.tally = listeners is None and policy.failure_result is None
        if not self.tally:
            core.stop_tally()
        self.fast = self.tally and not policy.trip_on_rate and not policy.timed
        self.clocked = policy.timed or policy.window_seconds is not None
        slow = policy.slow_call_seconds
        self.slow_below = float("inf") if slow is None else slow

    def share(self, shared: SharedState) -> None:
        """Keep the state in ``shared`` (Redis): no local fast path from now on."""
        self.shared = shared
        self.local = self.fast = self.tally = False
        self.core.stop_tally()

    def record(
        self, ticket: int, outcome: int, duration: float | None, now: float | None = None
    ) -> None:
        """Record an outcome in the local core: the one place, for every driver and path.

        A success that cannot change a decision is tallied without the lock,
        as the hot paths tally it (see :mod:`scalekit.breaker._core`).
        """
        core = self.core
        if (
            self.tally
            and outcome == SUCCESS
            and ticket >= 0  # a probe's ticket is negative, as tally_ticket is when closed
            and (duration is None or duration < self.slow_below)
        ):
            if ticket == core.tally_ticket:
                next(self.successes)
                return
            if core.tally_until != _NO_TALLY:
                if now is None:
                    now = self.monotonic()
                if now < core.tally_until and ticket == core.free_ticket:
                    next(self.successes)
                    return
        if now is None:
            now = self.monotonic()
        with self.lock:
            core.record(ticket, outcome, duration, now)
        if core.transitions:
            self.announce()

    def state(self, *, sync: bool) -> SharedState | None:
        """The shared state (None: the state is local) for a driver of one colour.

        Raises:
            ConfigurationError: ``sync`` and the storage's client is an asyncio one.
        """
        shared = self.shared
        if sync and shared is not None:
            shared.check_sync()
        return shared

    def acquire_local(self) -> int:
        """A ticket from the local core.

        Raises:
            CircuitOpenError: rejected.
        """
        core = self.core
        ticket: int | None = core.free_ticket  # closed or disabled: no decision to make
        if ticket is not None:
            return ticket
        now = self.monotonic()
        state: State | None = None
        retry_after: float | None = None
        with self.lock:
            ticket = core.acquire(now)
            if ticket is None:
                state = core.state
                retry_after = core.retry_after(now)
        if core.transitions:
            self.announce()
        if ticket is None:
            assert state is not None
            self.reject(state, retry_after)
        return ticket

    def fire_local(self, trigger: Trigger, now: float) -> None:
        """Apply a manual command to the local core (silently when Redis holds the state)."""
        with self.lock:
            self.core.fire(trigger, now, "manual")
            if self.shared is not None:
                # The shared state announced the change; the local core (the
                # fail-open fallback) follows silently.
                self.core.take_transitions()
        self.announce()

    def count_rejection(self) -> None:
        """Count a call the shared state rejected."""
        with self.lock:
            self.core.rejected += 1
