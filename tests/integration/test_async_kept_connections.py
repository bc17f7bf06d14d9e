"""The asyncio hot paths' kept connections (``scalekit._redis_direct.AsyncKept``), on real Redis.

``AsyncCache.get`` and ``AsyncRateLimiter.hit`` keep up to 4 connections per
event loop: these tests hold them to the failure behaviour of the pooled path
they replace (event loops that end or are closed under them, a forked child,
a Redis restart that also forgets the scripts, an outage, clients built as
users build them).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
import redis
import redis.asyncio

from scalekit._redis_direct import KEEP, AsyncKept, pack_command
from scalekit.cache import AsyncCache, Cache
from scalekit.instrumentation import FallbackUsed
from scalekit.ratelimit import AsyncRateLimiter, Limit
from scalekit.ratelimit._scripts import single_limit_script
from scalekit.testing import capture_events
from tests.integration._asyncio_cluster import collect_dropped_connections

LIMIT = Limit(1000, per=3600)


def _kept(owner: Any) -> AsyncKept:
    """The keeper of an AsyncCache's or AsyncRateLimiter's Redis backend."""
    keeper = owner.backend._keeper
    assert isinstance(keeper, AsyncKept)
    return keeper


def _idle(keeper: AsyncKept) -> list[Any]:
    return [c for kept in keeper._loops.values() for c in kept.idle]


def _fallbacks(events: list[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, FallbackUsed)]


def test_one_cache_and_limiter_serve_several_asyncio_runs(redis_server: Any) -> None:
    # Before: the second asyncio.run() found the first loop's connections in
    # the pool and raised "Event loop is closed" (or "attached to a different loop").
    redis_server.client().flushall()
    with Cache(redis_server.client(), namespace="runs") as writer:
        writer.set("user:1", {"name": "Ada"}, ttl=60)
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)  # defaults
    cache = AsyncCache(client, namespace="runs")
    limiter = AsyncRateLimiter(client, algorithm="gcra")
    seen: list[Any] = []

    async def use(last: bool) -> None:
        for _ in range(3):
            assert await cache.get("user:1") == {"name": "Ada"}
            decision = await limiter.hit("k", LIMIT)
            assert decision.allowed and decision.fallback is None
        keepers = (_kept(cache), _kept(limiter))
        for keeper in keepers:
            assert len(keeper._loops) == 1 and asyncio.get_running_loop() in keeper._loops
        mine = [c for keeper in keepers for c in _idle(keeper)]
        assert mine and all(c.is_connected for c in mine) and not set(mine) & set(seen)
        seen.extend(mine)
        if last:
            await cache.aclose()
            await limiter.aclose()
            await client.aclose()

    with capture_events() as events:
        for run in range(3):
            asyncio.run(use(last=run == 2))
            # The loop's shutdown closed its kept connections.
            assert _kept(cache)._loops == {} and _kept(limiter)._loops == {}
            assert not any(c.is_connected for c in seen)
    assert not _fallbacks(events)
    assert len(seen) == 6  # one per loop per backend: the calls were sequential


def test_a_loop_closed_under_them_loses_its_sockets_on_next_use(redis_server: Any) -> None:
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    limiter = AsyncRateLimiter(client, algorithm="token_bucket")
    keeper = _kept(limiter)

    async def hit() -> Any:
        return await limiter.hit("closed-under", LIMIT)

    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(hit()).allowed
    old = _idle(keeper)
    assert len(old) == 1 and old[0].is_connected
    loop.close()  # no shutdown_asyncgens(): nothing closed the kept connection
    assert keeper._loops and next(iter(keeper._loops)).is_closed()

    async def again() -> None:
        decision = await hit()
        assert decision.allowed and decision.fallback is None
        assert list(keeper._loops) == [asyncio.get_running_loop()]
        await limiter.aclose()
        await client.aclose()

    asyncio.run(again())
    assert not old[0].is_connected  # its socket closed without its (closed) loop
    assert keeper._loops == {}


async def test_aclose_closes_the_kept_connections(async_redis_client: Any) -> None:
    cache = AsyncCache(async_redis_client, namespace="aclose")
    await cache.set("x", 1)
    assert await cache.get("x") == 1
    keeper = _kept(cache)
    first = _idle(keeper)
    assert len(first) == 1
    await keeper.aclose()
    assert keeper._loops == {} and not first[0].is_connected
    assert await cache.get("x") == 1  # usable: a new one
    assert _idle(keeper) and _idle(keeper)[0] is not first[0]
    await cache.aclose()
    assert keeper._loops == {}


async def test_at_most_four_per_loop_the_rest_borrow_the_pool(async_redis_client: Any) -> None:
    # A generous op_timeout: 40 calls at once on a loaded machine are no outage.
    cache = AsyncCache(async_redis_client, namespace="busy", op_timeout=5)
    await cache.set("x", "v")
    try:
        with capture_events() as events:
            values = await asyncio.gather(*(cache.get("x") for _ in range(40)))
        assert values == ["v"] * 40 and not _fallbacks(events)
        keeper = _kept(cache)
        (kept,) = keeper._loops.values()
        assert 1 <= kept.made <= KEEP and len(kept.idle) == kept.made
        pool = cache.backend.client.connection_pool
        assert len(pool._in_use_connections) == 0  # the borrowed ones went back
    finally:
        await cache.aclose()


async def test_none_are_kept_beside_a_capped_pool(redis_server: Any) -> None:
    for pool in (
        redis.asyncio.BlockingConnectionPool(host=redis_server.host, port=redis_server.port),
        redis.asyncio.ConnectionPool(
            host=redis_server.host, port=redis_server.port, max_connections=8
        ),
    ):
        client = redis.asyncio.Redis(connection_pool=pool)
        limiter = AsyncRateLimiter(client, algorithm="gcra")
        try:
            assert _kept(limiter).keep == 0
            assert (await limiter.hit("capped", LIMIT)).fallback is None
            assert _kept(limiter)._loops == {}
        finally:
            await limiter.aclose()
            await client.aclose()
            await pool.disconnect()


def test_a_forked_child_never_uses_the_parents_kept_connections(redis_server: Any) -> None:
    redis_server.client().flushall()
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    limiter = AsyncRateLimiter(client, algorithm="gcra")
    keeper = _kept(limiter)

    async def hits(n: int) -> list[Any]:
        return [await limiter.hit("forked", LIMIT) for _ in range(n)]

    loop = asyncio.new_event_loop()
    try:
        assert all(d.allowed for d in loop.run_until_complete(hits(1)))
        parents = _idle(keeper)
        assert len(parents) == 1
        pid = os.fork()
        if pid == 0:  # the child: a loop and connections of its own
            code = 1
            try:

                async def child() -> bool:
                    decisions = await hits(50)
                    mine = _idle(keeper)
                    return (
                        all(d.allowed and d.fallback is None for d in decisions)
                        and len(mine) == 1
                        and mine[0] not in parents
                    )

                code = 0 if asyncio.run(child()) else 1
            finally:
                os._exit(code)
        # Meanwhile the parent checks on its connection: replies never cross.
        decisions = loop.run_until_complete(hits(50))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert all(d.allowed and d.fallback is None for d in decisions)
        assert _idle(keeper) == parents and parents[0].is_connected
        peek = loop.run_until_complete(limiter.peek("forked", LIMIT))
        assert peek.remaining == 1000 - 101
        loop.run_until_complete(limiter.aclose())
        loop.run_until_complete(client.aclose())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def test_a_redis_restart_remakes_the_connection_and_reloads_the_script(
    redis_server_factory: Any,
) -> None:
    node = redis_server_factory()
    client = redis.asyncio.Redis(host=node.host, port=node.port)
    limiter = AsyncRateLimiter(client, algorithm="token_bucket")
    cache = AsyncCache(client, namespace="restart")
    try:
        await cache.set("x", 1)
        assert await cache.get("x") == 1
        assert (await limiter.hit("k", LIMIT)).remaining == 999
        kept = _idle(_kept(limiter)) + _idle(_kept(cache))
        node.restart()  # every socket dead, the script cache and the data gone
        admin = node.client()
        try:
            with capture_events() as events:
                decision = await limiter.hit("k", LIMIT)
                assert await cache.get("x") is None  # a miss, not an outage
            assert decision.allowed and decision.fallback is None
            assert decision.remaining == 999  # the state went with the restart
            assert not _fallbacks(events)
            # The same kept connections, on new sockets; NOSCRIPT then EVAL on one.
            assert _idle(_kept(limiter)) + _idle(_kept(cache)) == kept
            assert all(c.is_connected for c in kept)
            stats = admin.info("commandstats")
            assert stats["cmdstat_evalsha"]["failed_calls"] == 1
            assert stats["cmdstat_eval"]["calls"] == 1
            assert admin.script_exists(single_limit_script("token_bucket").sha) == [True]
            assert (await limiter.hit("k", LIMIT)).remaining == 998
            assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] == 2
        finally:
            admin.close()
    finally:
        await cache.aclose()
        await limiter.aclose()
        await client.aclose()


async def test_decode_responses_clients_keep_connections_too(redis_server: Any) -> None:
    client = redis.asyncio.Redis(
        host=redis_server.host, port=redis_server.port, decode_responses=True
    )
    limiter = AsyncRateLimiter(client, algorithm="gcra")
    try:
        for expected in (999, 998, 997):
            decision = await limiter.hit("decoded", LIMIT)
            assert decision.fallback is None and decision.remaining == expected
        (connection,) = _idle(_kept(limiter))
        assert connection.encoder.decode_responses
    finally:
        await limiter.aclose()
        await client.aclose()
        await client.connection_pool.disconnect()


async def test_cluster_clients_keep_their_own_path(redis_cluster: Any) -> None:
    redis_cluster.flushall()
    client = redis_cluster.async_client()
    limiter = AsyncRateLimiter(client, algorithm="gcra")
    cache = AsyncCache(client, namespace="cluster-kept")
    try:
        assert limiter.backend._keeper is None and cache.backend._keeper is None
        assert (await limiter.hit("k", LIMIT)).remaining == 999
        await cache.set("x", 1)
        assert await cache.get("x") == 1
    finally:
        await cache.aclose()
        await limiter.aclose()
        await client.aclose()
        collect_dropped_connections()


async def test_an_outage_still_falls_back_and_recovers(redis_server_factory: Any) -> None:
    node = redis_server_factory()
    client = redis.asyncio.Redis(host=node.host, port=node.port)
    limiter = AsyncRateLimiter(client, algorithm="gcra", fallback="allow")
    cache = AsyncCache(client, namespace="outage")
    try:
        await cache.set("x", 1)
        assert await cache.get("x") == 1
        assert (await limiter.hit("k", LIMIT)).fallback is None
        node.stop()
        with capture_events() as events:
            started = time.monotonic()
            assert (await limiter.hit("k", LIMIT)).fallback == "allow"
            assert await cache.get("x") is None
            assert time.monotonic() - started < 5  # bounded, not redis-py's retries
        assert {e.component_name for e in _fallbacks(events)} >= {"cache"}
        node.start()
        deadline = time.monotonic() + 10
        while True:  # the limiter's and the cache's breakers probe again shortly
            decision = await limiter.hit("k", LIMIT)
            value = await cache.get("x")
            if decision.fallback is None:
                break
            assert time.monotonic() < deadline, "the limiter never recovered"
            await asyncio.sleep(0.1)
        assert value is None or value == 1
        assert all(c.is_connected for c in _idle(_kept(limiter)))
    finally:
        await cache.aclose()
        await limiter.aclose()
        await client.aclose()


async def test_a_paused_redis_times_out_on_the_loops_one_watchdog(
    redis_server_factory: Any,
) -> None:
    # The kept connections have no timer per command: one per loop watches the
    # commands in flight. A paused server times out every one of them, once.
    node = redis_server_factory()
    client = redis.asyncio.Redis(host=node.host, port=node.port)
    limiter = AsyncRateLimiter(client, algorithm="gcra", fallback="allow", op_timeout=0.2)
    cache = AsyncCache(client, namespace="paused", op_timeout=0.2)
    try:
        await cache.set("x", 1)
        assert await cache.get("x") == 1
        assert (await limiter.hit("k", LIMIT)).remaining == 999
        node.pause()
        try:
            started = time.monotonic()
            decision, value = await asyncio.gather(limiter.hit("k", LIMIT), cache.get("x"))
            assert time.monotonic() - started < 5  # the guard catches a hang only
            assert decision.fallback == "allow" and value is None
            for keeper in (_kept(limiter), _kept(cache)):
                for kept in keeper._loops.values():
                    assert kept.inflight == {} and kept.tripped == set()
                    assert not any(c.is_connected for c in kept.idle)  # aborted
        finally:
            node.resume()
        await asyncio.sleep(1.1)  # the limiter's breaker probes again
        assert await cache.get("x") == 1
        back = await limiter.hit("k", LIMIT)
        # The paused server ran the check that timed out too.
        assert back.fallback is None and back.remaining == 997
        assert all(c.is_connected for c in _idle(_kept(limiter)) + _idle(_kept(cache)))
        await asyncio.sleep(0.3)
        assert all(k.timer is None for k in _kept(limiter)._loops.values())
    finally:
        await cache.aclose()
        await limiter.aclose()
        await client.aclose()


async def test_every_reply_reads_as_redis_py_reads_it(redis_server: Any) -> None:
    # Integers, bulk strings, nulls and arrays are read off the stream by
    # scalekit; errors, simple strings and a value arriving in parts by redis-py.
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    keeper = AsyncKept(client.connection_pool)
    assert keeper._raw
    big = os.urandom(3 * 1024 * 1024)  # more than one read of the socket
    await client.delete("kept:list", "kept:big", "kept:missing", "kept:n")
    await client.rpush("kept:list", b"a", b"", b"\r\n")
    await client.set("kept:big", big)
    error = redis.exceptions.ResponseError
    try:
        for command, args, expected in [
            (b"INCRBY", (b"kept:n", b"-5"), -5),
            (b"GET", (b"kept:missing",), None),
            (b"LRANGE", (b"kept:list", b"0", b"-1"), [b"a", b"", b"\r\n"]),
            (b"GET", (b"kept:big",), big),
            (b"PING", (), b"PONG"),
            (b"EVAL", (b"return {1, 'x', {2}}", b"0"), [1, b"x", [2]]),
        ]:
            packed = pack_command(
                b"*%d\r\n$%d\r\n%s\r\n" % (len(args) + 1, len(command), command), args
            )
            assert await keeper.send(packed, error) == expected
        with pytest.raises(error, match=r"(?i)unknown command"):
            await keeper.send(pack_command(b"*1\r\n$7\r\nNOTACMD\r\n", ()), error)
        assert await keeper.send(pack_command(b"*1\r\n$4\r\nPING\r\n", ()), error) == b"PONG"
        assert len(_idle(keeper)) == 1  # one connection served them all, still clean
    finally:
        await keeper.aclose()
        await client.delete("kept:list", "kept:big", "kept:n")
        await client.aclose()
