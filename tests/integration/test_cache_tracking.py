"""Redis client tracking keeps the local tier honest against writes by any client.

Real Redis (7.x from the harness): a plain ``redis_client.set`` that never went
through scalekit evicts the local copy; a restart flushes the local tier and
tracking comes back; ``invalidation="pubsub"`` does not hear outside writes; a
cluster falls back to pub/sub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from scalekit.cache import AsyncCache, Cache, LocalCache
from scalekit.errors import ConfigurationError

pytestmark = pytest.mark.integration

FAST = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, "retry": Retry(NoBackoff(), 0)}


#: A guard against hangs only (what it guards takes milliseconds): the figures
#: are printed, never asserted, so a busy machine cannot fail these tests.
HANG_GUARD = 20.0


def _wait(predicate: Callable[[], bool], timeout: float = HANG_GUARD) -> float:
    """Seconds until ``predicate`` holds; fails the test after ``timeout`` (a hang guard)."""
    start = time.perf_counter()
    while not predicate():
        assert time.perf_counter() - start < timeout, "condition not reached in time"
        time.sleep(0.002)
    return time.perf_counter() - start


async def _await(predicate: Callable[[], bool], timeout: float = HANG_GUARD) -> float:
    start = time.perf_counter()
    while not predicate():
        assert time.perf_counter() - start < timeout, "condition not reached in time"
        await asyncio.sleep(0.002)
    return time.perf_counter() - start


def _tracking_clients(client: Any) -> list[str]:
    return [c for c in client.client_list() if "t" in c.get("flags", "")]


def _no_tracking_clients(client: Any) -> None:
    """Wait until Redis lists no tracking connection.

    A connection we closed a moment ago can still be listed for a few
    milliseconds, flagged ``A`` (the server frees it asynchronously); one
    that leaked stays, and fails here.
    """
    _wait(lambda: _tracking_clients(client) == [], timeout=5.0)


def test_external_write_evicts_the_local_copy(redis_client: Any) -> None:
    cache = Cache(redis_client, namespace="trk", local=LocalCache(ttl=60))
    try:
        assert cache.subscribed.wait(HANG_GUARD)
        assert cache.invalidation_mode == "tracking"
        assert cache.get_or_set("k", lambda: "one") == "one"
        full = cache.keys.data("k")
        # our own write's invalidation evicts once (let it arrive); read back locally
        time.sleep(0.05)
        _wait(lambda: cache.get("k") == "one" and cache.stats().local_hits > 0)
        redis_client.set(full, b"written by someone else")  # never through scalekit
        took = _wait(lambda: cache.local.get(full, time.time()) is None)  # type: ignore[union-attr]
        print(f"evicted {took * 1e3:.1f} ms after the outside write")
        redis_client.delete(full)
        assert cache.get("k", "gone") == "gone"
    finally:
        cache.close()
    _no_tracking_clients(redis_client)  # the tracking connection is gone


def test_flushall_flushes_the_local_tier(redis_client: Any) -> None:
    cache = Cache(redis_client, namespace="trk2", local=LocalCache(ttl=60))
    try:
        assert cache.subscribed.wait(HANG_GUARD)
        cache.set("a", 1)
        cache.set("b", 2)
        _wait(lambda: cache.get("a") == 1 and cache.get("b") == 2 and len(cache.local or ()) == 2)
        redis_client.flushall()  # a null / full invalidation
        _wait(lambda: len(cache.local or ()) == 0)
        assert cache.get("a", "none") == "none"
    finally:
        cache.close()


def test_pubsub_mode_does_not_hear_outside_writes(redis_client: Any) -> None:
    cache = Cache(redis_client, namespace="trk3", local=LocalCache(ttl=60), invalidation="pubsub")
    other = Cache(redis_client, namespace="trk3")
    try:
        assert cache.subscribed.wait(HANG_GUARD)
        assert cache.invalidation_mode == "pubsub"
        _no_tracking_clients(redis_client)
        cache.set("k", "mine")
        full = cache.keys.data("k")
        redis_client.set(full, b"outside")
        time.sleep(0.2)
        assert cache.local is not None and cache.local.get(full, time.time()) is not None
        other.set("k", "through scalekit")  # pub/sub message: evicted
        _wait(lambda: cache.get("k") == "through scalekit")
    finally:
        cache.close()
        other.close()


def test_restart_flushes_and_re_establishes_tracking(
    redis_server_factory: Callable[[], Any],
) -> None:
    node = redis_server_factory()
    client = node.client(**FAST)
    cache = Cache(client, namespace="trk4", local=LocalCache(ttl=60), retry_interval=0.1)
    try:
        assert cache.subscribed.wait(HANG_GUARD)
        cache.set("k", "v")
        full = cache.keys.data("k")
        _wait(lambda: cache.get("k") == "v" and cache.local is not None and len(cache.local) == 1)
        node.stop()
        _wait(lambda: len(cache.local or ()) == 0 and cache.invalidation_mode == "none")
        node.start()
        _wait(lambda: cache.invalidation_mode == "tracking")
        assert len(_tracking_clients(client)) == 1
        cache.set("k", "v2")
        time.sleep(0.05)  # our own write's invalidation

        def settled() -> bool:
            # The cache bypasses Redis for a set whose reply outlasts op_timeout (a busy
            # machine): such a set may not have landed, so it is sent again.
            if cache.get("k") != "v2":
                cache.set("k", "v2")
                return False
            return cache.local is not None and len(cache.local) == 1

        _wait(settled)
        client.set(full, b"outside")
        took = _wait(lambda: len(cache.local or ()) == 0)
        print(f"evicted {took * 1e3:.1f} ms after the outside write")
    finally:
        cache.close()
        client.close()


def test_killed_tracking_connection_is_re_established(redis_client: Any) -> None:
    cache = Cache(redis_client, namespace="trk5", local=LocalCache(ttl=60), retry_interval=0.1)
    try:
        assert cache.subscribed.wait(HANG_GUARD)
        cache.set("k", 1)
        _wait(lambda: cache.get("k") == 1 and len(cache.local or ()) == 1)
        _wait(lambda: len(_tracking_clients(redis_client)) == 1)  # an earlier test's may be closing
        (victim,) = _tracking_clients(redis_client)
        redis_client.client_kill_filter(_id=victim["id"])
        # noticed by the periodic check (every 1 s): local tier flushed, tracking back
        _wait(lambda: len(cache.local or ()) == 0)
        _wait(lambda: len(_tracking_clients(redis_client)) == 1)
        _wait(lambda: cache.invalidation_mode == "tracking")
        cache.set("k", 2)
        time.sleep(0.05)  # our own write's invalidation
        _wait(lambda: cache.get("k") == 2 and len(cache.local or ()) == 1)
        redis_client.set(cache.keys.data("k"), b"outside")
        _wait(lambda: len(cache.local or ()) == 0)
    finally:
        cache.close()


def test_cluster_falls_back_to_pubsub(redis_cluster: Any) -> None:
    client = redis_cluster.client()
    cache = Cache(client, namespace="trk6", local=LocalCache(ttl=60))
    try:
        assert cache.subscribed.wait(HANG_GUARD)
        assert cache.invalidation_mode == "pubsub"
        with pytest.raises(ConfigurationError):
            Cache(client, namespace="trk6", local=LocalCache(), invalidation="tracking")
    finally:
        cache.close()
        client.close()


async def test_async_external_write_evicts_the_local_copy(
    async_redis_client: Any, redis_client: Any
) -> None:
    cache = AsyncCache(async_redis_client, namespace="atrk", local=LocalCache(ttl=60))
    try:
        await cache.set("k", "one")  # starts the listener
        await asyncio.wait_for(cache.subscribed.wait(), HANG_GUARD)
        assert cache.invalidation_mode == "tracking"
        full = cache.keys.data("k")

        async def cached_locally() -> bool:
            return await cache.get("k") == "one" and len(cache.local or ()) == 1

        start = time.perf_counter()
        while not await cached_locally():
            assert time.perf_counter() - start < HANG_GUARD
            await asyncio.sleep(0.01)
        redis_client.set(full, b"outside")  # a plain sync client, never through scalekit
        took = await _await(lambda: len(cache.local or ()) == 0)
        print(f"evicted {took * 1e3:.1f} ms after the outside write")
    finally:
        await cache.aclose()
    _no_tracking_clients(redis_client)


async def test_async_restart_flushes_and_re_establishes_tracking(
    redis_server_factory: Callable[[], Any],
) -> None:
    node = redis_server_factory()
    client = node.async_client(**FAST)
    sync_client = node.client(**FAST)
    cache = AsyncCache(client, namespace="atrk2", local=LocalCache(ttl=60), retry_interval=0.1)
    try:
        await cache.set("k", "v")
        await asyncio.wait_for(cache.subscribed.wait(), HANG_GUARD)
        assert cache.invalidation_mode == "tracking"
        node.stop()
        await _await(lambda: cache.invalidation_mode == "none")
        assert len(cache.local or ()) == 0
        node.start()
        await _await(lambda: cache.invalidation_mode == "tracking")
        await cache.set("k", "v2")
        start = time.perf_counter()
        while not (await cache.get("k") == "v2" and len(cache.local or ()) == 1):
            assert time.perf_counter() - start < HANG_GUARD
            if await cache.get("k") != "v2":  # a set bypassed on a busy machine: again
                await cache.set("k", "v2")
            await asyncio.sleep(0.01)
        sync_client.set(cache.keys.data("k"), b"outside")
        took = await _await(lambda: len(cache.local or ()) == 0)
        print(f"evicted {took * 1e3:.1f} ms after the outside write")
    finally:
        await cache.aclose()
        await client.aclose()
        sync_client.close()
