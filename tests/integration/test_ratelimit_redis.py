"""Rate limiting against the harness's real Redis (standalone and Cluster).

- the Lua scripts agree with the pure core decision by decision (the same
  scenarios as ``tests/unit/ratelimit/test_lua_parity_fakeredis.py``);
- one round trip per check, on the server's clock, NOSCRIPT reloads;
- 4 processes hammering one key admit exactly the limit;
- the concurrency limiter frees the slots of a killed holder;
- Redis Cluster, sync and asyncio.

Store-down tests (stop, pause, restart) are in ``test_ratelimit_failover.py``.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from scalekit.errors import ConcurrencyLimitExceeded
from scalekit.ratelimit import (
    ALGORITHMS,
    AsyncConcurrencyLimiter,
    AsyncRateLimiter,
    AsyncRedisBackend,
    ConcurrencyLimiter,
    Limit,
    MemoryBackend,
    RateLimiter,
    RedisBackend,
)
from scalekit.ratelimit._scripts import SINGLE_LIMIT_ALGORITHMS, single_limit_script
from scalekit.testing import FakeClock
from tests.unit.ratelimit._scenarios import (
    Scenario,
    Step,
    areplay,
    evaluator,
    random_scenario,
    replay,
    single_limit,
)

pytestmark = pytest.mark.integration


class CountingConnection(redis.Connection):
    """Counts the requests sent (each is one round trip: a command and its reply)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        super().send_packed_command(command, check_health)


def counting_client(node: Any) -> redis.Redis:
    CountingConnection.sent = 0
    pool = redis.ConnectionPool(host=node.host, port=node.port, connection_class=CountingConnection)
    return redis.Redis(connection_pool=pool)


