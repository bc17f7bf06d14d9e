"""The retry policy value, the backoff math, and the decision core shared by every shell.

Theory of operation
-------------------

A :class:`RetryPolicy` is a frozen value. Running a call under it costs, on
success, one ``try`` block (plus a budget deposit, and one clock read if the
policy has a deadline): no retry state exists until the first failure.

At the first failure a shell (``_sync``/``_async``) builds a
:class:`RetryState` and then loops::

    delay = state.on_failure(exc)       # pure decision: a delay, or None
    if delay is None: raise state.give_up(exc)
    if budget refuses a retry: raise state.budget_exhausted(exc)
    state.scheduled(exc, delay); sleep(delay); run the next attempt

``on_failure`` holds every rule, in this order:

1. Only ``Exception`` instances are retried, never ``CancelledError``,
   ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit`` (not
   ``Exception`` subclasses) nor ``concurrent.futures.CancelledError``.
2. A :class:`~scalekit.errors.CircuitOpenError` is retried only when it gives
   a ``retry_after`` no longer than the policy's breaker cap (see
   :meth:`RetryPolicy.breaker_wait_cap`) that also fits in what is left of
   the deadline; the wait is then at least that long. It does not need to
   match ``retry_on``: the breaker says when to come back. Comparisons
   allow :data:`TOLERANCE` of float noise, so ``60.00000000000001`` counts
   as 60.
3. Anything else must match ``retry_on``.
4. Attempts (capped by the testing mode).
5. The delay: the backoff (or a tenacity ``wait``), raised to any
   ``Retry-After`` hint the error carries (capped at ``max_retry_after``);
   then a tenacity ``stop``, which sees that delay as ``upcoming_sleep``
   (as in tenacity, so ``stop_before_delay`` works).
6. The deadline: none left means give up; a hint that does not fit means
   give up; otherwise the delay is cut to what is left.
7. Testing mode: the delay becomes 0.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import email.utils
import inspect
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, ParamSpec, TypeVar, cast

from scalekit._clock import SYSTEM_CLOCK
from scalekit._deprecated import deprecated
from scalekit.errors import CircuitOpenError, ConfigurationError, RetryError
from scalekit.instrumentation import emit
from scalekit.retry._budget import Budget
from scalekit.retry._events import RetryBudgetExhausted, RetryGaveUp, RetryScheduled
from scalekit.retry._transient import TransientRule, as_rule
from scalekit.retry._validate import check_int, check_number
from scalekit.testing import _switch as _testing

if TYPE_CHECKING:
    from scalekit.retry._async import AsyncAttempts
    from scalekit.retry._sync import Attempts
    from scalekit.typing import Clock, Hook

__all__ = ["TOLERANCE", "Backoff", "Jitter", "RetryPolicy", "RetryState", "retry_after_hint"]

T = TypeVar("T")
P = ParamSpec("P")

Jitter = Literal["full", "equal", "decorrelated", "none"]
_JITTERS: Final = ("full", "equal", "decorrelated", "none")

#: Seconds of float noise ignored when a wait is compared with a cap or with
#: what is left of the deadline (``(t + 60) - t`` can be 60.00000000000001).
TOLERANCE: Final = 1e-6

# Never retried, even when ``retry_on`` would match (BaseExceptions that are not
# Exceptions, such as asyncio.CancelledError, are never caught at all).
_NEVER_RETRY: Final = (concurrent.futures.CancelledError,)


def _number(value: object, parameter: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    return check_number(value, parameter, minimum=minimum, strict=strict)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before each retry: a frozen value; build it with a classmethod.

    - :meth:`exponential`: ``base * multiplier ** (n - 1)`` before retry ``n``,
      capped at ``cap``, with *full* jitter by default (AWS's formulas:
      full ``uniform(0, d)``, equal ``d/2 + uniform(0, d/2)``, decorrelated
      ``min(cap, uniform(base, previous * 3))``).
    - :meth:`constant`: the same delay every time.
    - :meth:`linear`: ``start + step * (n - 1)``, capped.

    Every delay is in ``[0, cap]``. The policy's deadline cuts it further.

    >>> Backoff.constant(0.5).delay(3)
    0.5
    >>> Backoff.exponential(0.1, cap=1.0, jitter="none").delay(5)
    1.0

    Raises:
        ConfigurationError: a negative or non-finite duration, a multiplier
            < 1, an unknown jitter, or decorrelated jitter on a non-exponential.
    """

    kind: Literal["exponential", "constant", "linear"]
    base: float
    cap: float
    multiplier: float = 2.0
    step: float = 0.0
    jitter: Jitter = "none"

    def __post_init__(self) -> None:
        if self.kind not in ("exponential", "constant", "linear"):
            raise ConfigurationError(f"unknown backoff kind {self.kind!r}", parameter="kind")
        object.__setattr__(self, "base", _number(self.base, "base"))
        object.__setattr__(self, "cap", _number(self.cap, "cap"))
        object.__setattr__(self, "multiplier", _number(self.multiplier, "multiplier", minimum=1))
        object.__setattr__(self, "step", _number(self.step, "step"))
        if self.jitter not in _JITTERS:
            raise ConfigurationError(
                f"jitter must be one of {', '.join(_JITTERS)}, got {self.jitter!r}",
                parameter="jitter",
            )
        if self.jitter == "decorrelated" and self.kind != "exponential":
            raise ConfigurationError(
                "decorrelated jitter only applies to exponential backoff", parameter="jitter"
            )

    @classmethod
    def exponential(
        cls,
        base: float = 0.1,
        *,
        cap: float = 10.0,
        multiplier: float = 2.0,
        jitter: Jitter = "full",
    ) -> Backoff:
        """Exponential backoff from ``base`` seconds, at most ``cap`` per sleep.

        >>> Backoff.exponential(0.1, cap=5.0, jitter="equal")
        Backoff(kind='exponential', base=0.1, cap=5.0, multiplier=2.0, step=0.0, jitter='equal')
        """
        return cls("exponential", base, cap, multiplier=multiplier, jitter=jitter)

    @classmethod
    def constant(cls, delay: float, *, jitter: Jitter = "none") -> Backoff:
        """The same ``delay`` before every retry (``jitter="full"``: spread over 0..delay)."""
        return cls("constant", delay, delay, jitter=jitter)

    @classmethod
    def linear(
        cls, start: float, step: float | None = None, *, cap: float = 10.0, jitter: Jitter = "none"
    ) -> Backoff:
        """``start``, ``start + step``, ``start + 2 * step``... (``step`` defaults to ``start``)."""
        return cls("linear", start, cap, step=start if step is None else step, jitter=jitter)

    @classmethod
    def none(cls) -> Backoff:
        """Retry at once."""
        return cls("constant", 0.0, 0.0)

    def ceiling(self, retry: int) -> float:
        """The un-jittered delay before retry number ``retry`` (1 for the first retry)."""
        if self.kind == "constant":
            raw = self.base
        elif self.kind == "linear":
            raw = self.base + self.step * (retry - 1)
        else:
            try:
                raw = self.base * self.multiplier ** (retry - 1)
            except OverflowError:
                raw = math.inf
        return min(self.cap, raw)

    def delay(
        self,
        retry: int,
        previous: float | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> float:
        """The seconds to wait before retry number ``retry`` (1 for the first retry).

        ``previous`` is the last delay this backoff returned (decorrelated
        jitter grows from it); ``uniform(a, b)`` draws the jitter.
        """
        if self.jitter == "decorrelated":
            low = min(self.base, self.cap)
            high = max(low, (self.base if previous is None else previous) * 3)
            drawn = uniform(low, high)
        else:
            ceiling = self.ceiling(retry)
            if self.jitter == "full":
                drawn = uniform(0.0, ceiling)
            elif self.jitter == "equal":
                drawn = ceiling / 2 + uniform(0.0, ceiling / 2)
            else:
                drawn = ceiling
        # uniform() may round just past its bounds; keep the documented range.
        return min(self.cap, max(0.0, drawn))


def _parse_retry_after(value: object, now_wall: float) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return max(0.0, float(value)) if math.isfinite(value) else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT; a date without a zone is read as such
        return None
    return max(0.0, when.timestamp() - now_wall)


def retry_after_hint(exc: BaseException, now_wall: float) -> float | None:
    """The wait ``exc`` asks for, in seconds, or ``None``.

    Read from a ``retry_after`` attribute (``CircuitOpenError``,
    ``RateLimitExceeded``, many SDKs) or from the ``Retry-After`` header of an
    ``exc.response`` (httpx, requests), as seconds or as an HTTP-date
    (compared with ``now_wall``, seconds since the epoch). Malformed values
    are ignored.

    >>> from scalekit.errors import CircuitOpenError
    >>> retry_after_hint(CircuitOpenError("billing", 2.5), 0.0)
    2.5
    """
    value = getattr(exc, "retry_after", None)
    if value is not None:
        return _parse_retry_after(value, now_wall)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    try:
        header = getter("Retry-After")
    except Exception:  # an exotic headers object: ignore the hint, not the error
        return None
    return None if header is None else _parse_retry_after(header, now_wall)


def _default_retry_on() -> TransientRule:
    return as_rule(Exception)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How to retry a call: a frozen value, built once and shared.

    Use it as a decorator (sync or ``async def``; the signature is kept),
    with :meth:`call`/:meth:`acall`, or around a block::

        policy = RetryPolicy(attempts=3, backoff=Backoff.exponential(0.1, cap=5.0),
                             retry_on=transient.database, deadline=10.0)

        @policy
        def load(user_id: int) -> User: ...

        for attempt in policy:           # async for attempt in policy: ...
            with attempt:
                do_work()

    Parameters:
        attempts: attempts in all, the first included (>= 1).
        backoff: a :class:`Backoff`, or a tenacity ``wait`` strategy (any
            callable taking tenacity's ``RetryCallState``).
        deadline: seconds from the start of the first attempt after which no
            new attempt starts; also cuts the last sleep. ``None``: no deadline.
            A running attempt is never interrupted (use your driver's timeouts).
        retry_on: what to retry: an exception class, a tuple of them, a
            predicate ``(exc) -> bool``, or a rule from :data:`transient`.
            Default: every ``Exception``.
        budget: a :class:`RetryBudget` or :class:`RedisRetryBudget`.
        hooks: callables that receive this policy's events, on top of the
            global hooks (:func:`scalekit.set_hooks`).
        name: the name in events; default: the wrapped function's qualified name.
        stop: an extra tenacity ``stop`` strategy (e.g. ``stop_after_delay(5)``).
        max_retry_after: the longest ``Retry-After`` hint honoured, in
            seconds; longer hints are cut to it (an open breaker asking for
            longer is not retried).
        max_breaker_wait: the longest wait for an open circuit breaker
            (``CircuitOpenError.retry_after``); a breaker asking for longer
            fails the call at once. ``None`` (default): with a ``deadline``,
            what is left of it; without one, the longest sleep the policy
            takes on its own (the backoff's ``cap``, or what a tenacity
            ``wait`` returns for this retry). Never more than
            ``max_retry_after``. So a policy over a breaker with the default
            60 s ``reset_timeout`` fails fast instead of sleeping a minute
            inside a request handler.
        reraise: on giving up, re-raise the last error unchanged (default, like
            stamina) or, when ``False``, raise :class:`~scalekit.errors.RetryError`
            chained to it (like tenacity without ``reraise``).
        clock: where time and sleeps come from.

    Raises:
        ConfigurationError: attempts < 1, a negative or non-finite duration, a
            ``retry_on`` that is not a class/tuple/predicate, a non-callable
            hook or strategy, a budget that is not a budget. The error's
            ``parameter`` names the argument.
    """

    attempts: int = 3
    backoff: Backoff | Callable[[Any], float] = field(default_factory=Backoff.exponential)
    deadline: float | None = None
    retry_on: Any = Exception
    budget: Budget | None = None
    hooks: Iterable[Hook] = ()
    name: str | None = None
    stop: Callable[[Any], bool] | None = None
    max_retry_after: float = 60.0
    reraise: bool = True
    clock: Clock = SYSTEM_CLOCK
    max_breaker_wait: float | None = None
    _rule: TransientRule = field(init=False, repr=False, compare=False)
    _monotonic: Callable[[], float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int(self.attempts, "attempts")
        if not isinstance(self.backoff, Backoff) and not callable(self.backoff):
            raise ConfigurationError(
                f"backoff must be a Backoff or a tenacity wait strategy, got {self.backoff!r}",
                parameter="backoff",
            )
        if self.deadline is not None:
            object.__setattr__(
                self, "deadline", _number(self.deadline, "deadline", minimum=0.0, strict=True)
            )
        object.__setattr__(self, "_rule", as_rule(self.retry_on, parameter="retry_on"))
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise ConfigurationError(
                f"budget must be a RetryBudget or RedisRetryBudget, got {self.budget!r}",
                parameter="budget",
            )
        hooks = tuple(self.hooks)
        for hook in hooks:
            if not callable(hook):
                raise ConfigurationError(f"hook {hook!r} is not callable", parameter="hooks")
        object.__setattr__(self, "hooks", hooks)
        if self.name is not None and not isinstance(self.name, str):
            raise ConfigurationError(f"name must be a string, got {self.name!r}", parameter="name")
        if self.stop is not None and not callable(self.stop):
            raise ConfigurationError(
                f"stop must be a tenacity stop strategy, got {self.stop!r}", parameter="stop"
            )
        object.__setattr__(
            self, "max_retry_after", _number(self.max_retry_after, "max_retry_after")
        )
        if self.max_breaker_wait is not None:
            object.__setattr__(
                self, "max_breaker_wait", _number(self.max_breaker_wait, "max_breaker_wait")
            )
        if not isinstance(self.reraise, bool):
            raise ConfigurationError(
                f"reraise must be a bool, got {self.reraise!r}", parameter="reraise"
            )
        for method in ("monotonic", "time", "sleep", "asleep"):
            if not callable(getattr(self.clock, method, None)):
                raise ConfigurationError(
                    f"clock must be a scalekit.typing.Clock, got {self.clock!r}", parameter="clock"
                )
        # The system clock's method is a Python wrapper; the hot path skips it.
        monotonic = time.monotonic if self.clock is SYSTEM_CLOCK else self.clock.monotonic
        object.__setattr__(self, "_monotonic", monotonic)

    # -- front-ends -------------------------------------------------------------------

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn`` (sync or ``async def``) so that it runs under this policy.

        Raises:
            ConfigurationError: ``fn`` is a generator or async generator
                function (its errors surface after the call returned).
        """
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise ConfigurationError(
                f"cannot retry the generator function {fn!r}: its errors are raised "
                "while iterating, after the call returned",
                parameter="fn",
            )
        if inspect.iscoroutinefunction(fn):
            from scalekit.retry._async import adecorate

            return cast("Callable[P, T]", adecorate(self, fn))
        from scalekit.retry._sync import decorate

        return decorate(self, fn)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` under this policy and return its result.

        >>> RetryPolicy(attempts=2).call(int, "42")
        42

        Raises:
            Exception: the last attempt's error when the policy gives up (or
                :class:`~scalekit.errors.RetryError` with ``reraise=False``);
                any error ``retry_on`` does not match, at once.
        """
        from scalekit.retry._sync import call

        return call(self, fn, args, kwargs)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under this policy and return its result.

        .. versionchanged:: issue 14
           Was ``call_async``, which stays one release as a deprecated alias.

        Raises:
            Exception: as :meth:`call`. Cancellation during a wait stops at once.
        """
        from scalekit.retry._async import acall

        return await acall(self, fn, args, kwargs)

    async def call_async(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Deprecated alias of :meth:`acall` (removed in the next release)."""
        deprecated("RetryPolicy.call_async", "RetryPolicy.acall")
        from scalekit.retry._async import acall

        return await acall(self, fn, args, kwargs)

    def __iter__(self) -> Attempts:
        """Attempts for a block: ``for attempt in policy: with attempt: ...``."""
        from scalekit.retry._sync import Attempts

        return Attempts(self)

    def __aiter__(self) -> AsyncAttempts:
        """Attempts for an async block: ``async for attempt in policy: with attempt: ...``."""
        from scalekit.retry._async import AsyncAttempts

        return AsyncAttempts(self)

    def breaker_wait_cap(self, delay: float | None = None) -> float:
        """The longest wait for an open breaker, in seconds (the deadline aside).

        ``max_breaker_wait`` when given; else, with a deadline,
        ``max_retry_after`` (the deadline then bounds the wait); else the
        backoff's ``cap`` (for a tenacity ``wait``: ``delay``, the sleep it
        chose for this retry, 0 when unknown). Never more than
        ``max_retry_after``.

        >>> RetryPolicy(backoff=Backoff.exponential(0.1, cap=5.0)).breaker_wait_cap()
        5.0
        >>> RetryPolicy(deadline=30.0).breaker_wait_cap()
        60.0
        """
        if self.max_breaker_wait is not None:
            cap = self.max_breaker_wait
        elif self.deadline is not None:
            cap = self.max_retry_after
        elif isinstance(self.backoff, Backoff):
            cap = self.backoff.cap
        else:
            cap = 0.0 if delay is None else delay
        return min(cap, self.max_retry_after)

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed (validated again).

        >>> RetryPolicy(attempts=3).replace(attempts=5).attempts
        5
        """
        return dataclasses.replace(self, **changes)

    def as_tenacity(self, *, asynchronous: bool = False) -> Any:
        """An equivalent ``tenacity.Retrying`` (or ``AsyncRetrying``) for tenacity's API.

        Same attempts, deadline, backoff, ``retry_on``, Retry-After handling,
        circuit-breaker rule, budget and events; ``reraise`` maps to tenacity's.
        With ``reraise=False`` tenacity raises its own ``tenacity.RetryError``.
        A :class:`RedisRetryBudget` is used through its sync methods (an
        asyncio client is not supported here).

        Raises:
            ConfigurationError: tenacity is not installed.
        """
        from scalekit.retry._tenacity import to_tenacity

        return to_tenacity(self, asynchronous=asynchronous)


def _type_name(exc: BaseException) -> str:
    return type(exc).__qualname__


class RetryState:
    """The state of one call after its first failure, and the decisions on it.

    Pure: time comes from the policy's clock, randomness from ``uniform``,
    and the only effect is emitting events. Shells create it at the first
    failure and drive it (see the module docstring).
    """

    __slots__ = (
        "_hint",
        "_name",
        "_name_source",
        "_previous_backoff",
        "_tenacity_state",
        "attempt",
        "policy",
        "reason",
        "start",
        "uniform",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        start: float | None,
        name_source: object = None,
        *,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.policy = policy
        # Without a deadline the start is not read on the success path; the
        # first failure is then the best known start.
        self.start = policy.clock.monotonic() if start is None else start
        self._name_source = name_source
        self._name: str | None = policy.name
        self._previous_backoff: float | None = None
        self._hint: float | None = None
        self._tenacity_state: Any = None
        self.attempt = 1
        self.reason = ""
        self.uniform = uniform

    @property
    def name(self) -> str:
        """The name events carry: the policy's, else the function's qualified name."""
        if self._name is None:
            source = self._name_source
            name = getattr(source, "__qualname__", None) or getattr(source, "__name__", None)
            self._name = name if isinstance(name, str) else "retry"
        return self._name

    def _tenacity(self, exc: BaseException, now: float) -> Any:
        from scalekit.retry._tenacity import call_state

        if self._tenacity_state is None:
            self._tenacity_state = call_state(self.start)
        state = self._tenacity_state
        state.attempt_number = self.attempt
        state.outcome = _tenacity_outcome(self.attempt, exc)
        state.outcome_timestamp = now
        return state

    def on_failure(self, exc: BaseException) -> float | None:
        """Decide after attempt :attr:`attempt` failed with ``exc``.

        Returns the seconds to wait before the next attempt, or ``None`` to
        stop; :attr:`reason` then says why (``"not_retryable"``, ``"attempts"``,
        ``"deadline"``, ``"retry_after"``, ``"stop"``).
        """
        policy = self.policy
        if not isinstance(exc, Exception) or isinstance(exc, _NEVER_RETRY):
            self.reason = "not_retryable"
            return None
        clock = policy.clock
        breaker = False
        if isinstance(exc, CircuitOpenError):
            breaker = True
            hint = exc.retry_after
            if hint is None or not hint <= policy.max_retry_after + TOLERANCE:
                self.reason = "retry_after"
                return None
        elif not policy._rule(exc):
            self.reason = "not_retryable"
            return None
        else:
            hint = retry_after_hint(exc, clock.time())
            if hint is not None:
                hint = min(hint, policy.max_retry_after)
        cap = _testing.testing_attempts()
        attempts = policy.attempts if cap is None else min(policy.attempts, cap)
        if self.attempt >= attempts:
            self.reason = "attempts"
            return None
        now = clock.monotonic()
        backoff = policy.backoff
        # The upcoming sleep is computed before the stop check, as tenacity
        # does: stop_before_delay reads it (RetryCallState.upcoming_sleep).
        if isinstance(backoff, Backoff):
            delay = backoff.delay(self.attempt, self._previous_backoff, self.uniform)
            self._previous_backoff = delay
        else:
            delay = float(backoff(self._tenacity(exc, now)))
        own_delay = delay
        self._hint = hint
        if hint is not None:
            delay = max(delay, hint)
        if policy.stop is not None:
            call_state = self._tenacity(exc, now)
            call_state.upcoming_sleep = delay
            if policy.stop(call_state):
                self.reason = "stop"
                return None
        if breaker and hint is not None:
            limit = policy.breaker_wait_cap(None if isinstance(backoff, Backoff) else own_delay)
            if hint > limit + TOLERANCE:
                self.reason = "retry_after"
                return None
        if policy.deadline is not None:
            remaining = policy.deadline - (now - self.start)
            if remaining <= 0 or (hint is not None and hint > remaining + TOLERANCE):
                self.reason = "deadline"
                return None
            delay = min(delay, remaining)
        if cap is not None:
            return 0.0
        return max(0.0, delay)

    def _emit(self, event: RetryScheduled | RetryGaveUp) -> None:
        emit(event)
        for hook in self.policy.hooks:
            try:
                hook(event)
            except Exception:
                import logging

                logging.getLogger("scalekit.retry").exception(
                    "retry hook %r failed on %s", hook, event.kind
                )

    def scheduled(self, exc: BaseException, delay: float) -> None:
        """Report the retry about to happen, and count the attempt."""
        if self._tenacity_state is not None:
            self._tenacity_state.idle_for += delay
        self._emit(
            RetryScheduled(
                name=self.name,
                attempt=self.attempt,
                delay=delay,
                error=_type_name(exc),
                retry_after=self._hint,
            )
        )
        self.attempt += 1

    def give_up(self, exc: BaseException) -> BaseException:
        """Report giving up (unless ``exc`` was simply not retryable); return what to raise."""
        if self.reason == "not_retryable":
            return exc
        self._emit(
            RetryGaveUp(
                name=self.name,
                attempts=self.attempt,
                reason=self.reason,
                error=_type_name(exc),
                seconds=max(0.0, self.policy.clock.monotonic() - self.start),
            )
        )
        return self._final(exc)

    def budget_exhausted(self, exc: BaseException, budget: Budget) -> BaseException:
        """Report that ``budget`` refused the retry; return what to raise."""
        self.reason = "budget"
        self._emit(
            RetryBudgetExhausted(
                name=self.name,
                attempts=self.attempt,
                reason="budget",
                error=_type_name(exc),
                seconds=max(0.0, self.policy.clock.monotonic() - self.start),
                budget=budget.name,
            )
        )
        return self._final(exc)

    def _final(self, exc: BaseException) -> BaseException:
        if self.policy.reraise:
            return exc
        error = RetryError(self.attempt, exc)
        error.__cause__ = exc
        return error


def _tenacity_outcome(attempt: int, exc: BaseException) -> Any:
    from tenacity import Future

    return Future.construct(attempt, exc, True)
