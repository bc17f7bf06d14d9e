"""The Redis-shared circuit breaker against real Redis: standalone, Cluster, and a
private node stopped, killed and paused mid-test.

The scenarios are those of ``tests/unit/breaker/shared_scenarios.py`` (also
run on fakeredis); here they run on the harness's servers.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from scalekit.breaker import CircuitBreaker, RedisStorage, State
from scalekit.errors import CircuitOpenError
from scalekit.instrumentation import FallbackUsed, Recovered
from scalekit.testing import FakeClock, capture_events
from tests.integration._asyncio_cluster import collect_dropped_connections
from tests.unit.breaker import shared_scenarios as scenarios

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("scenario", scenarios.SYNC_SCENARIOS, ids=lambda f: f.__name__)
def test_shared_scenarios_standalone(scenario: Callable[[Any], None], redis_server: Any) -> None:
    clients: list[Any] = []

    def factory() -> Any:
        clients.append(redis_server.client())
        return clients[-1]

    try:
        scenario(factory)
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("scenario", scenarios.SYNC_SCENARIOS, ids=lambda f: f.__name__)
def test_shared_scenarios_cluster(scenario: Callable[[Any], None], redis_cluster: Any) -> None:
    clients: list[Any] = []

    def factory() -> Any:
        clients.append(redis_cluster.client())
        return clients[-1]

    try:
        scenario(factory)
    finally:
        for client in clients:
            client.close()


async def test_async_scenario_standalone(redis_server: Any) -> None:
    clients: list[Any] = []

    def factory() -> Any:
        clients.append(redis_server.async_client())
        return clients[-1]

    try:
        await scenarios.async_scenario(factory)
    finally:
        for client in clients:
            await client.aclose()


async def test_async_scenario_cluster(redis_cluster: Any) -> None:
    clients: list[Any] = []

    def factory() -> Any:
        clients.append(redis_cluster.async_client())
        return clients[-1]

    try:
        await scenarios.async_scenario(factory)
    finally:
        for client in clients:
            await client.aclose()


def test_cluster_keys_live_on_one_node(redis_cluster: Any) -> None:
    keys = RedisStorage(redis_cluster.client()).keys("billing")
    nodes = {redis_cluster.node_for_key(key).port for key in keys}
    assert len(nodes) == 1


def test_concurrent_processes_reserve_at_most_the_probe_limit(redis_server: Any) -> None:
    """16 "processes" (own client, own breaker) race for 2 half-open probe slots."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    breakers = [
        CircuitBreaker(
            name,
            fail_max=1,
            reset_timeout=0.2,
            half_open_max_calls=2,
            success_threshold=100,
            storage=RedisStorage(redis_server.client()),
            clock=clock,
        )
        for _ in range(16)
    ]
    with pytest.raises(scenarios.Boom):
        breakers[0].call(scenarios.fail)
    time.sleep(0.25)
    clock.advance(5.0)
    gate = threading.Barrier(16, timeout=10)
    admitted: list[int] = []
    lock = threading.Lock()

    def race(breaker: CircuitBreaker) -> None:
        gate.wait()
        try:
            breaker.acquire()
        except CircuitOpenError:
            return
        with lock:
            admitted.append(1)

    threads = [threading.Thread(target=race, args=(b,)) for b in breakers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(admitted) == 2
    for breaker in breakers:
        breaker._shared.storage.close()  # type: ignore[union-attr]
        breaker._shared.storage.client.close()  # type: ignore[union-attr]


# redis-py retries a failed command by default (with back-off): a breaker over a
# down Redis should see the outage at once, so the private nodes' clients do not.
NO_RETRY = Retry(NoBackoff(), 0)
SOCKET_TIMEOUT = 0.5


def private_breaker(node: Any, clock: FakeClock, **storage_options: Any) -> CircuitBreaker:
    client = node.client(
        socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT, retry=NO_RETRY
    )
    storage = RedisStorage(client, retry_interval=1.0, **storage_options)
    return CircuitBreaker("svc", fail_max=2, reset_timeout=30.0, storage=storage, clock=clock)


def timed(func: Callable[[], Any]) -> tuple[Any, float]:
    """``func()`` and the seconds it took (for hang guards only, never tight bounds)."""
    start = time.monotonic()
    result = func()
    return result, time.monotonic() - start


# A hang guard for one call that meets a Redis outage: ten times its worst case
# (the client's connect and read timeouts, both capped by op_timeout).
OUTAGE_GUARD = 10 * 2 * SOCKET_TIMEOUT


def test_redis_stopped_fail_open_then_recovers(redis_server_factory: Any) -> None:
    node = redis_server_factory()
    clock = FakeClock()
    breaker = private_breaker(node, clock)
    assert breaker.call(len, "x") == 1
    node.stop()
    clock.advance(5.0)  # the "closed" cache expires: the next call needs Redis
    calls = scenarios.count_script_calls(breaker)
    with capture_events() as events:
        result, seconds = timed(lambda: breaker.call(len, "abc"))
        assert result == 3  # fail_open: the call ran
        assert seconds < OUTAGE_GUARD
        assert calls == [1]  # one probe of Redis, then the local breaker
        scenarios.fail_open_uses_the_local_breaker(breaker, events)  # local breaker trips
        node.start()
        clock.advance(1.0)  # retry_interval: Redis is tried again
        breaker.close()
        assert breaker.call(len, "ab") == 2
    assert any(isinstance(e, Recovered) for e in events)
    assert breaker.state is State.CLOSED
    client = node.client()
    assert client.hget("{scalekit:breaker:svc}", "state") == b"closed"
    client.close()


def test_redis_stopped_fail_closed(redis_server_factory: Any) -> None:
    node = redis_server_factory()
    clock = FakeClock()
    breaker = private_breaker(node, clock, on_redis_error="fail_closed")
    assert breaker.call(len, "x") == 1
    node.stop()
    clock.advance(5.0)  # the "closed" cache expires: the next call needs Redis
    with capture_events() as events:
        scenarios.fail_closed_rejects(breaker)
        # Within retry_interval, rejections do not touch the network at all.
        calls = scenarios.count_script_calls(breaker)
        for _ in range(20):
            with pytest.raises(CircuitOpenError):
                breaker.call(len, "x")
        assert calls == [0]
    assert [e.fallback for e in events if isinstance(e, FallbackUsed)] == ["fail_closed"]
    node.start()
    clock.advance(1.0)
    assert breaker.call(len, "x") == 1


async def test_redis_stopped_async_fail_open_and_fail_closed(redis_server_factory: Any) -> None:
    node = redis_server_factory()
    clock = FakeClock()
    breakers = {
        mode: CircuitBreaker(
            f"svc-{mode}",
            fail_max=2,
            storage=RedisStorage(
                node.async_client(
                    socket_timeout=SOCKET_TIMEOUT,
                    socket_connect_timeout=SOCKET_TIMEOUT,
                    retry=NO_RETRY,
                ),
                on_redis_error=mode,
                retry_interval=1.0,
            ),
            clock=clock,
        )
        for mode in ("fail_open", "fail_closed")
    }

    async def ok() -> str:
        return "ran"

    for breaker in breakers.values():
        assert await breaker.acall(ok) == "ran"
    node.stop()
    clock.advance(5.0)
    with capture_events() as events:
        assert await breakers["fail_open"].acall(ok) == "ran"
        with pytest.raises(CircuitOpenError) as error:
            await breakers["fail_closed"].acall(ok)
    assert error.value.retry_after == pytest.approx(1.0)
    assert sorted(e.fallback for e in events if isinstance(e, FallbackUsed)) == [
        "fail_closed",
        "fail_open",
    ]
    node.start()
    clock.advance(1.0)
    for breaker in breakers.values():
        assert await breaker.acall(ok) == "ran"
        assert not breaker.metrics().degraded
        assert breaker._shared is not None
        await breaker._shared.storage.aclose()
        await breaker._shared.storage.client.aclose()


def test_redis_paused_times_out_into_fail_open(redis_server_factory: Any) -> None:
    node = redis_server_factory()
    clock = FakeClock()
    breaker = private_breaker(node, clock)
    breaker.call(len, "x")
    node.pause()
    try:
        clock.advance(5.0)
        calls = scenarios.count_script_calls(breaker)
        result, first = timed(lambda: breaker.call(len, "abc"))
        assert result == 3  # ran, after one timed-out request
        assert first < OUTAGE_GUARD
        for _ in range(20):
            assert breaker.call(len, "ab") == 2
        assert calls == [1]  # within retry_interval: no wait on Redis at all
        metrics = breaker.metrics()
        assert metrics.degraded and metrics.fallback_incidents == 1
    finally:
        node.resume()
    clock.advance(1.0)
    assert breaker.call(len, "x") == 1  # back to the shared state
    metrics = breaker.metrics()
    assert not metrics.degraded and metrics.fallback_incidents == 1


def test_redis_killed_loses_state_and_the_breaker_carries_on(
    redis_server_factory: Any,
) -> None:
    node = redis_server_factory()
    clock = FakeClock()
    breaker = private_breaker(node, clock)
    for _ in range(2):
        with pytest.raises(scenarios.Boom):
            breaker.call(scenarios.fail)
    assert breaker.state is State.OPEN
    node.kill()
    node.start()  # same port, data lost
    clock.advance(60.0)
    assert breaker.call(len, "x") == 1
    assert breaker.state is State.CLOSED


def test_shared_state_survives_a_new_process(redis_server: Any) -> None:
    """A breaker built later (a new process) sees the open state at once."""
    name = f"late-{uuid.uuid4().hex[:8]}"
    first = CircuitBreaker(
        name, fail_max=1, reset_timeout=30.0, storage=RedisStorage(redis_server.client())
    )
    with pytest.raises(scenarios.Boom):
        first.call(scenarios.fail)
    late = CircuitBreaker(
        name, fail_max=1, reset_timeout=30.0, storage=RedisStorage(redis_server.client())
    )
    with pytest.raises(CircuitOpenError) as error:
        late.call(len, "x")
    assert error.value.retry_after is not None and 25 < error.value.retry_after <= 30


def test_cluster_node_holding_the_breaker_stopped(harness_root: Any, redis_binaries: Any) -> None:
    """A private 3-master cluster: the master that owns the breaker's slot stops."""
    from redis.cluster import ClusterNode, RedisCluster

    from tests.harness.redis import RedisClusterHarness

    cluster = RedisClusterHarness.start(redis_binaries, harness_root / f"bc-{uuid.uuid4().hex[:6]}")
    client = None
    try:
        client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes],
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=NO_RETRY,
        )
        clock = FakeClock()
        storage = RedisStorage(client, retry_interval=1.0)
        breaker = CircuitBreaker(
            "svc", fail_max=2, reset_timeout=30.0, storage=storage, clock=clock
        )
        assert breaker.call(len, "x") == 1
        owner = cluster.node_for_key(storage.keys("svc")[0])
        owner.stop()
        clock.advance(5.0)
        with capture_events() as events:
            result, seconds = timed(lambda: breaker.call(len, "abc"))
            assert result == 3  # fail_open: runs under the local breaker
            assert seconds < OUTAGE_GUARD
            for _ in range(2):
                with pytest.raises(scenarios.Boom):
                    breaker.call(scenarios.fail)
            with pytest.raises(CircuitOpenError):
                breaker.call(len, "x")  # the local breaker tripped on its own
        assert [e.fallback for e in events if isinstance(e, FallbackUsed)] == ["fail_open"]
        assert breaker.metrics().degraded
    finally:
        if client is not None:
            client.close()
        cluster.close()


