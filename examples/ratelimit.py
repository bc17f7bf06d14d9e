"""Rate limiting in action: algorithms, several limits at once, headers, fallbacks, concurrency.

Runs with no servers: the limiters use fakeredis (the same Lua scripts that
run on a real Redis) or the in-process memory backend on a FakeClock.

    python examples/ratelimit.py
"""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import redis.exceptions

from scalekit.errors import ConcurrencyLimitExceeded, RateLimitExceeded
from scalekit.instrumentation import Event
from scalekit.ratelimit import (
    ALGORITHMS,
    AsyncRateLimiter,
    ConcurrencyLimiter,
    Limit,
    MemoryBackend,
    RateLimiter,
    RedisBackend,
)
from scalekit.testing import FakeClock, capture_events


def section(title: str) -> None:
    print(f"\n== {title}")


def algorithms(client: Any) -> None:
    section("Five algorithms, one limit: 3 per minute, 5 hits at once")
    limit = Limit.parse("3/minute")
    for algorithm in ALGORITHMS:
        limiter = RateLimiter(client, algorithm=algorithm, namespace=f"demo-{algorithm}")
        decisions = [limiter.hit("customer:42", limit) for _ in range(5)]
        marks = " ".join("ok" if d.allowed else "--" for d in decisions)
        print(f"  {algorithm:<24} {marks}   retry after {decisions[-1].retry_after:.1f}s")


def burst_and_rate() -> None:
    section("GCRA with a burst: 1 per second, bursts of 5 (FakeClock, memory backend)")
    clock = FakeClock()
    limiter = RateLimiter(MemoryBackend(clock=clock), clock=clock)
    limit = Limit(1, per=1, burst=5)
    burst = [limiter.hit("k", limit).allowed for _ in range(7)]
    print(f"  7 hits at t=0:   {burst}")
    clock.advance(2.0)
    later = [limiter.hit("k", limit).allowed for _ in range(3)]
    print(f"  3 hits at t=2s:  {later}  (2 seconds earned 2 hits)")


def several_limits(client: Any) -> None:
    section("hit_all: 2 per second AND 4 per hour, atomically, in one round trip")
    limiter = RateLimiter(client, namespace="demo-multi")
    for number in range(1, 4):
        decision = limiter.hit_all("api-key:abc", ["2/second", "4/hour"])
        print(f"  hit {number}: allowed={decision.allowed} reported limit={decision.limit}")
    print("  the denial consumed nothing: ", limiter.peek("api-key:abc", "4/hour").remaining,
          "of 4/hour left")  # fmt: skip


def headers(client: Any) -> None:
    section("Response headers come with the decision (no second round trip)")
    limiter = RateLimiter(client, namespace="demo-headers")
    limiter.hit("ip:203.0.113.9", Limit(1, per=60, name="per-minute"))
    decision = limiter.hit("ip:203.0.113.9", Limit(1, per=60, name="per-minute"))
    for name, value in decision.headers(style="both").items():
        print(f"  {name}: {value}")
    try:
        limiter.enforce("ip:203.0.113.9", Limit(1, per=60, name="per-minute"))
    except RateLimitExceeded as exc:
        print(f"  enforce() raised RateLimitExceeded: retry after {exc.retry_after:.0f}s")


class Unplugged:
    """A Redis client whose server is gone."""

    def evalsha(self, *args: Any) -> Any:
        raise redis.exceptions.ConnectionError("Connection refused")

    eval = evalsha


def fallbacks() -> None:
    section("Redis down: allow, deny, or a local limiter with this instance's share")
    for policy in ("allow", "deny", "local"):
        limiter = RateLimiter(
            RedisBackend(Unplugged()), fallback=policy, instances=3, name=f"api-{policy}"
        )
        events: list[Event]
        with capture_events() as events:
            decisions = [limiter.hit("k", "6/minute") for _ in range(4)]
        marks = " ".join("ok" if d.allowed else "--" for d in decisions)
        kinds = sorted({event.kind for event in events})
        print(f"  fallback={policy:<6} {marks}   events: {kinds}")


def shadow(client: Any) -> None:
    section("Shadow mode: decide and report, never deny")
    limiter = RateLimiter(client, namespace="demo-shadow", shadow=True)
    with capture_events() as events:
        decisions = [limiter.hit("k", "1/minute") for _ in range(3)]
    print(
        f"  allowed: {[d.allowed for d in decisions]}, shadowed: {[d.shadowed for d in decisions]}"
    )
    print(f"  events: {[event.kind for event in events]}")


def concurrency(client: Any) -> None:
    section("Concurrency: at most 2 reports in flight per customer")
    limiter = ConcurrencyLimiter(client, limit=2, lease=30)
    with limiter.acquire("customer:42") as first, limiter.acquire("customer:42") as second:
        print(f"  holding leases {first.in_flight} and {second.in_flight}")
        try:
            limiter.acquire("customer:42")
        except ConcurrencyLimitExceeded as exc:
            print(f"  a third is refused: {exc.in_flight} in flight")
    with limiter.acquire("customer:42") as lease:
        print(f"  released on exit; a new one gets slot {lease.in_flight}")


async def async_limiter() -> None:
    section("AsyncRateLimiter: the same API, awaited")
    limiter = AsyncRateLimiter(fakeredis.FakeAsyncRedis(), algorithm="token_bucket")
    decisions = [await limiter.hit("k", "2/second") for _ in range(3)]
    print(f"  {[d.allowed for d in decisions]}, remaining {[d.remaining for d in decisions]}")


def main() -> None:
    client = fakeredis.FakeRedis()
    algorithms(client)
    burst_and_rate()
    several_limits(client)
    headers(client)
    fallbacks()
    shadow(client)
    concurrency(client)
    asyncio.run(async_limiter())


if __name__ == "__main__":
    main()
