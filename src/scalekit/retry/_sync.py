# This file is generated from src/scalekit/retry/_async.py by scripts/unasync.py.
# DO NOT EDIT; edit the async file and run: python scripts/unasync.py
"""The sync shell: the decorator, ``policy.call()``, ``for attempt in policy``.

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
from collections.abc import Callable, Generator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from scalekit.retry._flow import CALL, Sleep, Withdraw, call_attempt, failures

if TYPE_CHECKING:
    from scalekit.retry._policy import RetryPolicy

__all__ = ["Attempts", "call", "decorate"]

T = TypeVar("T")
P = ParamSpec("P")

_Flow = Generator[Any, Any, Any]


def _start(policy: RetryPolicy) -> float | None:
    """Read the clock before the first attempt only when a rule needs the true start."""
    if policy.deadline is not None or policy.stop is not None:
        return policy._monotonic()
    return None


def _perform(flow: _Flow, op: Any, policy: RetryPolicy) -> None:
    """Perform the flow's requests (budget, sleep) until it asks for the next attempt."""
    while op is not CALL:
        if type(op) is Withdraw:
            value = op.budget.try_withdraw()
        else:
            assert type(op) is Sleep
            policy.clock.sleep(op.seconds)
            value = None
        op = flow.send(value)


def _retry(
    policy: RetryPolicy,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    exc: Exception,
    start: float | None,
) -> T:
    flow = failures(policy, call_attempt, exc, start, fn)
    op = next(flow)
    while True:
        _perform(flow, op, policy)
        try:
            return fn(*args, **kwargs)
        except Exception as next_exc:
            exc = next_exc
        op = flow.throw(exc)


def call(
    policy: RetryPolicy,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> T:
    """Call ``fn(*args, **kwargs)`` under ``policy``."""
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
    """Wrap a sync function; the wrapper is specialised to do the least per call."""
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
    """``for attempt in policy: with attempt: ...``.

    One object is the iterator and every attempt. Put the whole unit of work
    inside ``with attempt:``; an error inside it is either suppressed (a
    retry follows, after the wait) or re-raised (the policy gave up, or the
    error is not retryable). ``attempt.number`` is the attempt's number,
    from 1. The decision is made when the block exits; what needs I/O
    happens in the next ``__next__``.
    """

    __slots__ = ("_done", "_flow", "_op", "_policy", "_start", "number")

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._flow: _Flow | None = None
        self._op: Any = None
        self._start: float | None = None
        self._done = False
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
        op = self._op
        flow = self._flow
        if op is None or flow is None:
            # The attempt succeeded, or its body never entered ``with attempt``.
            self._done = True
            raise StopIteration
        self._op = None
        try:
            _perform(flow, op, policy)
        except BaseException:
            self._done = True
            raise
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
        flow = self._flow
        try:
            if flow is None:
                flow = self._flow = failures(self._policy, call_attempt, exc, self._start)
                op = next(flow)
            else:
                op = flow.throw(exc)
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

    def __repr__(self) -> str:
        kind = "attempt"
        return f"<{kind} {self.number} of {self._policy!r}>"
