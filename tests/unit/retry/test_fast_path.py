"""The success path builds no retry state and allocates (almost) nothing."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import pytest

import scalekit.retry._async as async_shell
import scalekit.retry._flow as retry_flow
import scalekit.retry._sync as sync_shell
from scalekit.retry import RetryBudget, RetryPolicy, RetryState


class Forbidden:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("retry state built on the success path")


POLICIES = {
    "plain": RetryPolicy(),
    "deadline": RetryPolicy(deadline=5.0),
    "budget+deadline": RetryPolicy(deadline=5.0, budget=RetryBudget(name="fast-path-test")),
}


@pytest.mark.parametrize("policy", list(POLICIES.values()), ids=list(POLICIES))
def test_no_retry_state_before_a_failure(
    policy: RetryPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shells build the state through the one retry loop (retry/_flow.py).
    monkeypatch.setattr(retry_flow, "RetryState", Forbidden)
    monkeypatch.setattr(sync_shell, "failures", Forbidden)
    monkeypatch.setattr(async_shell, "failures", Forbidden)

    @policy
    def work(x: int) -> int:
        return x + 1

    @policy
    async def awork(x: int) -> int:
        return x + 1

    assert work(1) == 2
    assert policy.call(work, 2) == 3
    assert asyncio.run(awork(3)) == 4
    assert asyncio.run(policy.acall(awork, 4)) == 5


def _peak_bytes(fn: Any, calls: int = 200) -> int:
    fn(0)  # warm caches (first bucket of a budget, specialised bytecode)
    tracemalloc.start()
    try:
        worst = 0
        for i in range(calls):
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            fn(i)
            _, peak = tracemalloc.get_traced_memory()
            worst = max(worst, peak - before)
        return worst
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("policy", list(POLICIES.values()), ids=list(POLICIES))
def test_success_path_allocates_less_than_a_retry_state(policy: RetryPolicy) -> None:
    def work(x: int) -> int:
        return x + 1

    # A RetryState alone is 112 bytes (a traceback or an event far more); the
    # wrapper may at most pack *args or read a float from the clock.
    assert _peak_bytes(policy(work)) <= 64
    # The measurement does see a retry state being built:
    assert _peak_bytes(lambda x: RetryState(policy, 0.0)) > 64
