"""Rate limiting with the real Redis stopped, killed and paused mid-run.

Each fallback policy (``allow``, ``deny``, ``local``) is followed while the
node is down, the store is not contacted again once the breaker has opened
(so the outage adds no latency), one ``FallbackUsed`` event marks the start
of the incident, and a ``Recovered`` event its end once the node is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio.connection
import redis.asyncio.retry
import redis.connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from scalekit._redis_direct import AsyncKept
from scalekit.errors import RateLimiterUnavailable
from scalekit.instrumentation import FallbackUsed, Recovered
from scalekit.ratelimit import (
    AsyncRateLimiter,
    AsyncRedisBackend,
    ConcurrencyLimiter,
    Limit,
    RateLimiter,
    RedisBackend,
    storage_key,
)
from scalekit.testing import FakeClock, capture_events

pytestmark = pytest.mark.integration

LIMIT = Limit(5, per=60)
RECOVERY = 0.5
OP_TIMEOUT = 0.25
# Time bounds below only guard against a hang: ten times connect + reply.
HANG_GUARD = 10 * 2 * OP_TIMEOUT


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


def _count_kept_sends(
    monkeypatch: pytest.MonkeyPatch, pool_calls: Callable[[], int]
) -> Callable[[], int]:
    """Attempts on the asyncio direct path: ``pool_calls`` plus sends on kept connections."""
    sends = 0
    send = AsyncKept.send

    async def counted(self: AsyncKept, packed: bytes, response_error: Any) -> Any:
        nonlocal sends
        sends += 1
        return await send(self, packed, response_error)

    monkeypatch.setattr(AsyncKept, "send", counted)
    return lambda: pool_calls() + sends


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
        before = store_calls()
        first, first_seconds = _timed(lambda: limiter.hit("k", LIMIT))
        assert first.fallback == "allow" and first_seconds >= 0.25  # the socket timeout
        assert first_seconds < HANG_GUARD
        calls = store_calls()
        # One attempt, not retried: through the client, one evalsha; on the
        # direct path, the kept connection and no other from the pool.
        assert calls - before == (1 if path == "client" else 0)
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
    redis_server_factory: Callable[[], Any], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = redis_server_factory()
    client, store, store_calls = _async_store(node, path)
    store_calls = _count_kept_sends(monkeypatch, store_calls)
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
        # One failure (the direct path re-makes its kept connection once, and
        # does not try the client's way after that); then the store is skipped.
        assert store_calls() - calls == 1
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
    redis_server_factory: Callable[[], Any], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The socket timeout (5 s) is far above the limiter's ``timeout`` (0.3 s):
    # the check must give up at the latter, once, and take the fallback.
    node = redis_server_factory()
    client, store, store_calls = _async_store(node, path, socket_timeout=5.0)
    store_calls = _count_kept_sends(monkeypatch, store_calls)
    limiter = AsyncRateLimiter(
        AsyncRedisBackend(store, timeout=0.3), fallback="allow", recovery_interval=RECOVERY
    )
    try:
        assert (await limiter.hit("k", LIMIT)).fallback is None
        node.pause()
        before = store_calls()
        started = time.perf_counter()
        first = await limiter.hit("k", LIMIT)
        seconds = time.perf_counter() - started
        # The limiter's timeout, not the socket's 5 s (the guard only catches a hang)
        assert first.fallback == "allow" and 0.25 <= seconds < HANG_GUARD
        calls = store_calls()
        assert calls - before == 1  # one attempt: a timed-out check is not retried
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


# -- default-constructed clients: an outage costs a bounded probe ---------------
#
# Clients built as users build them. redis-py 8's defaults retry 10 times with
# back-off and wait 5 s for a reply: before op_timeout, a stopped Redis cost the
# first check about 3 s (11 connection attempts) and a paused one 5 s (redis-py
# 5: for ever). Now the first check costs about 2 x op_timeout at most; the
# time bounds only catch a hang, the assertions count what happened.


def _count_store_calls(backend: Any) -> Callable[[], int]:
    """Count the backend's calls to Redis (sync or async: the wrapper passes the coroutine on)."""
    calls = 0
    run = backend._run

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return run(*args, **kwargs)

    backend._run = counted
    return lambda: calls


