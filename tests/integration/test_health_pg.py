"""check_health against real PostgreSQL (primary + replicas) and real Redis.

Destructive scenarios run on private servers (``pg_cluster_factory``,
``redis_server_factory``). Every engine URL carries a password (trust
authentication ignores it) so the tests can check it never leaks into a
report, a log record or an error. Times appear only as hang guards, far above
what the probes take.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.health import (
    HealthReport,
    PoolMonitor,
    PoolPressure,
    acheck_health,
    check_health,
)
from scalekit.instrumentation import capture_events
from scalekit.routing import AsyncRoutingPool, RoutingPool
from tests.harness import PgCluster, PgNode, RedisNode

pytestmark = pytest.mark.integration

SECRET = "Sup3r-Secret-pw"
HANG_GUARD = 30.0  # seconds; every check below takes well under one


def url(node: PgNode) -> str:
    return f"postgresql+psycopg://{node.user}:{SECRET}@{node.host}:{node.port}/postgres"


def engine(node: PgNode, **options: Any) -> sa.Engine:
    options.setdefault("connect_args", {"connect_timeout": 2})
    return sa.create_engine(url(node), **options)


def assert_no_secret(report: HealthReport, caplog: pytest.LogCaptureFixture) -> None:
    text = json.dumps(report.to_dict()) + repr(report)
    text += "\n".join(record.getMessage() for record in caplog.records)
    assert SECRET not in text


def wait_for(
    check: Callable[[], HealthReport], accept: Callable[[HealthReport], bool], what: str
) -> HealthReport:
    deadline = time.monotonic() + HANG_GUARD
    while True:
        report = check()
        if accept(report):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"no report with {what}: {report.to_dict()}")
        time.sleep(0.1)


@pytest.fixture
def cluster(pg_cluster_factory: Callable[..., PgCluster]) -> PgCluster:
    cluster = pg_cluster_factory(replicas=2)
    cluster.wait_for_replicas()
    return cluster


@pytest.fixture
def pool(cluster: PgCluster) -> Iterator[RoutingPool]:
    engines = [engine(node) for node in cluster.nodes]
    routing = RoutingPool(primary=engines[0], replicas=engines[1:], check_interval=None)
    try:
        yield routing
    finally:
        routing.close()
        for each in engines:
            each.dispose()


def test_a_healthy_cluster_reads_roles_from_the_servers(
    pool: RoutingPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    report = wait_for(
        lambda: check_health(pool=pool),
        lambda r: r.status == "ok",
        "every node ok",
    )
    assert set(report.components) == {
        "db:primary",
        "db:replica1",
        "db:replica2",
        "routing:default",
    }
    primary = report.components["db:primary"].details
    assert primary["role"] == "primary" and primary["streaming_replicas"] == 2
    assert primary["max_connections"] == 200 and primary["connections"] >= 1
    assert primary["database_size_bytes"] > 0 and primary["xid_age"] > 0
    for name in ("db:replica1", "db:replica2"):
        details = report.components[name].details
        assert details["role"] == "replica" and details["streaming"] is True
    assert report.components["routing:default"].details["replicas_up"] == 2
    assert_no_secret(report, caplog)


def test_an_idle_primary_reads_zero_lag(cluster: PgCluster, pool: RoutingPool) -> None:
    assert cluster.primary is not None
    cluster.primary.execute("CREATE TABLE marker (id int)")  # a last transaction to replay
    cluster.wait_for_replicas()
    replica = cluster.replicas[0]

    def idle_for(seconds: float) -> bool:
        value = replica.scalar(
            "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8"
        )
        return value is not None and float(value) >= seconds

    # Let the primary sit idle: the naive now() - last replay would read >= 2 s.
    deadline = time.monotonic() + HANG_GUARD
    while not idle_for(2.0):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    report = wait_for(
        lambda: check_health(pool=pool),
        lambda r: r.components["db:replica1"].details["lag_bytes"] == 0,
        "replica1 caught up",
    )
    details = report.components["db:replica1"].details
    assert details["lag_seconds"] == 0.0
    assert details["streaming"] is True
    assert report.components["db:primary"].details["lag_seconds"] == 0.0


def test_a_stopped_replica_is_critical_and_the_report_warns(
    cluster: PgCluster, pool: RoutingPool, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.replicas[1].stop()
    started = time.monotonic()
    report = check_health(pool=pool, timeout=2.0)
    assert time.monotonic() - started < HANG_GUARD
    replica = report.components["db:replica2"]
    assert replica.status == "critical" and replica.up is False and not replica.required
    assert replica.reasons[0].startswith("unreachable: ")
    assert report.components["db:primary"].status == "ok"
    assert report.components["routing:default"].status == "warn"
    assert report.status == "warn"
    assert_no_secret(report, caplog)


def test_a_killed_replica_is_critical(cluster: PgCluster, pool: RoutingPool) -> None:
    cluster.replicas[0].kill()
    report = check_health(pool=pool, timeout=2.0)
    assert report.components["db:replica1"].status == "critical"
    assert report.status == "warn"


def test_paused_replay_shows_lag_rising_in_seconds_and_bytes(
    cluster: PgCluster, pool: RoutingPool
) -> None:
    assert cluster.primary is not None
    primary = cluster.primary
    primary.execute("CREATE TABLE ticks (id serial, at timestamptz default now())")
    cluster.wait_for_replicas()
    replica = cluster.replicas[0]
    replica.pause_replay()
    try:

        def behind(report: HealthReport) -> bool:
            details = report.components["db:replica1"].details
            return bool(details["lag_bytes"]) and (details["lag_seconds"] or 0) > 0

        def tick_and_check() -> HealthReport:
            primary.execute("INSERT INTO ticks DEFAULT VALUES")
            return check_health(pool=pool)

        first = wait_for(tick_and_check, behind, "replica1 behind")
        details = first.components["db:replica1"].details
        assert details["replay_paused"] is True and details["streaming"] is True
        assert "WAL replay is paused" in first.components["db:replica1"].reasons

        def further(report: HealthReport) -> bool:
            now, then = report.components["db:replica1"].details, details
            return now["lag_bytes"] > then["lag_bytes"] and now["lag_seconds"] > then["lag_seconds"]

        wait_for(tick_and_check, further, "the lag to grow")
        # The other replica keeps up.
        assert first.components["db:replica2"].details["streaming"] is True
    finally:
        replica.resume_replay()


def test_a_replica_whose_wal_receiver_stopped_is_not_streaming_never_lag_zero(
    cluster: PgCluster, pool: RoutingPool
) -> None:
    replica = cluster.replicas[0]
    replica.execute("ALTER SYSTEM SET primary_conninfo = ''")
    replica.execute("SELECT pg_reload_conf()")
    report = wait_for(
        lambda: check_health(pool=pool),
        lambda r: r.components["db:replica1"].details.get("streaming") is False,
        "replica1 not streaming",
    )
    component = report.components["db:replica1"]
    assert component.up is True and component.status == "critical"
    assert component.details["lag_seconds"] is None
    assert component.details["lag_bytes"] is None
    assert any("not streaming" in reason for reason in component.reasons)
    assert report.status == "warn"


def test_an_exhausted_pool_is_critical_at_once_with_waiters_counted(
    cluster: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    assert cluster.primary is not None
    small = engine(cluster.primary, pool_size=1, max_overflow=0, pool_timeout=HANG_GUARD)
    monitor = PoolMonitor(small)
    held = small.connect()
    held.execute(sa.text("SELECT 1"))
    waiter_done = threading.Event()

    def waiter() -> None:
        with small.connect() as connection:  # waits for the held connection
            connection.execute(sa.text("SELECT 1"))
        waiter_done.set()

    threading.Thread(target=waiter, daemon=True).start()
    try:
        deadline = time.monotonic() + HANG_GUARD
        while monitor.waiting != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        report = check_health(engines={"main": small})
        # pool_timeout is HANG_GUARD: a probe that waited for a slot would fail this.
        assert time.monotonic() - started < HANG_GUARD / 2
        component = report.components["db:main"]
        assert component.status == "critical" and component.up is None
        assert "pool exhausted: 1/1 checked out, 1 waiting" in component.reasons[0]
        assert component.details["pool"]["waiting"] == 1
        assert_no_secret(report, caplog)
    finally:
        held.close()
        assert waiter_done.wait(HANG_GUARD)
        monitor.close()
        small.dispose()


def test_pool_monitor_crossings_under_a_threaded_load(cluster: PgCluster) -> None:
    assert cluster.primary is not None
    busy = engine(cluster.primary, pool_size=4, max_overflow=0, pool_timeout=HANG_GUARD)
    monitor = PoolMonitor(busy, warn_at=0.5, critical_at=0.95)
    checkouts = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal checkouts
        for _ in range(15):
            with busy.connect() as connection:
                connection.execute(sa.text("SELECT pg_sleep(0.01)"))
            with lock:
                checkouts += 1

    with capture_events() as events:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HANG_GUARD)
    pressure = [event for event in events if isinstance(event, PoolPressure)]
    assert checkouts == 120
    assert [event.pressure for event in pressure][-1:] == ["ok"]
    assert "critical" in {event.pressure for event in pressure}
    # A chain of crossings: each event starts where the previous one ended, never repeats it.
    for before, after in itertools.pairwise(pressure):
        assert after.previous == before.pressure != after.pressure
    # Saturated throughout (8 threads, 4 connections): up once, down once at the end.
    assert pressure[0].previous == "ok"
    assert len(pressure) <= 6, [(e.previous, e.pressure) for e in pressure]
    assert monitor.wait_ms_max is not None and monitor.wait_ms_max > 0
    assert monitor.checked_out == 0 and monitor.level == "ok"
    monitor.close()
    busy.dispose()


async def test_acheck_health_on_an_async_routing_pool(cluster: PgCluster) -> None:
    engines = [
        create_async_engine(url(node), connect_args={"connect_timeout": 2})
        for node in cluster.nodes
    ]
    pool = AsyncRoutingPool(primary=engines[0], replicas=engines[1:], check_interval=None)
    try:
        report = await acheck_health(pool=pool)
        assert report.components["db:primary"].details["role"] == "primary"
        assert report.components["db:replica1"].details["role"] == "replica"
        cluster.replicas[1].stop()
        report = await acheck_health(pool=pool, timeout=2.0)
        assert report.components["db:replica2"].status == "critical"
        assert report.status == "warn"
        assert SECRET not in json.dumps(report.to_dict())
    finally:
        pool.close()
        for each in engines:
            await each.dispose()


# -- Redis --------------------------------------------------------------------------------------


def test_redis_ok(redis_client: Any) -> None:
    report = check_health(redis={"cache": redis_client})
    component = report.components["redis:cache"]
    assert component.status == "ok" and component.up is True
    assert component.details["role"] == "master"
    assert component.details["connected_clients"] >= 1
    assert component.latency_ms is not None


def test_a_paused_redis_is_reported_within_its_timeout(
    redis_server_factory: Callable[[], RedisNode],
) -> None:
    node = redis_server_factory()
    client = node.client(password=SECRET)  # no auth on the server: unused, must not leak
    client_ok = node.client()
    assert client_ok.ping()
    node.pause()
    try:
        started = time.monotonic()
        report = check_health(redis={"paused": client_ok}, timeout=0.5)
        assert time.monotonic() - started < HANG_GUARD
        component = report.components["redis:paused"]
        assert component.status == "critical" and component.up is False
    finally:
        node.resume()
    node.stop()
    report = check_health(redis={"down": client}, timeout=0.5)
    component = report.components["redis:down"]
    assert component.status == "critical" and component.up is False
    assert component.reasons[0].startswith("unreachable: ")
    assert SECRET not in json.dumps(report.to_dict())


async def test_async_redis_down_and_up(redis_server_factory: Callable[[], RedisNode]) -> None:
    node = redis_server_factory()
    client = node.async_client()
    report = await acheck_health(redis=client)
    assert report.components["redis:default"].status == "ok"
    node.pause()
    try:
        started = time.monotonic()
        report = await acheck_health(redis=client, timeout=0.5)
        assert time.monotonic() - started < HANG_GUARD
        assert report.components["redis:default"].status == "critical"
    finally:
        node.resume()
    await client.aclose()


def test_redis_cluster_slots(redis_cluster: Any) -> None:
    client = redis_cluster.client()
    try:
        report = check_health(redis={"cluster": client})
        component = report.components["redis:cluster"]
        assert component.status == "ok", component
        assert component.details["uncovered_slots"] == 0
        assert component.details["cluster_state"] == "ok"
        assert component.details["masters"] == 3
    finally:
        client.close()


def test_redis_stopped_puts_cache_limiter_and_breaker_in_fallback(
    redis_server_factory: Callable[[], RedisNode],
) -> None:
    import redis

    from scalekit.breaker import CircuitBreaker
    from scalekit.cache import Cache
    from scalekit.ratelimit import RateLimiter

    node = redis_server_factory()
    client = node.client()
    cache = Cache(client, namespace="app")
    limiter = RateLimiter(client)
    breaker = CircuitBreaker("profile-api", fail_max=1)
    assert cache.get_or_set("user:1", lambda: 1) == 1
    assert limiter.hit("customer:1", "5/minute").allowed
    arguments: dict[str, Any] = {
        "redis": {"main": client},
        "caches": cache,
        "limiters": limiter,
        "breakers": breaker,
    }
    report = check_health(**arguments, timeout=0.5)
    assert report.status == "ok", report.to_dict()

    node.stop()
    assert cache.get_or_set("user:2", lambda: 2) == 2  # the loader answers
    assert limiter.hit("customer:1", "5/minute").allowed  # the local fallback answers
    with pytest.raises(redis.exceptions.ConnectionError):
        breaker.call(client.ping)

    report = check_health(**arguments, timeout=0.5)
    assert report.status == "critical"  # the Redis itself is required
    assert report.components["redis:main"].up is False
    for name in ("cache:app", "limiter:default", "breaker:profile-api"):
        component = report.components[name]
        assert component.status == "warn", (name, component)
        assert component.details["fallback"] is True and component.up is False
    # Without the Redis component, a fallback in force is a warning, and the
    # instance stays ready.
    from scalekit.health import readiness

    assert readiness(caches=cache, limiters=limiter, breakers=breaker).status == "warn"
    client.close()


def test_long_query_and_idle_in_transaction_are_durations_without_sql(
    cluster: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    assert cluster.primary is not None
    main = engine(cluster.primary)
    idle = main.connect()
    idle.execute(sa.text("SELECT 1 AS left_open_in_a_transaction"))  # begins, then idles
    started = threading.Event()

    def busy() -> None:
        with main.connect() as connection:
            started.set()
            connection.execute(sa.text("SELECT pg_sleep(3) AS secret_running_query"))

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    assert started.wait(HANG_GUARD)
    try:
        report = wait_for(
            lambda: check_health(engines={"main": main}),
            lambda r: (
                (r.components["db:main"].details["longest_query_seconds"] or 0) > 0.2
                and (r.components["db:main"].details["longest_idle_in_transaction_seconds"] or 0)
                > 0.2
            ),
            "the sleeping query and the idle transaction seen",
        )
        details = report.components["db:main"].details
        assert details["idle_in_transaction"] >= 1
        assert details["connections"] >= 3  # the idle session, the sleeper and the probe
        text = json.dumps(report.to_dict())
        assert "secret_running_query" not in text and "left_open" not in text
        assert_no_secret(report, caplog)
    finally:
        idle.close()
        thread.join(HANG_GUARD)
        main.dispose()


def test_the_database_size_is_read_once_a_minute_at_most(cluster: PgCluster) -> None:
    from scalekit.testing import FakeClock

    assert cluster.primary is not None
    main = engine(cluster.primary)
    clock = FakeClock()
    first = check_health(engines={"main": main}, clock=clock)
    size = first.components["db:main"].details["database_size_bytes"]
    assert size > 0
    with main.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS health_size_probe"))
        connection.execute(
            sa.text(
                "CREATE TABLE health_size_probe AS SELECT g AS n FROM generate_series(1, 50000) g"
            )
        )
    try:
        clock.advance(30.0)
        cached = check_health(engines={"main": main}, clock=clock)
        assert cached.components["db:main"].details["database_size_bytes"] == size  # not asked
        clock.advance(31.0)
        fresh = check_health(engines={"main": main}, clock=clock)
        assert fresh.components["db:main"].details["database_size_bytes"] > size
    finally:
        with main.begin() as connection:
            connection.execute(sa.text("DROP TABLE health_size_probe"))
        main.dispose()


def test_the_first_write_after_an_idle_spell_does_not_read_the_spell_as_lag(
    cluster: PgCluster, pool: RoutingPool
) -> None:
    assert cluster.primary is not None
    primary = cluster.primary
    primary.execute("CREATE TABLE after_idle (id int)")  # a last transaction to replay
    cluster.wait_for_replicas()
    replica = cluster.replicas[0]

    def idle_for(seconds: float) -> bool:
        value = replica.scalar(
            "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8"
        )
        return value is not None and float(value) >= seconds

    deadline = time.monotonic() + HANG_GUARD
    while not idle_for(3.0):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    caught_up = wait_for(
        lambda: check_health(pool=pool),
        lambda r: r.components["db:replica1"].details["lag_bytes"] == 0,
        "replica1 caught up",
    )
    # Hold the first write after the idle spell between arrival and replay.
    replica.pause_replay()
    try:
        primary.execute("INSERT INTO after_idle VALUES (1)")
        report = wait_for(
            lambda: check_health(pool=pool),
            lambda r: bool(r.components["db:replica1"].details["lag_bytes"]),
            "the write received, not replayed",
        )
        details = report.components["db:replica1"].details
        assert idle_for(3.0)  # the last replayed transaction is still the old one
        # Bounded by the time since the check that saw it caught up, not the idle spell.
        since = report.checked_at - caught_up.checked_at
        latency = (report.components["db:replica1"].latency_ms or 0.0) / 1000.0
        assert details["lag_seconds"] <= round(since + latency, 3) + 0.001, (details, since)
    finally:
        replica.resume_replay()
