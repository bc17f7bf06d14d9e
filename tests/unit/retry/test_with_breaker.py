"""Composition with scalekit.breaker: ``@policy`` over ``@breaker`` (sync and ``async def``).

The rules under test (issue 4, "Cooperation"):

- the breaker sees, and counts, every attempt the policy makes;
- a ``CircuitOpenError`` is retried only when waiting its ``retry_after``
  still fits the deadline, and the wait is then at least that long;
- a forced-open breaker (no ``retry_after``) is never waited for;
- the budget is spent per retry attempt, rejected attempts included.

One scenario table runs through four front-ends: the sync decorator, the
``async def`` decorator, ``policy.call(breaker.call, ...)`` and the ``async
for attempt in policy`` block around ``breaker.guard()``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from scalekit.breaker import CircuitBreaker, State
from scalekit.errors import CircuitOpenError, ConfigurationError
from scalekit.retry import Backoff, RetryBudget, RetryPolicy
from scalekit.testing import FakeClock, capture_events


class Down(Exception):
    """The dependency failed."""


class NotFound(Exception):
    """A business answer: excluded by the breaker, not retried by the policy."""


@dataclass
class Scenario:
    id: str
    outcomes: list[str]  # what each call of the function does: "ok", "down", "missing"
    policy: dict[str, Any]
    breaker: dict[str, Any] = field(default_factory=dict)
    calls: int = 0  # times the function body ran
    sleeps: list[float] = field(default_factory=list)
    result: str | type[BaseException] = "ok"
    errors: list[str] = field(default_factory=list)  # RetryScheduled.error, in order
    gave_up: str | None = None  # RetryGaveUp.reason
    breaker_state: State = State.CLOSED
    breaker_failures: int = 0
    breaker_rejected: int = 0


SCENARIOS = [
    Scenario(
        "breaker-counts-each-attempt-then-policy-waits-for-the-probe",
        ["down", "down", "ok"],
        {"attempts": 4, "deadline": 30.0},
        calls=3,
        # two backoffs, then the rest of the 5 s open period (1 s of it already waited)
        sleeps=[1.0, 1.0, 4.0],
        errors=["Down", "Down", "CircuitOpenError"],
        breaker_failures=2,
        breaker_rejected=1,
    ),
    Scenario(
        "open-breaker-beyond-the-deadline-fails-fast",
        ["down"] * 10,
        {"attempts": 10, "deadline": 3.0},
        calls=2,
        sleeps=[1.0, 1.0],
        result=CircuitOpenError,
        errors=["Down", "Down"],
        gave_up="deadline",
        breaker_state=State.OPEN,
        breaker_failures=2,
        breaker_rejected=1,
    ),
    Scenario(
        "open-breaker-asking-more-than-max-retry-after-is-not-waited-for",
        ["down"] * 10,
        {"attempts": 10, "max_retry_after": 2.0},
        calls=2,
        sleeps=[1.0, 1.0],
        result=CircuitOpenError,
        errors=["Down", "Down"],
        gave_up="retry_after",
        breaker_state=State.OPEN,
        breaker_failures=2,
        breaker_rejected=1,
    ),
    Scenario(
        "failed-probe-reopens-and-the-policy-runs-out-of-attempts",
        ["down"] * 10,
        {"attempts": 5, "deadline": 60.0},
        calls=3,
        # the failed probe is a plain failure: a backoff, then attempt 5 is rejected
        sleeps=[1.0, 1.0, 4.0, 1.0],
        result=CircuitOpenError,
        errors=["Down", "Down", "CircuitOpenError", "Down"],
        gave_up="attempts",
        breaker_state=State.OPEN,
        breaker_failures=3,
        breaker_rejected=2,
    ),
    Scenario(
        "excluded-error-is-neither-counted-nor-retried",
        ["missing", "ok"],
        {"attempts": 3, "retry_on": Down},
        breaker={"exclude": (NotFound,)},
        calls=1,
        result=NotFound,
    ),
    Scenario(
        "budget-is-spent-per-attempt-rejections-included",
        ["down"] * 10,
        {"attempts": 10, "deadline": 60.0, "budget": "3 retries"},
        calls=3,  # the third retry is the half-open probe; it fails, a fourth is refused
        sleeps=[1.0, 1.0, 4.0],
        result=Down,
        errors=["Down", "Down", "CircuitOpenError"],
        gave_up="budget",
        breaker_state=State.OPEN,
        breaker_failures=3,
        breaker_rejected=1,
    ),
]


def build(scenario: Scenario, clock: FakeClock) -> tuple[CircuitBreaker, RetryPolicy]:
    breaker = CircuitBreaker(
        f"retry-{scenario.id}",
        fail_max=2,
        reset_timeout=5.0,
        clock=clock,
        **scenario.breaker,
    )
    options = dict(scenario.policy)
    if options.get("budget") == "3 retries":
        # No deposits count (ratio 0): the reserve alone allows exactly 3 retries.
        options["budget"] = RetryBudget(0.0, min_per_second=0.3, window=10.0, clock=clock)
    policy = RetryPolicy(clock=clock, backoff=Backoff.constant(1.0), **options)
    return breaker, policy


class Dependency:
    """Plays the scenario's outcomes, one per call that reaches it."""

    def __init__(self, outcomes: list[str]) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def step(self) -> str:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if outcome == "down":
            raise Down("dependency down")
        if outcome == "missing":
            raise NotFound("no such order")
        return outcome

    async def astep(self) -> str:
        await asyncio.sleep(0)
        return self.step()


