"""One scenario list, run through every front-end: decorator, call(), block; sync and async.

Each scenario is a sequence of attempt outcomes (an exception to raise or a
value to return) and what the caller must see: the result or the error, the
calls made, the sleeps, the events.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from scalekit.errors import CircuitOpenError, RetryError
from scalekit.retry import Backoff, RetryBudget, RetryPolicy, transient
from scalekit.testing import FakeClock, capture_events


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


@dataclass
class Scenario:
    id: str
    outcomes: list[Any]
    policy: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    raises: type[BaseException] | None = None
    calls: int = 0
    sleeps: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    gave_up: str | None = None  # the RetryGaveUp reason, if any


SCENARIOS = [
    Scenario("success first time", ["ok"], result="ok", calls=1),
    Scenario(
        "succeeds on the third attempt",
        [Flaky(), Flaky(), "ok"],
        result="ok",
        calls=3,
        sleeps=[1.0, 1.0],
        events=["retry.scheduled", "retry.scheduled"],
    ),
    Scenario(
        "attempts run out: the last error is re-raised",
        [Flaky(), Flaky(), Flaky(), "never"],
        raises=Flaky,
        calls=3,
        sleeps=[1.0, 1.0],
        events=["retry.scheduled", "retry.scheduled", "retry.gave_up"],
        gave_up="attempts",
    ),
    Scenario(
        "reraise=False wraps the last error",
        [Flaky(), Flaky()],
        policy={"attempts": 2, "reraise": False},
        raises=RetryError,
        calls=2,
        sleeps=[1.0],
        events=["retry.scheduled", "retry.gave_up"],
        gave_up="attempts",
    ),
    Scenario(
        "an error outside retry_on is raised at once",
        [Fatal(), "never"],
        policy={"retry_on": Flaky},
        raises=Fatal,
        calls=1,
    ),
    Scenario(
        "rules combine with |",
        [Fatal(), Flaky(), "ok"],
        policy={"retry_on": transient.redis | Flaky | Fatal},
        result="ok",
        calls=3,
        sleeps=[1.0, 1.0],
        events=["retry.scheduled", "retry.scheduled"],
    ),
    Scenario(
        "the deadline cuts the last sleep, then gives up",
        [Flaky(), Flaky(), Flaky(), Flaky()],
        policy={"attempts": 10, "deadline": 1.5},
        raises=Flaky,
        calls=3,
        sleeps=[1.0, 0.5],
        events=["retry.scheduled", "retry.scheduled", "retry.gave_up"],
        gave_up="deadline",
    ),
    Scenario(
        "an open breaker whose wait fits is waited for",
        [CircuitOpenError("db", 2.5), "ok"],
        policy={"deadline": 5.0, "retry_on": Fatal},
        result="ok",
        calls=2,
        sleeps=[2.5],
        events=["retry.scheduled"],
    ),
    Scenario(
        "an open breaker whose wait overruns the deadline is not",
        [CircuitOpenError("db", 9.0), "never"],
        policy={"deadline": 5.0},
        raises=CircuitOpenError,
        calls=1,
        events=["retry.gave_up"],
        gave_up="deadline",
    ),
    Scenario(
        "a spent budget raises the original error at once",
        [Flaky(), Flaky(), "never"],
        policy={"budget": "one-retry"},
        raises=Flaky,
        calls=2,
        sleeps=[1.0],
        events=["retry.scheduled", "retry.budget_exhausted"],
        gave_up="budget",
    ),
    Scenario(
        "KeyboardInterrupt is never retried",
        [KeyboardInterrupt(), "never"],
        raises=KeyboardInterrupt,
        calls=1,
    ),
]


def make_policy(scenario: Scenario, clock: FakeClock) -> RetryPolicy:
    kwargs = dict(scenario.policy)
    kwargs.setdefault("attempts", 3)
    kwargs.setdefault("backoff", Backoff.constant(1.0))
    if kwargs.get("budget") == "one-retry":
        # No deposits count (ratio 0); the reserve is exactly one retry.
        kwargs["budget"] = RetryBudget(0.0, min_per_second=0.1, window=10.0, clock=clock)
    return RetryPolicy(clock=clock, name="scenario", **kwargs)


class Script:
    """Plays the outcomes, one per attempt, and counts the calls."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes: Iterator[Any] = iter(outcomes)
        self.calls = 0

    def __call__(self, tag: str, *, suffix: str = "") -> Any:
        self.calls += 1
        outcome = next(self.outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome + suffix if isinstance(outcome, str) else outcome

    async def acall(self, tag: str, *, suffix: str = "") -> Any:
        await asyncio.sleep(0)
        return self(tag, suffix=suffix)


def run_sync_decorator(policy: RetryPolicy, script: Script) -> Any:
    @policy
    def work(tag: str, *, suffix: str = "") -> Any:
        return script(tag, suffix=suffix)

    return work("t", suffix="")


def run_sync_call(policy: RetryPolicy, script: Script) -> Any:
    return policy.call(script, "t", suffix="")


def run_sync_block(policy: RetryPolicy, script: Script) -> Any:
    result = None
    for attempt in policy:
        with attempt:
            result = script("t")
    return result


def run_async_decorator(policy: RetryPolicy, script: Script) -> Any:
    @policy
    async def work(tag: str, *, suffix: str = "") -> Any:
        return await script.acall(tag, suffix=suffix)

    return asyncio.run(work("t", suffix=""))


def run_async_call(policy: RetryPolicy, script: Script) -> Any:
    return asyncio.run(policy.acall(script.acall, "t", suffix=""))


def run_async_block(policy: RetryPolicy, script: Script) -> Any:
    async def main() -> Any:
        result = None
        async for attempt in policy:
            with attempt:
                result = await script.acall("t")
        return result

    return asyncio.run(main())


def run_async_block_async_with(policy: RetryPolicy, script: Script) -> Any:
    async def main() -> Any:
        result = None
        async for attempt in policy:
            async with attempt:
                result = await script.acall("t")
        return result

    return asyncio.run(main())


RUNNERS: dict[str, Callable[[RetryPolicy, Script], Any]] = {
    "sync-decorator": run_sync_decorator,
    "sync-call": run_sync_call,
    "sync-block": run_sync_block,
    "async-decorator": run_async_decorator,
    "async-call": run_async_call,
    "async-block": run_async_block,
    "async-block-async-with": run_async_block_async_with,
}


@pytest.mark.parametrize("runner", list(RUNNERS.values()), ids=list(RUNNERS))
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario(scenario: Scenario, runner: Callable[[RetryPolicy, Script], Any]) -> None:
    clock = FakeClock()
    policy = make_policy(scenario, clock)
    script = Script(scenario.outcomes)
    with capture_events() as events:
        if scenario.raises is None:
            assert runner(policy, script) == scenario.result
        else:
            with pytest.raises(scenario.raises) as info:
                runner(policy, script)
            if scenario.raises is RetryError:
                assert isinstance(info.value.last_exception, Flaky)
            elif scenario.raises is not KeyboardInterrupt:
                # The very error of the last attempt, not a copy.
                assert info.value is scenario.outcomes[scenario.calls - 1]
    assert script.calls == scenario.calls
    assert clock.sleeps == scenario.sleeps
    retry_events = [e for e in events if e.component == "retry"]
    assert [e.kind for e in retry_events] == scenario.events
    assert all(e.name == "scenario" for e in retry_events)
    gave_up = [e for e in retry_events if e.kind != "retry.scheduled"]
    assert [getattr(e, "reason", None) for e in gave_up] == (
        [scenario.gave_up] if scenario.gave_up else []
    )


def test_decorator_keeps_name_doc_and_signature() -> None:
    import inspect

    policy = RetryPolicy()

    @policy
    def charge(order_id: int, *, amount: float = 0.0) -> str:
        """Charge an order."""
        return f"{order_id}:{amount}"

    @policy
    async def acharge(order_id: int) -> str:
        """Charge, async."""
        return str(order_id)

    assert charge.__name__ == "charge" and charge.__doc__ == "Charge an order."
    signature = inspect.signature(charge)
    assert list(signature.parameters) == ["order_id", "amount"]
    assert signature.parameters["amount"].kind is inspect.Parameter.KEYWORD_ONLY
    assert signature.return_annotation in (str, "str")
    assert inspect.iscoroutinefunction(acharge)
    assert charge(1, amount=2.0) == "1:2.0"
    assert asyncio.run(acharge(7)) == "7"


def test_event_name_defaults_to_the_function_qualname() -> None:
    clock = FakeClock()
    outcomes = iter([Flaky(), "ok"])

    @RetryPolicy(clock=clock)
    def fetch() -> Any:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with capture_events() as events:
        fetch()
    assert [e.name for e in events if e.component == "retry"] == [fetch.__qualname__]


def test_re_raised_error_has_no_misleading_context() -> None:
    """A retried error must not read "during handling of the above exception"."""
    clock = FakeClock()
    errors = [Flaky("first"), Flaky("second")]

    @RetryPolicy(attempts=2, clock=clock)
    def work() -> None:
        raise errors.pop(0)

    with pytest.raises(Flaky) as info:
        work()
    assert str(info.value) == "second"
    assert info.value.__context__ is None
    assert "during handling" not in "".join(traceback.format_exception(info.value))


def test_code_after_the_with_block_is_not_needed_for_retry() -> None:
    clock = FakeClock()
    numbers = []
    for attempt in RetryPolicy(attempts=3, clock=clock, backoff=Backoff.none()):
        with attempt:
            numbers.append(attempt.number)
            if attempt.number < 3:
                raise Flaky
    assert numbers == [1, 2, 3]


def test_block_without_with_runs_once() -> None:
    runs = 0
    for _attempt in RetryPolicy():
        runs += 1
    assert runs == 1
