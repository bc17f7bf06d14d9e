"""The cache against real Redis: the shared scenario list, stampedes across threads,
tasks and processes, the local tier across processes, and Redis stopped, paused
and restarted under a load loop.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from scalekit.breaker import CircuitBreaker, State
from scalekit.cache import (
    AsyncCache,
    Cache,
    CacheDecodeFailed,
    LocalCache,
    SignedPickleSerializer,
)
from scalekit.cache._core import Envelope, Kind, pack_envelope
from scalekit.instrumentation import FallbackUsed, Recovered
from scalekit.testing import capture_events
from tests.unit.cache import test_shells as scenarios
from tests.unit.cache._drivers import Factory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FAST = {"socket_timeout": 0.25, "socket_connect_timeout": 0.25, "retry": Retry(NoBackoff(), 0)}
#: A guard against hangs only: what it bounds takes milliseconds to a second.
#: Figures are printed (and timed in benchmarks/), never asserted, so a busy
#: machine cannot fail these tests.
HANG_GUARD = 20.0

Scenario = Callable[[Factory], Coroutine[Any, Any, None]]


def _scenarios() -> list[tuple[str, Scenario]]:
    found = []
    for name, func in vars(scenarios).items():
        if name.startswith("test_") and inspect.iscoroutinefunction(func):
            params = list(inspect.signature(func).parameters)
            if params in (["make"], ["make_async"]):
                found.append((params[0], func))
    return found


SCENARIOS = _scenarios()


def _cases() -> list[Any]:
    cases = []
    for fixture, scenario in SCENARIOS:
        for kind in ("sync-redis", "async-redis"):
            if fixture == "make_async" and not kind.startswith("async"):
                continue
            cases.append(pytest.param(scenario, kind, id=f"{scenario.__name__}[{kind}]"))
    return cases


@pytest.mark.parametrize(("scenario", "kind"), _cases())
async def test_shared_scenarios(scenario: Scenario, kind: str, redis_server: Any) -> None:
    if not redis_server.running:  # pragma: no cover - another test left it down
        redis_server.start()
    # The shared scenarios state the pub/sub semantics (a write behind the cache's
    # back is NOT seen by the local tier, as with fakeredis); client tracking, which
    # does see it, has its own tests in test_cache_tracking.py.
    factory = Factory(
        kind,
        connect=redis_server.client,
        aconnect=redis_server.async_client,
        # A generous op_timeout: these scenarios state semantics, and on a busy
        # machine a reply slower than the default 0.25 s would be an (correct)
        # outage fallback. Outages under the defaults: test_cache_outages.py.
        defaults={"invalidation": "pubsub", "op_timeout": 5.0},
    )
    factory._raw_client().flushall()
    try:
        await scenario(factory)
    finally:
        await factory.close()


# --------------------------------------------------------------------------- stampedes


def test_200_threads_on_a_cold_key_run_one_loader(redis_client: Any) -> None:
    # (op_timeout: 200 threads contending for the GIL on a busy machine can see a
    # reply later than the default 0.25 s: a correct fallback, not this test's topic.)
    cache = Cache(redis_client, namespace="stampede", op_timeout=5.0)
    calls = 0
    lock = threading.Lock()

    def load() -> dict[str, int]:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.2)
        return {"answer": 42}

    barrier = threading.Barrier(200)
    results: list[Any] = []

    def caller() -> None:
        barrier.wait()
        results.append(cache.get_or_set("cold", load, ttl=60))

    threads = [threading.Thread(target=caller) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert calls == 1
    assert len(results) == 200 and all(r == {"answer": 42} for r in results)
    cache.close()


async def test_200_tasks_on_a_cold_key_run_one_loader(async_redis_client: Any) -> None:
    cache = AsyncCache(async_redis_client, namespace="stampede")
    calls = 0

    async def load() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return {"answer": 42}

    results = await asyncio.gather(*(cache.get_or_set("cold", load, ttl=60) for _ in range(200)))
    assert calls == 1
    assert all(r == {"answer": 42} for r in results)
    await cache.aclose()


_PROCESS_STAMPEDE = textwrap.dedent(
    """
    import sys, threading, time, redis
    from scalekit.cache import Cache

    url, processes, shell = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    raw = redis.Redis.from_url(url)
    raw.incr("test:ready")
    deadline = time.time() + 20
    while int(raw.get("test:ready")) < processes and time.time() < deadline:
        time.sleep(0.005)

    def load():
        raw.incr("test:loads")
        time.sleep(0.3)
        return {"answer": 42}

    if shell == "sync":
        # (op_timeout: four interpreters starting at once on a busy machine may take
        # longer than the default 0.25 s to open 50 connections; that would be a
        # fallback, correct but not what this test is about.)
        cache = Cache(redis.Redis.from_url(url), namespace="procs", poll_interval=0.02,
                      op_timeout=5.0)
        barrier = threading.Barrier(50)
        results = []

        def caller():
            barrier.wait()
            results.append(cache.get_or_set("cold", load, ttl=60))

        threads = [threading.Thread(target=caller) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        import asyncio, redis.asyncio
        from scalekit.cache import AsyncCache

        async def main():
            client = redis.asyncio.Redis.from_url(url)
            cache = AsyncCache(client, namespace="procs", poll_interval=0.02, op_timeout=5.0)

            async def aload():
                await asyncio.to_thread(raw.incr, "test:loads")
                await asyncio.sleep(0.3)
                return {"answer": 42}

            out = await asyncio.gather(*(cache.get_or_set("cold", aload, ttl=60)
                                         for _ in range(50)))
            await cache.aclose()
            await client.aclose()
            return out

        results = asyncio.run(main())
    assert len(results) == 50 and all(r == {"answer": 42} for r in results), results
    print("ok", len(results))
    """
)


@pytest.mark.parametrize("shell", ["sync", "async"])
def test_four_processes_on_a_cold_key_run_at_most_one_loader(
    redis_server: Any, redis_client: Any, shell: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS_STAMPEDE, redis_server.url, "4", shell],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "ok 50"
    assert int(redis_client.get("test:loads")) == 1


# --------------------------------------------------------------------------- two tiers


_LOCAL_READER = textwrap.dedent(
    """
    import sys, time, redis
    from scalekit.cache import Cache, LocalCache

    url = sys.argv[1]
    raw = redis.Redis.from_url(url)
    cache = Cache(redis.Redis.from_url(url), namespace="tiers",
                  local=LocalCache(maxsize=100, ttl=30.0))
    cache.subscribed.wait(5)
    seen = None
    deadline = time.time() + 20
    while time.time() < deadline and not raw.exists("test:stop"):
        value = cache.get_or_set("profile", lambda: int(raw.get("test:source")),
                                 ttl=300, tags=["user:1"])
        if value != seen:
            seen = value
            print(value, time.time(), cache.stats().local_hits, flush=True)
        time.sleep(0.005)
    cache.close()
    """
)


def test_tag_invalidation_reaches_another_process_local_tier(
    redis_server: Any, redis_client: Any
) -> None:
    redis_client.set("test:source", 1)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    reader = subprocess.Popen(
        [sys.executable, "-c", _LOCAL_READER, redis_server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    cache = Cache(redis_server.client(), namespace="tiers")
    try:
        assert reader.stdout is not None
        first = reader.stdout.readline().split()
        assert first[0] == "1"
        # The source changes without an invalidation: the other process keeps
        # serving its local copy (its local TTL is 30 s)...
        redis_client.set("test:source", 2)
        time.sleep(0.5)
        assert cache.get_or_set("probe", lambda: 0) == 0  # (our own cache works meanwhile)
        # ...until the tag is invalidated; then it sees the new value within a second.
        invalidated_at = time.time()
        assert cache.invalidate_tags("user:1")
        second = reader.stdout.readline().split()
        assert second[0] == "2", reader.stderr.read() if reader.stderr else ""
        seconds = float(second[1]) - invalidated_at  # (clocks of two processes: a figure)
        assert int(second[2]) > 10  # the reader really was serving from its local tier
        print(f"tag invalidation reached the other process in {seconds * 1000:.1f} ms")
    finally:
        redis_client.set("test:stop", 1)
        reader.communicate(timeout=30)
        cache.close()
        cache.client.close()


async def test_async_local_tiers_follow_each_other(redis_server: Any) -> None:
    clients = [redis_server.async_client(), redis_server.async_client()]
    one, two = (
        AsyncCache(c, namespace="atiers", local=LocalCache(maxsize=100, ttl=30.0)) for c in clients
    )
    try:
        assert await one.get_or_set("k", lambda: "v1", tags=["t"]) == "v1"
        assert await two.get_or_set("k", lambda: "never", tags=["t"]) == "v1"
        await asyncio.wait_for(one.subscribed.wait(), 5)
        await asyncio.wait_for(two.subscribed.wait(), 5)
        assert await one.set("k", "v2", tags=["t"])  # two's local copy is dropped by message
        deadline = time.monotonic() + HANG_GUARD
        while await two.get("k") != "v2" and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert await two.get("k") == "v2"
        assert two.stats().local_hits >= 1
        assert await one.invalidate_tags("t")
        deadline = time.monotonic() + HANG_GUARD
        while await two.get("k", "gone") != "gone" and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert await two.get("k", "gone") == "gone"
    finally:
        await one.aclose()
        await two.aclose()
        for client in clients:
            await client.aclose()


# --------------------------------------------------------------------------- serialisation


def test_tampered_and_unsigned_pickles_are_refused(redis_client: Any) -> None:
    codec = SignedPickleSerializer({"k1": b"integration-secret-16"}, current_key_id="k1")
    cache = Cache(redis_client, namespace="pickles", serializer=codec)
    assert cache.set("k", {"amount": 10})
    assert cache.get("k") == {"amount": 10}
    stored = cache.keys.data("k")
    data = redis_client.get(stored)
    redis_client.set(stored, data[:-2] + bytes(b ^ 0xFF for b in data[-2:]))
    with capture_events() as events:
        assert cache.get("k", "refused") == "refused"
    # An unsigned pickle in a well-formed envelope (as an attacker with Redis access would write).
    envelope = Envelope(
        payload=pickle.dumps({"amount": 1_000_000}),
        created=time.time(),
        cost=0.0,
        soft_expiry=time.time() + 60,
        hard_expiry=time.time() + 60,
        codec=codec.codec_id,
        kind=Kind.VALUE,
    )
    redis_client.set(stored, pack_envelope(envelope))
    with capture_events() as more:
        assert cache.get_or_set("k", lambda: {"amount": 10}) == {"amount": 10}
    # Both refused (counted), reported once: the two reads are one incident.
    assert len([e for e in [*events, *more] if isinstance(e, CacheDecodeFailed)]) == 1
    assert cache.stats().errors >= 2
    assert cache.get("k") == {"amount": 10}
    cache.close()


# --------------------------------------------------------------------------- redis down


def test_redis_stopped_during_a_load_loop(redis_server_factory: Callable[[], Any]) -> None:
    node = redis_server_factory()
    cache = Cache(
        node.client(**FAST),
        namespace="down",
        retry_interval=0.2,
        local=LocalCache(maxsize=100, ttl=30.0),
    )
    assert cache.subscribed.wait(5)
    loads = 0

    def load() -> str:
        nonlocal loads
        loads += 1
        return "value"

    latencies: list[float] = []
    with capture_events() as events:
        for _ in range(20):
            assert cache.get_or_set("k", load) == "value"
        assert loads == 1
        node.stop()
        stopped = time.monotonic()
        while time.monotonic() - stopped < 1.0:
            started = time.perf_counter()
            assert cache.get_or_set(f"k{len(latencies) % 5}", load) == "value"
            latencies.append(time.perf_counter() - started)
        # The listener lost its connection: the local tier was flushed (what
        # the loop loaded meanwhile is kept, for at most the local TTL).
        assert cache.local is not None
        deadline = time.monotonic() + HANG_GUARD
        while cache.local.get(cache.keys.data("k"), time.time()) is not None:
            assert time.monotonic() < deadline, "the local tier was not flushed"
            time.sleep(0.01)
        node.start()
        restarted = time.monotonic()
        loads_before = loads
        probe = node.client(**FAST)
        while True:  # until a value is stored in Redis again
            assert cache.get_or_set("after", load) == "value"
            if probe.exists(cache.keys.data("after")):
                break
            assert time.monotonic() - restarted < HANG_GUARD, "the cache did not resume"
            time.sleep(0.01)
        # At most one load before the breaker's probe and one after it (the
        # recovery flushes the local tier); from then on it is served.
        assert loads <= loads_before + 2
        served_from = loads
        assert cache.get_or_set("after", load) == "value"
        assert loads == served_from
        resumed = time.monotonic() - restarted
    assert len([e for e in events if isinstance(e, FallbackUsed)]) == 1
    assert len([e for e in events if isinstance(e, Recovered)]) == 1
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    print(
        f"outage: {len(latencies)} calls in 1 s, p50 {latencies[len(latencies) // 2] * 1e3:.2f}"
        f" ms, p99 {p99 * 1e3:.2f} ms; resumed {resumed * 1e3:.0f} ms after restart"
    )
    probe.close()
    cache.close()
    cache.client.close()


async def test_redis_stopped_during_an_async_load_loop(
    redis_server_factory: Callable[[], Any],
) -> None:
    node = redis_server_factory()
    client = node.async_client(**FAST)
    cache = AsyncCache(client, namespace="down", retry_interval=0.2)
    loads = 0

    async def load() -> str:
        nonlocal loads
        loads += 1
        return "value"

    with capture_events() as events:
        assert await cache.get_or_set("k", load) == "value"
        await asyncio.to_thread(node.stop)
        for i in range(50):
            assert await cache.get_or_set(f"k{i % 5}", load) == "value"
            assert await cache.get("k") is None
        await asyncio.to_thread(node.start)
        restarted = time.monotonic()
        while await cache.get_or_set("after", load) != "value" or await cache.get("after") is None:
            assert time.monotonic() - restarted < HANG_GUARD, "the cache did not resume"
            await asyncio.sleep(0.01)
    assert len([e for e in events if isinstance(e, FallbackUsed)]) == 1
    assert len([e for e in events if isinstance(e, Recovered)]) == 1
    await cache.aclose()
    await client.aclose()


def test_one_breaker_guards_two_caches_through_an_outage(
    redis_server_factory: Callable[[], Any],
) -> None:
    # One user breaker for everything that talks to this Redis: the first outage
    # error of either cache opens it for both; one probe closes it for both.
    node = redis_server_factory()
    breaker = CircuitBreaker("redis", fail_max=1, reset_timeout=0.2)
    users = Cache(node.client(**FAST), namespace="users", breaker=breaker)
    orders = Cache(node.client(**FAST), namespace="orders", breaker=breaker)
    loads = 0

    def load() -> str:
        nonlocal loads
        loads += 1
        return "value"

    with capture_events() as events:
        assert users.get_or_set("k", load) == "value"
        assert orders.get_or_set("k", load) == "value"
        node.stop()
        stopped = time.monotonic()
        calls = 0
        while time.monotonic() - stopped < 1.0:  # (the workload's length, not an assertion)
            for cache in (users, orders):
                assert cache.get_or_set(f"k{calls % 5}", load) == "value"
                assert cache.get("k", "default") == "default"
                calls += 1
        assert breaker.state is not State.CLOSED
        node.start()
        restarted = time.monotonic()
        probe = node.client(**FAST)
        for cache in (users, orders):
            while True:  # until each cache stores in Redis again
                assert cache.get_or_set("after", load) == "value"
                if probe.exists(cache.keys.data("after")):
                    break
                assert time.monotonic() - restarted < HANG_GUARD, "the cache did not resume"
                time.sleep(0.01)
    outage = time.monotonic() - stopped
    assert breaker.state is State.CLOSED
    # One failure opened it; every other failure was a probe's, at most one per
    # reset_timeout (0.2 s) of the outage as it was measured, however long it lasted.
    assert breaker.metrics().failures <= 1 + outage / 0.2 + 1
    assert sorted(e.name for e in events if isinstance(e, FallbackUsed)) == ["orders", "users"]
    assert sorted(e.name for e in events if isinstance(e, Recovered)) == ["orders", "users"]
    probe.close()
    for cache in (users, orders):
        cache.close()
        cache.client.close()


async def test_one_breaker_guards_a_sync_and_an_async_cache(
    redis_server_factory: Callable[[], Any],
) -> None:
    node = redis_server_factory()
    breaker = CircuitBreaker("redis", fail_max=1, reset_timeout=0.2)
    client = node.async_client(**FAST)
    acache = AsyncCache(client, namespace="async", breaker=breaker)
    cache = Cache(node.client(**FAST), namespace="sync", breaker=breaker)
    assert await acache.get_or_set("k", lambda: "v") == "v"
    await asyncio.to_thread(node.stop)
    assert cache.get("k", "default") == "default"  # the sync cache trips it...
    assert breaker.state is State.OPEN
    calls: list[str] = []
    original = acache.backend.get

    async def counting(key: str) -> Any:
        calls.append(key)
        return await original(key)

    acache.backend.get = counting  # type: ignore[method-assign]
    assert await acache.get_or_set("k", lambda: "loaded") == "loaded"  # ...the async one skips
    assert calls == []
    await asyncio.to_thread(node.start)
    restarted = time.monotonic()
    # (A restarted node starts empty.) Until a value is stored in Redis again:
    while await acache.get_or_set("after", lambda: "v") != "v" or await acache.get("after") != "v":
        assert time.monotonic() - restarted < HANG_GUARD, "the cache did not resume"
        await asyncio.sleep(0.01)
    assert breaker.state is State.CLOSED
    assert len(calls) >= 2
    assert cache.get("after", "default") == "default"  # another namespace: nothing stored
    await acache.aclose()
    await client.aclose()
    cache.close()
    cache.client.close()


def test_a_paused_redis_costs_no_latency_pile_up(redis_server_factory: Callable[[], Any]) -> None:
    # A paused server answers nothing: only the breaker's probes (at most one per
    # retry_interval) may wait for the op timeout; every other call skips Redis.
    node = redis_server_factory()
    cache = Cache(node.client(**FAST), namespace="paused", retry_interval=0.5)
    assert cache.get_or_set("k", lambda: "v") == "v"
    reached: list[str] = []
    original = cache.backend.get

    def counted(key: str) -> Any:
        reached.append(key)
        return original(key)

    cache.backend.get = counted  # type: ignore[method-assign]
    node.pause()
    try:
        latencies = []
        started = time.monotonic()
        for _ in range(300):
            t0 = time.perf_counter()
            assert cache.get_or_set("k", lambda: "loaded") == "loaded"
            latencies.append(time.perf_counter() - t0)
        paused_for = time.monotonic() - started
    finally:
        node.resume()
    # The calls that reached Redis: the first (it opened the breaker) and the probes.
    assert 1 <= len(reached) <= 1 + paused_for / 0.5 + 1
    assert max(latencies) < HANG_GUARD  # a hang guard: each waits one op timeout at most
    latencies.sort()
    print(
        f"paused: {len(latencies)} calls in {paused_for:.2f} s, {len(reached)} reached Redis, "
        f"p50 {latencies[len(latencies) // 2] * 1e6:.0f} us, max {latencies[-1] * 1e3:.0f} ms"
    )
    time.sleep(0.6)
    assert cache.get_or_set("k", lambda: "new") in ("v", "loaded")
    cache.close()
    cache.client.close()


def test_stale_local_serves_the_local_tier_while_redis_is_stopped(
    redis_server_factory: Callable[[], Any],
) -> None:
    node = redis_server_factory()
    cache = Cache(
        node.client(**FAST),
        namespace="stale-local",
        on_redis_down="stale_local",
        retry_interval=0.2,
        local=LocalCache(maxsize=100, ttl=0.3),
    )
    assert cache.subscribed.wait(5)
    assert cache.get_or_set("k", lambda: "cached") == "cached"
    # With client tracking our own write's invalidation evicts the local copy
    # too (Redis cannot tell writers apart); the next read puts it back.
    time.sleep(0.05)
    assert cache.get("k") == "cached"
    assert cache.local is not None and len(cache.local) == 1
    node.stop()
    time.sleep(0.5)  # past the local TTL (a lower bound: safe on a slow machine)
    deadline = time.monotonic() + HANG_GUARD
    while cache.invalidation_mode != "none":  # the listener has noticed the outage
        assert time.monotonic() < deadline
        time.sleep(0.01)
    loads = 0

    def load() -> str:
        nonlocal loads
        loads += 1
        return "loaded"

    for _ in range(20):
        assert cache.get_or_set("k", load) == "cached"
    assert cache.get_or_set("other", load) == "loaded"  # nothing local: bypass
    assert loads == 1
    node.start()
    started = time.monotonic()
    while cache.get_or_set("k", load) != "loaded":  # recovered: the local tier was flushed
        assert time.monotonic() - started < HANG_GUARD
        time.sleep(0.01)
    cache.close()
    cache.client.close()


def test_reads_take_the_direct_path_and_survive_a_dropped_connection(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url, retry=Retry(NoBackoff(), 0))
    admin = redis.Redis.from_url(redis_server.url)
    try:
        cache = Cache(client, namespace="direct")
        cache.set("user:1", {"name": "Ada"}, ttl=60)

        def not_here(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the hot path must not go through client.get")

        store = cache.backend.client  # the cache's bounded twin of `client`
        monkeypatch.setattr(store, "get", not_here)
        assert cache.get("user:1") == {"name": "Ada"}
        monkeypatch.undo()
        with capture_events() as events:
            # The server drops every pooled connection: the next read reconnects
            # or retries through the client, and never falls back.
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
            assert cache.get("user:1") == {"name": "Ada"}
            assert cache.get("user:1") == {"name": "Ada"}
        assert not [e for e in events if isinstance(e, FallbackUsed)]
        assert store.connection_pool._in_use_connections == set()  # all returned
    finally:
        cache.close()
        client.close()
        admin.close()


async def test_async_reads_take_the_direct_path_and_survive_a_dropped_connection(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_server.url, retry=Retry(NoBackoff(), 0))
    admin = redis.Redis.from_url(redis_server.url)
    try:
        cache = AsyncCache(client, namespace="adirect")
        await cache.set("user:1", {"name": "Ada"}, ttl=60)

        async def not_here(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the hot path must not go through client.get")

        store = cache.backend.client
        monkeypatch.setattr(store, "get", not_here)
        assert await cache.get("user:1") == {"name": "Ada"}
        monkeypatch.undo()
        with capture_events() as events:
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
            assert await cache.get("user:1") == {"name": "Ada"}
            assert await cache.get("user:1") == {"name": "Ada"}
        assert not [e for e in events if isinstance(e, FallbackUsed)]
        assert store.connection_pool._in_use_connections == set()
    finally:
        await cache.aclose()
        await client.aclose()
        admin.close()
