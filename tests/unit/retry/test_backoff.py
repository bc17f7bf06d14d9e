"""Backoff math: every delay stays in [0, cap]; the AWS jitter formulas; bad input."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError
from scalekit.retry import Backoff

durations = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)
jitters = st.sampled_from(["full", "equal", "none"])


def backoffs() -> st.SearchStrategy[Backoff]:
    exponential = st.builds(
        Backoff.exponential,
        durations,
        cap=durations,
        multiplier=st.floats(min_value=1.0, max_value=10.0),
        jitter=st.sampled_from(["full", "equal", "decorrelated", "none"]),
    )
    constant = st.builds(Backoff.constant, durations, jitter=jitters)
    linear = st.builds(Backoff.linear, durations, durations, cap=durations, jitter=jitters)
    return st.one_of(exponential, constant, linear)


@settings(max_examples=150, deadline=None)
@given(backoff=backoffs(), retries=st.integers(min_value=1, max_value=5000), seed=st.integers())
def test_delay_never_exceeds_cap_nor_goes_negative(
    backoff: Backoff, retries: int, seed: int
) -> None:
    rng = random.Random(seed)
    previous = None
    for retry in range(1, min(retries, 50) + 1):
        delay = backoff.delay(retry, previous, rng.uniform)
        assert 0.0 <= delay <= backoff.cap
        previous = delay
    # Very large retry numbers must not overflow.
    assert 0.0 <= backoff.delay(retries, previous, rng.uniform) <= backoff.cap


@settings(max_examples=100, deadline=None)
@given(base=durations, cap=durations, retry=st.integers(min_value=1, max_value=60))
def test_exponential_ceiling_is_capped_doubling(base: float, cap: float, retry: int) -> None:
    backoff = Backoff.exponential(base, cap=cap, jitter="none")
    expected = min(cap, base * 2.0 ** (retry - 1))
    assert backoff.delay(retry) == pytest.approx(expected)
    assert backoff.ceiling(retry) <= backoff.ceiling(retry + 1)


def test_full_jitter_draws_between_zero_and_the_ceiling() -> None:
    seen: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        seen.append((low, high))
        return high

    backoff = Backoff.exponential(0.5, cap=3.0)
    assert [backoff.delay(n, None, uniform) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert seen == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, 3.0)]


def test_equal_jitter_keeps_half_the_ceiling() -> None:
    backoff = Backoff.exponential(1.0, cap=100.0, jitter="equal")
    assert backoff.delay(3, None, lambda low, high: low) == 2.0  # 4 / 2 + 0
    assert backoff.delay(3, None, lambda low, high: high) == 4.0  # 4 / 2 + 2


def test_decorrelated_jitter_grows_from_the_previous_delay() -> None:
    backoff = Backoff.exponential(0.1, cap=1.0, jitter="decorrelated")
    calls: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        calls.append((low, high))
        return high

    first = backoff.delay(1, None, uniform)
    second = backoff.delay(2, first, uniform)
    third = backoff.delay(3, second, uniform)
    assert calls[0] == pytest.approx((0.1, 0.3))
    assert calls[1] == pytest.approx((0.1, 0.9))
    assert (first, second, third) == (pytest.approx(0.3), pytest.approx(0.9), 1.0)


def test_constant_and_linear() -> None:
    assert [Backoff.constant(0.25).delay(n) for n in (1, 2, 9)] == [0.25, 0.25, 0.25]
    linear = Backoff.linear(0.5, 0.25, cap=1.0)
    assert [linear.delay(n) for n in (1, 2, 3, 4)] == [0.5, 0.75, 1.0, 1.0]
    assert Backoff.linear(0.2).delay(3) == pytest.approx(0.6)
    assert Backoff.none().delay(7) == 0.0


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda: Backoff.exponential(-0.1), "base"),
        (lambda: Backoff.exponential(0.1, cap=-1.0), "cap"),
        (lambda: Backoff.exponential(0.1, cap=math.inf), "cap"),
        (lambda: Backoff.exponential(0.1, multiplier=0.5), "multiplier"),
        (lambda: Backoff.exponential(0.1, jitter="sometimes"), "jitter"),  # type: ignore[arg-type]
        (lambda: Backoff.constant(-1.0), "base"),
        (lambda: Backoff.constant(float("nan")), "base"),
        (lambda: Backoff.linear(0.1, -0.1), "step"),
        (lambda: Backoff.linear(0.1, jitter="decorrelated"), "jitter"),
        (lambda: Backoff("quadratic", 1.0, 2.0), "kind"),  # type: ignore[arg-type]
    ],
)
def test_bad_parameters_name_the_parameter(build: object, parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        build()  # type: ignore[operator]
    assert info.value.parameter == parameter


def test_backoff_is_a_frozen_value() -> None:
    backoff = Backoff.exponential(0.1, cap=2.0)
    assert backoff == Backoff.exponential(0.1, cap=2.0)
    assert hash(backoff) == hash(Backoff.exponential(0.1, cap=2.0))
    with pytest.raises(AttributeError):
        backoff.cap = 3.0  # type: ignore[misc]