# -- default-constructed clients: an outage costs a bounded time (issue 13, item 4) ------

OP_TIMEOUT = 0.25  # the default of RedisStorage(op_timeout=...)
HANG_GUARD = 10 * 2 * OP_TIMEOUT  # connect + reply, ten times over: only catches a hang


def _end_outage(node: Any, outage: str) -> None:
    if outage == "pause":
        node.resume()
    else:
        node.start()


def _through_an_outage(breaker: CircuitBreaker, clock: FakeClock, outage_starts: Any) -> None:
    """Redis goes away: the first call ran (fail_open) after a bounded time, and the
    next 50 calls within retry_interval did not touch Redis."""
    calls = scenarios.count_script_calls(breaker)
    outage_starts()
    clock.advance(5.0)  # the "closed" cache expires: the next call asks Redis
    with capture_events() as events:
        started = time.monotonic()
        assert breaker.call(len, "abc") == 3  # the fallback: run under the local breaker
        assert time.monotonic() - started < HANG_GUARD
        assert calls == [1]
        for _ in range(50):
            assert breaker.call(len, "ab") == 2
        assert calls == [1]  # within retry_interval: Redis not asked again
    assert [e.fallback for e in events if isinstance(e, FallbackUsed)] == ["fail_open"]
    assert breaker.metrics().degraded


