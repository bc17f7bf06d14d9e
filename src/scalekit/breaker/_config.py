"""The breaker's policy: a frozen, validated value built once and shared.

:class:`BreakerPolicy` holds every number and rule a breaker follows (how it
trips, how long it stays open, how it probes, what counts as a failure). It
does no I/O and keeps no state, so one policy can serve many breakers, and the
Redis-shared breaker sends the same numbers to its Lua script.

Outcome classification lives here too, because it is configuration: which
exceptions are failures, which are ignored, which return values are failures.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from scalekit.errors import ConfigurationError

__all__ = [
    "FAILURE",
    "IGNORED",
    "SUCCESS",
    "BreakerPolicy",
    "ExceptionRule",
]

# Outcomes of one call, as small ints so the hot path compares ints.
SUCCESS: Final = 0
FAILURE: Final = 1
IGNORED: Final = 2  # neither success nor failure: releases the permit only

#: An exception rule: an exception class, or a predicate that says "matches".
ExceptionRule: TypeAlias = "type[BaseException] | Callable[[BaseException], bool]"

# The longest open duration an uncapped back-off reaches (about 31 years).
_LONGEST_OPEN: Final = 1e9

# Never counted, whatever the rules say: they are the caller stopping, not the
# dependency failing. asyncio.CancelledError joins them in classify_exception,
# looked up in sys.modules so that importing the breaker never imports asyncio
# (if asyncio was never imported, nothing can have been cancelled by it).
_NEVER_COUNTED: Final = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _split_rules(
    rules: Iterable[ExceptionRule] | ExceptionRule | None, parameter: str
) -> tuple[tuple[type[BaseException], ...], tuple[Callable[[BaseException], bool], ...]]:
    if rules is None:
        return (), ()
    if isinstance(rules, type) or callable(rules):
        rules = (rules,)
    types: list[type[BaseException]] = []
    predicates: list[Callable[[BaseException], bool]] = []
    try:
        items = list(rules)
    except TypeError:
        raise ConfigurationError(
            f"{parameter} must be exception classes or predicates, got {rules!r}",
            parameter=parameter,
        ) from None
    for item in items:
        rule: object = item
        if isinstance(rule, type) and issubclass(rule, BaseException):
            types.append(rule)
        elif callable(rule) and not isinstance(rule, type):
            predicates.append(rule)
        else:
            raise ConfigurationError(
                f"{parameter} entries must be exception classes or predicates, got {rule!r}",
                parameter=parameter,
            )
    return tuple(types), tuple(predicates)


def _check_positive(value: object, parameter: str, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigurationError(
            f"{parameter} must be a number, got {value!r}", parameter=parameter
        )
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(
            f"{parameter} must be finite and {bound}, got {value!r}", parameter=parameter
        )


def _check_int(value: object, parameter: str, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{parameter} must be an int, got {value!r}", parameter=parameter)
    if value < minimum:
        raise ConfigurationError(
            f"{parameter} must be >= {minimum}, got {value!r}", parameter=parameter
        )


def _check_rate(value: object, parameter: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigurationError(
            f"{parameter} must be in (0, 1], got {value!r}", parameter=parameter
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerPolicy:
    """How a circuit breaker trips, waits, probes and classifies outcomes.

    Trip modes (any combination; the first that fires opens the circuit):

    * ``fail_max``: open after this many consecutive failures (pybreaker's
      name and meaning). The default mode, with ``fail_max=5``, when no rate
      is configured.
    * ``failure_rate``: open when the share of failures in the window
      reaches this rate, once the window holds at least ``min_calls`` calls.
    * ``slow_call_rate`` with ``slow_call_seconds``: open when the share of
      calls that took at least ``slow_call_seconds`` reaches this rate.

    The window counts the last ``window`` calls, or, with ``window_seconds``,
    the calls of the last ``window_seconds`` split into ``window_buckets``
    buckets. Without either, a rate uses a count window of 100 calls.

    Open duration: ``reset_timeout`` seconds (or a function of the number of
    consecutive openings, starting at 1), multiplied by ``reset_backoff`` for
    each re-opening without a close in between, capped at
    ``reset_timeout_max``.

    Half-open: at most ``half_open_max_calls`` probes run at once; after
    ``success_threshold`` successful probes the circuit closes, one failed
    (or slow) probe re-opens it; a probe that has not reported after
    ``probe_timeout`` seconds frees its slot.

    Classification: an exception matching ``exclude`` counts as neither
    success nor failure; otherwise, if ``include`` is given, only matching
    exceptions are failures (others count as successes: the dependency did
    answer); without ``include`` every exception is a failure. A return value
    for which ``failure_result`` returns true is a failure. Cancellation,
    ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` are never
    counted.

    >>> BreakerPolicy(failure_rate=0.5, window=20, min_calls=10).trip_on_rate
    True

    Raises:
        ConfigurationError: a parameter is out of range (its name is in
            ``.parameter``): rates outside (0, 1], negative or zero
            durations, ``min_calls`` larger than ``window``, counts < 1.
    """

    fail_max: int | None = None
    failure_rate: float | None = None
    window: int | None = None
    window_seconds: float | None = None
    window_buckets: int = 10
    min_calls: int | None = None
    slow_call_seconds: float | None = None
    slow_call_rate: float | None = None
    reset_timeout: float | Callable[[int], float] = 60.0
    reset_backoff: float = 1.0
    reset_timeout_max: float | None = None
    half_open_max_calls: int = 1
    success_threshold: int = 1
    probe_timeout: float = 60.0
    exclude: Iterable[ExceptionRule] | ExceptionRule | None = None
    include: Iterable[ExceptionRule] | ExceptionRule | None = None
    failure_result: Callable[[Any], bool] | None = None

    # Derived at construction; read by the core on every record.
    trip_on_rate: bool = field(init=False, repr=False, compare=False)
    timed: bool = field(init=False, repr=False, compare=False)
    _exclude_types: tuple[type[BaseException], ...] = field(init=False, repr=False, compare=False)
    _exclude_predicates: tuple[Callable[[BaseException], bool], ...] = field(
        init=False, repr=False, compare=False
    )
    _include_types: tuple[type[BaseException], ...] | None = field(
        init=False, repr=False, compare=False
    )
    _include_predicates: tuple[Callable[[BaseException], bool], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        _check_int(self.fail_max, "fail_max", 1)
        _check_rate(self.failure_rate, "failure_rate")
        _check_rate(self.slow_call_rate, "slow_call_rate")
        _check_positive(self.slow_call_seconds, "slow_call_seconds")
        _check_int(self.window, "window", 1)
        _check_positive(self.window_seconds, "window_seconds")
        _check_int(self.window_buckets, "window_buckets", 1)
        _check_int(self.min_calls, "min_calls", 1)
        _check_int(self.half_open_max_calls, "half_open_max_calls", 1)
        _check_int(self.success_threshold, "success_threshold", 1)
        _check_positive(self.probe_timeout, "probe_timeout")
        if not callable(self.reset_timeout):
            _check_positive(self.reset_timeout, "reset_timeout", allow_zero=True)
        _check_positive(self.reset_backoff, "reset_backoff")
        if self.reset_backoff < 1:
            raise ConfigurationError(
                f"reset_backoff must be >= 1 (open durations never shrink), got "
                f"{self.reset_backoff!r}",
                parameter="reset_backoff",
            )
        _check_positive(self.reset_timeout_max, "reset_timeout_max", allow_zero=True)
        if (self.slow_call_rate is None) != (self.slow_call_seconds is None):
            missing = "slow_call_seconds" if self.slow_call_seconds is None else "slow_call_rate"
            raise ConfigurationError(
                "slow_call_rate and slow_call_seconds go together", parameter=missing
            )
        if self.window is not None and self.window_seconds is not None:
            raise ConfigurationError(
                "give window (a count) or window_seconds (a time span), not both",
                parameter="window_seconds",
            )
        trip_on_rate = self.failure_rate is not None or self.slow_call_rate is not None
        if not trip_on_rate and (
            self.window is not None or self.window_seconds is not None or self.min_calls
        ):
            raise ConfigurationError(
                "window, window_seconds and min_calls need failure_rate or slow_call_rate",
                parameter="failure_rate",
            )
        if trip_on_rate:
            if self.window is None and self.window_seconds is None:
                setattr_(self, "window", 100)
            if self.min_calls is None:
                setattr_(self, "min_calls", min(10, self.window or 10))
            if (
                self.window is not None
                and self.min_calls is not None
                and (self.min_calls > self.window)
            ):
                raise ConfigurationError(
                    f"window ({self.window}) is smaller than min_calls ({self.min_calls}): "
                    "the rate could never be evaluated",
                    parameter="window",
                )
        elif self.fail_max is None:
            setattr_(self, "fail_max", 5)
        setattr_(self, "trip_on_rate", trip_on_rate)
        setattr_(self, "timed", self.slow_call_seconds is not None)
        exclude_types, exclude_predicates = _split_rules(self.exclude, "exclude")
        setattr_(self, "_exclude_types", exclude_types)
        setattr_(self, "_exclude_predicates", exclude_predicates)
        if self.include is None:
            setattr_(self, "_include_types", None)
            setattr_(self, "_include_predicates", ())
        else:
            include_types, include_predicates = _split_rules(self.include, "include")
            setattr_(self, "_include_types", include_types)
            setattr_(self, "_include_predicates", include_predicates)
        if self.failure_result is not None and not callable(self.failure_result):
            raise ConfigurationError(
                f"failure_result must be callable, got {self.failure_result!r}",
                parameter="failure_result",
            )
        # Freeze the rule collections as tuples so the policy is a true value.
        setattr_(self, "exclude", exclude_types + exclude_predicates)
        if self.include is not None:
            setattr_(self, "include", (self._include_types or ()) + self._include_predicates)

    def open_duration(self, openings: int) -> float:
        """Seconds to stay open at the ``openings``-th consecutive opening (1-based).

        >>> BreakerPolicy(reset_timeout=1.0, reset_backoff=2.0, reset_timeout_max=5.0
        ...               ).open_duration(4)
        5.0

        Raises:
            ConfigurationError: a user ``reset_timeout`` function returned a
                negative or non-finite number.
        """
        timeout = self.reset_timeout
        if callable(timeout):
            seconds = float(timeout(openings))
            if not (seconds >= 0 and math.isfinite(seconds)):
                raise ConfigurationError(
                    f"reset_timeout function returned {seconds!r} for opening {openings}",
                    parameter="reset_timeout",
                )
        else:
            seconds = float(timeout)
            if self.reset_backoff != 1.0 and openings > 1:
                try:
                    seconds *= self.reset_backoff ** (openings - 1)
                except OverflowError:
                    seconds = math.inf
        if self.reset_timeout_max is not None and seconds > self.reset_timeout_max:
            seconds = self.reset_timeout_max
        # An uncapped back-off still stays a finite, representable duration.
        return min(seconds, _LONGEST_OPEN)

    def classify_exception(self, exc: BaseException) -> int:
        """``FAILURE``, ``SUCCESS`` or ``IGNORED`` for a call that raised ``exc``.

        >>> BreakerPolicy(exclude=[KeyError]).classify_exception(KeyError()) == IGNORED
        True
        """
        if isinstance(exc, _NEVER_COUNTED):
            return IGNORED
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None and isinstance(exc, asyncio.CancelledError):
            return IGNORED
        if isinstance(exc, self._exclude_types):
            return IGNORED
        for predicate in self._exclude_predicates:
            if predicate(exc):
                return IGNORED
        include = self._include_types
        if include is None:
            return FAILURE
        if isinstance(exc, include):
            return FAILURE
        for predicate in self._include_predicates:
            if predicate(exc):
                return FAILURE
        return SUCCESS

    def classify_result(self, result: object) -> int:
        """``FAILURE`` when ``failure_result(result)`` is true, else ``SUCCESS``."""
        check = self.failure_result
        if check is not None and check(result):
            return FAILURE
        return SUCCESS
