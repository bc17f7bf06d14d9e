"""The cache on the harness's 3-master Redis Cluster: the shared scenario list over
``RedisCluster`` (sync and asyncio), tags and leases spread over slots, and the
local tier kept honest through cluster pub/sub.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from scalekit.cache import AsyncCache, Cache, LocalCache
from tests.integration._asyncio_cluster import collect_dropped_connections
from tests.integration.test_cache_redis import SCENARIOS, Scenario
from tests.unit.cache._drivers import Factory

pytestmark = pytest.mark.integration


def _cases() -> list[Any]:
    cases = []
    for fixture, scenario in SCENARIOS:
        for kind in ("sync-cluster", "async-cluster"):
            if fixture == "make_async" and not kind.startswith("async"):
                continue
            cases.append(pytest.param(scenario, kind, id=f"{scenario.__name__}[{kind}]"))
    return cases


@pytest.mark.parametrize(("scenario", "kind"), _cases())
async def test_shared_scenarios_on_cluster(
    scenario: Scenario, kind: str, redis_cluster: Any
) -> None:
    redis_cluster.flushall()
    factory = Factory(
        kind,
        connect=redis_cluster.client,
        aconnect=redis_cluster.async_client,
        defaults={"op_timeout": 5.0},  # see test_cache_redis.test_shared_scenarios
    )
    try:
        await scenario(factory)
    finally:
        await factory.close()
        if kind == "async-cluster":
            collect_dropped_connections()  # redis-py's, after ours are closed


def test_keys_tags_and_leases_spread_over_every_master(redis_cluster: Any) -> None:
    redis_cluster.flushall()
    client = redis_cluster.client()
    cache = Cache(client, namespace="spread")
    keys = [f"user:{i}" for i in range(30)]
    owners = {redis_cluster.node_for_key(cache.keys.data(k)).port for k in keys}
    assert len(owners) == 3  # the test really crosses slots and nodes
    assert cache.set_many({k: i for i, k in enumerate(keys)}, tags=["all"])
    assert cache.get_many(keys) == {k: i for i, k in enumerate(keys)}
    tag_owner = redis_cluster.node_for_key(cache.keys.tag("all")).port
    assert any(owner != tag_owner for owner in owners)
    assert cache.invalidate_tags("all")  # O(1): one INCR, no key scan
    assert cache.get_many(keys) == {}
    calls = 0
    lock = threading.Lock()

    def load() -> str:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.1)
        return "v"

    threads = [threading.Thread(target=cache.get_or_set, args=("cold", load)) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == 1
    cache.close()
    client.close()


def test_local_tiers_follow_each_other_on_cluster(redis_cluster: Any) -> None:
    redis_cluster.flushall()
    clients = [redis_cluster.client(), redis_cluster.client()]
    one, two = (
        Cache(c, namespace="ctiers", local=LocalCache(maxsize=100, ttl=30.0)) for c in clients
    )
    try:
        assert one.subscribed.wait(20) and two.subscribed.wait(20)
        assert one.get_or_set("k", lambda: "v1", tags=["t"]) == "v1"
        assert two.get_or_set("k", lambda: "never", tags=["t"]) == "v1"
        assert one.invalidate_tags("t")
        started = time.monotonic()
        while two.get("k", "gone") != "gone":
            assert time.monotonic() - started < 20.0, "the message did not arrive"  # hang guard
            time.sleep(0.01)
    finally:
        for cache, client in zip((one, two), clients, strict=True):
            cache.close()
            client.close()


async def test_async_local_tiers_follow_each_other_on_cluster(redis_cluster: Any) -> None:
    redis_cluster.flushall()
    clients = [redis_cluster.async_client(), redis_cluster.async_client()]
    one, two = (
        AsyncCache(c, namespace="actiers", local=LocalCache(maxsize=100, ttl=30.0)) for c in clients
    )
    try:
        assert await one.get_or_set("k", lambda: "v1", tags=["t"]) == "v1"
        assert await two.get_or_set("k", lambda: "never", tags=["t"]) == "v1"
        await asyncio.wait_for(one.subscribed.wait(), 5)
        await asyncio.wait_for(two.subscribed.wait(), 5)
        assert await one.invalidate_tags("t")
        started = time.monotonic()
        while await two.get("k", "gone") != "gone":
            assert time.monotonic() - started < 20.0, "the message did not arrive"  # hang guard
            await asyncio.sleep(0.01)
    finally:
        for cache, client in zip((one, two), clients, strict=True):
            await cache.aclose()
            await client.aclose()