@pytest.mark.parametrize("outage", ["stop", "kill", "pause"])
def test_a_default_client_outage_costs_a_bounded_time(
    redis_server_factory: Any, outage: str
) -> None:
    import redis

    node = redis_server_factory()
    client = redis.Redis(host=node.host, port=node.port)  # redis-py's defaults
    storage = RedisStorage(client, retry_interval=1.0)
    clock = FakeClock()
    breaker = CircuitBreaker("svc", fail_max=2, storage=storage, clock=clock)
    assert breaker.call(len, "x") == 1
    try:
        _through_an_outage(breaker, clock, getattr(node, outage))
    finally:
        _end_outage(node, outage)
    clock.advance(1.0)
    assert breaker.call(len, "x") == 1  # Redis again
    assert not breaker.metrics().degraded
    assert storage.client is client  # the escape hatch is the user's own client
    storage.close()
    client.close()


@pytest.mark.parametrize("outage", ["stop", "pause"])
async def test_a_default_async_client_outage_costs_a_bounded_time(
    redis_server_factory: Any, outage: str
) -> None:
    import redis.asyncio

    node = redis_server_factory()
    client = redis.asyncio.Redis(host=node.host, port=node.port)
    storage = RedisStorage(client, retry_interval=1.0)
    clock = FakeClock()
    breaker = CircuitBreaker("svc", fail_max=2, storage=storage, clock=clock)

    async def ok() -> str:
        return "ran"

    try:
        assert await breaker.acall(ok) == "ran"
        calls = scenarios.count_script_calls(breaker)
        getattr(node, outage)()
        clock.advance(5.0)
        with capture_events() as events:
            started = time.monotonic()
            assert await breaker.acall(ok) == "ran"
            assert time.monotonic() - started < HANG_GUARD
            for _ in range(50):
                assert await breaker.acall(ok) == "ran"
            assert calls == [1]
        assert [e.fallback for e in events if isinstance(e, FallbackUsed)] == ["fail_open"]
        _end_outage(node, outage)
        clock.advance(1.0)
        assert await breaker.acall(ok) == "ran"
        assert not breaker.metrics().degraded
    finally:
        if outage == "pause":
            node.resume()
        await storage.aclose()
        await client.aclose()