def sync_decorators(breaker: CircuitBreaker, policy: RetryPolicy, dep: Dependency) -> str:
    @policy
    @breaker
    def work() -> str:
        return dep.step()

    return work()


def async_decorators(breaker: CircuitBreaker, policy: RetryPolicy, dep: Dependency) -> str:
    @policy
    @breaker
    async def work() -> str:
        return await dep.astep()

    return asyncio.run(work())


def call_through_call(breaker: CircuitBreaker, policy: RetryPolicy, dep: Dependency) -> str:
    return policy.call(breaker.call, dep.step)


def async_block_with_guard(breaker: CircuitBreaker, policy: RetryPolicy, dep: Dependency) -> str:
    async def main() -> str:
        result = ""
        async for attempt in policy:
            with attempt:
                async with breaker.guard():
                    result = await dep.astep()
        return result

    return asyncio.run(main())


RUNNERS: dict[str, Callable[[CircuitBreaker, RetryPolicy, Dependency], str]] = {
    "sync-decorators": sync_decorators,
    "async-decorators": async_decorators,
    "policy.call(breaker.call)": call_through_call,
    "async-for-block+guard": async_block_with_guard,
}


@pytest.mark.parametrize("runner", list(RUNNERS.values()), ids=list(RUNNERS))
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_retry_over_breaker(
    scenario: Scenario, runner: Callable[[CircuitBreaker, RetryPolicy, Dependency], str]
) -> None:
    clock = FakeClock()
    breaker, policy = build(scenario, clock)
    dep = Dependency(scenario.outcomes)
    with capture_events() as events:
        if isinstance(scenario.result, str):
            assert runner(breaker, policy, dep) == scenario.result
        else:
            with pytest.raises(scenario.result):
                runner(breaker, policy, dep)
    assert dep.calls == scenario.calls
    assert clock.sleeps == pytest.approx(scenario.sleeps, abs=1e-6)
    assert [e.error for e in events if e.kind == "retry.scheduled"] == scenario.errors
    gave_up = [e.reason for e in events if e.kind in ("retry.gave_up", "retry.budget_exhausted")]
    assert gave_up == ([] if scenario.gave_up is None else [scenario.gave_up])
    metrics = breaker.metrics()
    assert metrics.state is scenario.breaker_state
    assert metrics.failures == scenario.breaker_failures
    assert metrics.rejected == scenario.breaker_rejected


def test_forced_open_breaker_is_never_waited_for() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("retry-forced", fail_max=2, clock=clock)
    breaker.force_open()
    policy = RetryPolicy(attempts=5, backoff=Backoff.constant(1.0), deadline=600.0, clock=clock)
    with capture_events() as events, pytest.raises(CircuitOpenError) as info:
        policy.call(breaker.call, lambda: "never runs")
    assert info.value.retry_after is None
    assert clock.sleeps == []
    assert [e.reason for e in events if e.kind == "retry.gave_up"] == ["retry_after"]


def test_threads_retrying_through_one_breaker_send_one_probe() -> None:
    """8 threads retry while the breaker is open: after the wait, only one probe runs at once.

    A half-open breaker whose probe slot is taken answers ``retry_after`` = the
    time until that probe times out (an upper bound), so the other threads wait
    ``probe_timeout`` at most, which must fit the deadline.
    """
    breaker = CircuitBreaker(
        "retry-threads", fail_max=1, reset_timeout=0.2, half_open_max_calls=1, probe_timeout=1.0
    )
    policy = RetryPolicy(attempts=50, backoff=Backoff.constant(0.01), deadline=10.0)
    breaker.open()
    lock = threading.Lock()
    probe_done = threading.Event()
    early_calls = 0  # calls that started before the first one (the probe) finished

    def probe() -> str:
        nonlocal early_calls
        with lock:
            early = not probe_done.is_set()
            early_calls += early
        if early:
            time.sleep(0.3)  # hold the probe slot while the other threads retry
            probe_done.set()
        return "ok"

    results: list[object] = []

    def worker() -> None:
        try:
            results.append(policy.call(breaker.call, probe))
        except Exception as exc:  # reported by the assertion below, not as a thread crash
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert results == ["ok"] * 8
    assert early_calls == 1  # the half-open breaker admitted one probe; the rest waited
    assert breaker.state is State.CLOSED
    assert breaker.metrics().rejected > 0  # the others were told to wait, and retried