class AsyncCountingConnection(redis.asyncio.Connection):
    """:class:`CountingConnection` for ``redis.asyncio``."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        await super().send_packed_command(command, check_health)


def async_counting_client(node: Any) -> redis.asyncio.Redis:
    AsyncCountingConnection.sent = 0
    pool = redis.asyncio.ConnectionPool(
        host=node.host, port=node.port, connection_class=AsyncCountingConnection
    )
    return redis.asyncio.Redis(connection_pool=pool)


# -- the scripts mirror the core ---------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_lua_on_real_redis_mirrors_the_core(algorithm: str, redis_client: Any) -> None:
    backend = RedisBackend(redis_client)
    steps = 0
    for seed in range(12):
        scenario = random_scenario(seed * 7919 + 1, algorithm, length=40)
        steps += replay(scenario, evaluator(MemoryBackend()), evaluator(backend), f"s{seed}")
    assert steps == 12 * 40


@pytest.mark.parametrize("algorithm", sorted(SINGLE_LIMIT_ALGORITHMS))
def test_lean_one_limit_scripts_on_real_redis_mirror_the_core(
    algorithm: str, redis_client: Any
) -> None:
    backend = RedisBackend(redis_client)
    for seed in range(8):
        scenario = single_limit(random_scenario(seed * 104729 + 3, algorithm, length=40))
        replay(scenario, evaluator(MemoryBackend()), evaluator(backend), f"one{seed}")
    assert redis_client.script_exists(single_limit_script(algorithm).sha) == [True]


async def test_async_lua_on_real_redis_mirrors_the_core(async_redis_client: Any) -> None:
    backend = AsyncRedisBackend(async_redis_client)
    try:
        await _async_mirrors_the_core(backend)
    finally:
        await backend.aclose()


async def _async_mirrors_the_core(backend: AsyncRedisBackend) -> None:

    async def run(scenario: Scenario, keys: list[str], now: float, step: Step) -> Any:
        return await backend.evaluate(
            scenario.algorithm,
            keys,
            scenario.params(),
            float(step.cost),
            consume_denied=scenario.consume_denied,
            write=step.write,
            now=now,
        )

    for number, algorithm in enumerate(ALGORITHMS):
        scenario = random_scenario(number + 100, algorithm, length=30)
        assert await areplay(scenario, evaluator(MemoryBackend()), run, f"a{number}") == 30


# -- one round trip, server clock, NOSCRIPT -----------------------------------


def test_one_round_trip_per_check_headers_included(redis_server: Any) -> None:
    client = counting_client(redis_server)
    client.flushall()
    try:
        for algorithm in ALGORITHMS:
            limiter = RateLimiter(client, algorithm=algorithm)
            limiter.hit("warm", "5/minute")  # may load the scripts (NOSCRIPT + EVAL)
            limiter.hit_all("warm", ["5/minute", "100/hour"])
            client.config_resetstat()
            CountingConnection.sent = 0
            for _ in range(10):
                decision = limiter.hit("k", "5/minute")
                decision.headers(style="both")
            limiter.hit_all("k", ["5/minute", "100/hour", "1000/day"])
            limiter.peek("k", ["5/minute", "100/hour"])
            assert CountingConnection.sent == 12, algorithm
            stats = client.info("commandstats")
            assert stats["cmdstat_evalsha"]["calls"] == 12, algorithm
            assert "cmdstat_eval" not in stats
    finally:
        client.close()


def test_noscript_reloads_the_script(redis_server: Any) -> None:
    client = counting_client(redis_server)
    client.flushall()
    try:
        limiter = RateLimiter(client, algorithm="token_bucket")
        limiter.hit("k", "3/minute")
        client.script_flush()
        client.config_resetstat()
        assert limiter.hit("k", "3/minute").remaining == 1  # state kept, script reloaded
        stats = client.info("commandstats")  # EVALSHA -> NOSCRIPT, then EVAL
        assert stats["cmdstat_evalsha"]["failed_calls"] == 1
        assert stats["cmdstat_eval"]["calls"] == 1
        assert client.script_exists(single_limit_script("token_bucket").sha) == [True]
        CountingConnection.sent = 0
        limiter.hit("k", "3/minute")
        assert CountingConnection.sent == 1
    finally:
        client.close()


async def test_async_one_round_trip_per_check_headers_included(redis_server: Any) -> None:
    client = async_counting_client(redis_server)
    await client.flushall()
    limiters: list[AsyncRateLimiter] = []
    try:
        for algorithm in ALGORITHMS:
            limiter = AsyncRateLimiter(client, algorithm=algorithm)
            limiters.append(limiter)
            assert isinstance(limiter.backend, AsyncRedisBackend)
            # A default client is twinned (bounded timeouts, no retries); the
            # twin is a plain client too, so checks take the direct path on its pool.
            assert limiter.backend._client is not client
            assert limiter.backend._pool is limiter.backend._client.connection_pool
            await limiter.hit("warm", "5/minute")  # may load the scripts (NOSCRIPT + EVAL)
            await limiter.hit_all("warm", ["5/minute", "100/hour"])
            await client.config_resetstat()
            AsyncCountingConnection.sent = 0
            for _ in range(10):
                decision = await limiter.hit("k", "5/minute")
                decision.headers(style="both")
            await limiter.hit_all("k", ["5/minute", "100/hour", "1000/day"])
            await limiter.peek("k", ["5/minute", "100/hour"])
            assert AsyncCountingConnection.sent == 12, algorithm
            stats = await client.info("commandstats")
            assert stats["cmdstat_evalsha"]["calls"] == 12, algorithm
            assert "cmdstat_eval" not in stats
        for limiter in limiters:
            assert len(limiter.backend._pool._in_use_connections) == 0  # all returned
    finally:
        for limiter in limiters:
            await limiter.aclose()
        await client.aclose()
        await client.connection_pool.disconnect()  # the client does not own it


async def test_async_noscript_reloads_the_script(redis_server: Any) -> None:
    client = async_counting_client(redis_server)
    await client.flushall()
    try:
        limiter = AsyncRateLimiter(client, algorithm="token_bucket")
        await limiter.hit("k", "3/minute")
        await client.script_flush()
        AsyncCountingConnection.sent = 0
        assert (await limiter.hit("k", "3/minute")).remaining == 1  # state kept, reloaded
        assert AsyncCountingConnection.sent == 2  # EVALSHA -> NOSCRIPT, then EVAL
        assert await client.script_exists(single_limit_script("token_bucket").sha) == [True]
        AsyncCountingConnection.sent = 0
        await limiter.hit("k", "3/minute")
        assert AsyncCountingConnection.sent == 1
    finally:
        await limiter.aclose()
        await client.aclose()
        await client.connection_pool.disconnect()  # the client does not own it


def _is_script(command: Any) -> bool:
    packed = command if isinstance(command, bytes) else b"".join(command)
    return b"\r\nEVAL" in packed[:20]


class FlakyConnection(redis.Connection):
    """Fails the next script call with ``fail`` (once), as a dropped or hung connection would."""

    fail: type[Exception] | None = None
    sent = 0  # script calls attempted

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if _is_script(command):
            type(self).sent += 1
            fail, type(self).fail = type(self).fail, None
            if fail is not None:
                raise fail("injected")
        super().send_packed_command(command, check_health)


class AsyncFlakyConnection(redis.asyncio.Connection):
    fail: type[Exception] | None = None
    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if _is_script(command):
            type(self).sent += 1
            fail, type(self).fail = type(self).fail, None
            if fail is not None:
                raise fail("injected")
        await super().send_packed_command(command, check_health)


@pytest.mark.parametrize("shell", ["sync", "async"])
async def test_a_connection_error_is_retried_once_the_clients_way_a_timeout_never(
    redis_server: Any, shell: str
) -> None:
    options = {"host": redis_server.host, "port": redis_server.port}
    connection: Any = FlakyConnection if shell == "sync" else AsyncFlakyConnection
    if shell == "sync":
        client: Any = redis.Redis(
            connection_pool=redis.ConnectionPool(connection_class=connection, **options),
            retry=Retry(NoBackoff(), 0),
        )
    else:
        client = redis.asyncio.Redis(
            connection_pool=redis.asyncio.ConnectionPool(connection_class=connection, **options),
            retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
        )
    driver = RateLimiter(client, fallback="allow") if shell == "sync" else None
    adriver = AsyncRateLimiter(client, fallback="allow") if shell == "async" else None

    async def hit() -> Any:
        if driver is not None:
            return driver.hit("k", "3/minute")
        assert adriver is not None
        return await adriver.hit("k", "3/minute")

    try:
        redis_server.client().flushall()
        assert (await hit()).remaining == 2  # connects, loads the script
        connection.sent = 0
        connection.fail = redis.exceptions.ConnectionError
        decision = await hit()  # direct send fails, then client.evalsha succeeds
        assert decision.fallback is None and decision.remaining == 1
        assert connection.sent == 2
        connection.sent = 0
        connection.fail = redis.exceptions.TimeoutError
        decision = await hit()  # a timeout is not retried: the fallback answers
        assert decision.fallback == "allow" and connection.sent == 1
    finally:
        if shell == "sync":
            client.close()
            client.connection_pool.disconnect()
        else:
            assert adriver is not None
            await adriver.aclose()
            await client.aclose()
            await client.connection_pool.disconnect()


async def test_async_checks_borrow_the_clients_pool_and_retry_a_dropped_connection(
    redis_server: Any,
) -> None:
    client = redis_server.async_client(retry=redis.asyncio.retry.Retry(NoBackoff(), 0))
    admin = redis_server.client()
    await client.flushall()
    try:
        limiter = AsyncRateLimiter(client, algorithm="gcra")
        assert (await limiter.hit("k", "3/minute")).remaining == 2
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        decision = await limiter.hit("k", "3/minute")
        assert decision.fallback is None and decision.remaining == 1
        assert not limiter.degraded
        assert AsyncRedisBackend(client, direct=False)._pool is None
        slow = AsyncRateLimiter(AsyncRedisBackend(client, direct=False), algorithm="gcra")
        assert (await slow.hit("k", "3/minute")).remaining == 0
        assert len(limiter.backend._pool._in_use_connections) == 0  # all returned
        await slow.aclose()
    finally:
        await limiter.aclose()
        await client.aclose()
        admin.close()


def test_checks_borrow_the_clients_pool_and_retry_a_dropped_connection(
    redis_server: Any,
) -> None:
    client = redis_server.client(retry=Retry(NoBackoff(), 0))
    admin = redis_server.client()
    client.flushall()
    try:
        limiter = RateLimiter(client, algorithm="gcra")
        assert isinstance(limiter.backend, RedisBackend)
        pool = limiter.backend._pool  # the direct path, on the twin's pool
        assert (
            pool is limiter.backend._client.connection_pool and pool is not client.connection_pool
        )
        assert limiter.hit("k", "3/minute").remaining == 2
        # The server drops the pooled connection: the next check must not take
        # the fallback (the pool reconnects a dead connection it hands out; a
        # connection error while sending is retried through client.evalsha).
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        decision = limiter.hit("k", "3/minute")
        assert decision.fallback is None and decision.remaining == 1
        assert not limiter.degraded
        # Proxies, subclasses and direct=False go through client.evalsha.
        assert RedisBackend(client, direct=False)._pool is None
        slow = RateLimiter(RedisBackend(client, direct=False), algorithm="gcra")
        assert slow.hit("k", "3/minute").remaining == 0
        # The direct path keeps the connection it used (the killed one went back
        # to the pool, disconnected); close() gives it back.
        assert not limiter.hit("k", "3/minute").allowed
        assert len(limiter.backend._kept) == 1
        assert pool._in_use_connections == set(limiter.backend._kept)
        limiter.close()
        assert pool._in_use_connections == set()  # all returned
        assert client.connection_pool._in_use_connections == set()  # the client's untouched
    finally:
        client.close()
        admin.close()


def test_the_direct_path_keeps_a_few_connections_and_gives_them_back(
    redis_server: Any,
) -> None:
    client = redis_server.client()
    client.flushall()
    try:
        limiter = RateLimiter(client, algorithm="token_bucket")
        pool = limiter.backend._pool  # the twin's (see _redis_bounded)
        admitted: list[int] = []

        def worker() -> None:
            admitted.append(sum(limiter.hit("k", "100/day").allowed for _ in range(40)))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(admitted) == 100  # 8 threads sharing connections: exact
        kept = limiter.backend._kept
        assert 1 <= len(kept) <= 4 and set(kept) <= pool._in_use_connections
        assert len(pool._in_use_connections) == len(kept)  # the others went back
        limiter.backend.close()
        assert pool._in_use_connections == set()
        # Still usable after close(); and a collected limiter gives its connection back.
        assert not limiter.hit("k", "100/day").allowed
        assert len(pool._in_use_connections) == 1
        del limiter, kept
        gc.collect()
        assert pool._in_use_connections == set()
    finally:
        client.close()
    # A blocking pool (or a small one) has no connection to spare: none is kept.
    for small in (
        redis.BlockingConnectionPool(host=redis_server.host, port=redis_server.port),
        redis.ConnectionPool(host=redis_server.host, port=redis_server.port, max_connections=8),
    ):
        with redis.Redis(connection_pool=small) as other:
            limiter = RateLimiter(other)
            assert limiter.hit("b", "5/minute").allowed
            twin_pool = limiter.backend._pool  # the twin's pool is of the same kind and size
            assert (
                type(twin_pool) is type(small)
                and twin_pool.max_connections == small.max_connections
            )
            assert limiter.backend._kept == []
    assert len(twin_pool._in_use_connections) == 0  # the plain pool of 8 got it back


def test_a_forked_child_never_uses_the_parents_kept_connection(redis_client: Any) -> None:
    limiter = RateLimiter(redis_client, algorithm="gcra")
    limit = Limit(1000, per=3600)
    assert limiter.hit("k", limit).remaining == 999
    kept = list(limiter.backend._kept)
    assert len(kept) == 1
    pid = os.fork()
    if pid == 0:  # the child: its checks must use connections of its own
        code = 1
        try:
            decisions = [limiter.hit("k", limit) for _ in range(50)]
            mine = limiter.backend._kept
            if all(d.allowed and d.fallback is None for d in decisions) and mine[0] not in kept:
                code = 0
        finally:
            os._exit(code)
    # Meanwhile the parent keeps checking on its connection: replies never cross.
    decisions = [limiter.hit("k", limit) for _ in range(50)]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert all(d.allowed and d.fallback is None for d in decisions)
    assert limiter.backend._kept == kept
    assert limiter.peek("k", limit).remaining == 1000 - 101


def test_state_lives_on_the_servers_clock(redis_client: Any) -> None:
    # The app's clock is 50 years off: it must not matter.
    limiter = RateLimiter(redis_client, algorithm="token_bucket", clock=FakeClock(start=5.0))
    limiter.hit("k", Limit(10, per=60))
    seconds, micros = redis_client.time()
    server_now = seconds * 1_000_000 + micros
    (key,) = redis_client.keys("*")
    tokens, last = redis_client.get(key).split()
    assert float(tokens) == 9.0
    # Redis's clock (µs since the epoch), not the limiter's fake one (5 s): the
    # bound only tells the two apart, however slow the machine.
    assert 0 <= server_now - float(last) < 3_600_000_000
    assert 0 < redis_client.pttl(key) <= 60_000 + 1


def test_keys_expire_once_the_limit_is_full_again(redis_client: Any) -> None:
    limiter = RateLimiter(redis_client, algorithm="gcra")
    # One hit of 10 per 2 s: the bucket is full again one emission interval (200 ms) later,
    # and the key must not outlive that by more than the script's 1 ms rounding margin
    # (PX = ceil(debt in ms) + 1, so that the state never expires before the bucket is
    # full). Wide margins below: a loaded machine can stall for ms.
    limiter.hit("k", Limit(10, per=2.0))
    (key,) = redis_client.keys("*")
    assert 0 < redis_client.pttl(key) <= 200 + 1
    deadline = time.monotonic() + 2.0
    while redis_client.keys("*") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert redis_client.keys("*") == []


def test_unsafe_keys_never_reach_redis_raw(redis_client: Any) -> None:
    limiter = RateLimiter(redis_client, namespace="app")
    for key in ("*", "{x}", "ü" * 300, b"\x00\xff"):
        limiter.hit(key, "1/minute")
        assert not limiter.hit(key, "1/minute").allowed
    keys = redis_client.keys("*")
    assert len(keys) == 4
    assert all(key.startswith(b"app:{h:") for key in keys)


# -- many processes, one limit -----------------------------------------------


def _hammer(args: tuple[str | list[tuple[str, int]], str, list[str], int]) -> int:
    where, algorithm, limits, hits = args
    if isinstance(where, str):
        client: Any = redis.Redis.from_url(where)
    else:
        from redis.cluster import ClusterNode, RedisCluster

        client = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in where])
    namespace = f"hammer-{len(limits)}"
    limiter = RateLimiter(client, algorithm=algorithm, namespace=namespace)  # type: ignore[arg-type]
    admitted = sum(limiter.hit_all("shared", limits).allowed for _ in range(hits))
    client.close()
    return admitted


def test_four_processes_admit_exactly_the_limit(
    redis_client: Any, redis_server: Any, redis_cluster: Any
) -> None:
    # A day-long window: refills during the run are far below one unit.
    redis_cluster.flushall()
    jobs: list[tuple[str | list[tuple[str, int]], str, list[str], int]] = []
    for where in (redis_server.url, redis_cluster.startup_nodes):
        for algorithm in ALGORITHMS:
            jobs += [(where, algorithm, ["50/day"], 40)] * 4
        jobs += [(where, "gcra", ["50/day", "30/day"], 40)] * 4
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        admitted = pool.map(_hammer, jobs)
    totals = [sum(admitted[i : i + 4]) for i in range(0, len(admitted), 4)]
    # Standalone, then Cluster: each algorithm admitted exactly 50 of 160, and
    # hit_all exactly 30 (the tighter of its two limits).
    assert totals == ([50] * len(ALGORITHMS) + [30]) * 2


# -- the concurrency limiter ------------------------------------------------

_HOLDER = """
import sys, time, redis
from scalekit.ratelimit import ConcurrencyLimiter
limiter = ConcurrencyLimiter(redis.Redis.from_url(sys.argv[1]), limit=2, lease=1.0)
leases = [limiter.acquire("job"), limiter.acquire("job")]
print("held", flush=True)
time.sleep(60)
"""


def test_a_killed_holders_leases_expire(redis_client: Any, redis_server: Any) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, redis_server.url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        limiter = ConcurrencyLimiter(redis_client, limit=2, lease=1.0)
        with pytest.raises(ConcurrencyLimitExceeded) as caught:
            limiter.acquire("job")
        assert caught.value.in_flight == 2 and 0 < caught.value.retry_after <= 1.0
        # The dead holder's leases expire (lease 1 s); the timeouts only guard a hang.
        first = limiter.acquire("job", timeout=10.0)
        second = limiter.acquire("job", timeout=10.0)  # both dead slots came back
        assert first.fallback is None and second.fallback is None and second.in_flight == 2
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def _hold(args: tuple[str, int]) -> int:
    url, rounds = args
    client = redis.Redis.from_url(url)
    limiter = ConcurrencyLimiter(client, limit=3, lease=5.0, namespace="cc-hammer")
    client.incr("ready")
    while not client.exists("go"):  # start together, so that the holds overlap
        time.sleep(0.005)
    peak = 0
    for _ in range(rounds):
        with limiter.acquire("job", timeout=10.0):
            peak = max(peak, int(client.incr("in-flight")))
            time.sleep(0.02)
            client.decr("in-flight")
    client.close()
    return peak


def test_concurrency_limit_holds_across_processes(redis_client: Any, redis_server: Any) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pending = pool.map_async(_hold, [(redis_server.url, 10)] * 4)
        deadline = time.monotonic() + 30
        while int(redis_client.get("ready") or 0) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        redis_client.set("go", 1)
        peaks = pending.get(timeout=60)
    # 4 holders of 20 ms each, started together, over 3 slots: the limit is
    # reached and never exceeded, and every one of the 40 acquisitions got a slot.
    assert max(peaks) == 3
    assert redis_client.zcard("cc-hammer:{k:job}:conc:3") == 0
    assert int(redis_client.get("in-flight")) == 0


async def test_async_concurrency_on_real_redis(async_redis_client: Any) -> None:
    limiter = AsyncConcurrencyLimiter(async_redis_client, limit=1, lease=0.3)
    try:
        await limiter.acquire("job")  # never released
        with pytest.raises(ConcurrencyLimitExceeded):
            await limiter.acquire("job")
        async with limiter.acquire("job", timeout=10.0) as lease:  # a hang guard
            assert lease.in_flight == 1 and await lease.renew()
    finally:
        await limiter.aclose()


# -- Redis Cluster ----------------------------------------------------------


def test_cluster_sync(redis_cluster: Any) -> None:
    redis_cluster.flushall()
    client = redis_cluster.client()
    try:
        for algorithm in ALGORITHMS:
            limiter = RateLimiter(client, algorithm=algorithm, namespace=f"cl-{algorithm}")
            for user in range(12):  # spread over the three masters
                key = f"user:{user}"
                limits = [Limit(2, per=60), Limit(3, per=3600)]
                assert [limiter.hit_all(key, limits).allowed for _ in range(3)] == [
                    True,
                    True,
                    False,
                ]
                limiter.reset(key, limits)
                assert limiter.peek(key, limits).remaining == 2
        slots = {
            redis_cluster.node_for_key(f"cl-gcra:{{k:user:{user}}}").port for user in range(12)
        }
        assert len(slots) > 1
        # After SCRIPT FLUSH on every master the scripts reload.
        for node in redis_cluster.nodes:
            with node.client() as direct:
                direct.script_flush()
        assert RateLimiter(client, namespace="cl-flushed").hit("k", "1/minute").allowed
        # The scripts mirror the core on the cluster too.
        for number, algorithm in enumerate(ALGORITHMS):
            scenario = random_scenario(number + 500, algorithm, length=20)
            replay(scenario, evaluator(MemoryBackend()), evaluator(RedisBackend(client)), "c")
    finally:
        client.close()


async def test_cluster_async(redis_cluster: Any) -> None:
    redis_cluster.flushall()
    client = redis_cluster.async_client()
    opened: list[Any] = []
    try:
        for algorithm in ALGORITHMS:
            limiter = AsyncRateLimiter(client, algorithm=algorithm, namespace=f"acl-{algorithm}")
            opened.append(limiter)
            for user in range(6):
                limits = ["2/minute", "10/hour"]
                results = [(await limiter.hit_all(f"u{user}", limits)).allowed for _ in range(3)]
                assert results == [True, True, False]
        concurrency = AsyncConcurrencyLimiter(client, limit=1, lease=5)
        opened.append(concurrency)
        async with concurrency.acquire("job"):
            with pytest.raises(ConcurrencyLimitExceeded):
                await concurrency.acquire("job")
        async with concurrency.acquire("job"):
            pass
    finally:
        for each in opened:
            await each.aclose()
        await client.aclose()


def test_cluster_concurrency_sync(redis_cluster: Any) -> None:
    redis_cluster.flushall()
    client = redis_cluster.client()
    try:
        limiter = ConcurrencyLimiter(client, limit=2, lease=timedelta(seconds=5))
        with limiter.acquire("a"), limiter.acquire("a"):
            with pytest.raises(ConcurrencyLimitExceeded):
                limiter.acquire("a")
            assert limiter.acquire("b").in_flight == 1
    finally:
        client.close()
