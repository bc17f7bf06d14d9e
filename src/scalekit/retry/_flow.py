"""The retry loop, written once: a generator that decides and asks its driver to act.

Every retry in scalekit runs this loop: the ``RetryPolicy`` shells (the
decorator, ``policy.call()``/``policy.acall()``, ``for attempt in policy``,
both colours) and the batch load's flow (``scalekit.batch._flow``). The loop
performs no I/O. It yields small requests and receives their results, as
``batch/_flow.py`` does:

- :class:`Withdraw`: ask ``budget`` for one retry; send back ``True`` when granted.
- :class:`Sleep`: wait ``seconds`` on the policy's clock; send back ``None``.
- whatever the attempt yields (:data:`CALL` for a plain call: run the
  function and send back its result, or throw its error in).

Per failure it decides with :class:`~scalekit.retry._policy.RetryState`
(``on_failure``), gives up, or withdraws from the budget, reports the retry
(``RetryScheduled``), sleeps and runs the next attempt, in that order. So the
budget is withdrawn wherever a retry happens.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from scalekit.retry._policy import RetryState

if TYPE_CHECKING:
    from scalekit.retry._budget import Budget
    from scalekit.retry._policy import RetryPolicy

__all__ = ["CALL", "Flush", "Sleep", "Withdraw", "call_attempt", "failures", "retrying"]

T = TypeVar("T")
Y = TypeVar("Y")


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Ask ``budget`` for one retry (``try_withdraw``/``atry_withdraw``); send back the bool."""

    budget: Budget


@dataclass(frozen=True, slots=True)
class Flush:
    """Flush ``budget``'s batched deposits (``flush``/``aflush``); send back ``None``."""

    budget: Budget


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (a retry's backoff) on the clock; send back ``None``."""

    seconds: float


class _Call:
    """The request of a plain attempt: call the function, send back its result."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CALL"


#: The one request of :func:`call_attempt`.
CALL: Final = _Call()


def call_attempt() -> Generator[_Call, Any, Any]:
    """An attempt that is one plain call: yields :data:`CALL`, returns what is sent back."""
    return (yield CALL)


def failures(
    policy: RetryPolicy,
    attempt: Callable[[], Generator[Y, Any, T]],
    exc: BaseException,
    start: float | None,
    name_source: object = None,
    retryable: Callable[[Exception], bool] | None = None,
    state: RetryState | None = None,
) -> Generator[Y | Withdraw | Sleep, Any, T]:
    """The loop after a first failure ``exc``: retry ``attempt()`` until done or refused.

    ``start`` is the monotonic start of the first attempt (``None``: the
    first failure); ``name_source`` names the events when the policy has no
    name. ``retryable`` is checked before the policy: an error it refuses is
    raised at once, as an error the policy does not retry is. ``state``: a
    :class:`RetryState` to decide with, for a caller that reads its ``reason``.

    Raises:
        BaseException: the last error (or :class:`~scalekit.errors.RetryError`
            with ``reraise=False``) when the policy gives up or the budget
            refuses; an error that is not retryable, at once.
    """
    if state is None:
        state = RetryState(policy, start, name_source)
    budget = policy.budget
    while True:
        if retryable is not None and isinstance(exc, Exception) and not retryable(exc):
            raise exc
        delay = state.on_failure(exc)
        if delay is None:
            raise state.give_up(exc)
        if budget is not None and not (yield Withdraw(budget)):
            raise state.budget_exhausted(exc, budget)
        state.scheduled(exc, delay)
        if delay > 0:
            yield Sleep(delay)
        try:
            return (yield from attempt())
        except Exception as next_exc:
            exc = next_exc


def retrying(
    policy: RetryPolicy,
    attempt: Callable[[], Generator[Y, Any, T]],
    name_source: object = None,
    retryable: Callable[[Exception], bool] | None = None,
) -> Generator[Y | Withdraw | Flush | Sleep, Any, T]:
    """Run ``attempt()`` under ``policy`` from the start: deposit, first attempt, :func:`failures`.

    For flows that retry a sub-flow (the batch load); the policy shells run
    the first attempt themselves, so their success path builds no generator.
    """
    start = policy._monotonic() if policy.deadline is not None or policy.stop is not None else None
    budget = policy.budget
    if budget is not None and budget.deposit():
        yield Flush(budget)
    try:
        return (yield from attempt())
    except Exception as exc:
        first = exc
    return (yield from failures(policy, attempt, first, start, name_source, retryable))
