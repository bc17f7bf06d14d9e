"""The asyncio shell: the ``async def`` decorator, ``policy.call_async()``, ``async for attempt``.

The same loop as :mod:`scalekit.retry._sync` with ``await`` at the I/O points
(the attempt, the sleep, the budget). Waits go through the clock's
``asleep()``: a cancelled task stops waiting at once, and ``CancelledError``
(a ``BaseException``) is never caught, so it is never retried.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from scalekit.retry._policy import RetryState

if TYPE_CHECKING:
    from scalekit.retry._policy import RetryPolicy

__all__ = ["AsyncAttempts", "call_async", "decorate_async"]

T = TypeVar("T")
P = ParamSpec("P")


def _start(policy: RetryPolicy) -> float | None:
    """Read the clock before the first attempt only when a rule needs the true start."""
    if policy.deadline is not None or policy.stop is not None:
        return policy._monotonic()
    return None


async def _retry(
    policy: RetryPolicy,
    fn: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    exc: Exception,
    start: float | None,
) -> T:
    state = RetryState(policy, start, fn)
    budget = policy.budget
    asleep = policy.clock.asleep
    while True:
        delay = state.on_failure(exc)
        if delay is None:
            raise state.give_up(exc)
        if budget is not None and not await budget.atry_withdraw():
            raise state.budget_exhausted(exc, budget)
        state.scheduled(exc, delay)
        if delay > 0:
            await asleep(delay)
        try:
            return await fn(*args, **kwargs)
        except Exception as next_exc:
            exc = next_exc


async def call_async(
    policy: RetryPolicy,
    fn: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> T:
    """Await ``fn(*args, **kwargs)`` under ``policy``."""
    start = _start(policy)
    budget = policy.budget
    if budget is not None and budget.deposit():
        await budget.aflush()
    try:
        return await fn(*args, **kwargs)
    except Exception as exc:
        first = exc
    return await _retry(policy, fn, args, kwargs, first, start)


def decorate_async(
    policy: RetryPolicy, fn: Callable[P, Awaitable[T]]
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Wrap an ``async def`` function; the wrapper is an ``async def`` function too."""
    budget = policy.budget
    needs_start = policy.deadline is not None or policy.stop is not None

    if budget is None and not needs_start:

        @functools.wraps(fn)
        async def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                first = exc
            return await _retry(policy, fn, args, kwargs, first, None)

        return retrying

    now = policy._monotonic

    if budget is None:

        @functools.wraps(fn)
        async def retrying_with_deadline(*args: P.args, **kwargs: P.kwargs) -> T:
            start = now()
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                first = exc
            return await _retry(policy, fn, args, kwargs, first, start)

        return retrying_with_deadline

    deposit = budget.deposit

    @functools.wraps(fn)
    async def retrying_with_budget(*args: P.args, **kwargs: P.kwargs) -> T:
        start = now() if needs_start else None
        if deposit():
            await budget.aflush()
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            first = exc
        return await _retry(policy, fn, args, kwargs, first, start)

    return retrying_with_budget


class AsyncAttempts:
    """``async for attempt in policy: with attempt: ...`` (``async with attempt`` works too).

    The decision is made when the block exits; the budget, the event and the
    wait happen in the next ``__anext__``, where they can be awaited. If the
    budget then refuses, the attempt's error is raised from the ``async for``.
    """

    __slots__ = ("_delay", "_done", "_exc", "_policy", "_start", "_state", "number")

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._state: RetryState | None = None
        self._start: float | None = None
        self._delay = 0.0
        self._exc: BaseException | None = None
        self._done = False
        self.number = 0

    def __aiter__(self) -> AsyncAttempts:
        return self

    async def __anext__(self) -> AsyncAttempts:
        if self._done:
            raise StopAsyncIteration
        policy = self._policy
        if self.number == 0:
            self._start = _start(policy)
            budget = policy.budget
            if budget is not None and budget.deposit():
                await budget.aflush()
            self.number = 1
            return self
        exc = self._exc
        state = self._state
        if exc is None or state is None:
            # The attempt succeeded, or its body never entered ``with attempt``.
            self._done = True
            raise StopAsyncIteration
        self._exc = None
        budget = policy.budget
        if budget is not None and not await budget.atry_withdraw():
            self._done = True
            raise state.budget_exhausted(exc, budget)
        state.scheduled(exc, self._delay)
        if self._delay > 0:
            await policy.clock.asleep(self._delay)
        self.number += 1
        return self

    def __enter__(self) -> AsyncAttempts:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc is None:
            self._done = True
            return False
        state = self._state
        if state is None:
            state = self._state = RetryState(self._policy, self._start, None)
        delay = state.on_failure(exc)
        if delay is None:
            self._done = True
            error = state.give_up(exc)
            if error is exc:
                return False
            raise error
        self._exc = exc
        self._delay = delay
        return True

    async def __aenter__(self) -> AsyncAttempts:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        return self.__exit__(exc_type, exc, traceback)

    def __repr__(self) -> str:
        return f"<async attempt {self.number} of {self._policy!r}>"
