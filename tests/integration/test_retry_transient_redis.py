"""transient.redis on real Redis errors: a stopped, killed, paused or read-only server.

Every error here is raised by redis-py talking to a real ``redis-server``
started by the harness; the policy tests then show a retry riding out the
outage once the server is back (sync and asyncio clients).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from scalekit.retry import Backoff, RetryPolicy, transient
from scalekit.testing import capture_events

pytestmark = pytest.mark.integration

# redis-py retries by itself by default; these tests want each error at once.
FAST_FAIL: dict[str, Any] = {
    "retry": Retry(NoBackoff(), 0),
    "socket_timeout": 0.3,
    "socket_connect_timeout": 0.3,
}


def key() -> str:
    return f"retry-transient-{uuid.uuid4().hex[:8]}"


def test_stopped_server_raises_a_transient_connection_error(redis_server_factory: Any) -> None:
    node = redis_server_factory()
    client = node.client(**FAST_FAIL)
    try:
        assert client.ping()
        node.stop()
        with pytest.raises(redis.exceptions.ConnectionError) as info:
            client.get(key())
        assert transient.redis(info.value)
    finally:
        client.close()


def test_paused_server_raises_a_transient_timeout(redis_server_factory: Any) -> None:
    node = redis_server_factory()
    client = node.client(**FAST_FAIL)
    try:
        assert client.ping()
        node.pause()
        with pytest.raises(redis.exceptions.TimeoutError) as info:
            client.get(key())
        assert transient.redis(info.value)
    finally:
        node.resume()
        client.close()


def test_writing_to_a_replica_raises_a_transient_read_only_error(
    redis_server_factory: Any,
) -> None:
    primary, replica = redis_server_factory(), redis_server_factory()
    client = replica.client(**FAST_FAIL)
    try:
        client.execute_command("REPLICAOF", primary.host, str(primary.port))
        with pytest.raises(redis.exceptions.ReadOnlyError) as info:
            client.set(key(), "v")
        # A demoted primary during a failover: a retry after the switch can succeed.
        assert transient.redis(info.value)
    finally:
        client.execute_command("REPLICAOF", "NO", "ONE")
        client.close()


def test_permanent_errors_are_not_transient(redis_client: Any, redis_server_factory: Any) -> None:
    name = key()
    redis_client.rpush(name, "x")
    with pytest.raises(redis.exceptions.ResponseError) as wrong_type:
        redis_client.get(name)  # WRONGTYPE
    assert not transient.redis(wrong_type.value)
    with pytest.raises(redis.exceptions.ResponseError) as unknown:
        redis_client.execute_command("NO-SUCH-COMMAND")
    assert not transient.redis(unknown.value)

    node = redis_server_factory()
    admin = node.client(**FAST_FAIL)
    admin.config_set("requirepass", "s3cret")
    admin.close()
    intruder = node.client(password="wrong", **FAST_FAIL)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError) as auth:
            intruder.ping()
        # An AuthenticationError is a ConnectionError to redis-py, but retrying it is futile.
        assert isinstance(auth.value, redis.exceptions.ConnectionError)
        assert not transient.redis(auth.value)
    finally:
        intruder.close()


def restart_when_scheduled(node: Any, *, after: int = 1) -> Callable[[object], None]:
    """A policy hook that starts ``node`` again once ``after`` retries were scheduled."""
    seen = 0

    def hook(event: object) -> None:
        nonlocal seen
        if getattr(event, "kind", "") == "retry.scheduled":
            seen += 1
            if seen == after and not node.running:
                node.start()

    return hook


@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_policy_rides_out_a_redis_restart(redis_server_factory: Any, outage: str) -> None:
    node = redis_server_factory()
    client = node.client(**FAST_FAIL)
    name = key()
    attempts = 0

    def incr() -> int:
        nonlocal attempts
        attempts += 1
        return int(client.incr(name))

    policy = RetryPolicy(
        attempts=5,
        backoff=Backoff.constant(0.05),
        retry_on=transient.redis,
        deadline=30.0,
        hooks=[restart_when_scheduled(node, after=2)],
    )
    try:
        assert policy.call(incr) == 1
        getattr(node, outage)()
        started = time.monotonic()
        with capture_events() as events:
            # Data is not persisted: the counter starts again from 1 on the new server.
            assert policy.call(incr) == 1
        assert attempts == 1 + 3  # two attempts against the dead server, then success
        errors = [e.error for e in events if e.kind == "retry.scheduled"]
        assert errors == ["ConnectionError", "ConnectionError"]
        assert time.monotonic() - started < 20
    finally:
        client.close()


async def test_async_policy_rides_out_a_paused_server(redis_server_factory: Any) -> None:
    node = redis_server_factory()
    client = redis.asyncio.Redis(host=node.host, port=node.port, **FAST_FAIL)
    name = key()
    attempts = 0

    def resume_on_first_retry(event: object) -> None:
        if getattr(event, "kind", "") == "retry.scheduled":
            node.resume()

    @RetryPolicy(
        attempts=4,
        backoff=Backoff.constant(0.05),
        retry_on=transient.redis,
        hooks=[resume_on_first_retry],
    )
    async def incr() -> int:
        nonlocal attempts
        attempts += 1
        return int(await client.incr(name))

    try:
        assert await incr() == 1
        node.pause()
        with capture_events() as events:
            # 3, not 2: the timed-out INCR sat in the frozen server's socket buffer and
            # ran on resume, then the retry ran it again. A timeout is transient, but no
            # proof that nothing happened: retry only idempotent commands (see the docs).
            assert await incr() == 3
        assert attempts == 3
        assert [e.error for e in events if e.kind == "retry.scheduled"] == ["TimeoutError"]
    finally:
        node.resume()
        await client.aclose()


async def test_cancelling_a_retrying_task_stops_it_while_redis_is_down(
    redis_server_factory: Any,
) -> None:
    node = redis_server_factory()
    client = redis.asyncio.Redis(host=node.host, port=node.port, **FAST_FAIL)
    node.kill()
    attempts = 0
    sleeping = asyncio.Event()

    def on_event(event: object) -> None:
        if getattr(event, "kind", "") == "retry.scheduled":
            sleeping.set()  # the first attempt failed; the task now sleeps 10 s

    @RetryPolicy(
        attempts=100, backoff=Backoff.constant(10.0), retry_on=transient.redis, hooks=[on_event]
    )
    async def get() -> Any:
        nonlocal attempts
        attempts += 1
        return await client.get(key())

    try:
        task = asyncio.create_task(get())
        await asyncio.wait_for(sleeping.wait(), timeout=5)
        await asyncio.sleep(0.05)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # A hang guard only: the point is that the 10 s backoff was not waited out.
        assert time.monotonic() - started < 5.0
        assert attempts == 1
    finally:
        await client.aclose()


def test_moved_from_a_plain_client_is_not_transient(redis_cluster: Any) -> None:
    """A plain client asking the wrong master gets MOVED: retrying the same node is futile."""
    name = key()
    owner = redis_cluster.node_for_key(name)
    other = next(node for node in redis_cluster.nodes if node.port != owner.port)
    client = other.client(**FAST_FAIL)
    try:
        with pytest.raises(redis.exceptions.MovedError) as info:
            client.get(name)
        assert info.value.port == owner.port
        assert not transient.redis(info.value)
    finally:
        client.close()


def test_cluster_client_follows_redirections_itself(redis_cluster: Any) -> None:
    """MOVED/ASK never reach the policy: the cluster client follows them."""
    client = redis_cluster.client()
    policy = RetryPolicy(attempts=2, backoff=Backoff.none(), retry_on=transient.redis)
    try:
        with capture_events() as events:
            for index in range(30):  # keys spread over every master's slots
                name = f"{key()}-{index}"
                policy.call(client.set, name, index)
                assert int(policy.call(client.get, name)) == index
        assert [e for e in events if e.kind.startswith("retry.")] == []
    finally:
        client.close()
