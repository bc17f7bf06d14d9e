# This file is generated from src/scalekit/breaker/_async.py by scripts/unasync.py.
# DO NOT EDIT; edit the async file and run: python scripts/unasync.py
"""The call drivers: run a function through a breaker (the sync ones are generated).

Outcomes enter the breaker through one function,
:meth:`~scalekit.breaker._base.Recorder.record` (local state) or
:func:`finish` (listeners, shared state); the hot path, and why one breaker
serves threads and tasks at once, are described on
:class:`~scalekit.breaker._base.Recorder`. Everything off the hot path goes
through :func:`_call_full`, which reads the clock and classifies results.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from scalekit.breaker._config import SUCCESS
from scalekit.errors import CircuitOpenError

if TYPE_CHECKING:
    from scalekit.breaker._base import Recorder
    from scalekit.breaker._breaker import CircuitBreaker
    from scalekit.breaker._core import Trigger
    from scalekit.breaker._redis import SharedState

__all__ = ["acquire", "call", "finish", "manual", "wrap"]

P = ParamSpec("P")
T = TypeVar("T")


def acquire(rec: Recorder) -> int:
    """A ticket for one call, from the shared state or the local core.

    Raises:
        CircuitOpenError: rejected.
        ConfigurationError: (sync) the storage's client is an asyncio one.
    """
    shared = rec.state(sync=True)
    if shared is None:
        return rec.acquire_local()
    now = rec.monotonic()
    step = shared.admit(now)
    if isinstance(step, int):
        return step
    try:
        reply = _run(shared, step)
    except shared.errors() as exc:
        return shared.unreachable(exc, now)
    return shared.admitted(reply)


def finish(
    rec: Recorder, ticket: int, outcome: int, duration: float | None, exc: BaseException | None
) -> None:
    """Report one call's outcome: to the listeners, then to the shared state or the core."""
    if rec.listeners is not None:
        rec.listeners.outcome(rec.breaker, outcome, exc)
    shared = rec.state(sync=True)
    if shared is None:
        rec.record(ticket, outcome, duration)
        return
    args = shared.record_args(ticket, outcome, duration)
    if args is None:
        return  # kept locally until the next script call
    now = rec.monotonic()
    try:
        reply = _run(shared, args)
    except shared.errors() as error:
        shared.lost_record(error, now, outcome, duration)
        return
    shared.recorded(reply, outcome, duration)


def manual(rec: Recorder, trigger: Trigger) -> None:
    """Apply a manual command (open, close, force open, disable) everywhere it applies.

    Raises:
        redis.RedisError: a shared breaker's Redis is unreachable.
    """
    now = rec.monotonic()
    shared = rec.state(sync=True)
    if shared is not None:
        shared.applied(_run(shared, shared.manual_args(trigger)), now)
    rec.fire_local(trigger, now)


def _run(shared: SharedState, args: list[Any]) -> Any:
    """One script call: the only I/O of a shared breaker."""
    return shared.run(args)


def call(
    breaker: CircuitBreaker,
    func: Callable[..., T],
    /,
    *args: Any,
    **kwargs: Any,
) -> T:
    """Call ``func(*args, **kwargs)`` through the breaker: ``CircuitBreaker.call``.

    This function *is* the method (bound in the class; its typed signature,
    for mypy and the API reference, is the class's), so a call runs one frame
    of scalekit's, with the drivers' one hot path inline (:func:`wrap` has
    the same steps, specialised per breaker): a closed local breaker admits
    with one attribute read, reads the clock only for slow-call timing
    (before and after the call) or a time window (once, after), and counts a
    success that changes nothing with ``next(core.tally)``. ``func(*args)``
    when no keyword is given: no dict built and merged per call. Everything
    else goes through :func:`_call_full`.

    Raises:
        CircuitOpenError: the breaker rejected the call (and no fallback).
        Exception: whatever ``func`` raised, unchanged.
    """
    rec = breaker._rec
    if not rec.tally:
        return _call_full(rec, func, args, kwargs)
    core = rec.core
    ticket = core.free_ticket
    if ticket is None:
        return _call_full(rec, func, args, kwargs)
    if rec.timed:
        # Slow-call timing: the clock before and after the call.
        monotonic = rec.monotonic
        start = monotonic()
        try:
            result = func(*args, **kwargs) if kwargs else func(*args)
        except BaseException as exc:
            rec.record(ticket, rec.classify(exc), monotonic() - start)
            raise
        now = monotonic()
        if now - start < rec.slow_below and (
            ticket == core.tally_ticket or (now < core.tally_until and ticket == core.free_ticket)
        ):
            # Nothing this success could change: counting is the whole record
            # (``tally_ticket``: a count window; ``tally_until``: a time window).
            next(core.tally)
        else:
            rec.record(ticket, SUCCESS, now - start, now)
        return result
    if rec.clocked:
        # A time window: the success's time decides its bucket (one clock read).
        monotonic = rec.monotonic
        try:
            result = func(*args, **kwargs) if kwargs else func(*args)
        except BaseException as exc:
            rec.record(ticket, rec.classify(exc), None)
            raise
        now = monotonic()
        if now < core.tally_until and ticket == core.free_ticket:
            next(core.tally)
        else:
            rec.record(ticket, SUCCESS, None, now)
        return result
    try:
        result = func(*args, **kwargs) if kwargs else func(*args)
    except BaseException as exc:
        rec.record(ticket, rec.classify(exc), None)
        raise
    if ticket == core.tally_ticket:
        next(core.tally)
    else:
        rec.record(ticket, SUCCESS, None)
    return result


