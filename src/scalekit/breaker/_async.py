"""The asyncio driver: await a coroutine function through a breaker.

It mirrors :mod:`._sync` line for line; only the ``await`` differs. Core
calls stay synchronous and short (no ``await`` while the lock is held), so
one breaker serves threads and tasks at once. A cancelled call counts as
neither success nor failure and frees its permit.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from scalekit.breaker._config import SUCCESS
from scalekit.errors import CircuitOpenError

if TYPE_CHECKING:
    from scalekit.breaker._breaker import CircuitBreaker

__all__ = ["call_async", "wrap_async"]

P = ParamSpec("P")
T = TypeVar("T")


async def call_async(
    breaker: CircuitBreaker,
    func: Callable[..., Coroutine[Any, Any, T]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    """Await ``func(*args, **kwargs)`` through ``breaker`` (see ``CircuitBreaker.call_async``)."""
    if breaker._fast:
        core = breaker._core
        ticket = core.free_ticket
        if ticket is not None:
            try:
                result = await func(*args, **kwargs)
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
    return await _call_full(breaker, func, args, kwargs)


async def _call_full(
    breaker: CircuitBreaker,
    func: Callable[..., Coroutine[Any, Any, T]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    ticket = breaker._core.free_ticket if breaker._shared is None else None
    try:
        if ticket is None:
            ticket = await breaker._acquire_async()
    except CircuitOpenError:
        fallback = breaker._fallback
        if fallback is None:
            raise
        fallback_result: Any = fallback(*args, **kwargs)
        if inspect.isawaitable(fallback_result):
            fallback_result = await fallback_result
        return fallback_result  # type: ignore[no-any-return]
    listeners = breaker._listeners
    if listeners is not None:
        listeners.before_call(breaker, func, args, kwargs)
    clock = breaker._clock
    start = clock.monotonic() if breaker._timed else 0.0
    try:
        result = await func(*args, **kwargs)
    except BaseException as exc:
        duration = clock.monotonic() - start if breaker._timed else None
        await breaker._finish_async(ticket, breaker._policy.classify_exception(exc), duration, exc)
        raise
    duration = clock.monotonic() - start if breaker._timed else None
    outcome = SUCCESS
    if breaker._policy.failure_result is not None:
        try:
            outcome = breaker._policy.classify_result(result)
        except BaseException:
            await breaker._finish_async(ticket, SUCCESS, duration, None)
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
    await breaker._finish_async(ticket, outcome, duration, None)
    return result


def wrap_async(
    breaker: CircuitBreaker, func: Callable[P, Coroutine[Any, Any, T]]
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate an ``async def`` function; the wrapper keeps its signature and metadata.

    As in :func:`._sync.wrap_sync`, a fast-path breaker's wrapper inlines the
    hot path of :func:`call_async`.
    """
    if breaker._local and not breaker._fast:
        return _wrap_local(breaker, func)
    if not breaker._fast:

        @functools.wraps(func)
        async def guarded_full(*args: P.args, **kwargs: P.kwargs) -> T:
            return await _call_full(breaker, func, args, kwargs)

        guarded_full.breaker = breaker  # type: ignore[attr-defined]
        return guarded_full

    core = breaker._core
    lock = breaker._lock
    lockless_successes = breaker._lockless_successes
    classify = breaker._policy.classify_exception

    @functools.wraps(func)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        ticket = core.free_ticket
        if ticket is None:
            return await _call_full(breaker, func, args, kwargs)
        try:
            result = await func(*args, **kwargs)
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


def _wrap_local(
    breaker: CircuitBreaker, func: Callable[P, Coroutine[Any, Any, T]]
) -> Callable[P, Coroutine[Any, Any, T]]:
    """As :func:`._sync._wrap_local`: :func:`_call_full` inlined for a closed local
    breaker without listeners."""
    core = breaker._core
    lock = breaker._lock
    monotonic = breaker._clock.monotonic
    timed = breaker._timed
    policy = breaker._policy
    classify = policy.classify_exception
    check_result = policy.failure_result is not None

    @functools.wraps(func)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        ticket = core.free_ticket
        if ticket is None:
            return await _call_full(breaker, func, args, kwargs)
        start = monotonic() if timed else 0.0
        try:
            result = await func(*args, **kwargs)
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
