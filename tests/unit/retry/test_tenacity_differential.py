"""Differential test: tenacity's stop and wait strategies, in tenacity and in a RetryPolicy.

The same strategies (built by hypothesis from their parameters, combined with
``|``, ``&`` and ``+``) run a function that fails ``failures`` times, each
attempt taking ``cost`` seconds, through the real ``tenacity.Retrying`` and
through :class:`~scalekit.retry.RetryPolicy` (``stop=``, ``backoff=``), each
on its own fake clock. The attempts made, the sleeps, the final time and
whether the call succeeded must be the same. tenacity reads
``time.monotonic()`` in its own module; that name is patched to the fake
clock. ``wait_random`` draws from the global ``random``, seeded the same for
both runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import random
import types
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.retry import RetryPolicy
from scalekit.testing import FakeClock

tenacity = importlib.import_module("tenacity")


class Flaky(Exception):
    pass


durations = st.sampled_from([0, 0.5, 1, 1.5, 2, 3, 5, 7.5, 10])


@st.composite
def stops(draw: st.DrawFn, depth: int = 0) -> Any:
    kinds = ["after_attempt", "after_delay", "before_delay", "never"]
    if depth < 2:
        kinds += ["or", "and"]
    kind = draw(st.sampled_from(kinds))
    if kind == "after_attempt":
        return tenacity.stop_after_attempt(draw(st.integers(1, 8)))
    if kind == "after_delay":
        return tenacity.stop_after_delay(draw(durations))
    if kind == "before_delay":
        return tenacity.stop_before_delay(draw(durations))
    if kind == "never":
        return tenacity.stop_never
    left, right = draw(stops(depth + 1)), draw(stops(depth + 1))
    return left | right if kind == "or" else left & right


@st.composite
def waits(draw: st.DrawFn, depth: int = 0) -> Any:
    kinds = ["fixed", "exponential", "random", "chain", "incrementing"]
    if depth < 2:
        kinds.append("sum")
    kind = draw(st.sampled_from(kinds))
    if kind == "fixed":
        return tenacity.wait_fixed(draw(durations))
    if kind == "exponential":
        return tenacity.wait_exponential(
            multiplier=draw(st.sampled_from([0.5, 1, 2])),
            min=draw(st.sampled_from([0, 1])),
            max=draw(st.sampled_from([4, 10, 60])),
            exp_base=draw(st.sampled_from([2, 3])),
        )
    if kind == "random":
        low = draw(durations)
        return tenacity.wait_random(low, low + draw(durations))
    if kind == "chain":
        fixed = draw(st.lists(durations, min_size=1, max_size=4))
        return tenacity.wait_chain(*(tenacity.wait_fixed(d) for d in fixed))
    if kind == "incrementing":
        return tenacity.wait_incrementing(
            start=draw(durations), increment=draw(durations), max=draw(st.sampled_from([5, 30]))
        )
    return draw(waits(depth + 1)) + draw(waits(depth + 1))


@contextlib.contextmanager
def tenacity_on(clock: FakeClock) -> Iterator[None]:
    """Make tenacity's ``time.monotonic()`` read ``clock``."""
    with mock.patch.object(tenacity, "time", types.SimpleNamespace(monotonic=clock.monotonic)):
        yield


class Work:
    """Fails ``failures`` times, then returns; each attempt takes ``cost`` seconds."""

    def __init__(self, clock: FakeClock, failures: int, cost: float) -> None:
        self.clock, self.failures, self.cost = clock, failures, cost
        self.attempts = 0

    def __call__(self) -> str:
        self.attempts += 1
        self.clock.advance(self.cost)
        if self.attempts <= self.failures:
            raise Flaky
        return "ok"


Run = tuple[int, list[float], float, str]


def _slept(clock: FakeClock) -> list[float]:
    # tenacity calls sleep(0); scalekit skips a zero wait: the same thing.
    return [seconds for seconds in clock.sleeps if seconds]


def run_tenacity(stop: Any, wait: Any, failures: int, cost: float, seed: int) -> Run:
    clock = FakeClock()
    work = Work(clock, failures, cost)
    random.seed(seed)
    retrying = tenacity.Retrying(stop=stop, wait=wait, sleep=clock.sleep, reraise=True)
    with tenacity_on(clock):
        try:
            outcome = retrying(work)
        except Flaky:
            outcome = "gave up"
    return work.attempts, _slept(clock), clock.monotonic(), outcome


def run_scalekit(stop: Any, wait: Any, failures: int, cost: float, seed: int) -> Run:
    clock = FakeClock()
    work = Work(clock, failures, cost)
    random.seed(seed)
    policy = RetryPolicy(attempts=1_000, stop=stop, backoff=wait, clock=clock)
    try:
        outcome = policy.call(work)
    except Flaky:
        outcome = "gave up"
    return work.attempts, _slept(clock), clock.monotonic(), outcome


def run_scalekit_async(stop: Any, wait: Any, failures: int, cost: float, seed: int) -> Run:
    clock = FakeClock()
    work = Work(clock, failures, cost)
    random.seed(seed)
    policy = RetryPolicy(attempts=1_000, stop=stop, backoff=wait, clock=clock)

    async def attempt() -> str:
        return work()

    try:
        outcome = asyncio.run(policy.acall(attempt))
    except Flaky:
        outcome = "gave up"
    return work.attempts, _slept(clock), clock.monotonic(), outcome


@given(
    stop=stops(),
    wait=waits(),
    failures=st.integers(0, 12),
    cost=st.sampled_from([0, 0.25, 1, 3]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=400, deadline=None)
def test_stop_and_wait_strategies_behave_as_in_tenacity(
    stop: Any, wait: Any, failures: int, cost: float, seed: int
) -> None:
    expected = run_tenacity(stop, wait, failures, cost, seed)
    assert run_scalekit(stop, wait, failures, cost, seed) == expected


@given(stop=stops(), wait=waits(), failures=st.integers(0, 8), seed=st.integers(0, 2**16))
@settings(max_examples=100, deadline=None)
def test_async_policy_behaves_as_tenacity(stop: Any, wait: Any, failures: int, seed: int) -> None:
    expected = run_tenacity(stop, wait, failures, 0.5, seed)
    assert run_scalekit_async(stop, wait, failures, 0.5, seed) == expected


@pytest.mark.parametrize("runner", [run_scalekit, run_scalekit_async])
def test_stop_before_delay_stops_before_the_sleep_that_would_pass_it(runner: Any) -> None:
    """The issue's case: wait_fixed(2), stop_before_delay(5): sleeps [2, 2], ends at t=4."""
    stop, wait = tenacity.stop_before_delay(5), tenacity.wait_fixed(2)
    assert run_tenacity(stop, wait, 10, 0, 0) == (3, [2, 2], 4, "gave up")
    assert runner(stop, wait, 10, 0, 0) == (3, [2, 2], 4, "gave up")
