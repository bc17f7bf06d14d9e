"""The decision core (RetryState): what is retried, for how long, and when it gives up."""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import importlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import CircuitOpenError, ConfigurationError, RateLimitExceeded, RetryError
from scalekit.retry import (
    Backoff,
    RetryGaveUp,
    RetryPolicy,
    RetryScheduled,
    RetryState,
    retry_after_hint,
    set_testing,
    transient,
)
from scalekit.testing import FakeClock, capture_events


def policy(**kwargs: Any) -> RetryPolicy:
    kwargs.setdefault("clock", FakeClock())
    kwargs.setdefault("backoff", Backoff.constant(1.0))
    return RetryPolicy(**kwargs)


class Response:
    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers


class HTTPishError(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("http")
        self.response = Response(503, headers)


def test_retries_until_attempts_run_out() -> None:
    state = RetryState(policy(attempts=3), None)
    assert state.on_failure(ValueError()) == 1.0
    state.scheduled(ValueError(), 1.0)
    assert state.on_failure(ValueError()) == 1.0
    state.scheduled(ValueError(), 1.0)
    assert state.on_failure(ValueError()) is None
    assert state.reason == "attempts"


@pytest.mark.parametrize(
    "exc",
    [
        asyncio.CancelledError(),
        KeyboardInterrupt(),
        SystemExit(1),
        GeneratorExit(),
        concurrent.futures.CancelledError(),
    ],
)
def test_cancellation_and_exit_are_never_retried(exc: BaseException) -> None:
    state = RetryState(policy(retry_on=lambda e: True), None)
    assert state.on_failure(exc) is None
    assert state.reason == "not_retryable"
    with capture_events() as events:
        assert state.give_up(exc) is exc
    assert events == []  # not a give-up: simply not retryable


def test_errors_outside_retry_on_are_not_retried() -> None:
    state = RetryState(policy(retry_on=(KeyError, IndexError)), None)
    assert state.on_failure(ValueError()) is None
    assert state.reason == "not_retryable"
    assert state.on_failure(KeyError()) == 1.0


def test_deadline_caps_the_last_sleep_then_gives_up() -> None:
    clock = FakeClock()
    state = RetryState(policy(attempts=10, deadline=2.5, clock=clock), clock.monotonic())
    delays = []
    while (delay := state.on_failure(ValueError())) is not None:
        delays.append(delay)
        state.scheduled(ValueError(), delay)
        clock.sleep(delay)
    assert delays == [1.0, 1.0, 0.5]
    assert state.reason == "deadline"


def test_circuit_open_is_retried_only_when_its_wait_fits_the_deadline() -> None:
    clock = FakeClock()
    fits = RetryState(policy(deadline=10.0, clock=clock, retry_on=KeyError), 0.0)
    # Not in retry_on, yet retried: the breaker says when to come back.
    assert fits.on_failure(CircuitOpenError("db", 4.0)) == 4.0

    too_long = RetryState(policy(deadline=3.0, clock=clock), 0.0)
    assert too_long.on_failure(CircuitOpenError("db", 4.0)) is None
    assert too_long.reason == "deadline"

    forced = RetryState(policy(clock=clock), 0.0)
    assert forced.on_failure(CircuitOpenError("db", None)) is None
    assert forced.reason == "retry_after"

    capped = RetryState(policy(clock=clock, max_retry_after=2.0), 0.0)
    assert capped.on_failure(CircuitOpenError("db", 4.0)) is None
    assert capped.reason == "retry_after"


def test_retry_after_hint_raises_the_delay_and_is_capped() -> None:
    clock = FakeClock()
    state = RetryState(policy(clock=clock, max_retry_after=5.0), 0.0)
    assert state.on_failure(HTTPishError({"Retry-After": "3"})) == 3.0
    assert state.on_failure(HTTPishError({"Retry-After": "120"})) == 5.0
    # A hint shorter than the backoff does not shorten it.
    assert state.on_failure(HTTPishError({"Retry-After": "0"})) == 1.0
    assert state.on_failure(RateLimitExceeded("k", 2.0)) == 2.0


def test_retry_after_hint_that_overruns_the_deadline_gives_up() -> None:
    state = RetryState(policy(deadline=2.0), 0.0)
    assert state.on_failure(HTTPishError({"Retry-After": "3"})) is None
    assert state.reason == "deadline"


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_hint(HTTPishError({"Retry-After": date}), now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert retry_after_hint(HTTPishError({"Retry-After": past}), now) == 0.0
    assert retry_after_hint(HTTPishError({"Retry-After": " 1.5 "}), now) == 1.5
    for junk in ("soon", "", "nan", "inf", "Mon, 99 Foo 2020"):
        assert retry_after_hint(HTTPishError({"Retry-After": junk}), now) is None
    assert retry_after_hint(HTTPishError({}), now) is None
    assert retry_after_hint(ValueError(), now) is None
    assert retry_after_hint(CircuitOpenError("x", 1.25), now) == 1.25


def test_testing_mode_removes_waits_and_caps_attempts() -> None:
    with set_testing(True, attempts=2):
        state = RetryState(policy(attempts=5, backoff=Backoff.constant(30.0)), None)
        assert state.on_failure(CircuitOpenError("db", 20.0)) == 0.0
        state.scheduled(ValueError(), 0.0)
        assert state.on_failure(ValueError()) is None
        assert state.reason == "attempts"
    state = RetryState(policy(attempts=5, backoff=Backoff.constant(30.0)), None)
    assert state.on_failure(ValueError()) == 30.0


def test_give_up_emits_an_event_and_returns_what_to_raise() -> None:
    clock = FakeClock()
    hook_events: list[object] = []
    state = RetryState(policy(attempts=1, clock=clock, name="db", hooks=[hook_events.append]), 0.0)
    error = ValueError("secret password=hunter2")
    with capture_events() as events:
        assert state.on_failure(error) is None
        assert state.give_up(error) is error
    assert events == hook_events
    (event,) = events
    assert isinstance(event, RetryGaveUp)
    assert (event.name, event.attempts, event.reason, event.error) == (
        "db",
        1,
        "attempts",
        "ValueError",
    )
    assert "hunter2" not in repr(event)


def test_reraise_false_wraps_in_retry_error() -> None:
    state = RetryState(policy(attempts=1, reraise=False), 0.0)
    error = ValueError()
    state.on_failure(error)
    wrapped = state.give_up(error)
    assert isinstance(wrapped, RetryError)
    assert wrapped.last_exception is error and wrapped.__cause__ is error
    assert wrapped.attempts == 1


def test_scheduled_event_carries_attempt_delay_and_hint() -> None:
    state = RetryState(policy(name="billing"), 0.0)
    error = HTTPishError({"Retry-After": "2"})
    with capture_events() as events:
        delay = state.on_failure(error)
        assert delay is not None
        state.scheduled(error, delay)
    assert events == [
        RetryScheduled(name="billing", attempt=1, delay=2.0, error="HTTPishError", retry_after=2.0)
    ]


def test_tenacity_strategies_are_accepted() -> None:
    tenacity = importlib.import_module("tenacity")
    clock = FakeClock()
    state = RetryState(
        policy(
            attempts=10,
            clock=clock,
            backoff=tenacity.wait_incrementing(start=1, increment=2),
            stop=tenacity.stop_after_delay(5),
        ),
        0.0,
    )
    delays = []
    while (delay := state.on_failure(ValueError())) is not None:
        delays.append(delay)
        state.scheduled(ValueError(), delay)
        clock.sleep(delay)
    assert delays == [1.0, 3.0, 5.0]
    assert state.reason == "stop"


@settings(max_examples=150, deadline=None)
@given(
    deadline=st.floats(min_value=0.01, max_value=100.0),
    cap=st.floats(min_value=0.0, max_value=50.0),
    hints=st.lists(st.none() | st.floats(min_value=0.0, max_value=200.0), min_size=1, max_size=12),
    jitter=st.sampled_from(["full", "equal", "decorrelated", "none"]),
    work=st.lists(st.floats(min_value=0.0, max_value=20.0), min_size=12, max_size=12),
)
def test_no_delay_exceeds_the_cap_the_hint_cap_or_the_remaining_deadline(
    deadline: float, cap: float, hints: list[float | None], jitter: Any, work: list[float]
) -> None:
    clock = FakeClock()
    max_retry_after = 60.0
    retry_policy = RetryPolicy(
        attempts=100,
        deadline=deadline,
        backoff=Backoff.exponential(0.1, cap=cap, jitter=jitter),
        max_retry_after=max_retry_after,
        clock=clock,
    )
    state = RetryState(retry_policy, clock.monotonic())
    for hint, spent in zip(hints, work, strict=False):
        clock.advance(spent)  # the attempt itself took time
        error = ValueError() if hint is None else RateLimitExceeded("k", hint)
        remaining = deadline - clock.monotonic()
        delay = state.on_failure(error)
        if delay is None:
            assert state.reason == "deadline"
            assert remaining <= 0 or (hint is not None and min(hint, max_retry_after) > remaining)
            return
        assert 0.0 <= delay <= remaining
        assert delay <= max(cap, min(hint or 0.0, max_retry_after))
        if hint is not None:
            assert delay >= min(hint, max_retry_after)
        state.scheduled(error, delay)
        clock.sleep(delay)
        assert clock.monotonic() <= deadline


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": 1.5}, "attempts"),
        ({"attempts": True}, "attempts"),
        ({"deadline": -1.0}, "deadline"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": float("inf")}, "deadline"),
        ({"max_retry_after": -1}, "max_retry_after"),
        ({"retry_on": "OperationalError"}, "retry_on"),
        ({"retry_on": (ValueError, "x")}, "retry_on"),
        ({"retry_on": ()}, "retry_on"),
        ({"backoff": 3}, "backoff"),
        ({"budget": object()}, "budget"),
        ({"hooks": [1]}, "hooks"),
        ({"stop": 5}, "stop"),
        ({"name": 5}, "name"),
        ({"reraise": "yes"}, "reraise"),
        ({"clock": object()}, "clock"),
    ],
)
def test_bad_policy_parameters_name_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**kwargs)
    assert info.value.parameter == parameter


def test_policy_is_a_frozen_value_with_replace() -> None:
    base = RetryPolicy(attempts=3, retry_on=transient.redis)
    assert base.replace(attempts=5).attempts == 5
    assert base.attempts == 3
    with pytest.raises(AttributeError):
        base.attempts = 4  # type: ignore[misc]
    with pytest.raises(ConfigurationError):
        base.replace(attempts=0)


def test_generator_functions_are_refused() -> None:
    def gen() -> Any:
        yield 1

    async def agen() -> Any:
        yield 1

    for fn in (gen, agen):
        with pytest.raises(ConfigurationError) as info:
            RetryPolicy()(fn)
        assert info.value.parameter == "fn"
