"""The lock-free success tally: a breaker whose successes skip the lock decides
exactly as the core fed every outcome under the lock (issue 20)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.breaker import BreakerPolicy, CircuitBreaker, _core
from scalekit.breaker._config import FAILURE, SUCCESS
from scalekit.breaker._core import BreakerCore
from scalekit.errors import CircuitOpenError
from scalekit.testing import FakeClock


class Boom(Exception):
    pass


POLICIES = {
    "count window": {"failure_rate": 0.5, "window": 8, "min_calls": 4, "reset_timeout": 5.0},
    "time window": {
        "failure_rate": 0.5,
        "window_seconds": 4.0,
        "window_buckets": 4,
        "min_calls": 3,
        "reset_timeout": 5.0,
    },
    "slow calls, count window": {
        "slow_call_seconds": 1.0,
        "slow_call_rate": 0.5,
        "window": 6,
        "min_calls": 3,
        "reset_timeout": 5.0,
    },
    "slow calls and failures, time window": {
        "failure_rate": 0.6,
        "slow_call_seconds": 1.0,
        "slow_call_rate": 0.5,
        "window_seconds": 3.0,
        "min_calls": 2,
        "reset_timeout": 2.0,
    },
    "fail_max and a count window": {
        "fail_max": 3,
        "failure_rate": 0.9,
        "window": 10,
        "min_calls": 5,
        "reset_timeout": 1.0,
    },
    "fail_max": {"fail_max": 3, "reset_timeout": 1.0},
}
FRONTS = ["decorator", "call", "async decorator", "acall", "guard", "async guard"]
STEPS = st.lists(
    st.sampled_from(["ok", "ok", "ok", "ok", "fail", "slow", "tick", "wait"]),
    max_size=80,
)


def drive(policy_name: str, front: str, steps: list[str], keywords: bool = False) -> None:
    kwargs: dict[str, Any] = POLICIES[policy_name]
    clock = FakeClock()
    breaker = CircuitBreaker("tally", clock=clock, **kwargs)
    reference = BreakerCore(BreakerPolicy(**kwargs), 0.0)
    timed = reference.policy.timed
    plan: list[str] = []

    def work(value: int = 1) -> int:
        step = plan.pop()
        if step == "fail":
            raise Boom
        if step == "slow":
            clock.advance(1.5)
        return value

    async def awork(value: int = 1) -> int:
        return work(value)

    wrapped, awrapped = breaker(work), breaker(awork)
    # The hot paths call ``func(*args)`` when no keyword is given.
    given = {"value": 2} if keywords else {}
    expected = 2 if keywords else 1

    def run() -> None:
        if front == "decorator":
            result = wrapped(**given)
        elif front == "call":
            result = breaker.call(work, **given)
        elif front == "async decorator":
            result = asyncio.run(awrapped(**given))
        elif front == "guard":  # a permit's success takes the tally too
            with breaker.guard():
                result = work(**given)
        elif front == "async guard":

            async def guarded() -> int:
                async with breaker.guard():
                    return await awork(**given)

            result = asyncio.run(guarded())
        else:
            result = asyncio.run(breaker.acall(awork, **given))
        assert result == expected

    for step in steps:
        if step == "tick":
            clock.advance(0.7)
            continue
        if step == "wait":
            clock.advance(5.0)
            continue
        start = clock.monotonic()
        ticket = reference.acquire(start)
        plan.append(step)
        try:
            run()
        except CircuitOpenError:
            assert ticket is None
            plan.pop()
        except Boom:
            assert ticket is not None
            end = clock.monotonic()
            reference.record(ticket, FAILURE, end - start if timed else None, end)
        else:
            assert ticket is not None
            end = clock.monotonic()
            reference.record(ticket, SUCCESS, end - start if timed else None, end)
        now = clock.monotonic()
        metrics = breaker.metrics()
        assert metrics.state is reference.state, steps
        assert (
            metrics.window_calls,
            metrics.window_failures,
            metrics.window_slow_calls,
        ) == reference.window_totals(now), steps
        assert metrics.successes == reference.successes + reference.tallied()
        assert metrics.failures == reference.failures
        assert metrics.slow_calls == reference.slow_calls
        # The clockless hot path's one read stands for tally_until and free_ticket.
        core = breaker._rec.core
        clockless = core.free_ticket if core.tally_until == float("inf") else -1
        assert core.tally_ticket == clockless, steps


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("policy_name", list(POLICIES))
@settings(max_examples=40, deadline=None)
@given(steps=STEPS, keywords=st.booleans())
def test_tallied_successes_decide_as_recorded_ones(
    policy_name: str, front: str, steps: list[str], keywords: bool
) -> None:
    drive(policy_name, front, steps, keywords)


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("policy_name", ["time window", "slow calls, count window"])
@settings(max_examples=15, deadline=None)
@given(steps=STEPS)
def test_the_count_tally_of_32_bit_builds_decides_alike(
    policy_name: str, front: str, steps: list[str]
) -> None:
    # A 32-bit build tallies with an itertools.count (a countdown of 2**31
    # steps could run out); the same decisions follow.
    with mock.patch.object(_core, "_COUNTDOWN_TALLY", False):
        assert isinstance(BreakerCore(BreakerPolicy()).tally, itertools.count)
        drive(policy_name, front, steps)


def test_the_tally_counts_down_on_64_bit_builds() -> None:
    core = BreakerCore(BreakerPolicy(failure_rate=0.5, window=10))
    assert isinstance(core.tally, itertools.repeat) is _core._COUNTDOWN_TALLY
    for _ in range(5):
        assert next(core.tally) is None or not _core._COUNTDOWN_TALLY
    assert core.tallied() == 5


@pytest.mark.parametrize("front", FRONTS)
def test_a_success_that_reaches_min_calls_still_trips(front: str) -> None:
    # 3 failures of 3 calls, min_calls 4: the 4th call, a success, brings the
    # window to its minimum at a 75% failure rate and must trip the breaker.
    drive("count window", front, ["fail", "fail", "fail", "ok", "ok"])
    clock = FakeClock()
    breaker = CircuitBreaker("m", failure_rate=0.5, window=8, min_calls=4, clock=clock)
    for _ in range(3):
        with pytest.raises(Boom):
            breaker.call(_raise)
    assert breaker.call(int) == 0
    assert breaker.state.value == "open"


def test_successes_in_an_expired_bucket_leave_the_time_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("t", failure_rate=0.5, window_seconds=4.0, min_calls=3, clock=clock)
    guarded = breaker(int)
    for _ in range(10):
        guarded()
    assert breaker.metrics().window_calls == 10
    clock.advance(2.0)
    guarded()
    assert breaker.metrics().window_calls == 11
    clock.advance(2.5)  # the first ten successes' bucket has left the window
    assert breaker.metrics().window_calls == 1
    # Two failures now make 2/3: the tallied successes no longer dilute them.
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(_raise)
    assert breaker.state.value == "open"


def test_threads_tally_every_success_of_a_rate_breaker() -> None:
    breaker = CircuitBreaker("threads", failure_rate=0.5, window=1000, min_calls=10)
    guarded = breaker(int)
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(500):
            guarded()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    metrics = breaker.metrics()
    assert metrics.successes == 4000
    assert metrics.window_calls == 1000
    assert metrics.window_failures == 0


def _raise() -> None:
    raise Boom


def test_a_breaker_that_records_every_success_publishes_no_tally() -> None:
    # Listeners hear every success: the core keeps no tally for such a breaker.
    heard: list[object] = []

    class Listener:
        def success(self, breaker: object) -> None:
            heard.append(breaker)

    breaker = CircuitBreaker(
        "heard", failure_rate=0.5, window=8, min_calls=4, listeners=[Listener()]
    )
    core = breaker._rec.core
    for _ in range(5):
        breaker.call(lambda: 1)
        with breaker.guard():
            pass
        assert core.tally_until == float("-inf")
        assert core.tally_ticket == -1
    assert core.tallied() == 0
    assert breaker.metrics().successes == len(heard) == 10