# -- the README's composition with defaults (issue 13, item 6) -------------------------


def _readme_pair(clock: FakeClock) -> tuple[CircuitBreaker, RetryPolicy]:
    # README: @RetryPolicy(attempts=3, backoff=Backoff.exponential(0.1, cap=5.0), ...)
    # over a breaker with its defaults (fail_max=5, reset_timeout=60).
    policy = RetryPolicy(
        attempts=3, backoff=Backoff.exponential(0.1, cap=5.0), retry_on=Down, clock=clock
    )
    return CircuitBreaker("payments", clock=clock), policy


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_open_breaker_with_default_reset_timeout_fails_fast_every_opening(mode: str) -> None:
    """No 60 s sleep inside a request handler, at the first opening or the next ones."""
    clock = FakeClock()
    breaker, policy = _readme_pair(clock)
    dep = Dependency(["down"] * 100)
    run = sync_decorators if mode == "sync" else async_decorators
    reasons: list[str] = []
    waits: list[object] = []
    for opening in range(3):
        with capture_events() as events:
            while breaker.state is not State.OPEN:
                with pytest.raises((Down, CircuitOpenError)):
                    run(breaker, policy, dep)
            # Open (or probing, then open again): the policy gives up on the rejection.
            with pytest.raises(CircuitOpenError) as error:
                run(breaker, policy, dep)
        assert error.value.retry_after is not None and error.value.retry_after <= 60.0
        assert max(clock.sleeps, default=0.0) <= 5.0  # never longer than the backoff's cap
        # The policy never schedules a wait for the breaker, whatever the attempt.
        waits += [
            e for e in events if e.kind == "retry.scheduled" and e.error == "CircuitOpenError"
        ]
        reasons += [e.reason for e in events if e.kind == "retry.gave_up"]
        clock.advance(60.0 + 0.3 * opening)  # the probe runs (and fails) at odd times
    assert waits == []
    assert reasons.count("retry_after") == 3  # once per opening


@pytest.mark.parametrize("opened_at", [0.0, 5.1, 60.1, 120.3, 123.456])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_float_noise_does_not_change_the_decision(opened_at: float, mode: str) -> None:
    """``(t + 60) - t`` is 60.000000000000014 at t=120.3: still a 60 s wait."""
    clock = FakeClock(start=opened_at)
    breaker = CircuitBreaker("noise", fail_max=1, reset_timeout=60.0, clock=clock)
    policy = RetryPolicy(attempts=2, max_breaker_wait=60.0, clock=clock)
    breaker.open()
    dep = Dependency(["ok"])
    run = sync_decorators if mode == "sync" else async_decorators
    assert run(breaker, policy, dep) == "ok"
    assert clock.sleeps == [pytest.approx(60.0)]


def test_a_retry_after_with_float_noise_is_honoured() -> None:
    from scalekit.retry import RetryState

    clock = FakeClock()
    noisy = 60.000000000000014
    for options in ({"max_breaker_wait": 60.0}, {"deadline": 60.0}):
        state = RetryState(RetryPolicy(clock=clock, attempts=2, **options), 0.0)
        assert state.on_failure(CircuitOpenError("db", noisy)) == pytest.approx(60.0), options
    # Without a deadline or a cap, the default backoff's cap (10 s) is the limit.
    state = RetryState(RetryPolicy(clock=clock, attempts=2), 0.0)
    assert state.on_failure(CircuitOpenError("db", noisy)) is None
    assert state.reason == "retry_after"


def test_the_breaker_cap_is_documented_and_chosen_by_the_policy() -> None:
    assert RetryPolicy(backoff=Backoff.exponential(0.1, cap=5.0)).breaker_wait_cap() == 5.0
    assert RetryPolicy(backoff=Backoff.none()).breaker_wait_cap() == 0.0
    assert RetryPolicy(deadline=30.0).breaker_wait_cap() == 60.0  # the deadline bounds it
    assert RetryPolicy(max_breaker_wait=20.0, max_retry_after=10.0).breaker_wait_cap() == 10.0
    with pytest.raises(ConfigurationError):
        RetryPolicy(max_breaker_wait=-1.0)
