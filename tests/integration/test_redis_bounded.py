"""``scalekit._redis_bounded``: what an outage costs through a user's own client.

Clients are built as users build them (``redis.Redis(host, port)`` with its
defaults: redis-py 8 retries 10 times with back-off and waits 5 s for a
reply). Through :func:`bounded`, a stopped, killed or paused server costs one
command about ``op_timeout`` per phase and is never retried. The guards
below only catch a hang (the unbounded client takes tens of seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio

from scalekit._redis_bounded import bounded, close_twin, is_twin
from tests.harness.redis import RedisClusterHarness, RedisNode

OP_TIMEOUT = 0.25
HANG_GUARD = 10 * 2 * OP_TIMEOUT  # connect + reply, ten times over


def _fails_fast(call: Callable[[], Any]) -> type[BaseException]:
    started = time.monotonic()
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)) as failure:
        call()
    assert time.monotonic() - started < HANG_GUARD
    return failure.type


@pytest.mark.parametrize("outage", ["stop", "kill", "pause"])
def test_a_default_client_fails_fast_once_bounded(
    redis_server_factory: Callable[[], RedisNode], outage: str
) -> None:
    node = redis_server_factory()
    client = redis.Redis(host=node.host, port=node.port)
    twin = bounded(client, OP_TIMEOUT)
    assert twin is not client and is_twin(twin)
    assert twin.set("k", b"v") and twin.get("k") == b"v"
    getattr(node, outage)()
    try:
        kind = _fails_fast(lambda: twin.get("k"))
        assert kind is (redis.TimeoutError if outage == "pause" else redis.ConnectionError)
        # The twin's pool is its own: the user's client is untouched.
        assert client.connection_pool.connection_kwargs["socket_timeout"] == 5
    finally:
        if outage == "pause":
            node.resume()
        else:
            node.start()
    assert twin.get("k") in (b"v", None)  # back once the server is (killed: empty)


@pytest.mark.parametrize("outage", ["stop", "pause"])
async def test_a_default_async_client_fails_fast_once_bounded(
    redis_server_factory: Callable[[], RedisNode], outage: str
) -> None:
    node = redis_server_factory()
    client = redis.asyncio.Redis(host=node.host, port=node.port)
    twin = bounded(client, OP_TIMEOUT)
    try:
        assert await twin.set("k", b"v")
        getattr(node, outage)()
        started = time.monotonic()
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            await twin.get("k")
        assert time.monotonic() - started < HANG_GUARD
    finally:
        if outage == "pause":
            node.resume()
        else:
            node.start()
        await twin.aclose()
        await twin.connection_pool.disconnect()
        await client.aclose()


def test_decode_responses_and_credentials_carry_over(
    redis_server_factory: Callable[[], RedisNode],
) -> None:
    node = redis_server_factory()
    client = redis.Redis(host=node.host, port=node.port, db=3, decode_responses=True)
    twin = bounded(client, OP_TIMEOUT)
    twin.set("k", "v")
    assert client.get("k") == "v" and twin.get("k") == "v"


def test_a_bounded_client_is_used_as_given(redis_server: RedisNode) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    tight = redis.Redis(
        host=redis_server.host,
        port=redis_server.port,
        socket_timeout=0.1,
        socket_connect_timeout=0.1,
        retry=Retry(NoBackoff(), 0),
    )
    assert bounded(tight, OP_TIMEOUT) is tight
    twin = bounded(redis.Redis(host=redis_server.host, port=redis_server.port), OP_TIMEOUT)
    assert bounded(twin, OP_TIMEOUT) is twin


def test_a_cluster_client_fails_fast_on_a_paused_master(
    redis_cluster: RedisClusterHarness,
) -> None:
    client = redis_cluster.client()
    twin = bounded(client, OP_TIMEOUT)
    assert twin is not client
    twin.set("bounded:k", b"v")
    node = redis_cluster.node_for_key("bounded:k")
    node.pause()
    try:
        _fails_fast(lambda: twin.get("bounded:k"))
    finally:
        node.resume()
    redis_cluster.wait_healthy()


async def test_an_async_cluster_client_is_twinned_with_its_settings(
    redis_cluster: RedisClusterHarness,
) -> None:
    client = redis_cluster.async_client(decode_responses=True)
    twin = bounded(client, OP_TIMEOUT)
    try:
        assert await twin.set("bounded:a", "1")
        assert await twin.get("bounded:a") == "1"
        assert twin.connection_kwargs["socket_timeout"] == OP_TIMEOUT
    finally:
        await twin.aclose()
        await client.aclose()


def test_a_cluster_twin_made_while_the_cluster_is_unreachable_is_built_at_first_use(
    redis_cluster: RedisClusterHarness,
) -> None:
    client = redis_cluster.client()
    client.set("bounded:deferred", b"v")
    masters = [redis_cluster.node_for_key(key) for key in ("{a}", "{b}", "{c}")]
    paused = list({node.port: node for node in masters}.values())
    for node in paused:
        node.pause()
    try:
        started = time.monotonic()
        twin = bounded(client, OP_TIMEOUT)  # must not raise while the cluster is paused
        assert time.monotonic() - started < 10 * len(client.get_nodes()) * 2 * OP_TIMEOUT
        assert is_twin(twin)
        _fails_fast(lambda: twin.get("bounded:deferred"))
    finally:
        for node in paused:
            node.resume()
    redis_cluster.wait_healthy()
    assert twin.get("bounded:deferred") == b"v"
    close_twin(twin)
