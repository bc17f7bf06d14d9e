"""Events a retry policy emits: a retry scheduled, a policy giving up, a budget spent.

Events carry the policy's name, numbers, and the *class name* of the error
(never its message, which may hold a DSN or a customer's data).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import ClassVar

from scalekit.instrumentation import Event

__all__ = ["RetryBudgetExhausted", "RetryGaveUp", "RetryScheduled"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """Attempt ``attempt`` failed with ``error``; the next one runs after ``delay`` seconds.

    ``retry_after`` is the server's or breaker's hint (``Retry-After`` header,
    ``CircuitOpenError.retry_after``) when one was honoured, else ``None``.
    """

    kind: ClassVar[str] = "retry.scheduled"
    level: ClassVar[int] = logging.INFO

    attempt: int
    delay: float
    error: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryGaveUp(Event):
    """The policy stopped retrying and let ``error`` propagate.

    ``reason`` is one of:

    - ``"attempts"``: the last allowed attempt failed;
    - ``"deadline"``: the deadline passed, or the wait a ``Retry-After`` hint
      or an open breaker asks for does not fit in what is left of it;
    - ``"retry_after"``: the hint is longer than the policy's ``max_retry_after``,
      or an open breaker asks for longer than the policy's breaker cap
      (:meth:`~scalekit.retry.RetryPolicy.breaker_wait_cap`)
      (or an open breaker gave no hint: it was forced open);
    - ``"stop"``: a tenacity ``stop`` strategy said stop;
    - ``"budget"``: the retry budget is spent (see :class:`RetryBudgetExhausted`).

    ``seconds`` is the time from the start of the first attempt (every
    event names its duration ``seconds``).

    .. versionchanged:: issue 13
       ``duration`` was renamed ``seconds``; ``duration`` still reads it,
       with a ``DeprecationWarning``, until the next release.
    """

    kind: ClassVar[str] = "retry.gave_up"
    level: ClassVar[int] = logging.WARNING

    attempts: int
    reason: str
    error: str
    seconds: float

    @property
    def duration(self) -> float:
        """Deprecated: read :attr:`seconds`."""
        warnings.warn(
            "RetryGaveUp.duration is deprecated; read .seconds (one name for every "
            "event's duration)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudgetExhausted(RetryGaveUp):
    """The retry budget ``budget`` refused a retry, so the error was raised at once.

    A subclass of :class:`RetryGaveUp` (``reason == "budget"``), so hooks that
    count give-ups count these too. Logged at DEBUG: an exhausted budget
    refuses every call, and the incident is logged once instead, by the
    budget (:class:`~scalekit.FallbackUsed` with ``component_name=
    "retry.budget.exhausted"`` and ``fallback="no_retries"`` at
    its start, :class:`~scalekit.Recovered` at its end).
    """

    kind: ClassVar[str] = "retry.budget_exhausted"
    level: ClassVar[int] = logging.DEBUG

    budget: str
