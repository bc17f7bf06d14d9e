"""Properties of the pure algorithms: they never over-admit, and they are honest.

Time is a virtual microsecond counter; every test drives
:func:`scalekit.ratelimit._core.evaluate` directly, as the memory backend and
(line for line) the Lua scripts do.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.ratelimit._core import ALGORITHMS, RULES, State, _windows, evaluate

# Float slack on the GCRA/token bucket bound: counts are whole, the bound is real.
SLACK = 1e-6
START = 1_700_000_000_000_000.0

limits = st.tuples(
    st.integers(min_value=1, max_value=12),  # amount
    st.sampled_from([1_000.0, 333_333.0, 1_000_000.0, 7_000_001.0, 60_000_000.0]),  # period us
    st.integers(min_value=0, max_value=6),  # extra burst (gcra, token bucket)
)
# A hit is (delta, cost). A negative delta -k means "just at the boundary":
# k-1 microseconds before the moment a hit of 1 becomes allowed (see _advance),
# which is where an off-by-a-little algorithm over-admits.
hits = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from([0.0, 0.0, 1.0, 7.0, 1_000.0, 90_001.0, 333_334.0, 1e6, 3.3e6, 6e7]),
            st.sampled_from([-1.0, -1.0, -2.0, -11.0, -1001.0]),
            st.sampled_from([-1.0, -2.0, -1001.0]),
        ),
        st.integers(min_value=0, max_value=3),  # cost
    ),
    min_size=1,
    max_size=60,
)


def _advance(
    algorithm: str,
    states: list[State],
    now: float,
    params: list[tuple[float, float, float]],
    delta: float,
) -> float:
    if delta >= 0:
        return now + delta
    peek, _ = evaluate(algorithm, states, now, params, 1.0, write=False)
    return now + max(math.ceil(peek.retry_after) + delta + 1, 0.0)


def _params(algorithm: str, limit: tuple[int, float, int]) -> tuple[float, float, float]:
    amount, period, extra = limit
    burst = amount + extra if algorithm in ("gcra", "token_bucket") else amount
    return float(amount), period, float(burst)


def _run(
    algorithm: str,
    params: list[tuple[float, float, float]],
    sequence: list[tuple[float, int]],
    *,
    consume_denied: bool = False,
) -> list[tuple[float, float, bool]]:
    """Replays hits; returns (time, cost, allowed) for each."""
    states: list[State] = [None] * len(params)
    now = START
    history = []
    capacity = min(b for _a, _p, b in params)
    for delta, cost in sequence:
        now = _advance(algorithm, states, now, params, delta)
        cost = min(cost, int(capacity))
        outcome, finals = evaluate(
            algorithm, states, now, params, float(cost), consume_denied=consume_denied
        )
        if finals is not None:
            states = finals
        history.append((now, float(cost), outcome.allowed))
    return history


def _admitted(history: list[tuple[float, float, bool]]) -> list[tuple[float, float]]:
    return [(t, cost) for t, cost, ok in history if ok]


def _assert_never_over_admits(
    algorithm: str, params: tuple[float, float, float], admitted: list[tuple[float, float]]
) -> None:
    a, p, b = params
    if algorithm in ("gcra", "token_bucket"):
        # Over any interval [t_i, t_j]: at most burst + rate * (t_j - t_i).
        for i, (start, _c) in enumerate(admitted):
            total = 0.0
            for end, cost in admitted[i:]:
                total += cost
                assert total <= b + (end - start) * a / p + SLACK, (start, end, total)
    elif algorithm == "sliding_window_log":
        # Exact: in any window (t - p, t], at most amount.
        for end, _c in admitted:
            total = sum(cost for t, cost in admitted if end - p < t <= end)
            assert total <= a
    else:
        # Fixed and sliding-counter windows: at most amount per aligned window.
        per_window: dict[int, float] = {}
        for t, cost in admitted:
            window = math.floor(t / p)
            per_window[window] = per_window.get(window, 0.0) + cost
        assert all(total <= a for total in per_window.values()), per_window


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=50, deadline=None)
@given(limits, hits, st.booleans())
def test_never_admits_more_than_the_limit(
    algorithm: str, limit: tuple[int, float, int], sequence: list[tuple[float, int]], penalize: bool
) -> None:
    params = _params(algorithm, limit)
    history = _run(algorithm, [params], sequence, consume_denied=penalize)
    _assert_never_over_admits(algorithm, params, _admitted(history))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=50, deadline=None)
@given(limits, limits, hits)
def test_multi_limit_hits_respect_every_limit(
    algorithm: str,
    first: tuple[int, float, int],
    second: tuple[int, float, int],
    sequence: list[tuple[float, int]],
) -> None:
    params = [_params(algorithm, first), _params(algorithm, second)]
    admitted = _admitted(_run(algorithm, params, sequence))
    for one in params:
        _assert_never_over_admits(algorithm, one, admitted)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=50, deadline=None)
@given(limits, hits)
def test_a_denied_hit_changes_nothing(
    algorithm: str, limit: tuple[int, float, int], sequence: list[tuple[float, int]]
) -> None:
    params = [_params(algorithm, limit)]
    states: list[State] = [None]
    now = START
    for delta, cost in sequence:
        now = _advance(algorithm, states, now, params, delta)
        cost = min(cost, int(params[0][2]))
        outcome, finals = evaluate(algorithm, states, now, params, float(cost))
        if outcome.allowed:
            assert finals is not None
            states = finals
        else:
            assert finals is None
            assert outcome.retry_after > 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=50, deadline=None)
@given(limits, hits)
def test_waiting_retry_after_is_enough(
    algorithm: str, limit: tuple[int, float, int], sequence: list[tuple[float, int]]
) -> None:
    """A denied hit, retried alone after ``retry_after`` (in whole microseconds), is allowed."""
    params = [_params(algorithm, limit)]
    states: list[State] = [None]
    now = START
    for delta, cost in sequence:
        now = _advance(algorithm, states, now, params, delta)
        cost = min(max(cost, 1), int(params[0][2]))
        outcome, finals = evaluate(algorithm, states, now, params, float(cost))
        if finals is not None:
            states = finals
            continue
        retry_at = now + math.ceil(outcome.retry_after)
        later, _ = evaluate(algorithm, states, retry_at, params, float(cost))
        assert later.allowed, (outcome, later)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=50, deadline=None)
@given(limits, hits)
def test_remaining_is_exact_at_an_instant(
    algorithm: str, limit: tuple[int, float, int], sequence: list[tuple[float, int]]
) -> None:
    """``remaining`` more hits of 1 at the same instant are allowed, and not one more."""
    params = [_params(algorithm, limit)]
    states: list[State] = [None]
    now = START
    for delta, cost in sequence:
        now = _advance(algorithm, states, now, params, delta)
        _outcome, finals = evaluate(algorithm, states, now, params, float(min(cost, 1)))
        if finals is not None:
            states = finals
    peek, _ = evaluate(algorithm, states, now, params, 1.0, write=False)
    remaining = int(peek.remaining)
    probe = states
    for _ in range(remaining):
        step, finals = evaluate(algorithm, probe, now, params, 1.0)
        assert step.allowed
        assert finals is not None
        probe = finals
    last, _ = evaluate(algorithm, probe, now, params, 1.0)
    assert not last.allowed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=40, deadline=None)
@given(limits, limits, hits)
def test_the_reported_limit_is_the_most_restrictive(
    algorithm: str,
    first: tuple[int, float, int],
    second: tuple[int, float, int],
    sequence: list[tuple[float, int]],
) -> None:
    params = [_params(algorithm, first), _params(algorithm, second)]
    states: list[State] = [None, None]
    now = START
    for delta, cost in sequence:
        now = _advance(algorithm, states, now, params, delta)
        cost = min(cost, int(min(b for _a, _p, b in params)))
        outcome, finals = evaluate(algorithm, states, now, params, float(cost))
        if outcome.allowed:
            assert finals is not None
            described = [
                RULES[algorithm][1](final, now, *one)[0]
                for final, one in zip(finals, params, strict=True)
            ]
            assert outcome.remaining == min(described)
            assert outcome.retry_after == 0
            states = finals
        else:
            singles = [
                evaluate(algorithm, [state], now, [one], float(cost))[0]
                for state, one in zip(states, params, strict=True)
            ]
            assert outcome.retry_after == max(s.retry_after for s in singles if not s.allowed)


def test_gcra_spreads_hits_evenly() -> None:
    params = [(10.0, 1_000_000.0, 1.0)]  # 10/s, no burst: one every 100 ms
    states: list[State] = [None]
    outcome, finals = evaluate("gcra", states, START, params, 1.0)
    assert outcome.allowed and finals is not None
    again, none = evaluate("gcra", finals, START + 50_000, params, 1.0)
    assert not again.allowed and none is None
    assert again.retry_after == 50_000
    later, _ = evaluate("gcra", finals, START + 100_000, params, 1.0)
    assert later.allowed


def test_sliding_counter_weighs_the_previous_window() -> None:
    params = [(10.0, 1_000_000.0, 10.0)]
    state: list[State] = [(1.0, 10.0, 0.0)]  # window 1 full
    # At 25% into window 2, the previous window still weighs 7.5: 2 more fit.
    now = 2_250_000.0
    first, finals = evaluate("sliding_window_counter", state, now, params, 2.0)
    assert first.allowed and finals is not None
    third, _ = evaluate("sliding_window_counter", finals, now, params, 1.0)
    assert not third.allowed


def test_clock_going_back_never_reopens_a_window() -> None:
    for algorithm in ALGORITHMS:
        params = [(2.0, 1_000_000.0, 2.0)]
        states: list[State] = [None]
        for _ in range(2):
            _o, finals = evaluate(algorithm, states, START, params, 1.0)
            assert finals is not None
            states = finals
        behind, _ = evaluate(algorithm, states, START - 5_000_000, params, 1.0)
        assert not behind.allowed, algorithm


@settings(max_examples=60, deadline=None)
@given(limits, hits)
def test_sliding_counter_estimate_never_exceeds_the_limit(
    limit: tuple[int, float, int], sequence: list[tuple[float, int]]
) -> None:
    """After every admitted hit, the weighted estimate of the sliding window is within the limit."""
    params = [_params("sliding_window_counter", limit)]
    a, p, _b = params[0]
    states: list[State] = [None]
    now = START
    for delta, cost in sequence:
        now = _advance("sliding_window_counter", states, now, params, delta)
        _outcome, finals = evaluate(
            "sliding_window_counter", states, now, params, float(min(cost, a))
        )
        if finals is not None:
            states = finals
            _window, current, previous, fraction = _windows(states[0], now, p)
            assert previous * (1 - fraction) + current <= a
