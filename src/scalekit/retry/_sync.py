"""The sync shell: the decorator, ``policy.call()``, and ``for attempt in policy``.

Only I/O lives here (running the attempt, sleeping, talking to the budget);
every decision is :class:`~scalekit.retry._policy.RetryState`'s. The success
path is one ``try`` around the call: no state is built before a failure.
Retries run outside the ``except`` block that caught the first error, so a
re-raised error carries no misleading "during handling of" context.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from scalekit.retry._policy import RetryState

if TYPE_CHECKING:
    from scalekit.retry._policy import RetryPolicy

__all__ = ["Attempts", "call", "decorate"]

T = TypeVar("T")
P = ParamSpec("P")


def _start(policy: RetryPolicy) -> float | None:
    """Read the clock before the first attempt only when a rule needs the true start."""
    if policy.deadline is not None or policy.stop is not None:
        return policy._monotonic()
    return None


def _retry(
    policy: RetryPolicy,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    exc: Exception,
    start: float | None,
) -> T:
    state = RetryState(policy, start, fn)
    budget = policy.budget
    sleep = policy.clock.sleep
    while True:
        delay = state.on_failure(exc)
        if delay is None:
            raise state.give_up(exc)
        if budget is not None and not budget.try_withdraw():
            raise state.budget_exhausted(exc, budget)
        state.scheduled(exc, delay)
        if delay > 0:
            sleep(delay)
        try:
            return fn(*args, **kwargs)
        except Exception as next_exc:
            exc = next_exc


def call(
    policy: RetryPolicy, fn: Callable[..., T], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> T:
    """Run ``fn(*args, **kwargs)`` under ``policy``."""
    start = _start(policy)
    budget = policy.budget
    if budget is not None and budget.deposit():
        budget.flush()
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        first = exc
    return _retry(policy, fn, args, kwargs, first, start)


def decorate(policy: RetryPolicy, fn: Callable[P, T]) -> Callable[P, T]:
    """Wrap a sync function; the wrapper is specialised so the common case does the least."""
    budget = policy.budget
    needs_start = policy.deadline is not None or policy.stop is not None

    if budget is None and not needs_start:

        @functools.wraps(fn)
        def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                first = exc
            return _retry(policy, fn, args, kwargs, first, None)

        return retrying

    now = policy._monotonic

    if budget is None:

        @functools.wraps(fn)
        def retrying_with_deadline(*args: P.args, **kwargs: P.kwargs) -> T:
            start = now()
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                first = exc
            return _retry(policy, fn, args, kwargs, first, start)

        return retrying_with_deadline

    deposit = budget.deposit

    @functools.wraps(fn)
    def retrying_with_budget(*args: P.args, **kwargs: P.kwargs) -> T:
        start = now() if needs_start else None
        if deposit():
            budget.flush()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            first = exc
        return _retry(policy, fn, args, kwargs, first, start)

    return retrying_with_budget


class Attempts:
    """``for attempt in policy: with attempt: ...``: one object is the iterator and every attempt.

    Put the whole unit of work inside ``with attempt:``; an error inside it is
    either suppressed (a retry follows, after the wait) or re-raised (the
    policy gave up, or the error is not retryable). ``attempt.number`` is the
    attempt's number, from 1.
    """

    __slots__ = ("_delay", "_done", "_policy", "_retry_pending", "_start", "_state", "number")

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._state: RetryState | None = None
        self._start: float | None = None
        self._delay = 0.0
        self._done = False
        self._retry_pending = False
        self.number = 0

    def __iter__(self) -> Attempts:
        return self

    def __next__(self) -> Attempts:
        if self._done:
            raise StopIteration
        policy = self._policy
        if self.number == 0:
            self._start = _start(policy)
            budget = policy.budget
            if budget is not None and budget.deposit():
                budget.flush()
            self.number = 1
            return self
        if not self._retry_pending:
            # The attempt succeeded, or its body never entered ``with attempt``.
            self._done = True
            raise StopIteration
        self._retry_pending = False
        if self._delay > 0:
            policy.clock.sleep(self._delay)
        self.number += 1
        return self

    def __enter__(self) -> Attempts:
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
        policy = self._policy
        state = self._state
        if state is None:
            state = self._state = RetryState(policy, self._start, None)
        delay = state.on_failure(exc)
        if delay is None:
            self._done = True
            error = state.give_up(exc)
            if error is exc:
                return False
            raise error
        budget = policy.budget
        if budget is not None and not budget.try_withdraw():
            self._done = True
            error = state.budget_exhausted(exc, budget)
            if error is exc:
                return False
            raise error
        state.scheduled(exc, delay)
        self._delay = delay
        self._retry_pending = True
        return True

    def __repr__(self) -> str:
        return f"<attempt {self.number} of {self._policy!r}>"
