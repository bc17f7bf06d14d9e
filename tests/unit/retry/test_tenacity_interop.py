"""policy.as_tenacity(): the same behaviour through tenacity's own API."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest

from scalekit.errors import CircuitOpenError
from scalekit.retry import Backoff, RetryBudget, RetryPolicy
from scalekit.testing import FakeClock, capture_events

tenacity = importlib.import_module("tenacity")


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def script(outcomes: list[Any]) -> Any:
    it = iter(outcomes)
    calls = []

    def work() -> Any:
        calls.append(1)
        outcome = next(it)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    work.calls = calls  # type: ignore[attr-defined]
    return work


def test_as_tenacity_retries_like_the_policy() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=3, backoff=Backoff.constant(1.0), clock=clock, name="t")
    retrying = policy.as_tenacity()
    assert isinstance(retrying, tenacity.Retrying)
    work = script([Flaky(), Flaky(), "ok"])
    with capture_events() as events:
        assert retrying(work) == "ok"
    assert clock.sleeps == [1.0, 1.0]
    assert [e.kind for e in events if e.component == "retry"] == ["retry.scheduled"] * 2


def test_as_tenacity_gives_up_and_reraises() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=2, backoff=Backoff.constant(1.0), clock=clock)
    work = script([Flaky("1"), Flaky("2"), "never"])
    with pytest.raises(Flaky, match="2"):
        policy.as_tenacity()(work)
    wrapped = policy.replace(reraise=False).as_tenacity()
    with pytest.raises(tenacity.RetryError):
        wrapped(script([Flaky(), Flaky()]))


def test_as_tenacity_keeps_retry_on_deadline_and_breaker_rules() -> None:
    clock = FakeClock()
    policy = RetryPolicy(
        attempts=5, backoff=Backoff.constant(1.0), clock=clock, retry_on=Flaky, deadline=3.0
    )
    with pytest.raises(Fatal):
        policy.as_tenacity()(script([Fatal(), "never"]))
    work = script([CircuitOpenError("db", 2.0), "ok"])
    assert policy.as_tenacity()(work) == "ok"
    assert clock.sleeps == [2.0]
    too_long = script([CircuitOpenError("db", 30.0), "never"])
    with pytest.raises(CircuitOpenError):
        policy.as_tenacity()(too_long)


def test_as_tenacity_spends_the_budget() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.0, min_per_second=0.1, window=10.0, clock=clock)  # one retry
    policy = RetryPolicy(attempts=5, backoff=Backoff.none(), clock=clock, budget=budget)
    work = script([Flaky(), Flaky(), Flaky(), "never"])
    with pytest.raises(Flaky):
        policy.as_tenacity()(work)
    assert len(work.calls) == 2


def test_as_async_tenacity() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=3, backoff=Backoff.constant(0.5), clock=clock)
    retrying = policy.as_tenacity(asynchronous=True)
    assert isinstance(retrying, tenacity.AsyncRetrying)
    outcomes = iter([Flaky(), "ok"])

    async def work() -> Any:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert asyncio.run(retrying(work)) == "ok"
    assert clock.sleeps == [0.5]


def test_tenacity_wait_and_stop_inside_a_policy() -> None:
    clock = FakeClock()
    policy = RetryPolicy(
        attempts=10,
        backoff=tenacity.wait_fixed(2),
        stop=tenacity.stop_after_attempt(3),
        clock=clock,
    )
    work = script([Flaky(), Flaky(), Flaky(), "never"])
    with capture_events() as events, pytest.raises(Flaky):
        policy.call(work)
    assert clock.sleeps == [2.0, 2.0]
    gave_up = [e for e in events if e.kind == "retry.gave_up"]
    assert [getattr(e, "reason", None) for e in gave_up] == ["stop"]


def test_success_path_never_touches_tenacity(monkeypatch: pytest.MonkeyPatch) -> None:
    import scalekit.retry._tenacity as bridge

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tenacity used on the success path")

    monkeypatch.setattr(bridge, "call_state", boom)
    policy = RetryPolicy(backoff=tenacity.wait_fixed(1), stop=tenacity.stop_after_delay(5))
    assert policy.call(lambda: 42) == 42