def _count_connects(monkeypatch: pytest.MonkeyPatch, connection: type) -> Callable[[], int]:
    """Count attempts to open a connection (redis-py's retries each make one)."""
    attempts = 0
    connect = connection._connect  # type: ignore[attr-defined]

    def counted(self: Any) -> Any:
        nonlocal attempts
        attempts += 1
        return connect(self)

    monkeypatch.setattr(connection, "_connect", counted)
    return lambda: attempts


def _outcome(check: Callable[[], Any]) -> Any:
    """The decision, or the RateLimiterUnavailable raised instead."""
    try:
        return check()
    except RateLimiterUnavailable as error:
        return error


async def _aoutcome(check: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await check()
    except RateLimiterUnavailable as error:
        return error


def _assert_fallback(fallback: str, outcomes: list[Any], first_cause: bool = True) -> None:
    """Every outcome follows ``fallback``; a LIMIT of 5: ``local`` admits 5, then denies."""
    if fallback == "raise":
        assert all(isinstance(o, RateLimiterUnavailable) for o in outcomes)
        if first_cause:
            assert isinstance(outcomes[0].__cause__, (redis.ConnectionError, redis.TimeoutError))
        assert all(o.__cause__ is None for o in outcomes[1:])  # the store was skipped
        return
    assert {o.fallback for o in outcomes} == {fallback}
    if fallback == "allow":
        assert all(o.allowed for o in outcomes)
    else:
        assert [o.allowed for o in outcomes] == [True] * 5 + [False] * (len(outcomes) - 5)


def _end_outage(node: Any, outage: str) -> None:
    if outage == "pause":
        node.resume()
    elif not node.running:
        node.start()


@pytest.mark.parametrize("fallback", ["local", "allow", "raise"])
@pytest.mark.parametrize("outage", ["stop", "kill", "pause"])
def test_a_default_client_costs_one_bounded_probe_then_the_fallback(
    redis_server_factory: Callable[[], Any],
    outage: str,
    fallback: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = redis_server_factory()
    client = redis.Redis(host=node.host, port=node.port)  # redis-py's defaults
    clock = FakeClock(start=100.0)
    limiter = RateLimiter(client, fallback=fallback, op_timeout=OP_TIMEOUT, clock=clock)  # type: ignore[arg-type]
    store_calls = _count_store_calls(limiter.backend)
    try:
        assert limiter.hit("k", LIMIT).fallback is None
        getattr(node, outage)()
        connects = _count_connects(monkeypatch, redis.connection.Connection)
        started = time.monotonic()
        first = _outcome(lambda: limiter.hit("k", LIMIT))
        assert time.monotonic() - started < HANG_GUARD  # bounded (unbounded: 3 s to minutes)
        assert store_calls() == 2  # the first check, then this probe
        # The kept connection fails, then one fresh attempt: redis-py never retries.
        assert connects() <= 1
        # Within the guard's interval (the clock stands still) Redis is not touched.
        rest = [_outcome(lambda: limiter.hit("k", LIMIT)) for _ in range(9)]
        rest += [_outcome(lambda: limiter.hit_all("k", [LIMIT])) for _ in range(2)]
        assert store_calls() == 2
        _assert_fallback(fallback, [first, *rest])
        _end_outage(node, outage)
        if outage != "pause":
            client.config_resetstat()
        clock.advance(1.0)  # the recovery interval: the next check probes, and succeeds
        back = limiter.hit("k", LIMIT)
        assert back.fallback is None and not limiter.degraded
        if outage != "pause":  # a restarted Redis has no scripts: NOSCRIPT, then EVAL
            stats = client.info("commandstats")
            assert stats["cmdstat_eval"]["calls"] == 1 and back.remaining == 4
    finally:
        _end_outage(node, outage)
        limiter.close()
        client.close()


@pytest.mark.parametrize("fallback", ["local", "allow", "raise"])
@pytest.mark.parametrize("outage", ["stop", "kill", "pause"])
async def test_a_default_async_client_costs_one_bounded_probe_then_the_fallback(
    redis_server_factory: Callable[[], Any],
    outage: str,
    fallback: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = redis_server_factory()
    client = redis.asyncio.Redis(host=node.host, port=node.port)  # redis-py's defaults
    clock = FakeClock(start=100.0)
    limiter = AsyncRateLimiter(client, fallback=fallback, op_timeout=OP_TIMEOUT, clock=clock)  # type: ignore[arg-type]
    store_calls = _count_store_calls(limiter.backend)
    try:
        assert (await limiter.hit("k", LIMIT)).fallback is None
        getattr(node, outage)()
        connects = _count_connects(monkeypatch, redis.asyncio.connection.Connection)
        started = time.monotonic()
        first = await _aoutcome(lambda: limiter.hit("k", LIMIT))
        assert time.monotonic() - started < HANG_GUARD
        assert store_calls() == 2 and connects() <= 1  # redis-py never retries
        rest = [await _aoutcome(lambda: limiter.hit("k", LIMIT)) for _ in range(9)]
        rest += [await _aoutcome(lambda: limiter.hit_all("k", [LIMIT])) for _ in range(2)]
        assert store_calls() == 2
        _assert_fallback(fallback, [first, *rest])
        _end_outage(node, outage)
        clock.advance(1.0)
        back = await limiter.hit("k", LIMIT)
        assert back.fallback is None and not limiter.degraded
        if outage != "pause":
            assert back.remaining == 4  # reloaded the script on the empty server
    finally:
        _end_outage(node, outage)
        await limiter.aclose()
        await client.aclose()


@pytest.mark.parametrize("fallback", ["local", "raise"])
@pytest.mark.parametrize("outage", ["pause", "stop"])
def test_a_default_cluster_client_costs_one_bounded_probe_then_the_fallback(
    redis_cluster: Any, outage: str, fallback: str
) -> None:
    redis_cluster.wait_healthy()
    client = redis_cluster.client()  # RedisCluster with its defaults
    clock = FakeClock(start=100.0)
    limiter = RateLimiter(
        client,
        fallback=fallback,
        op_timeout=OP_TIMEOUT,
        namespace=f"rl-{outage}",
        clock=clock,  # type: ignore[arg-type]
    )
    key = f"{fallback}-{outage}"
    node = redis_cluster.node_for_key(storage_key(f"rl-{outage}", "gcra", key, LIMIT))
    store_calls = _count_store_calls(limiter.backend)
    try:
        assert limiter.hit(key, LIMIT).fallback is None
        getattr(node, outage)()
        started = time.monotonic()
        first = _outcome(lambda: limiter.hit(key, LIMIT))
        assert time.monotonic() - started < HANG_GUARD
        rest = [_outcome(lambda: limiter.hit(key, LIMIT)) for _ in range(9)]
        assert store_calls() == 2
        _assert_fallback(fallback, [first, *rest])
    finally:
        _end_outage(node, outage)
        redis_cluster.wait_healthy()
    try:
        clock.advance(1.0)
        back = limiter.hit(key, LIMIT)
        assert back.fallback is None and not limiter.degraded
    finally:
        limiter.close()
        client.close()


@pytest.mark.parametrize("fallback", ["local", "raise"])
async def test_a_default_async_cluster_client_costs_one_bounded_probe_then_the_fallback(
    redis_cluster: Any, fallback: str
) -> None:
    redis_cluster.wait_healthy()
    client = redis_cluster.async_client()
    clock = FakeClock(start=100.0)
    limiter = AsyncRateLimiter(
        client,
        fallback=fallback,
        op_timeout=OP_TIMEOUT,
        namespace="arl",
        clock=clock,  # type: ignore[arg-type]
    )
    key = f"async-{fallback}"
    node = redis_cluster.node_for_key(storage_key("arl", "gcra", key, LIMIT))
    store_calls = _count_store_calls(limiter.backend)
    try:
        assert (await limiter.hit(key, LIMIT)).fallback is None
        node.pause()
        started = time.monotonic()
        first = await _aoutcome(lambda: limiter.hit(key, LIMIT))
        assert time.monotonic() - started < HANG_GUARD
        rest = [await _aoutcome(lambda: limiter.hit(key, LIMIT)) for _ in range(9)]
        assert store_calls() == 2
        _assert_fallback(fallback, [first, *rest])
        node.resume()
        redis_cluster.wait_healthy()
        clock.advance(1.0)
        back = await limiter.hit(key, LIMIT)
        assert back.fallback is None and not limiter.degraded
    finally:
        node.resume()
        await limiter.aclose()
        await client.aclose()
