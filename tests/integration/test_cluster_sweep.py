"""Every Redis-backed primitive on the harness's 3-master cluster, with cluster clients
built the ways users build them: ``RedisCluster(startup_nodes=...)``, ``RedisCluster(host,
port)``, ``RedisCluster.from_url("redis://host:port/0")`` and ``decode_responses=True``,
sync (``redis.cluster``) and asyncio (``redis.asyncio.cluster``).

Each check uses two instances of the primitive on two clients, so that a
primitive which silently fell back to its local state (its documented
behaviour when Redis is unreachable) fails the check: state must be shared
through the cluster. Keys are spread over the three masters; no CROSSSLOT.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from scalekit.cache import AsyncCache, Cache
from scalekit.errors import ConcurrencyLimitExceeded, ConfigurationError
from scalekit.ratelimit import (
    AsyncConcurrencyLimiter,
    AsyncRateLimiter,
    ConcurrencyLimiter,
    Limit,
    RateLimiter,
)
from scalekit.retry import RedisRetryBudget
from scalekit.testing.servers import RedisClusterHarness
from tests.integration._asyncio_cluster import collect_dropped_connections
from tests.unit.breaker import shared_scenarios as breaker_scenarios

pytestmark = pytest.mark.integration

KINDS = ["startup-nodes", "host-port", "from-url-db0", "decoded"]
ALGORITHMS = [
    "gcra",
    "token_bucket",
    "sliding_window_log",
    "sliding_window_counter",
    "fixed_window",
]


def _sync_client(kind: str, cluster: RedisClusterHarness) -> Any:
    from redis.cluster import RedisCluster

    host, port = cluster.startup_nodes[0]
    if kind == "startup-nodes":
        return cluster.client()
    if kind == "host-port":
        return RedisCluster(host=host, port=port)
    if kind == "from-url-db0":
        return RedisCluster.from_url(f"redis://{host}:{port}/0")
    return cluster.client(decode_responses=True)


def _async_client(kind: str, cluster: RedisClusterHarness) -> Any:
    from redis.asyncio.cluster import RedisCluster

    host, port = cluster.startup_nodes[0]
    if kind == "startup-nodes":
        return cluster.async_client()
    if kind == "host-port":
        return RedisCluster(host=host, port=port)
    if kind == "from-url-db0":
        return RedisCluster.from_url(f"redis://{host}:{port}/0")
    return cluster.async_client(decode_responses=True)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sync_clients(redis_cluster: RedisClusterHarness) -> Any:
    clients: list[Any] = []

    def make(kind: str) -> Any:
        clients.append(_sync_client(kind, redis_cluster))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_cache_sync(kind: str, sync_clients: Callable[[str], Any]) -> None:
    namespace = _unique("sweep")
    if kind == "decoded":  # the cache stores bytes: refused at once, by design
        with pytest.raises(ConfigurationError, match="decode_responses"):
            Cache(sync_clients(kind), namespace=namespace)
        return
    a, b = (
        Cache(sync_clients(kind), namespace=namespace),
        Cache(sync_clients(kind), namespace=namespace),
    )
    calls: list[str] = []

    def loader(key: str) -> Callable[[], dict[str, str]]:
        def load() -> dict[str, str]:
            calls.append(key)
            return {"key": key}

        return load

    keys = [f"user:{i}" for i in range(12)]  # over the three masters
    for key in keys:
        assert a.get_or_set(key, loader(key), tags=["users"]) == {"key": key}
        assert b.get_or_set(key, loader(key), tags=["users"]) == {"key": key}
    assert calls == keys  # b was served by the cluster, not by its own loader
    assert b.invalidate_tags("users")
    assert a.get(keys[0]) is None
    a.close()
    b.close()


@pytest.mark.parametrize("kind", KINDS)
def test_rate_limiters_sync(kind: str, sync_clients: Callable[[str], Any]) -> None:
    limits = [Limit(2, per=60), Limit(3, per=3600)]
    for algorithm in ALGORITHMS:
        namespace = _unique(algorithm)
        a = RateLimiter(sync_clients(kind), algorithm=algorithm, namespace=namespace)
        b = RateLimiter(sync_clients(kind), algorithm=algorithm, namespace=namespace)
        for user in range(6):
            key = f"user:{user}"
            assert a.hit_all(key, limits).allowed
            assert b.hit_all(key, limits).allowed
            assert not a.hit_all(key, limits).allowed  # the two share one window
            assert not a.degraded and not b.degraded
        a.close()
        b.close()
    first = ConcurrencyLimiter(sync_clients(kind), limit=1, lease=5.0)
    second = ConcurrencyLimiter(sync_clients(kind), limit=1, lease=5.0)
    with first.acquire("job"), pytest.raises(ConcurrencyLimitExceeded):
        second.acquire("job")
    with second.acquire("job"):
        pass
    first.close()
    second.close()


@pytest.mark.parametrize("kind", KINDS)
def test_breaker_storage_sync(kind: str, sync_clients: Callable[[str], Any]) -> None:
    breaker_scenarios.trip_is_seen_by_other_processes(lambda: sync_clients(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_retry_budget_sync(kind: str, sync_clients: Callable[[str], Any]) -> None:
    name = _unique("budget")
    a = RedisRetryBudget(sync_clients(kind), name, 0.5, min_per_second=0.0, window=60.0)
    b = RedisRetryBudget(sync_clients(kind), name, 0.5, min_per_second=0.0, window=60.0)
    for _ in range(4):
        a.deposit()
    a.flush()
    assert [b.try_withdraw() for _ in range(3)] == [True, True, False]
    assert not a.degraded and not b.degraded
    a.close()
    b.close()


@pytest.fixture
async def async_clients(redis_cluster: RedisClusterHarness) -> Any:
    clients: list[Any] = []

    def make(kind: str) -> Any:
        clients.append(_async_client(kind, redis_cluster))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()
    collect_dropped_connections()


@pytest.mark.parametrize("kind", KINDS)
async def test_cache_async(kind: str, async_clients: Callable[[str], Any]) -> None:
    namespace = _unique("asweep")
    if kind == "decoded":  # the cache stores bytes: refused at once, by design
        with pytest.raises(ConfigurationError, match="decode_responses"):
            AsyncCache(async_clients(kind), namespace=namespace)
        return
    caches = [AsyncCache(async_clients(kind), namespace=namespace) for _ in range(2)]
    calls: list[str] = []

    async def load(key: str) -> str:
        calls.append(key)
        return key

    try:
        for i in range(9):
            for cache in caches:
                assert await cache.get_or_set(f"k{i}", lambda i=i: load(f"k{i}"), tags=["t"]) == (
                    f"k{i}"
                )
        assert calls == [f"k{i}" for i in range(9)]
        assert await caches[1].invalidate_tags("t")
        assert await caches[0].get("k0") is None
    finally:
        for cache in caches:
            await cache.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_rate_limiters_async(kind: str, async_clients: Callable[[str], Any]) -> None:
    opened: list[Any] = []
    try:
        for algorithm in ALGORITHMS:
            namespace = _unique(f"a{algorithm}")
            limiters = [
                AsyncRateLimiter(async_clients(kind), algorithm=algorithm, namespace=namespace)
                for _ in range(2)
            ]
            opened += limiters
            for user in range(4):
                limits = ["2/minute", "10/hour"]
                assert (await limiters[0].hit_all(f"u{user}", limits)).allowed
                assert (await limiters[1].hit_all(f"u{user}", limits)).allowed
                assert not (await limiters[0].hit_all(f"u{user}", limits)).allowed
        slots = [AsyncConcurrencyLimiter(async_clients(kind), limit=1, lease=5) for _ in range(2)]
        opened += slots
        async with slots[0].acquire("job"):
            with pytest.raises(ConcurrencyLimitExceeded):
                await slots[1].acquire("job")
    finally:
        for each in opened:
            await each.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_breaker_storage_async(kind: str, async_clients: Callable[[str], Any]) -> None:
    await breaker_scenarios.async_scenario(lambda: async_clients(kind))


@pytest.mark.parametrize("kind", KINDS)
async def test_retry_budget_async(kind: str, async_clients: Callable[[str], Any]) -> None:
    name = _unique("abudget")
    a = RedisRetryBudget(async_clients(kind), name, 0.5, min_per_second=0.0, window=60.0)
    b = RedisRetryBudget(async_clients(kind), name, 0.5, min_per_second=0.0, window=60.0)
    try:
        for _ in range(4):
            a.deposit()
        await a.aflush()
        assert [await b.atry_withdraw() for _ in range(3)] == [True, True, False]
        assert not a.degraded and not b.degraded
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_twin_marked_for_reinitialisation_still_closes_its_connections(
    redis_cluster: RedisClusterHarness,
) -> None:
    """After a connection error, redis-py's asyncio RedisCluster marks itself for
    re-initialisation and its aclose() then closes nothing; a primitive's aclose()
    must still leave no connection open (else ResourceWarnings at collection)."""
    from scalekit._redis_bounded import aclose_twin, bounded

    client = redis_cluster.async_client()
    twin = bounded(client, 5.0)
    # A burst of first commands: on this harness some of them may see "Connection
    # closed by server" (and no retry: twins fail fast), which is the case at hand.
    await asyncio.gather(*(twin.get(f"k{i}") for i in range(30)), return_exceptions=True)
    connections = [c for node in twin.get_nodes() for c in node._connections]
    assert any(c.is_connected for c in connections)
    twin._initialize = True  # what redis-py does after a ConnectionError
    await aclose_twin(twin)
    assert not any(c.is_connected for c in connections)
    await client.aclose()
