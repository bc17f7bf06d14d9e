"""The circuit breaker in action: trip modes, half-open probes, fallback, async, Redis.

Runs with no servers (the shared state uses fakeredis) and never sleeps: the
breakers get a FakeClock, moved by hand, except for the Redis-shared one,
whose open duration is measured by Redis's own clock (0.2 s here).

    python examples/breaker.py
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import fakeredis

from scalekit.breaker import BreakerStateChanged, CircuitBreaker, RedisStorage
from scalekit.errors import CircuitOpenError
from scalekit.testing import FakeClock, capture_events


class BillingDown(Exception):
    """The dependency failed."""


class CardDeclined(Exception):
    """A business answer: the dependency works, so it must not trip the breaker."""


def section(title: str) -> None:
    print(f"\n== {title}")


def consecutive_failures() -> None:
    section("consecutive failures (pybreaker's fail_max), open, half-open probe, closed")
    clock = FakeClock()
    breaker = CircuitBreaker("billing", fail_max=3, reset_timeout=30.0, clock=clock)

    @breaker
    def charge(amount: int, *, fail: bool = False) -> str:
        if fail:
            raise BillingDown
        return f"charged {amount}"

    with capture_events() as events:
        print(charge(10))
        for _ in range(3):
            try:
                charge(10, fail=True)
            except BillingDown:
                pass
        try:
            charge(10)
        except CircuitOpenError as error:
            print(f"rejected without calling: {error} (retry_after={error.retry_after})")
        clock.advance(30.0)
        print(charge(20), "<- the probe succeeded")
    for event in events:
        if isinstance(event, BreakerStateChanged):
            print(f"event: {event.old_state} -> {event.new_state} ({event.reason})")
    print("state:", breaker.state.value)


def failure_rate_window() -> None:
    section("failure rate over the last 20 calls, at least 10 calls, business errors excluded")
    clock = FakeClock()
    breaker = CircuitBreaker(
        "payments",
        failure_rate=0.5,
        window=20,
        min_calls=10,
        reset_timeout=10.0,
        reset_backoff=2.0,
        reset_timeout_max=120.0,
        exclude=[CardDeclined],
        failure_result=lambda status: status >= 500,  # an HTTP 5xx is a failure too
        clock=clock,
    )
    statuses = [200, 503, 200, 502, 200, 500, 200, 504, 200]
    for status in statuses:
        breaker.call(lambda s=status: s)
    try:
        breaker.call(_raise, CardDeclined())
    except CardDeclined:
        pass
    metrics = breaker.metrics()
    print(
        f"{metrics.window_calls} calls counted, {metrics.window_failures} failed, "
        f"{metrics.ignored} ignored: still {metrics.state.value} (min_calls not reached)"
    )
    breaker.call(lambda: 500)
    print(f"one more 5xx: 5 of 10 failed -> {breaker.state.value}, ", end="")
    print(f"retry_after={breaker.metrics().retry_after}")


def _raise(exc: Exception) -> None:
    raise exc


def fallback_and_manual_controls() -> None:
    section("fallback, force_open, disable, close")
    breaker = CircuitBreaker(
        "recommendations", fallback=lambda user_id: ["bestsellers"], clock=FakeClock()
    )

    @breaker
    def recommend(user_id: int) -> list[str]:
        return [f"for-{user_id}"]

    print("closed:", recommend(7))
    breaker.force_open()
    print("forced open, the fallback answers:", recommend(7))
    breaker.disable()
    print("disabled (never trips):", recommend(7))
    breaker.close()
    print("closed again:", recommend(7))


async def asyncio_front_ends() -> None:
    section("async def, acall, async with guard()")
    clock = FakeClock()
    breaker = CircuitBreaker("inventory", fail_max=1, reset_timeout=5.0, clock=clock)

    async def fetch_stock(sku: str) -> int:
        await asyncio.sleep(0)
        return 42

    stock = breaker(fetch_stock)  # the decorator on an async def keeps its signature
    print("stock:", await stock("A-1"))

    async def broken() -> int:
        raise BillingDown

    try:
        await breaker.acall(broken)
    except BillingDown:
        pass
    try:
        async with breaker.guard():
            print("never printed")
    except CircuitOpenError as error:
        print(f"async with guard(): rejected, retry_after={error.retry_after}")
    clock.advance(5.0)
    async with breaker.guard() as permit:
        # Inside the block, call the undecorated function: the block is the guarded call.
        print("probe:", permit.is_probe, "->", await fetch_stock("A-1"))
    print("state:", breaker.state.value)


def shared_across_processes() -> None:
    section("state shared in Redis (fakeredis here): one process trips, the other sees it")
    server = fakeredis.FakeServer()
    clock = FakeClock()

    def process() -> CircuitBreaker:
        storage = RedisStorage(fakeredis.FakeRedis(server=server), local_cache_seconds=1.0)
        return CircuitBreaker("search", fail_max=2, reset_timeout=0.2, storage=storage, clock=clock)

    web_1, web_2 = process(), process()
    print("web-2 call:", web_2.call(len, "query"))
    for _ in range(2):
        try:
            web_1.call(_raise, BillingDown())
        except BillingDown:
            pass
    clock.advance(1.0)  # web-2's cached "closed" expires
    try:
        web_2.call(len, "query")
    except CircuitOpenError as error:
        print(f"web-2 rejected: tripped by web-1, retry_after={error.retry_after:.2f}s")
    time.sleep(0.25)  # the open duration is measured by Redis TIME...
    clock.advance(0.25)  # ...and the local "open" cache by the breaker's clock
    with web_2.acquire() as permit:
        print("web-2 holds the fleet's only probe:", permit.is_probe)
        try:
            web_1.acquire()
        except CircuitOpenError:
            print("web-1 is refused a second probe")
    print("web-1's next call runs again:", web_1.call(len, "query"))
    print("closed for everyone:", web_1.state.value, web_2.state.value)


def main() -> None:
    # The default instrumentation hook logs events under "scalekit.*"; an app
    # configures logging, a library never does.
    logging.basicConfig(
        stream=sys.stdout, level=logging.WARNING, format="    log %(name)s: %(message)s"
    )
    consecutive_failures()
    failure_rate_window()
    fallback_and_manual_controls()
    asyncio.run(asyncio_front_ends())
    shared_across_processes()


if __name__ == "__main__":
    main()
