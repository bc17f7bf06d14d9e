"""Retry policies: backoff with jitter, transient-error rules, deadlines and retry budgets.

:class:`RetryPolicy` is a frozen value used as a decorator (sync and
``async def``), through :meth:`RetryPolicy.call`/:meth:`RetryPolicy.acall`,
or around a block (``for attempt in policy: with attempt: ...``)::

    from scalekit.retry import Backoff, RetryBudget, RetryPolicy, transient

    policy = RetryPolicy(
        attempts=3,
        backoff=Backoff.exponential(0.1, cap=5.0),
        retry_on=transient.database | transient.redis,
        deadline=10.0,
        budget=RetryBudget(ratio=0.1, name="orders-db"),
    )

    @policy
    def load_order(order_id: int) -> Order: ...

Giving up re-raises the last error unchanged (``reraise=False`` raises
:class:`~scalekit.errors.RetryError` instead). A
:class:`~scalekit.errors.CircuitOpenError` is retried only when waiting its
``retry_after`` fits the deadline. ``CancelledError``, ``KeyboardInterrupt``
and ``SystemExit`` are never retried. The success path costs one ``try``
block: nothing is allocated before the first failure, and tenacity is never
called (:meth:`RetryPolicy.as_tenacity` builds a tenacity equivalent for
those who want its API).
"""

from __future__ import annotations

from scalekit.retry._async import AsyncAttempts
from scalekit.retry._budget import Budget, BudgetWindow, RedisRetryBudget, RetryBudget
from scalekit.retry._events import RetryBudgetExhausted, RetryGaveUp, RetryScheduled
from scalekit.retry._policy import Backoff, Jitter, RetryPolicy, RetryState, retry_after_hint
from scalekit.retry._sync import Attempts
from scalekit.retry._testing import is_testing, set_testing
from scalekit.retry._transient import RetryOn, TransientRule, transient

__all__ = [
    "AsyncAttempts",
    "Attempts",
    "Backoff",
    "Budget",
    "BudgetWindow",
    "Jitter",
    "RedisRetryBudget",
    "RetryBudget",
    "RetryBudgetExhausted",
    "RetryGaveUp",
    "RetryOn",
    "RetryPolicy",
    "RetryScheduled",
    "RetryState",
    "TransientRule",
    "is_testing",
    "retry_after_hint",
    "set_testing",
    "transient",
]
