"""Redis stopped, killed or paused under a cache built on DEFAULT redis-py clients.

redis-py 8's defaults retry a failed command 10 times with back-off (9 s
before the first ``get_or_set`` returned when Redis stopped), and a paused
server (SIGSTOP) answers nothing: before ``op_timeout`` a caller waited for
as long as the client's own socket timeout, or forever. The cache now talks
to Redis through a twin of the client bounded by ``op_timeout``; these tests
check, for sync and asyncio clients, standalone and cluster, that:

- the loader runs and the caller gets its value;
- the first call costs a bounded time (asserted only against a generous hang
  guard, ten times the documented 2 x ``op_timeout``);
- the calls that follow within ``retry_interval`` do not touch Redis at all;
- the user's client is left as it was (its own settings, never closed).
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from scalekit._redis_bounded import DEFAULT_OP_TIMEOUT
from scalekit.breaker import State
from scalekit.cache import AsyncCache, Cache
from scalekit.errors import ConfigurationError

pytestmark = pytest.mark.integration

#: What the first call after an outage may cost, as a guard against hangs only.
HANG_GUARD = 10 * 2 * DEFAULT_OP_TIMEOUT
#: Long enough that no probe happens during a test (the breaker stays open).
RETRY_INTERVAL = 60.0
BACKEND_METHODS = (
    "get",
    "get_with_counters",
    "counters",
    "mget",
    "set_many",
    "delete",
    "incr",
    "acquire",
    "release",
)
HOW = ["stop", "kill", "pause"]


def _count_backend_calls(cache: Cache | AsyncCache) -> list[str]:
    """Record every call the cache makes to its backend (each is Redis I/O)."""
    calls: list[str] = []
    backend = cache.backend
    for name in BACKEND_METHODS:
        original = getattr(backend, name)
        if isinstance(cache, AsyncCache):

            async def counted(*args: Any, _name: str = name, _orig: Any = original) -> Any:
                calls.append(_name)
                return await _orig(*args)

        else:

            def counted(*args: Any, _name: str = name, _orig: Any = original) -> Any:  # type: ignore[misc]
                calls.append(_name)
                return _orig(*args)

        setattr(backend, name, counted)
    return calls


def _break(node: Any, how: str) -> None:
    {"stop": node.stop, "kill": node.kill, "pause": node.pause}[how]()


def _mend(node: Any, how: str) -> None:
    if how == "pause":
        node.resume()
    else:
        node.start()


class Loader:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return "value"


# --------------------------------------------------------------------------- standalone


@pytest.mark.parametrize("how", HOW)
def test_a_default_client_outage_costs_a_bounded_time(
    redis_server_factory: Callable[[], Any], how: str
) -> None:
    node = redis_server_factory()
    client = redis.Redis(host=node.host, port=node.port)  # redis-py's defaults
    cache = Cache(client, namespace=f"d{uuid.uuid4().hex[:8]}", retry_interval=RETRY_INTERVAL)
    load = Loader()
    try:
        assert cache.get_or_set("k", load) == "value"
        assert load.calls == 1
        _break(node, how)
        started = time.monotonic()
        assert cache.get_or_set("k", load) == "value"  # the loader ran
        first = time.monotonic() - started
        assert load.calls == 2
        assert first < HANG_GUARD, f"the first call after the outage took {first:.1f} s"
        assert cache.breaker.state is State.OPEN
        calls = _count_backend_calls(cache)
        for i in range(20):
            assert cache.get_or_set(f"k{i % 3}", load) == "value"
            assert cache.get("k", "default") == "default"
            assert cache.set("k", "v") is False
        assert calls == []  # nothing reached Redis during retry_interval
        assert load.calls == 22
        print(f"{how}: the first call after the outage took {first * 1e3:.0f} ms")
    finally:
        _mend(node, how)
        cache.close()
        # The user's client is the user's: untouched, and still works.
        assert cache.client is client
        assert client.ping()
        client.close()


@pytest.mark.parametrize("how", HOW)
async def test_a_default_async_client_outage_costs_a_bounded_time(
    redis_server_factory: Callable[[], Any], how: str
) -> None:
    node = redis_server_factory()
    client = redis.asyncio.Redis(host=node.host, port=node.port)
    cache = AsyncCache(client, namespace=f"d{uuid.uuid4().hex[:8]}", retry_interval=RETRY_INTERVAL)
    load = Loader()
    try:
        assert await cache.get_or_set("k", load) == "value"
        _break(node, how)
        started = time.monotonic()
        assert await cache.get_or_set("k", load) == "value"
        first = time.monotonic() - started
        assert load.calls == 2
        assert first < HANG_GUARD, f"the first call after the outage took {first:.1f} s"
        assert cache.breaker.state is State.OPEN
        calls = _count_backend_calls(cache)
        for i in range(20):
            assert await cache.get_or_set(f"k{i % 3}", load) == "value"
            assert await cache.get("k", "default") == "default"
        assert calls == []
        assert load.calls == 22
        print(f"{how} (asyncio): the first call after the outage took {first * 1e3:.0f} ms")
    finally:
        _mend(node, how)
        await cache.aclose()
        assert cache.client is client
        assert await client.ping()
        await client.aclose()


def test_the_local_tier_keeps_working_on_the_twin(redis_server_factory: Callable[[], Any]) -> None:
    # Client tracking and the direct GET path run on the cache's bounded twin.
    from scalekit.cache import LocalCache

    node = redis_server_factory()
    client = redis.Redis(host=node.host, port=node.port)
    writer = redis.Redis(host=node.host, port=node.port)
    cache = Cache(client, namespace="twin", local=LocalCache(maxsize=10, ttl=30.0))
    try:
        assert cache.backend.client is not client
        assert cache.backend._pool is not None  # the direct GET path is in use
        assert cache.subscribed.wait(10)
        assert cache.invalidation_mode == "tracking"
        assert cache.get_or_set("k", lambda: "v1") == "v1"
        deadline = time.monotonic() + 10  # hang guard; eviction takes milliseconds
        while cache.get("k") != "v1":  # our own write's invalidation came back first
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert cache.local is not None and len(cache.local) == 1
        writer.delete(cache.keys.data("k"))  # a write by another client...
        while cache.local.get(cache.keys.data("k"), time.time()) is not None:
            assert time.monotonic() < deadline, "the write did not evict the local copy"
            time.sleep(0.01)  # ...evicts the local copy (tracking)
    finally:
        cache.close()
        client.close()
        writer.close()


# --------------------------------------------------------------------------- cluster


@pytest.fixture(scope="module")
def private_cluster(harness_root: Any, redis_binaries: Any) -> Iterator[Any]:
    """A cluster of its own: these tests stop and pause its masters."""
    from tests.harness.redis import RedisClusterHarness

    cluster = RedisClusterHarness.start(
        redis_binaries, harness_root / f"cache-outage-{uuid.uuid4().hex[:6]}"
    )
    try:
        yield cluster
    finally:
        cluster.close()


def _owner(cluster: Any, cache: Cache | AsyncCache, key: str) -> Any:
    return cluster.node_for_key(cache.keys.data(key))


@pytest.mark.parametrize("how", HOW)
def test_a_default_cluster_client_outage_costs_a_bounded_time(
    private_cluster: Any, how: str
) -> None:
    client = private_cluster.client()  # RedisCluster(startup_nodes=...) with its defaults
    cache = Cache(client, namespace=f"c{uuid.uuid4().hex[:8]}", retry_interval=RETRY_INTERVAL)
    load = Loader()
    node = _owner(private_cluster, cache, "k")
    try:
        assert cache.get_or_set("k", load) == "value"
        _break(node, how)
        started = time.monotonic()
        assert cache.get_or_set("k", load) == "value"
        first = time.monotonic() - started
        assert load.calls == 2
        assert first < HANG_GUARD, f"the first call after the outage took {first:.1f} s"
        assert cache.breaker.state is State.OPEN
        calls = _count_backend_calls(cache)
        for _ in range(20):
            assert cache.get_or_set("k", load) == "value"
        assert calls == []
        print(f"{how} (cluster): the first call after the outage took {first * 1e3:.0f} ms")
    finally:
        _mend(node, how)
        cache.close()
        client.close()
        private_cluster.wait_healthy()


# redis-py's asyncio cluster client, when a node fails, rebuilds its node table
# and drops the old ClusterNode objects without closing them (ResourceWarning
# at garbage collection, whoever owns the client): collected and ignored here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", HOW)
async def test_a_default_async_cluster_client_outage_costs_a_bounded_time(
    private_cluster: Any, how: str
) -> None:
    await _async_cluster_outage(private_cluster, how)
    gc.collect()  # (the dropped nodes, while the warning filter holds)


async def _async_cluster_outage(private_cluster: Any, how: str) -> None:
    client = private_cluster.async_client()
    cache = AsyncCache(client, namespace=f"c{uuid.uuid4().hex[:8]}", retry_interval=RETRY_INTERVAL)
    load = Loader()
    node = _owner(private_cluster, cache, "k")
    try:
        assert await cache.get_or_set("k", load) == "value"
        _break(node, how)
        started = time.monotonic()
        assert await cache.get_or_set("k", load) == "value"
        first = time.monotonic() - started
        assert load.calls == 2
        assert first < HANG_GUARD, f"the first call after the outage took {first:.1f} s"
        assert cache.breaker.state is State.OPEN
        calls = _count_backend_calls(cache)
        for _ in range(20):
            assert await cache.get_or_set("k", load) == "value"
        assert calls == []
        print(f"{how} (asyncio cluster): the first call took {first * 1e3:.0f} ms")
    finally:
        _mend(node, how)
        await cache.aclose()
        await client.aclose()
        private_cluster.wait_healthy()


def test_a_decoding_cluster_client_is_refused(private_cluster: Any) -> None:
    client = private_cluster.client(decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses"):
            Cache(client)
    finally:
        client.close()


# --------------------------------------------------------------------------- refused commands


def test_a_refused_command_is_the_callers_not_an_outage(redis_client: Any) -> None:
    # Against real Redis: an expiry it refuses (sent past validation, as a
    # future bug might) is the caller's ConfigurationError; a key holding
    # another type (written by someone else) fails that read alone. Neither
    # opens the breaker, and every other key keeps caching.
    from scalekit.instrumentation import FallbackUsed
    from scalekit.testing import capture_events

    cache = Cache(redis_client, namespace="refused")
    load = Loader()
    try:
        with capture_events() as events:
            with pytest.raises(ConfigurationError, match="expiry"):
                cache._call(cache.backend.set_many, [(cache.keys.data("t"), b"x", 2**63 - 1)], None)
            redis_client.lpush(cache.keys.data("list"), "a")
            assert cache.get("list", "default") == "default"  # WRONGTYPE: a miss
            assert cache.get_or_set("other", load) == "value"
            assert cache.get_or_set("other", load) == "value"
        assert load.calls == 1
        assert cache.breaker.state is State.CLOSED
        assert redis_client.exists(cache.keys.data("other"))
        assert not [e for e in events if isinstance(e, FallbackUsed)]
        with pytest.raises(ConfigurationError, match="ttl"):
            cache.set("t", 1, ttl=10**20)  # refused before it is sent
        assert not redis_client.exists(cache.keys.data("t"))
        assert cache.breaker.state is State.CLOSED
    finally:
        cache.close()
