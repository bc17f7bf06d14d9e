"""A retry policy over a circuit breaker, against real servers going down and coming back.

The breaker counts every attempt and shields the server while it is down;
the policy waits out the breaker's ``retry_after`` (it fits the deadline)
instead of hammering, and the half-open probe finds the server back.
Also: a breaker shared in Redis, tripped by one "process", makes another
process's policy wait rather than call.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio
import sqlalchemy as sa
from redis.backoff import NoBackoff
from redis.retry import Retry

from scalekit.breaker import CircuitBreaker, RedisStorage, State
from scalekit.errors import CircuitOpenError
from scalekit.retry import Backoff, RetryPolicy, transient
from scalekit.testing import capture_events

pytestmark = pytest.mark.integration

FAST_FAIL: dict[str, Any] = {
    "retry": Retry(NoBackoff(), 0),
    "socket_timeout": 1.0,
    "socket_connect_timeout": 1.0,
}


def start_when_breaker_opens(node: Any) -> Callable[[object], None]:
    """A policy hook: once the policy waits for the open breaker, bring the server back."""

    def hook(event: object) -> None:
        if getattr(event, "error", "") == "CircuitOpenError" and not node.running:
            node.start()

    return hook


def test_postgres_outage_retry_waits_for_the_breaker_then_recovers(
    pg_cluster_factory: Any,
) -> None:
    cluster = pg_cluster_factory(replicas=0)
    node = cluster.primary
    engine = sa.create_engine(node.url, pool_pre_ping=True)
    breaker = CircuitBreaker("retry-pg", fail_max=3, reset_timeout=1.0)
    policy = RetryPolicy(
        attempts=10,
        backoff=Backoff.constant(0.05),
        retry_on=transient.database,
        deadline=60.0,
        hooks=[start_when_breaker_opens(node)],
    )
    reached = 0

    @policy
    @breaker
    def select_one() -> int:
        nonlocal reached
        reached += 1
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT 1")).scalar_one())

    try:
        assert select_one() == 1
        node.stop()
        reached = 0
        started = time.monotonic()
        with capture_events() as events:
            assert select_one() == 1
        elapsed = time.monotonic() - started
        # 3 failures opened the breaker; the next attempt was rejected without
        # touching PostgreSQL; the policy waited ~1 s; the probe found it back.
        assert reached == 4
        metrics = breaker.metrics()
        assert (metrics.failures, metrics.rejected) == (3, 1)
        assert metrics.state is State.CLOSED
        scheduled = [e.error for e in events if e.kind == "retry.scheduled"]
        assert scheduled[-1] == "CircuitOpenError" and len(scheduled) == 4
        assert 0.8 < elapsed < 30
    finally:
        engine.dispose()


async def test_redis_outage_async_retry_waits_for_the_breaker_then_recovers(
    redis_server_factory: Any,
) -> None:
    node = redis_server_factory()
    client = redis.asyncio.Redis(host=node.host, port=node.port, **FAST_FAIL)
    breaker = CircuitBreaker("retry-redis", fail_max=2, reset_timeout=0.5)
    name = f"retry-breaker-{uuid.uuid4().hex[:8]}"
    reached = 0

    @RetryPolicy(
        attempts=6,
        backoff=Backoff.constant(0.05),
        retry_on=transient.redis,
        deadline=30.0,
        hooks=[start_when_breaker_opens(node)],
    )
    @breaker
    async def incr() -> int:
        nonlocal reached
        reached += 1
        return int(await client.incr(name))

    try:
        assert await incr() == 1
        node.kill()
        reached = 0
        assert await incr() == 1  # a fresh server: the counter starts again
        assert reached == 3  # two failures, one rejection (no call), the probe
        assert breaker.metrics().rejected == 1
        assert breaker.state is State.CLOSED
    finally:
        await client.aclose()


def test_shared_breaker_tripped_elsewhere_makes_the_policy_wait(redis_server: Any) -> None:
    name = f"retry-shared-{uuid.uuid4().hex[:8]}"
    # Two "processes": each its own client, storage and breaker object, one Redis state.
    clients = [redis_server.client(**FAST_FAIL) for _ in range(2)]
    first, second = (
        CircuitBreaker(
            name,
            fail_max=2,
            reset_timeout=2.0,
            storage=RedisStorage(client, local_cache_seconds=0.0),
        )
        for client in clients
    )

    def fail() -> None:
        raise ConnectionError("billing API down")

    try:
        tripped = time.monotonic()  # the open period starts at the second failure, after this
        for _ in range(2):
            with pytest.raises(ConnectionError):
                first.call(fail)
        with pytest.raises(CircuitOpenError):
            first.call(fail)

        reached = 0

        def charge() -> str:
            nonlocal reached
            reached += 1
            return "charged"

        policy = RetryPolicy(attempts=3, backoff=Backoff.none(), deadline=10.0)
        with capture_events() as events:
            assert policy.call(second.call, charge) == "charged"
        assert reached == 1  # the other process's breaker kept this one from calling
        assert time.monotonic() - tripped >= 1.9  # called only after the shared open period (2 s)
        waits = [e.retry_after for e in events if e.kind == "retry.scheduled"]
        assert len(waits) == 1 and waits[0] is not None and 0.0 < waits[0] <= 2.0

        # The same open breaker beyond a short deadline: fail fast, no call.
        for _ in range(2):
            with pytest.raises(ConnectionError):
                first.call(fail)
        hasty = RetryPolicy(attempts=3, backoff=Backoff.none(), deadline=0.2)
        with pytest.raises(CircuitOpenError):
            hasty.call(second.call, charge)
        assert reached == 1
    finally:
        for client in clients:
            client.close()
