"""Bad configuration fails at construction with ConfigurationError; the local tier's bounds."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from scalekit.cache import AsyncCache, Cache, LocalCache
from scalekit.cache._core import Envelope
from scalekit.errors import ConfigurationError

BAD_OPTIONS = [
    ({"namespace": ""}, "namespace"),
    ({"namespace": "a:b"}, "namespace"),
    ({"default_ttl": 0}, "default_ttl"),
    ({"default_ttl": float("nan")}, "default_ttl"),
    ({"default_ttl": "60"}, "default_ttl"),
    ({"stale_ttl": -1}, "stale_ttl"),
    ({"jitter": 1.0}, "jitter"),
    ({"jitter": -0.1}, "jitter"),
    ({"beta": -1}, "beta"),
    ({"negative_ttl": 0}, "negative_ttl"),
    ({"cache_errors": [KeyboardInterrupt]}, "cache_errors"),
    ({"cache_errors": ["ValueError"]}, "cache_errors"),
    ({"lease_ttl": 0}, "lease_ttl"),
    ({"lease_wait": -1}, "lease_wait"),
    ({"poll_interval": 0}, "poll_interval"),
    ({"on_redis_down": "ignore"}, "on_redis_down"),
    ({"retry_interval": 0}, "retry_interval"),
    ({"local": {"maxsize": 10}}, "local"),
    ({"serializer": "json"}, "serializer"),
    ({"max_key_length": 10}, "max_key_length"),
    ({"invalidation": "client-tracking"}, "invalidation"),
    ({"invalidation": None}, "invalidation"),
    ({"breaker": "redis"}, "breaker"),
    ({"breaker": object()}, "breaker"),
    # Durations beyond the documented maximum (1e9 s), which Redis or Python's
    # own waits would refuse later, at the first write or sleep.
    ({"default_ttl": 10**20}, "default_ttl"),
    ({"stale_ttl": 1e300}, "stale_ttl"),
    ({"negative_ttl": float("inf")}, "negative_ttl"),
    ({"lease_ttl": 2e9}, "lease_ttl"),
    ({"lease_wait": 1e10}, "lease_wait"),
    ({"retry_interval": 1e12}, "retry_interval"),
    ({"op_timeout": 0}, "op_timeout"),
    ({"op_timeout": 61}, "op_timeout"),
    ({"op_timeout": "0.25"}, "op_timeout"),
]


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
@pytest.mark.parametrize(("options", "parameter"), BAD_OPTIONS)
def test_bad_options_are_refused(cls: Any, options: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        cls(None, **options)
    assert info.value.parameter == parameter


def test_clients_must_match_the_shell() -> None:
    with pytest.raises(ConfigurationError, match="AsyncCache"):
        Cache(fakeredis.FakeAsyncRedis())
    with pytest.raises(ConfigurationError, match="use Cache"):
        AsyncCache(fakeredis.FakeRedis())
    for shell in (Cache, AsyncCache):
        with pytest.raises(ConfigurationError, match="client"):
            shell("redis://localhost")


def _decoding_clients() -> list[Any]:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster

    # None of these connects when built (a sync RedisCluster does: see
    # tests/integration/test_cache_cluster.py).
    return [
        pytest.param(Cache, lambda: redis.Redis(port=1, decode_responses=True), id="redis"),
        pytest.param(
            Cache,
            lambda: redis.Redis(
                connection_pool=redis.BlockingConnectionPool(port=1, decode_responses=True)
            ),
            id="redis-blocking-pool",
        ),
        pytest.param(Cache, lambda: fakeredis.FakeRedis(decode_responses=True), id="fakeredis"),
        pytest.param(
            AsyncCache,
            lambda: redis.asyncio.Redis(port=1, decode_responses=True),
            id="redis-asyncio",
        ),
        pytest.param(
            AsyncCache,
            lambda: fakeredis.FakeAsyncRedis(decode_responses=True),
            id="fakeredis-async",
        ),
        pytest.param(
            AsyncCache,
            lambda: redis.asyncio.cluster.RedisCluster(
                host="127.0.0.1", port=1, decode_responses=True
            ),
            id="redis-asyncio-cluster",
        ),
    ]


@pytest.mark.parametrize(("shell", "connect"), _decoding_clients())
async def test_clients_that_decode_responses_are_refused(shell: Any, connect: Any) -> None:
    # Such a client hands back str where the cache stored bytes: nothing would
    # ever be read back (every read warned, every call loaded). Refused up front.
    client = connect()
    try:
        with pytest.raises(ConfigurationError, match="decode_responses") as info:
            shell(client)
        assert info.value.parameter == "client"
    finally:
        result = client.aclose() if shell is AsyncCache else client.close()
        if result is not None:
            await result


def test_the_client_attribute_is_the_users_client() -> None:
    import redis

    client = redis.Redis(port=1)  # redis-py's defaults: unbounded, so the cache twins it
    cache = Cache(client, op_timeout=0.5)
    try:
        assert cache.client is client
        twin = cache.backend.client
        assert twin is not client
        kwargs = twin.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.5
    finally:
        cache.close()
        client.close()


def test_decorators_must_match_the_shell() -> None:
    async def coroutine_function() -> int:
        return 1

    def plain_function() -> int:
        return 1

    with pytest.raises(ConfigurationError, match="AsyncCache"):
        Cache(None).cached()(coroutine_function)
    with pytest.raises(ConfigurationError, match=r"Cache\.cached"):
        AsyncCache(None).cached()(plain_function)
    with pytest.raises(ConfigurationError):
        Cache(None).cached(ttl=-5)


def test_bad_call_arguments() -> None:
    cache = Cache(None)
    with pytest.raises(ConfigurationError):
        cache.set("k", 1, ttl=0)
    with pytest.raises(ConfigurationError):
        cache.get(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        cache.get_or_set("k", lambda: 1, tags="user:1")
    with pytest.raises(ConfigurationError):
        cache.invalidate_tags("")


@pytest.mark.parametrize(("maxsize", "ttl"), [(0, 1.0), (10, 0), (10, -1), ("10", 1.0)])
def test_local_cache_configuration(maxsize: Any, ttl: Any) -> None:
    with pytest.raises(ConfigurationError):
        LocalCache(maxsize=maxsize, ttl=ttl)


def _envelope(hard_expiry: float, tags: tuple[tuple[str, int], ...] = ()) -> Envelope:
    return Envelope(b"", 0.0, 0.0, hard_expiry, hard_expiry, 1, tags=tags)


def test_local_cache_caps_the_ttl_and_is_bounded() -> None:
    local = LocalCache(maxsize=2, ttl=5.0)
    local.put("a", _envelope(1000.0), "A", now=0.0)
    assert local.get("a", 4.9) is not None
    assert local.get("a", 5.0) is None  # capped at ttl, whatever Redis said
    assert local.get("a", 5.0, allow_expired=True) is not None
    local.put("b", _envelope(2.0), "B", now=0.0)
    assert local.get("b", 2.0) is None  # or the entry's own hard expiry, if sooner
    local.put("c", _envelope(1000.0), "C", now=0.0)
    assert len(local) == 2  # least recently used went first
    assert local.get("a", 0.0, allow_expired=True) is None


def test_local_cache_drops_by_key_and_tag() -> None:
    local = LocalCache(maxsize=10, ttl=5.0)
    local.put("a", _envelope(100.0, (("t", 1),)), "A", now=0.0)
    local.put("b", _envelope(100.0, (("u", 1),)), "B", now=0.0)
    local.put("c", _envelope(100.0), "C", now=0.0)
    assert local.discard_tag("t") == 1
    local.discard("c")
    assert [local.get(k, 0.0) is None for k in "abc"] == [True, False, True]
    local.clear()
    assert len(local) == 0
    assert repr(local) == "LocalCache(maxsize=10, ttl=5.0)"


def test_retry_interval_feeds_the_default_breaker() -> None:
    from scalekit.breaker import CircuitBreaker

    for shell in (Cache, AsyncCache):
        cache = shell(None, namespace="ns", retry_interval=2.5)
        assert cache.breaker.name == "cache:ns"
        assert cache.breaker.policy.fail_max == 1
        assert cache.breaker.policy.reset_timeout == 2.5
        mine = CircuitBreaker("redis")
        assert shell(None, breaker=mine).breaker is mine
