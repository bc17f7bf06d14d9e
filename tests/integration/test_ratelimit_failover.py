"""Rate limiting with the real Redis stopped, killed and paused mid-run.

Each fallback policy (``allow``, ``deny``, ``local``) is followed while the
node is down, the store is not contacted again once the breaker has opened
(so the outage adds no latency), one ``FallbackUsed`` event marks the start
of the incident, and a ``Recovered`` event its end once the node is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from scalekit.instrumentation import FallbackUsed, Recovered
from scalekit.ratelimit import (
    AsyncRateLimiter,
    AsyncRedisBackend,
    ConcurrencyLimiter,
    Limit,
    RateLimiter,
    RedisBackend,
)
from scalekit.testing import capture_events

pytestmark = pytest.mark.integration

LIMIT = Limit(5, per=60)
RECOVERY = 0.5


class Counted:
    """Delegates to a redis client and counts the calls that reach it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attribute(*args, **kwargs)

        return call


def _client(node: Any) -> Any:
    return node.client(socket_timeout=0.3, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0))


class CountingPool(redis.ConnectionPool):
    """Counts the connections handed out: each is one attempt to reach the store."""

    calls = 0

    # (A first parameter with a default: scalekit._redis_direct only uses pools
    # whose get_connection() needs no command name.)
    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        self.calls += 1
        return super().get_connection()


def _store(node: Any, path: str) -> tuple[Any, Any, Callable[[], int]]:
    """``(client, store, calls)``: ``path="client"`` goes through ``client.evalsha``
    (a proxy counts the calls), ``"direct"`` borrows the pool's connections."""
    if path == "client":
        client = _client(node)
        counted = Counted(client)
        return client, counted, lambda: counted.calls
    pool = CountingPool(
        host=node.host,
        port=node.port,
        socket_timeout=0.3,
        socket_connect_timeout=0.3,
        retry=Retry(NoBackoff(), 0),
    )
    client = redis.Redis(connection_pool=pool)
    return client, client, lambda: pool.calls


class AsyncCountingPool(redis.asyncio.ConnectionPool):
    """:class:`CountingPool` for ``redis.asyncio``."""

    calls = 0

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        self.calls += 1
        return await super().get_connection()


def _async_store(
    node: Any, path: str, socket_timeout: float = 0.3
) -> tuple[Any, Any, Callable[[], int]]:
    """:func:`_store` for ``redis.asyncio``."""
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 0.3,
        "retry": redis.asyncio.retry.Retry(NoBackoff(), 0),
    }
    if path == "client":
        client = node.async_client(**options)
        counted = Counted(client)
        return client, counted, lambda: counted.calls
    pool = AsyncCountingPool(host=node.host, port=node.port, **options)
    client = redis.asyncio.Redis.from_pool(pool)  # the client owns (closes) the pool
    return client, client, lambda: pool.calls


