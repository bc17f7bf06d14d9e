"""Differential test: the real ``pybreaker.CircuitBreaker`` and scalekit's compatible mode.

The same call sequences (success, failure, pybreaker-excluded error, time
passing) drive a pybreaker breaker and the scalekit breaker that
:func:`~scalekit.breaker.from_pybreaker` builds from it; after every step
``current_state`` and ``fail_counter`` must agree. pybreaker reads its clock
through ``datetime.now(UTC)`` in its own module, so that name is patched to
follow the same fake clock scalekit reads.

Differences that remain by design are listed in docs/breaker.md ("Coming
from pybreaker"); none of them is reachable by these sequences.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pybreaker
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.breaker import from_pybreaker
from scalekit.errors import CircuitOpenError
from scalekit.testing import FakeClock

_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


class Boom(Exception):
    """A failure."""


class Business(Exception):
    """An error pybreaker is told to exclude (it then counts as a success)."""


@contextlib.contextmanager
def pybreaker_on(clock: FakeClock) -> Iterator[None]:
    """Make pybreaker's ``datetime.now()`` follow ``clock``."""

    class Clocked:
        @staticmethod
        def now(tz: Any = None) -> dt.datetime:
            return _EPOCH + dt.timedelta(seconds=clock.monotonic())

    with mock.patch.object(pybreaker, "datetime", Clocked):
        yield


def _ok() -> str:
    return "ok"


def _boom() -> None:
    raise Boom


def _business() -> None:
    raise Business


_CALLS = {"ok": _ok, "fail": _boom, "excluded": _business}

steps = st.one_of(
    st.sampled_from(["ok", "fail", "excluded"]),
    st.integers(min_value=1, max_value=8),  # seconds passing
)


def _run(breaker: Any, step: str) -> str:
    try:
        breaker.call(_CALLS[step])
    except (CircuitOpenError, pybreaker.CircuitBreakerError):
        return "rejected"
    except (Boom, Business):
        return "raised"
    return "ok"


def _drive(settings_: dict[str, int], sequence: list[str | int]) -> None:
    clock = FakeClock()
    with pybreaker_on(clock):
        _compare(clock, settings_, sequence)


def _compare(clock: FakeClock, settings_: dict[str, int], sequence: list[str | int]) -> None:
    theirs = pybreaker.CircuitBreaker(
        **settings_, exclude=[Business], throw_new_error_on_trip=False
    )
    ours = from_pybreaker(theirs, clock=clock)
    for index, step in enumerate(sequence):
        if isinstance(step, int):
            clock.advance(step)
            continue
        outcome_theirs = _run(theirs, step)
        outcome_ours = _run(ours, step)
        where = f"step {index} ({step}) of {sequence}"
        assert outcome_ours == outcome_theirs, where
        assert ours.current_state == theirs.current_state, where
        assert ours.fail_counter == theirs.fail_counter, where


@given(
    fail_max=st.integers(min_value=1, max_value=4),
    reset_timeout=st.integers(min_value=1, max_value=10),
    success_threshold=st.integers(min_value=1, max_value=3),
    sequence=st.lists(steps, max_size=40),
)
@settings(max_examples=300, deadline=None)
def test_same_states_and_fail_counter_as_pybreaker(
    fail_max: int,
    reset_timeout: int,
    success_threshold: int,
    sequence: list[str | int],
) -> None:
    settings_ = {
        "fail_max": fail_max,
        "reset_timeout": reset_timeout,
        "success_threshold": success_threshold,
    }
    _drive(settings_, sequence)


def test_a_failed_probe_is_counted() -> None:
    """The issue's case: two failures, then a failed half-open probe, fail_max=2: 3."""
    _drive(
        {"fail_max": 2, "reset_timeout": 5, "success_threshold": 1},
        ["fail", "fail", 5, "fail"],
    )


def test_a_probe_success_resets_the_counter_before_the_circuit_closes() -> None:
    _drive(
        {"fail_max": 2, "reset_timeout": 5, "success_threshold": 2},
        ["fail", "fail", 5, "ok", "ok"],
    )
