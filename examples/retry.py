"""Retry policies in action: backoff, transient rules, Retry-After, budgets, the breaker.

Runs with no servers (the shared budget uses fakeredis) and never really
sleeps: the policies get a FakeClock, which records the waits instead.

    python examples/retry.py
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from scalekit.errors import CircuitOpenError
from scalekit.retry import (
    Backoff,
    RedisRetryBudget,
    RetryBudget,
    RetryPolicy,
    transient,
)
from scalekit.testing import FakeClock, capture_events


def section(title: str) -> None:
    print(f"\n== {title}")


def backoff_choices() -> None:
    section("backoff choices: the delay before retries 1..6 (seconds)")
    rng = random.Random(7)
    choices = {
        "exponential, full jitter (default)": Backoff.exponential(0.1, cap=2.0),
        "exponential, equal jitter": Backoff.exponential(0.1, cap=2.0, jitter="equal"),
        "exponential, decorrelated jitter": Backoff.exponential(
            0.1, cap=2.0, jitter="decorrelated"
        ),
        "exponential, no jitter": Backoff.exponential(0.1, cap=2.0, jitter="none"),
        "linear": Backoff.linear(0.2, 0.3, cap=1.0),
        "constant": Backoff.constant(0.5),
    }
    for label, backoff in choices.items():
        previous = None
        delays = []
        for retry in range(1, 7):
            previous = backoff.delay(retry, previous, rng.uniform)
            delays.append(f"{previous:.2f}")
        print(f"  {label:38} {' '.join(delays)}")


def flaky_redis_read() -> None:
    section("a flaky Redis read, retried on transient.redis")
    import redis.exceptions

    clock = FakeClock()
    failures = iter(
        [redis.exceptions.ConnectionError("reset"), redis.exceptions.BusyLoadingError()]
    )

    @RetryPolicy(
        attempts=4, backoff=Backoff.exponential(0.05), retry_on=transient.redis, clock=clock
    )
    def read_profile(user_id: int) -> dict[str, Any]:
        error = next(failures, None)
        if error is not None:
            raise error
        return {"id": user_id, "name": "Ada"}

    with capture_events() as events:
        print("  result:", read_profile(42))
    for event in events:
        print(f"  event {event.kind}: {event.fields()}")
    print("  waited (fake clock):", [round(s, 3) for s in clock.sleeps])


def honours_retry_after() -> None:
    section("Retry-After honoured (an HTTP 429 with 'Retry-After: 3')")
    import httpx

    clock = FakeClock()
    request = httpx.Request("GET", "https://api.example.test/charges")
    responses = iter(
        [
            httpx.Response(429, headers={"Retry-After": "3"}, request=request),
            httpx.Response(200, json={"ok": True}, request=request),
        ]
    )

    @RetryPolicy(attempts=3, retry_on=transient.http, deadline=30.0, clock=clock)
    def charge() -> Any:
        response = next(responses)
        response.raise_for_status()
        return response.json()

    print("  result:", charge(), "after waiting", clock.sleeps, "seconds")


def budget_stops_a_retry_storm() -> None:
    section("a retry budget stops a retry storm (dependency down, 1000 calls)")

    def run(budget: RetryBudget | None) -> int:
        clock = FakeClock()
        attempts = 0

        def down() -> None:
            nonlocal attempts
            attempts += 1
            raise ConnectionError("dependency down")

        policy = RetryPolicy(attempts=3, backoff=Backoff.none(), budget=budget, clock=clock)
        for _ in range(1000):
            try:
                policy.call(down)
            except ConnectionError:
                pass
        return attempts

    from scalekit.instrumentation import get_hooks, set_hooks

    previous = get_hooks()
    set_hooks([])  # keep the output short: 1000 give-up events otherwise
    try:
        without = run(None)
        with_budget = run(RetryBudget(0.1, min_per_second=1.0, window=10.0, clock=FakeClock()))
    finally:
        set_hooks(previous)
    print(f"  attempts without a budget: {without} (3x the load)")
    print(f"  attempts with ratio=0.1:   {with_budget} (at most 1.1x the load + the reserve)")


def shared_budget_over_redis() -> None:
    section("one budget for the whole fleet, in Redis (fakeredis here)")
    try:
        import fakeredis
        import lupa  # noqa: F401 - fakeredis runs the budget's Lua script with it
    except ImportError:
        print("  skipped: needs fakeredis and lupa (pip install 'fakeredis[lua]')")
        return
    server = fakeredis.FakeServer()
    web_1 = RedisRetryBudget(fakeredis.FakeRedis(server=server), "billing", 0.5, min_per_second=0.0)
    web_2 = RedisRetryBudget(fakeredis.FakeRedis(server=server), "billing", 0.5, min_per_second=0.0)
    for _ in range(4):
        web_1.deposit()
    web_1.flush()
    print(
        "  web-1 served 4 calls; web-2 asks for retries:", [web_2.try_withdraw() for _ in range(3)]
    )


def composes_with_the_breaker() -> None:
    section("@policy over @breaker: the policy waits for the breaker if the deadline allows")
    try:
        from scalekit.breaker import CircuitBreaker
    except ImportError:
        print("  skipped: scalekit.breaker is not available")
        return
    clock = FakeClock()
    breaker = CircuitBreaker("billing", fail_max=2, reset_timeout=5.0, clock=clock)
    calls = 0

    @RetryPolicy(attempts=4, backoff=Backoff.constant(1.0), deadline=30.0, clock=clock)
    @breaker
    def charge() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError("billing down")
        return "charged"

    print(
        "  result:",
        charge(),
        "| attempts that ran:",
        calls,
        "| waits:",
        [round(s, 2) for s in clock.sleeps],
    )

    # With only 3 s of deadline, the breaker's 5 s reset does not fit: fail fast.
    clock = FakeClock()
    breaker = CircuitBreaker("ledger", fail_max=2, reset_timeout=5.0, clock=clock)

    @RetryPolicy(attempts=10, backoff=Backoff.constant(1.0), deadline=3.0, clock=clock)
    @breaker
    def post_ledger() -> str:
        raise ConnectionError("ledger down")

    try:
        post_ledger()
    except CircuitOpenError as error:
        print(f"  short deadline: gave up at once with {error!r}")


async def async_block() -> None:
    section("async for attempt in policy (a block, not a function)")
    clock = FakeClock()
    rows: list[int] = []
    async for attempt in RetryPolicy(attempts=3, backoff=Backoff.constant(0.5), clock=clock):
        with attempt:
            rows.append(attempt.number)
            if attempt.number < 2:
                raise TimeoutError("slow replica")
    print("  attempts:", rows, "waits:", clock.sleeps)


def tenacity_bridge() -> None:
    section("policy.as_tenacity(): the same policy through tenacity's API")
    try:
        import tenacity
    except ImportError:
        print("  skipped: tenacity not installed")
        return
    clock = FakeClock()
    retrying = RetryPolicy(attempts=3, backoff=Backoff.constant(0.25), clock=clock).as_tenacity()
    outcomes = iter([ConnectionError(), "ok"])

    def work() -> Any:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    print(
        "  tenacity says:",
        retrying(work),
        "| is Retrying:",
        isinstance(retrying, tenacity.Retrying),
        "| waits:",
        clock.sleeps,
    )


def main() -> int:
    backoff_choices()
    flaky_redis_read()
    honours_retry_after()
    budget_stops_a_retry_storm()
    shared_budget_over_redis()
    composes_with_the_breaker()
    asyncio.run(async_block())
    tenacity_bridge()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