def _timed(check: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = check()
    return result, time.perf_counter() - started


@pytest.mark.parametrize(
    ("fallback", "expected"),
    [
        ("allow", [True] * 8),
        ("deny", [False] * 8),
        # 5/minute over 2 instances: 2 each, counted afresh in this process.
        ("local", [True, True] + [False] * 6),
    ],
)
@pytest.mark.parametrize("outage", ["stop", "kill"])
@pytest.mark.parametrize("path", ["client", "direct"])
def test_store_down_follows_the_fallback_and_recovers(
    redis_server_factory: Callable[[], Any],
    fallback: str,
    expected: list[bool],
    outage: str,
    path: str,
) -> None:
    node = redis_server_factory()
    client, store, store_calls = _store(node, path)
    limiter = RateLimiter(
        RedisBackend(store),
        fallback=fallback,  # type: ignore[arg-type]
        instances=2,
        recovery_interval=RECOVERY,
        name="api",
    )
    assert isinstance(limiter.backend, RedisBackend)
    assert (limiter.backend._pool is not None) == (path == "direct")
    try:
        assert [limiter.hit("k", LIMIT).allowed for _ in range(3)] == [True] * 3
        getattr(node, outage)()
        with capture_events() as events:
            first, first_seconds = _timed(lambda: limiter.hit("k", LIMIT))
            calls = store_calls()
            rest, rest_seconds = _timed(lambda: [limiter.hit("k", LIMIT) for _ in range(7)])
        decisions = [first, *rest]
        assert [d.allowed for d in decisions] == expected
        assert {d.fallback for d in decisions} == {fallback}
        assert store_calls() == calls  # the breaker is open: the store is not contacted
        used = [event for event in events if isinstance(event, FallbackUsed)]
        assert len(used) == 1 and used[0].fallback == fallback
        print(
            f"{path} {outage}/{fallback}: first check {first_seconds * 1e3:.2f} ms, "
            f"then {rest_seconds / 7 * 1e6:.1f} us per check"
        )
        node.start()
        time.sleep(RECOVERY + 0.05)
        with capture_events() as events:
            back = limiter.hit("k", LIMIT)
        assert back.fallback is None and back.allowed
        assert back.remaining == 4  # the restarted node kept nothing (no persistence)
        assert [type(event) for event in events] == [Recovered]
        assert not limiter.degraded
    finally:
        client.close()


@pytest.mark.parametrize("path", ["client", "direct"])
def test_paused_node_costs_one_timeout_then_nothing(
    redis_server_factory: Callable[[], Any], path: str
) -> None:
    node = redis_server_factory()
    client, store, store_calls = _store(node, path)
    limiter = RateLimiter(RedisBackend(store), fallback="allow", recovery_interval=RECOVERY)
    assert isinstance(limiter.backend, RedisBackend)
    assert (limiter.backend._pool is not None) == (path == "direct")
    try:
        limiter.hit("k", LIMIT)
        node.pause()
        first, first_seconds = _timed(lambda: limiter.hit("k", LIMIT))
        assert first.fallback == "allow" and first_seconds >= 0.25  # the socket timeout
        assert first_seconds < 0.55  # one timeout: a timed-out check is not retried
        calls = store_calls()
        rest, rest_seconds = _timed(lambda: [limiter.hit("k", LIMIT) for _ in range(100)])
        assert store_calls() == calls and all(d.fallback == "allow" for d in rest)
        print(
            f"{path} pause: first check {first_seconds * 1e3:.0f} ms (socket timeout 300 ms), "
            f"then {rest_seconds / 100 * 1e6:.1f} us per check"
        )
        node.resume()
        time.sleep(RECOVERY + 0.05)
        # The paused server kept its state, and it also ran the check that timed
        # out (the request sat in its socket): this is the 3rd hit it counted.
        back = limiter.hit("k", LIMIT)
        assert back.fallback is None and back.remaining == 2
    finally:
        node.resume()
        client.close()


@pytest.mark.parametrize("path", ["client", "direct"])
async def test_async_store_down_and_back(
    redis_server_factory: Callable[[], Any], path: str
) -> None:
    node = redis_server_factory()
    client, store, store_calls = _async_store(node, path)
    limiter = AsyncRateLimiter(
        AsyncRedisBackend(store), fallback="local", recovery_interval=RECOVERY, timeout=1.0
    )
    assert (limiter.backend._pool is not None) == (path == "direct")
    try:
        assert (await limiter.hit("k", LIMIT)).fallback is None
        node.kill()
        calls = store_calls()
        with capture_events() as events:
            decisions = [await limiter.hit("k", LIMIT) for _ in range(7)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
        # One failure (the direct path retries a connection error once through
        # the client); then the store is skipped.
        assert store_calls() - calls == (1 if path == "client" else 2)
        assert [type(e) for e in events] == [FallbackUsed]
        node.start()
        await asyncio.sleep(RECOVERY + 0.05)
        with capture_events() as events:
            back = await limiter.hit("k", LIMIT)
        assert back.fallback is None and back.allowed
        assert [type(e) for e in events] == [Recovered]
    finally:
        await client.aclose()


@pytest.mark.parametrize("path", ["client", "direct"])
async def test_async_timeout_bounds_a_paused_node_and_is_not_retried(
    redis_server_factory: Callable[[], Any], path: str
) -> None:
    # The socket timeout (5 s) is far above the limiter's ``timeout`` (0.3 s):
    # the check must give up at the latter, once, and take the fallback.
    node = redis_server_factory()
    client, store, store_calls = _async_store(node, path, socket_timeout=5.0)
    limiter = AsyncRateLimiter(
        AsyncRedisBackend(store, timeout=0.3), fallback="allow", recovery_interval=RECOVERY
    )
    try:
        assert (await limiter.hit("k", LIMIT)).fallback is None
        node.pause()
        started = time.perf_counter()
        first = await limiter.hit("k", LIMIT)
        seconds = time.perf_counter() - started
        assert first.fallback == "allow" and 0.25 <= seconds < 0.55
        calls = store_calls()
        rest = [await limiter.hit("k", LIMIT) for _ in range(20)]
        assert store_calls() == calls and all(d.fallback == "allow" for d in rest)
        node.resume()
        await asyncio.sleep(RECOVERY + 0.05)
        back = await limiter.hit("k", LIMIT)
        # The paused server ran the check that timed out too: this is its 3rd hit.
        assert back.fallback is None and back.remaining == 2
    finally:
        node.resume()
        await client.aclose()


def test_concurrency_limiter_falls_back_and_recovers(
    redis_server_factory: Callable[[], Any],
) -> None:
    node = redis_server_factory()
    client = _client(node)
    limiter = ConcurrencyLimiter(
        client, limit=4, instances=2, fallback="local", recovery_interval=RECOVERY
    )
    try:
        held = limiter.acquire("job")
        assert held.fallback is None
        node.stop()
        with capture_events() as events:
            local = [limiter.acquire("job"), limiter.acquire("job")]
        assert [lease.fallback for lease in local] == ["local", "local"]
        assert [type(e) for e in events] == [FallbackUsed]
        held.release()  # the store is down: the lease will expire there on its own
        node.start()
        time.sleep(RECOVERY + 0.05)
        with capture_events() as events:
            back = limiter.acquire("job")
        assert back.fallback is None and back.in_flight == 1
        assert [type(e) for e in events] == [Recovered]
    finally:
        client.close()
