"""scalekit.testing.set_testing: no waits, capped attempts, for users' test suites."""

from __future__ import annotations

import asyncio

import pytest

from scalekit.errors import CircuitOpenError, ConfigurationError
from scalekit.retry import Backoff, RetryPolicy
from scalekit.testing import FakeClock, is_testing, set_testing


class Flaky(Exception):
    pass


def test_set_testing_removes_waits_and_caps_attempts() -> None:
    clock = FakeClock()
    calls = 0

    @RetryPolicy(attempts=10, backoff=Backoff.constant(60.0), clock=clock)
    def work() -> None:
        nonlocal calls
        calls += 1
        raise Flaky

    with set_testing(True, attempts=3):
        assert is_testing()
        with pytest.raises(Flaky):
            work()
    assert not is_testing()
    assert calls == 3
    assert sum(clock.sleeps) == 0  # no real wait was requested


def test_default_is_one_attempt_and_restores_previous_state() -> None:
    clock = FakeClock()
    attempts = 0

    async def work() -> None:
        nonlocal attempts
        attempts += 1
        raise CircuitOpenError("db", 5.0)

    outer = set_testing(True, attempts=2)
    try:
        with set_testing(True):
            with pytest.raises(CircuitOpenError):
                asyncio.run(RetryPolicy(attempts=5, clock=clock).acall(work))
            assert attempts == 1
        assert is_testing()  # back to the outer setting, not off
    finally:
        outer.__exit__(None, None, None)
    assert not is_testing()


def test_set_testing_rejects_bad_attempts() -> None:
    with pytest.raises(ConfigurationError) as info:
        set_testing(True, attempts=0)
    assert info.value.parameter == "attempts"
    assert not is_testing()
