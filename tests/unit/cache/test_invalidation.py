"""How the local tier hears about writes: client tracking, or pub/sub as the fallback.

fakeredis refuses ``CLIENT TRACKING``, so here every Redis-backed cache falls
back to pub/sub (the real-server behaviour is in
tests/integration/test_cache_tracking.py). The message handling itself is
pure and tested directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from scalekit.cache import AsyncCache, Cache, LocalCache
from scalekit.cache._base import TRACKING_CHANNEL


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:  # hang guard
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.005)


async def _await(predicate: Callable[[], bool], timeout: float = 30.0) -> None:  # hang guard
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        await asyncio.sleep(0.005)


def _filled(cache: Cache | AsyncCache, *keys: str) -> LocalCache:
    local = cache.local
    assert local is not None
    local.clear()
    for key in keys:
        cache._local_put(cache.keys.data(key), *_entry(cache, key))
    assert len(local) == len(keys)
    return local


def _entry(cache: Cache | AsyncCache, key: str) -> tuple[Any, Any]:
    from scalekit.cache._core import Kind

    envelope, _, _ = cache._build(Kind.VALUE, key.upper(), 60, 0.0, (), ())
    return envelope, key.upper()


def test_tracking_messages_evict_keys_and_none_flushes() -> None:
    cache = Cache(None, namespace="n", local=LocalCache(ttl=60))
    local = _filled(cache, "a", "b", "c")
    cache._dispatch(
        {"type": "message", "channel": TRACKING_CHANNEL.encode(), "data": [b"n:v1:a", b"x"]}
    )
    assert len(local) == 2
    assert cache._local_get(cache.keys.data("a")) is None
    assert cache._local_get(cache.keys.data("b")) is not None
    cache._dispatch({"type": "message", "channel": TRACKING_CHANNEL, "data": None})
    assert len(local) == 0


def test_own_messages_and_other_types_are_dispatched_right() -> None:
    cache = Cache(None, namespace="n", local=LocalCache(ttl=60))
    local = _filled(cache, "a", "b")
    cache._dispatch({"type": "subscribe", "channel": TRACKING_CHANNEL, "data": None})
    assert len(local) == 2  # a subscribe confirmation is not a flush
    key = cache.keys.data("a")
    cache._dispatch({"type": "message", "channel": b"n!invalidate", "data": f"k:other:{key}"})
    assert len(local) == 1
    # our own origin is ignored (our local tier is already right)
    key_b = cache.keys.data("b")
    cache._dispatch(
        {"type": "message", "channel": b"n!invalidate", "data": f"k:{cache.origin}:{key_b}"}
    )
    assert len(local) == 1


def test_tracking_command_broadcasts_the_data_prefix() -> None:
    cache = Cache(None, namespace="shop", schema_version=3)
    assert cache._tracking_command(42) == (
        "CLIENT", "TRACKING", "ON", "REDIRECT", "42", "BCAST", "PREFIX", "shop:v3:",
    )  # fmt: skip
    assert cache.invalidation == "auto"
    assert cache.invalidation_mode == "none"  # memory backend: nothing to listen to


@pytest.mark.parametrize("mode", ["auto", "tracking"])
def test_refused_tracking_falls_back_to_pubsub(mode: Any) -> None:
    server = fakeredis.FakeServer()
    cache = Cache(
        fakeredis.FakeRedis(server=server),
        namespace="fb",
        local=LocalCache(ttl=60),
        invalidation=mode,
    )
    writer = Cache(fakeredis.FakeRedis(server=server), namespace="fb")
    try:
        assert cache.subscribed.wait(3)
        assert cache.invalidation_mode == "pubsub"
        assert cache._tracking_refused
        cache.set("k", "old")
        assert cache.get("k") == "old"
        writer.set("k", "new")
        _wait(lambda: cache.get("k") == "new")
    finally:
        cache.close()
    assert cache.invalidation_mode == "pubsub"


def test_forced_pubsub_never_tries_tracking() -> None:
    cache = Cache(fakeredis.FakeRedis(), namespace="ps", local=LocalCache(), invalidation="pubsub")
    try:
        assert cache.subscribed.wait(3)
        assert cache.invalidation_mode == "pubsub"
        assert not cache._tracking_refused
    finally:
        cache.close()


def test_a_reconnect_flushes_the_local_tier_and_resubscribes() -> None:
    cache = Cache(fakeredis.FakeRedis(), namespace="rc", local=LocalCache(ttl=60))
    try:
        assert cache.subscribed.wait(3)
        local = _filled(cache, "a")
        cache._on_connect(object())  # what redis-py calls after a silent reconnect
        _wait(lambda: len(local) == 0)
        _wait(lambda: cache.subscribed.is_set() and cache.invalidation_mode == "pubsub")
    finally:
        cache.close()


async def test_async_refused_tracking_falls_back_to_pubsub() -> None:
    server = fakeredis.FakeServer()
    cache = AsyncCache(
        fakeredis.FakeAsyncRedis(server=server), namespace="afb", local=LocalCache(ttl=60)
    )
    writer = AsyncCache(fakeredis.FakeAsyncRedis(server=server), namespace="afb")
    try:
        await cache.set("k", "old")
        await asyncio.wait_for(cache.subscribed.wait(), 3)
        assert cache.invalidation_mode == "pubsub"
        assert cache._tracking_refused
        assert await cache.get("k") == "old"
        await writer.set("k", "new")
        start = time.monotonic()
        while await cache.get("k") != "new":
            assert time.monotonic() - start < 30  # hang guard
            await asyncio.sleep(0.01)
        local = _filled(cache, "z")
        cache._on_connect(object())
        await _await(lambda: len(local) == 0)
        await _await(lambda: cache.subscribed.is_set())
    finally:
        await cache.aclose()