def _call_full(
    rec: Recorder,
    func: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    ticket = rec.core.free_ticket if rec.shared is None else None
    try:
        if ticket is None:
            ticket = acquire(rec)
    except CircuitOpenError:
        if rec.fallback is None:
            raise
        fallback_result: Any = rec.fallback(*args, **kwargs)
        return fallback_result  # type: ignore[no-any-return]
    listeners = rec.listeners
    if listeners is not None:
        listeners.before_call(rec.breaker, func, args, kwargs)
    monotonic = rec.monotonic
    timed = rec.timed
    start = monotonic() if timed else 0.0
    try:
        result = func(*args, **kwargs)
    except BaseException as exc:
        duration = monotonic() - start if timed else None
        finish(rec, ticket, rec.classify(exc), duration, exc)
        raise
    now = monotonic()
    duration = now - start if timed else None
    outcome = SUCCESS
    if rec.check_result:
        try:
            outcome = rec.classify_result(result)
        except BaseException:
            finish(rec, ticket, SUCCESS, duration, None)
            raise
    if rec.local:
        rec.record(ticket, outcome, duration, now)
    else:
        finish(rec, ticket, outcome, duration, None)
    return result


def wrap(rec: Recorder, func: Callable[P, T]) -> Callable[P, T]:
    """Decorate ``func``; the wrapper keeps its signature and metadata.

    A local breaker's wrapper inlines :func:`call`'s hot path, specialised
    when the breaker is built: clockless when neither a time window nor
    slow-call timing needs the time, one clock read (after the call) for a
    time window alone, two for slow-call timing; with a result check,
    :func:`_call_full`'s closed-circuit path.
    """
    core = rec.core
    record = rec.record
    classify = rec.classify
    tally = core.tally
    # ``run(*args)`` when no keywords: no dict built and merged per call.
    run: Callable[..., T] = func

    if rec.tally and not rec.clocked:

        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            ticket = core.free_ticket
            if ticket is None:
                return _call_full(rec, run, args, kwargs)
            try:
                result = run(*args, **kwargs) if kwargs else run(*args)
            except BaseException as exc:
                record(ticket, classify(exc), None)
                raise
            if ticket == core.tally_ticket:
                next(tally)
            else:
                record(ticket, SUCCESS, None)
            return result

    elif rec.tally and not rec.timed:
        monotonic = rec.monotonic

        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            ticket = core.free_ticket
            if ticket is None:
                return _call_full(rec, run, args, kwargs)
            try:
                result = run(*args, **kwargs) if kwargs else run(*args)
            except BaseException as exc:
                record(ticket, classify(exc), None)
                raise
            now = monotonic()
            if now < core.tally_until and ticket == core.free_ticket:
                next(tally)
            else:
                record(ticket, SUCCESS, None, now)
            return result

    elif rec.tally:
        monotonic = rec.monotonic
        slow_below = rec.slow_below

        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            ticket = core.free_ticket
            if ticket is None:
                return _call_full(rec, run, args, kwargs)
            start = monotonic()
            try:
                result = run(*args, **kwargs) if kwargs else run(*args)
            except BaseException as exc:
                record(ticket, classify(exc), monotonic() - start)
                raise
            now = monotonic()
            if now - start < slow_below and (
                ticket == core.tally_ticket
                or (now < core.tally_until and ticket == core.free_ticket)
            ):
                next(tally)
            else:
                record(ticket, SUCCESS, now - start, now)
            return result

    elif rec.local:
        monotonic = rec.monotonic
        timed = rec.timed
        classify_result = rec.classify_result

        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            ticket = core.free_ticket
            if ticket is None:
                return _call_full(rec, run, args, kwargs)
            start = monotonic() if timed else 0.0
            try:
                result = run(*args, **kwargs) if kwargs else run(*args)
            except BaseException as exc:
                record(ticket, classify(exc), monotonic() - start if timed else None)
                raise
            now = monotonic()
            duration = now - start if timed else None
            try:
                outcome = classify_result(result)
            except BaseException:
                record(ticket, SUCCESS, duration, now)
                raise
            record(ticket, outcome, duration, now)
            return result

    else:

        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return _call_full(rec, run, args, kwargs)

    guarded.breaker = rec.breaker  # type: ignore[attr-defined]
    return guarded