def test_a_default_cluster_client_outage_costs_a_bounded_time(redis_cluster: Any) -> None:
    client = redis_cluster.client()  # RedisCluster(startup_nodes=...) with its defaults
    name = f"bounded-{uuid.uuid4().hex[:8]}"
    storage = RedisStorage(client, retry_interval=1.0)
    clock = FakeClock()
    breaker = CircuitBreaker(name, fail_max=2, storage=storage, clock=clock)
    assert breaker.call(len, "x") == 1
    owner = redis_cluster.node_for_key(storage.keys(name)[0])
    try:
        _through_an_outage(breaker, clock, owner.pause)
    finally:
        owner.resume()
        redis_cluster.wait_healthy()
    clock.advance(1.0)
    assert breaker.call(len, "x") == 1
    storage.close()
    client.close()


async def test_async_cluster_master_paused_falls_back_then_recovers(redis_cluster: Any) -> None:
    """The master owning the breaker's slot freezes (shorter than the cluster's node
    timeout, so no failover): calls run under the local breaker, one incident, then
    the shared state again. Left out of issue 13 for redis-py's orphaned connections."""
    client = redis_cluster.async_client(
        retry=NO_RETRY, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
    )
    clock = FakeClock()
    storage = RedisStorage(client, prefix=f"acl-{uuid.uuid4().hex[:8]}", retry_interval=1.0)
    breaker = CircuitBreaker("svc", fail_max=2, storage=storage, clock=clock)
    owner = redis_cluster.node_for_key(storage.keys("svc")[0])

    async def ok() -> str:
        return "ran"

    try:
        assert await breaker.acall(ok) == "ran"
        with capture_events() as events:
            owner.pause()
            try:
                clock.advance(5.0)  # past the local "closed" cache: the next call asks Redis
                assert await breaker.acall(ok) == "ran"  # after one timed-out request
                for _ in range(5):
                    assert await breaker.acall(ok) == "ran"  # local, within retry_interval
                metrics = breaker.metrics()
                assert metrics.degraded and metrics.fallback_incidents == 1
            finally:
                owner.resume()
            clock.advance(1.0)  # past retry_interval: the next call goes to the cluster
            assert await breaker.acall(ok) == "ran"
            assert not breaker.metrics().degraded
        incident = [e for e in events if getattr(e, "component_name", None) == "breaker"]
        assert sum(isinstance(e, FallbackUsed) for e in incident) == 1
        assert sum(isinstance(e, Recovered) for e in incident) == 1
    finally:
        owner.resume()
        await storage.aclose()
        await client.aclose()
        collect_dropped_connections()  # redis-py's, after ours are closed
