"""The sync driver: run a plain function through a breaker.

The hot path (a consecutive-failure breaker with local state, closed) reads
one attribute to be admitted, runs the function with no lock held, and takes
the lock once to record the success. Everything else goes through
:func:`_call_full`, which reads the clock and classifies results.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from scalekit.breaker._config import SUCCESS
from scalekit.errors import CircuitOpenError

if TYPE_CHECKING:
    from scalekit.breaker._breaker import CircuitBreaker

__all__ = ["call_sync", "wrap_sync"]

P = ParamSpec("P")
T = TypeVar("T")


def call_sync(
    breaker: CircuitBreaker,
    func: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    """Run ``func(*args, **kwargs)`` through ``breaker``; see :meth:`CircuitBreaker.call`."""
    if breaker._fast:
        core = breaker._core
        ticket = core.free_ticket
        if ticket is not None:
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                breaker._finish_sync(ticket, breaker._policy.classify_exception(exc), None, exc)
                raise
            if core._consecutive:
                with breaker._lock:
                    core.record(ticket, SUCCESS, None, 0.0)
            else:
                # No failure streak to reset: counting is the whole record, and
                # next() on itertools.count is atomic, so no lock is needed.
                next(breaker._lockless_successes)
            return result
    return _call_full(breaker, func, args, kwargs)


def _call_full(
    breaker: CircuitBreaker,
    func: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    ticket = breaker._core.free_ticket if breaker._shared is None else None
    try:
        if ticket is None:
            ticket = breaker._acquire_sync()
    except CircuitOpenError:
        fallback = breaker._fallback
        if fallback is None:
            raise
        fallback_result: T = fallback(*args, **kwargs)
        return fallback_result
    listeners = breaker._listeners
    if listeners is not None:
        listeners.before_call(breaker, func, args, kwargs)
    clock = breaker._clock
    start = clock.monotonic() if breaker._timed else 0.0
    try:
        result = func(*args, **kwargs)
    except BaseException as exc:
        duration = clock.monotonic() - start if breaker._timed else None
        breaker._finish_sync(ticket, breaker._policy.classify_exception(exc), duration, exc)
        raise
    duration = clock.monotonic() - start if breaker._timed else None
    outcome = SUCCESS
    if breaker._policy.failure_result is not None:
        try:
            outcome = breaker._policy.classify_result(result)
        except BaseException:
            breaker._finish_sync(ticket, SUCCESS, duration, None)
            raise
    if breaker._local:
        # Local state and no listeners: record right here, two calls fewer per call.
        core = breaker._core
        now = clock.monotonic()
        with breaker._lock:
            core.record(ticket, outcome, duration, now)
        if core.transitions:
            breaker._announce()
        return result
    breaker._finish_sync(ticket, outcome, duration, None)
    return result


def wrap_sync(breaker: CircuitBreaker, func: Callable[P, T]) -> Callable[P, T]:
    """Decorate a plain function; the wrapper keeps ``func``'s signature and metadata.

    For a breaker on the fast path the wrapper inlines :func:`call_sync`'s
    hot path (one Python frame less per call); its logic is the same.
    """
    if breaker._local and not breaker._fast:
        return _wrap_local(breaker, func)
    if not breaker._fast:

        @functools.wraps(func)
        def guarded_full(*args: P.args, **kwargs: P.kwargs) -> T:
            return _call_full(breaker, func, args, kwargs)

        guarded_full.breaker = breaker  # type: ignore[attr-defined]
        return guarded_full

    core = breaker._core
    lock = breaker._lock
    lockless_successes = breaker._lockless_successes
    classify = breaker._policy.classify_exception

    @functools.wraps(func)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        ticket = core.free_ticket
        if ticket is None:
            return _call_full(breaker, func, args, kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            breaker._finish_sync(ticket, classify(exc), None, exc)
            raise
        if core._consecutive:
            with lock:
                core.record(ticket, SUCCESS, None, 0.0)
        else:
            next(lockless_successes)
        return result

    guarded.breaker = breaker  # type: ignore[attr-defined]
    return guarded


def _wrap_local(breaker: CircuitBreaker, func: Callable[P, T]) -> Callable[P, T]:
    """The wrapper for a local breaker that needs the full path (rate windows, slow
    calls, result checks) but no listeners: :func:`_call_full` inlined for a closed
    circuit, with everything it looks up bound once."""
    core = breaker._core
    lock = breaker._lock
    monotonic = breaker._clock.monotonic
    timed = breaker._timed
    policy = breaker._policy
    classify = policy.classify_exception
    check_result = policy.failure_result is not None

    @functools.wraps(func)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        ticket = core.free_ticket
        if ticket is None:
            return _call_full(breaker, func, args, kwargs)
        start = monotonic() if timed else 0.0
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            duration = monotonic() - start if timed else None
            breaker._finish_sync(ticket, classify(exc), duration, exc)
            raise
        now = monotonic()
        duration = now - start if timed else None
        outcome = SUCCESS
        if check_result:
            try:
                outcome = policy.classify_result(result)
            except BaseException:
                breaker._finish_sync(ticket, SUCCESS, duration, None)
                raise
        with lock:
            core.record(ticket, outcome, duration, now)
        if core.transitions:
            breaker._announce()
        return result

    guarded.breaker = breaker  # type: ignore[attr-defined]
    return guarded
