"""scalekit.testing's fakes and failure controls, used through the plugin's fixtures."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import sqlalchemy as sa

from scalekit.breaker import CircuitBreaker, State
from scalekit.cache import AsyncCache, Cache
from scalekit.errors import CircuitOpenError, ConfigurationError
from scalekit.instrumentation import Event
from scalekit.ratelimit import AsyncRateLimiter, Limit, RateLimiter
from scalekit.routing import LagChanged, NodeEjected, RoutingPool
from scalekit.testing import (
    FakeClock,
    RedisFaults,
    SQLiteCluster,
    aassert_allowed,
    aassert_limited,
    assert_allowed,
    assert_limited,
    fake_redis,
    faults_of,
    force_breaker,
    mark_node_caught_up,
    mark_node_down,
    mark_node_lagging,
)

# -- fake Redis and its faults --------------------------------------------------------------


def test_fake_redis_runs_lua_and_fails_the_next_n_round_trips(
    fake_redis: Any, redis_faults: RedisFaults
) -> None:
    assert fake_redis.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, "k", "v")
    redis_faults.fail("timeout", calls=2)
    redis_faults.fail("readonly")
    for error in (redis.TimeoutError, redis.TimeoutError, redis.ReadOnlyError):
        with pytest.raises(error, match=r"scalekit\.testing fault"):
            fake_redis.get("k")
    assert fake_redis.get("k") == b"v"
    assert redis_faults.raised == ["timeout", "timeout", "readonly"]
    assert faults_of(fake_redis) is redis_faults


def test_a_pipeline_is_one_round_trip(fake_redis: Any, redis_faults: RedisFaults) -> None:
    redis_faults.fail("stopped")
    pipe = fake_redis.pipeline()
    pipe.set("a", 1).get("a")
    with pytest.raises(redis.ConnectionError):
        pipe.execute()
    assert fake_redis.get("a") is None  # nothing of it reached the server
    assert redis_faults.raised == ["stopped"]  # one failure for the whole pipeline


def test_stop_fails_everything_until_start(fake_redis: Any, redis_faults: RedisFaults) -> None:
    redis_faults.stop()
    for _ in range(3):
        with pytest.raises(redis.ConnectionError):
            fake_redis.ping()
    redis_faults.start()
    assert fake_redis.ping()


async def test_the_async_client_shares_the_server_and_the_faults(
    fake_redis: Any, fake_async_redis: Any, redis_faults: RedisFaults
) -> None:
    fake_redis.set("shared", "yes")
    redis_faults.fail("timeout")
    with pytest.raises(redis.TimeoutError):
        await fake_async_redis.get("shared")
    assert await fake_async_redis.get("shared") == b"yes"


def test_bad_fault_requests_raise_configuration_errors() -> None:
    faults = RedisFaults()
    with pytest.raises(ConfigurationError, match="kind must be one of"):
        faults.fail("slow")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="calls must be an int >= 1"):
        faults.fail("timeout", calls=0)
    with pytest.raises(ConfigurationError, match="not a client made by"):
        faults_of(redis.Redis())


def test_fake_redis_accepts_client_options() -> None:
    client = fake_redis(decode_responses=True)
    client.set("k", "v")
    assert client.get("k") == "v"
    client.close()


# -- ready components on fakes ----------------------------------------------------------------


def test_cache_fixture_loads_once_then_serves_from_redis(cache: Cache) -> None:
    calls: list[int] = []

    def load() -> int:
        calls.append(1)
        return 42

    assert cache.get_or_set("answer", load) == 42
    assert cache.get_or_set("answer", load) == 42
    assert len(calls) == 1


def test_cache_fixture_bypasses_a_stopped_redis(cache: Cache, redis_faults: RedisFaults) -> None:
    redis_faults.stop()
    assert cache.get_or_set("answer", lambda: 7) == 7  # on_redis_down="bypass": the loader
    assert redis_faults.raised


async def test_async_cache_fixture(async_cache: AsyncCache) -> None:
    assert await async_cache.get_or_set("k", lambda: "v") == "v"
    assert await async_cache.get("k") == "v"


def test_limiter_fixture_denies_past_the_limit(limiter: RateLimiter) -> None:
    limit = Limit(2, 60)
    decisions = [limiter.hit("user:1", limit) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert 0 < decisions[-1].retry_after <= 30
    assert limiter.hit("user:2", limit).allowed  # keys are separate


async def test_async_limiter_fixture(async_limiter: AsyncRateLimiter) -> None:
    decisions = [await async_limiter.hit("k", Limit(1, 60)) for _ in range(2)]
    assert [d.allowed for d in decisions] == [True, False]


def test_assert_allowed_and_limited_peek_without_counting(limiter: RateLimiter) -> None:
    limit = Limit(2, 60)
    assert_allowed(limiter, "user:1", limit, remaining=2)
    assert_allowed(limiter, "user:1", limit, remaining=2)  # peeking counted nothing
    limiter.hit("user:1", limit)
    assert_allowed(limiter, "user:1", limit, remaining=1)
    limiter.hit("user:1", limit)
    decision = assert_limited(limiter, "user:1", limit)
    assert decision.retry_after > 0
    with pytest.raises(AssertionError, match="to be allowed"):
        assert_allowed(limiter, "user:1", limit)
    with pytest.raises(AssertionError, match="to be limited"):
        assert_limited(limiter, "user:2", limit)
    with pytest.raises(AssertionError, match="1 remaining"):
        assert_allowed(limiter, "user:2", limit, remaining=1)


async def test_async_assert_allowed_and_limited(async_limiter: AsyncRateLimiter) -> None:
    limit = Limit(1, 60)
    await aassert_allowed(async_limiter, "k", limit, remaining=1)
    await async_limiter.hit("k", limit)
    assert (await aassert_limited(async_limiter, "k", limit)).retry_after > 0
    with pytest.raises(AssertionError):
        await aassert_allowed(async_limiter, "k", limit)


# -- breakers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "state"),
    [
        ("open", State.OPEN),
        ("forced_open", State.FORCED_OPEN),
        ("disabled", State.DISABLED),
        ("half_open", State.HALF_OPEN),
    ],
)
def test_force_breaker_then_close(
    breaker: CircuitBreaker, fake_clock: FakeClock, target: Any, state: State
) -> None:
    force_breaker(breaker, target, clock=fake_clock)
    assert breaker.state is state
    force_breaker(breaker, "closed")
    assert breaker.state is State.CLOSED


def test_a_half_open_breaker_admits_one_probe_that_closes_it(
    breaker: CircuitBreaker, fake_clock: FakeClock
) -> None:
    force_breaker(breaker, "half_open", clock=fake_clock)
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.state is State.CLOSED


def test_an_open_breaker_rejects_calls(breaker: CircuitBreaker) -> None:
    force_breaker(breaker, "open")
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "never")


def test_half_open_needs_the_breakers_clock(breaker: CircuitBreaker) -> None:
    with pytest.raises(ConfigurationError, match="needs the FakeClock"):
        force_breaker(breaker, "half_open")
    with pytest.raises(ConfigurationError, match="does not run on this clock"):
        force_breaker(breaker, "half_open", clock=FakeClock())
    with pytest.raises(ConfigurationError, match="state must be one of"):
        force_breaker(breaker, "ajar")  # type: ignore[arg-type]


# -- routing over SQLite -------------------------------------------------------------------

_NOTES = sa.table("notes", sa.column("id", sa.Integer))


def _setup(pool: RoutingPool) -> None:
    with pool.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
        conn.execute(_NOTES.insert().values(id=1))
    pool.reset_context()  # forget the write: reads may go to the replica now


def _read(pool: RoutingPool) -> int:
    with pool.connect(readonly=True) as conn:
        return len(conn.execute(sa.select(_NOTES.c.id)).all())


def test_routing_pool_sends_writes_to_the_primary_and_reads_to_the_replica(
    routing_pool: RoutingPool, sqlite_cluster: SQLiteCluster
) -> None:
    _setup(routing_pool)
    assert set(sqlite_cluster.nodes_used()) == {"primary"}
    sqlite_cluster.clear()
    assert _read(routing_pool) == 1
    assert sqlite_cluster.nodes_used() == ["replica1"]


def test_a_write_that_reaches_the_replica_fails(sqlite_cluster: SQLiteCluster) -> None:
    _setup(sqlite_cluster.pool)
    replica = sqlite_cluster.pool.nodes["replica1"]
    with pytest.raises(sa.exc.OperationalError, match="readonly"), replica.begin() as conn:
        conn.execute(_NOTES.insert().values(id=2))


def test_a_node_marked_down_is_routed_around_until_its_period_ends(
    routing_pool: RoutingPool,
    sqlite_cluster: SQLiteCluster,
    fake_clock: FakeClock,
    scalekit_events: list[Event],
) -> None:
    _setup(routing_pool)
    seconds = mark_node_down(routing_pool, "replica1")
    assert seconds == routing_pool.router.config.blacklist_seconds
    assert [type(e) for e in scalekit_events] == [NodeEjected]
    assert mark_node_down(routing_pool, "replica1") is None  # already out
    sqlite_cluster.clear()
    _read(routing_pool)
    assert sqlite_cluster.nodes_used() == ["primary"]
    fake_clock.advance(seconds or 0)
    sqlite_cluster.clear()
    _read(routing_pool)
    assert sqlite_cluster.nodes_used() == ["replica1"]


def test_a_lagging_replica_takes_no_reads_until_it_catches_up(
    routing_pool: RoutingPool, sqlite_cluster: SQLiteCluster, scalekit_events: list[Event]
) -> None:
    _setup(routing_pool)
    mark_node_lagging(routing_pool, "replica1", 30)
    assert routing_pool.health()["nodes"]["replica1"]["lagging"] is True
    sqlite_cluster.clear()
    _read(routing_pool)
    assert sqlite_cluster.nodes_used() == ["primary"]
    mark_node_caught_up(routing_pool, "replica1")
    sqlite_cluster.clear()
    _read(routing_pool)
    assert sqlite_cluster.nodes_used() == ["replica1"]
    lag = [e for e in scalekit_events if isinstance(e, LagChanged)]
    assert [e.lagging for e in lag] == [True, False]


def test_node_controls_refuse_unknown_nodes(routing_pool: RoutingPool) -> None:
    with pytest.raises(ConfigurationError, match="no node 'replica9'"):
        mark_node_down(routing_pool, "replica9")
    with pytest.raises(ConfigurationError, match="not a replica"):
        mark_node_lagging(routing_pool, "primary", 1)
    with pytest.raises(ConfigurationError, match="seconds must be a number"):
        mark_node_lagging(routing_pool, "replica1", -1)
