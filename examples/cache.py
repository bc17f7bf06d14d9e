"""Cache-aside in front of a slow loader: hits, a stampede, tags, an outage behind a breaker.

Runs with no servers: the cache talks to fakeredis (an in-process Redis), so
it shows the real read path, the lease and the invalidation messages. Point
``Cache`` at your own ``redis.Redis(...)`` and nothing else changes.

    python examples/cache.py
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import fakeredis

from scalekit.breaker import BreakerStateChanged, CircuitBreaker
from scalekit.cache import NOT_FOUND, AsyncCache, Cache, LocalCache
from scalekit.instrumentation import FallbackUsed, Recovered
from scalekit.testing import capture_events

USERS = {1: {"id": 1, "name": "Ada"}, 2: {"id": 2, "name": "Grace"}, 3: {"id": 3, "name": "Edsger"}}
LOADS: list[int] = []


def load_user(user_id: int) -> Any:
    """The slow part we want to protect: a 200 ms database query."""
    LOADS.append(user_id)
    time.sleep(0.2)
    return USERS.get(user_id, NOT_FOUND)


def section(title: str) -> None:
    print(f"\n== {title}")


def main() -> None:
    server = fakeredis.FakeServer()
    # One breaker for everything that talks to this Redis (both caches below):
    # the first outage error opens it, one call probes Redis every 0.5 s.
    redis_breaker = CircuitBreaker("redis", fail_max=1, reset_timeout=0.5)
    cache = Cache(
        fakeredis.FakeRedis(server=server),
        namespace="example",
        default_ttl=60,
        local=LocalCache(maxsize=1_000, ttl=5.0),
        breaker=redis_breaker,
    )

    @cache.cached(ttl=60, tags=lambda user_id: [f"user:{user_id}"])
    def get_user(user_id: int) -> Any:
        return load_user(user_id)

    section("a miss, then hits")
    started = time.perf_counter()
    print("get_user(1) ->", get_user(1), f"({(time.perf_counter() - started) * 1e3:.0f} ms)")
    started = time.perf_counter()
    print("get_user(1) ->", get_user(1), f"({(time.perf_counter() - started) * 1e6:.0f} us)")

    section("a stampede: 50 threads on a cold key")
    LOADS.clear()
    threads = [threading.Thread(target=get_user, args=(2,)) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"50 callers, {len(LOADS)} loader run(s)")

    section("negative caching")
    LOADS.clear()
    print("get_user(404) ->", get_user(404), "and again ->", get_user(404))
    print(f"loader runs: {len(LOADS)} (NOT_FOUND is cached for negative_ttl, unlike None)")

    section("invalidation by tag and by arguments")
    USERS[1] = {"id": 1, "name": "Ada Lovelace"}
    cache.invalidate_tags("user:1")
    print("after invalidate_tags('user:1') ->", get_user(1))
    get_user.invalidate(2)
    print("after get_user.invalidate(2), the next call loads again ->", get_user(2))

    section("Redis goes away: the loader runs, nobody sees an error")
    server.connected = False
    with capture_events() as events:
        LOADS.clear()
        print("get_user(1) while down ->", get_user(1), "(from the local tier)")
        print("get_user(3) while down ->", get_user(3), f"(loader runs: {len(LOADS)})")
        print("breaker:", redis_breaker.state)
        server.connected = True
        time.sleep(0.6)  # the breaker lets one call probe Redis after reset_timeout
        print("cache.set after recovery ->", cache.set("greeting", "hello"))
        print("breaker:", redis_breaker.state)
    for event in events:
        if isinstance(event, FallbackUsed | Recovered | BreakerStateChanged):
            print("event:", event.kind, event.fields())
    print("stats:", cache.stats())
    cache.close()

    section("asyncio: the same cache for async def")

    async def run_async() -> None:
        acache = AsyncCache(
            fakeredis.FakeAsyncRedis(server=server),
            namespace="example-async",
            breaker=redis_breaker,
        )
        calls = 0

        @acache.cached(ttl=30)
        async def get_price(sku: str) -> float:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.1)
            return 9.99

        prices = await asyncio.gather(*(get_price("sku-1") for _ in range(100)))
        print(f"100 tasks -> {set(prices)}, loader runs: {calls}")
        await acache.aclose()

    asyncio.run(run_async())


if __name__ == "__main__":
    main()
