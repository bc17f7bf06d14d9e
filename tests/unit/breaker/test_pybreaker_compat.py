"""pybreaker compatibility: parameter names, listeners, state names, conversion."""

from __future__ import annotations

from typing import Any

import pybreaker
import pytest

from scalekit.breaker import CircuitBreaker, PybreakerState, State, from_pybreaker
from scalekit.errors import CircuitOpenError
from scalekit.testing import FakeClock


class Boom(Exception):
    pass


class Business(Exception):
    pass


class Recorder(pybreaker.CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        self.log.append(("before", args, kwargs))

    def success(self, cb: Any) -> None:
        self.log.append(("success",))

    def failure(self, cb: Any, exc: BaseException) -> None:
        self.log.append(("failure", type(exc).__name__))

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.log.append(("state", old_state.name, new_state.name))


def fail() -> None:
    raise Boom


def test_pybreaker_parameter_names_mean_the_same() -> None:
    """The same sequence drives pybreaker and us to the same states."""
    clock = FakeClock()
    ours = CircuitBreaker("db", fail_max=3, reset_timeout=60, success_threshold=2, clock=clock)
    theirs = pybreaker.CircuitBreaker(
        fail_max=3, reset_timeout=60, success_threshold=2, throw_new_error_on_trip=False
    )
    for breaker in (ours, theirs):
        for _ in range(3):
            with pytest.raises(Boom):
                breaker.call(fail)
    assert ours.current_state == theirs.current_state == "open"
    assert ours.fail_counter == theirs.fail_counter == 3
    with pytest.raises(CircuitOpenError):
        ours.call(len, "x")
    with pytest.raises(pybreaker.CircuitBreakerError):
        theirs.call(len, "x")


def test_listener_bridge_forwards_calls_outcomes_and_states() -> None:
    recorder = Recorder()
    clock = FakeClock()
    breaker = CircuitBreaker(
        "db", fail_max=1, reset_timeout=1.0, listeners=[recorder], exclude=[Business], clock=clock
    )
    breaker.call(len, "ab")
    with pytest.raises(Business):
        breaker.call(_raise, Business())
    with pytest.raises(Boom):
        breaker.call(fail)
    clock.advance(1.0)
    breaker.call(len, "x")
    before_business = recorder.log.pop(2)
    assert before_business[0] == "before"
    assert isinstance(before_business[1][0], Business)
    assert recorder.log == [
        ("before", ("ab",), {}),
        ("success",),
        ("success",),  # excluded errors call success(), as in pybreaker
        ("before", (), {}),
        ("failure", "Boom"),
        ("state", "closed", "open"),
        ("state", "open", "half-open"),
        ("before", ("x",), {}),
        ("success",),
        ("state", "half-open", "closed"),
    ]


def _raise(exc: BaseException) -> None:
    raise exc


def test_state_names() -> None:
    assert PybreakerState(State.HALF_OPEN).name == "half-open"
    assert PybreakerState(State.FORCED_OPEN).name == "open"
    assert PybreakerState(State.DISABLED).name == "closed"
    breaker = CircuitBreaker("db")
    breaker.force_open()
    assert breaker.current_state == "open"


def test_from_pybreaker_keeps_settings_and_exclude_meaning() -> None:
    recorder = Recorder()
    theirs = pybreaker.CircuitBreaker(
        fail_max=2,
        reset_timeout=30,
        success_threshold=3,
        exclude=[Business],
        listeners=[recorder],
        name="api",
    )
    ours = from_pybreaker(theirs, half_open_max_calls=2)
    assert (ours.name, ours.fail_max, ours.reset_timeout) == ("api", 2, 30.0)
    assert ours.policy.success_threshold == 3
    assert ours.policy.half_open_max_calls == 2
    with pytest.raises(Boom):
        ours.call(fail)
    # pybreaker meaning: an excluded error is a success and resets the streak.
    with pytest.raises(Business):
        ours.call(_raise, Business())
    assert ours.fail_counter == 0
    with pytest.raises(Boom):
        ours.call(fail)
    assert ours.current_state == "closed"


def test_from_pybreaker_refuses_other_objects() -> None:
    from scalekit.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        from_pybreaker(object())
