"""The asyncio shell: the ``async def`` decorator, ``policy.acall()``, ``async for attempt``.

Only I/O lives here (running the attempt, sleeping, talking to the budget);
the loop that decides is :func:`scalekit.retry._flow.failures`, which this
shell drives. The success path is one ``try`` around the call: no state and
no generator exist before a failure. Retries run outside the ``except``
block that caught the first error, so a re-raised error carries no
misleading "during handling of" context. Waits go through the clock. Only
``Exception`` is caught: ``CancelledError`` and ``KeyboardInterrupt`` are
never retried.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from scalekit._unasync import IS_ASYNC
from scalekit.retry._flow import CALL, Sleep, Withdraw, call_attempt, failures

if TYPE_CHECKING:
    from scalekit.retry._policy import RetryPolicy

__all__ = ["AsyncAttempts", "acall", "adecorate"]

__unasync__ = {
    "acall": "call",
    "adecorate": "decorate",
    "atry_withdraw": "try_withdraw",
    "aflush": "flush",
    "_aperform": "_perform",
    "The asyncio shell": "The sync shell",
    "``async def`` decorator": "decorator",
    "an ``async def`` function": "a sync function",
    "``async for attempt``": "``for attempt in policy``",
    "``async for attempt in policy:": "``for attempt in policy:",
    " (``async with attempt`` works too)": "",
}

T = TypeVar("T")
P = ParamSpec("P")

_Flow = Generator[Any, Any, Any]


def _start(policy: RetryPolicy) -> float | None:
    """Read the clock before the first attempt only when a rule needs the true start."""
    if policy.deadline is not None or policy.stop is not None:
        return policy._monotonic()
    return None


async def _aperform(flow: _Flow, op: Any, policy: RetryPolicy) -> None:
    """Perform the flow's requests (budget, sleep) until it asks for the next attempt."""
    while op is not CALL:
        if type(op) is Withdraw:
            value = await op.budget.atry_withdraw()
        else:
            assert type(op) is Sleep
            await policy.clock.asleep(op.seconds)
            value = None
        op = flow.send(value)


async def _retry(
    policy: RetryPolicy,
    fn: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    exc: Exception,
    start: float | None,
) -> T:
    flow = failures(policy, call_attempt, exc, start, fn)
    op = next(flow)
    while True:
        await _aperform(flow, op, policy)
        try:
            return await fn(*args, **kwargs)
        except Exception as next_exc:
            exc = next_exc
        op = flow.throw(exc)


async def acall(
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


def adecorate(
    policy: RetryPolicy, fn: Callable[P, Awaitable[T]]
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Wrap an ``async def`` function; the wrapper is specialised to do the least per call."""
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

    One object is the iterator and every attempt. Put the whole unit of work
    inside ``with attempt:``; an error inside it is either suppressed (a
    retry follows, after the wait) or re-raised (the policy gave up, or the
    error is not retryable). ``attempt.number`` is the attempt's number,
    from 1. The decision is made when the block exits; what needs I/O
    happens in the next ``__anext__``.
    """

    __slots__ = ("_done", "_flow", "_op", "_policy", "_start", "number")

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._flow: _Flow | None = None
        self._op: Any = None
        self._start: float | None = None
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
        op = self._op
        flow = self._flow
        if op is None or flow is None:
            # The attempt succeeded, or its body never entered ``with attempt``.
            self._done = True
            raise StopAsyncIteration
        self._op = None
        try:
            await _aperform(flow, op, policy)
        except BaseException:
            self._done = True
            raise
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
        flow = self._flow
        try:
            if flow is None:
                flow = self._flow = failures(self._policy, call_attempt, exc, self._start)
                op = next(flow)
            else:
                op = flow.throw(exc)
            if not IS_ASYNC:
                # A sync block learns at once whether the budget refuses.
                while type(op) is Withdraw:
                    op = flow.send(op.budget.try_withdraw())
        except BaseException as error:
            self._done = True
            if error is exc:
                return False
            raise
        self._op = op
        return True

    async def __aenter__(self) -> AsyncAttempts:  # unasync: async-only
        return self

    async def __aexit__(  # unasync: async-only
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        return self.__exit__(exc_type, exc, traceback)

    def __repr__(self) -> str:
        kind = "async attempt" if IS_ASYNC else "attempt"
        return f"<{kind} {self.number} of {self._policy!r}>"
