"""pytest plugin: scalekit's fixtures for your tests, each opt-in by name.

Loaded through the ``pytest11`` entry point, so installing scalekit is
enough: a test asks for a fixture by naming it, nothing is autouse. It
imports nothing but pytest and scalekit's core; each fixture imports its
optional dependency (fakeredis, SQLAlchemy) when used.

Fakes, no servers: ``fake_clock``, ``scalekit_events``, ``redis_faults``,
``fake_redis``, ``fake_async_redis``, ``cache``, ``async_cache``,
``limiter``, ``async_limiter``, ``breaker``, ``sqlite_cluster`` and
``routing_pool``. Real servers (started once per session, see
:mod:`scalekit.testing.servers`): ``pg_cluster`` and ``redis_node``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

from scalekit.instrumentation import Event
from scalekit.testing import FakeClock, capture_events
from scalekit.testing._redis import RedisFaults
from scalekit.testing._redis import fake_async_redis as _make_fake_async_redis
from scalekit.testing._redis import fake_redis as _make_fake_redis
from scalekit.testing._routing import SQLiteCluster
from scalekit.testing._routing import sqlite_cluster as _make_sqlite_cluster

_fixture: Any
try:  # async fixtures through pytest-asyncio, in its strict mode and its auto mode alike
    from pytest_asyncio import fixture as _fixture
except ImportError:  # pragma: no cover - pytest then reports the async fixture it cannot run
    _fixture = pytest.fixture

_F = TypeVar("_F", bound=Callable[..., Any])


def _async_fixture(func: _F) -> _F:
    return cast("_F", _fixture(func))


if TYPE_CHECKING:
    from scalekit.breaker import CircuitBreaker
    from scalekit.cache import AsyncCache, Cache
    from scalekit.ratelimit import AsyncRateLimiter, RateLimiter
    from scalekit.routing import RoutingPool
    from scalekit.testing.servers import PgCluster, RedisNode


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fresh :class:`~scalekit.testing.FakeClock` at monotonic time 0."""
    return FakeClock()


@pytest.fixture
def scalekit_events() -> Iterator[list[Event]]:
    """Every scalekit event emitted during the test, in order."""
    with capture_events() as events:
        yield events


@pytest.fixture
def redis_faults() -> RedisFaults:
    """The failures ``fake_redis`` and ``fake_async_redis`` raise.

    ``redis_faults.fail("timeout", calls=2)``: the next two round trips time out.
    """
    return RedisFaults()


@pytest.fixture
def _scalekit_fake_server() -> Any:
    import fakeredis

    return fakeredis.FakeServer()


@pytest.fixture
def fake_redis(_scalekit_fake_server: Any, redis_faults: RedisFaults) -> Iterator[Any]:
    """A ``fakeredis.FakeRedis`` (Lua enabled), empty, failing as ``redis_faults`` says."""
    client = _make_fake_redis(server=_scalekit_fake_server, faults=redis_faults)
    try:
        yield client
    finally:
        client.close()


@_async_fixture
async def fake_async_redis(
    _scalekit_fake_server: Any, redis_faults: RedisFaults
) -> AsyncIterator[Any]:
    """A ``fakeredis.FakeAsyncRedis`` on the same fake server as ``fake_redis``."""
    client = _make_fake_async_redis(server=_scalekit_fake_server, faults=redis_faults)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def cache(fake_redis: Any, fake_clock: FakeClock) -> Iterator[Cache]:
    """A :class:`~scalekit.cache.Cache` on ``fake_redis``, timed by ``fake_clock``."""
    from scalekit.cache import Cache

    instance = Cache(fake_redis, clock=fake_clock, background_refresh=False)
    try:
        yield instance
    finally:
        instance.close()


@_async_fixture
async def async_cache(fake_async_redis: Any, fake_clock: FakeClock) -> AsyncIterator[AsyncCache]:
    """An :class:`~scalekit.cache.AsyncCache` on ``fake_async_redis``, timed by ``fake_clock``."""
    from scalekit.cache import AsyncCache

    instance = AsyncCache(fake_async_redis, clock=fake_clock, background_refresh=False)
    try:
        yield instance
    finally:
        await instance.aclose()


@pytest.fixture
def limiter(fake_redis: Any, fake_clock: FakeClock) -> Iterator[RateLimiter]:
    """A GCRA :class:`~scalekit.ratelimit.RateLimiter` on ``fake_redis``.

    Redis decides on its own clock (the fake server's ``TIME``); ``fake_clock``
    times the limiter's local fallback and its recovery probes.
    """
    from scalekit.ratelimit import RateLimiter

    instance = RateLimiter(fake_redis, clock=fake_clock)
    try:
        yield instance
    finally:
        instance.close()


@_async_fixture
async def async_limiter(
    fake_async_redis: Any, fake_clock: FakeClock
) -> AsyncIterator[AsyncRateLimiter]:
    """An :class:`~scalekit.ratelimit.AsyncRateLimiter` on ``fake_async_redis``."""
    from scalekit.ratelimit import AsyncRateLimiter

    instance = AsyncRateLimiter(fake_async_redis, clock=fake_clock)
    try:
        yield instance
    finally:
        await instance.aclose()


@pytest.fixture
def breaker(fake_clock: FakeClock) -> CircuitBreaker:
    """A :class:`~scalekit.breaker.CircuitBreaker` ``"test"``: 5 failures in a row trip it.

    In process, timed by ``fake_clock``; :func:`~scalekit.testing.force_breaker`
    puts it in any state.
    """
    from scalekit.breaker import CircuitBreaker

    return CircuitBreaker("test", fail_max=5, clock=fake_clock)


@pytest.fixture
def sqlite_cluster(tmp_path: Path, fake_clock: FakeClock) -> Iterator[SQLiteCluster]:
    """A primary and one replica (``"replica1"``) on a SQLite file.

    See :class:`~scalekit.testing.SQLiteCluster`: ``.pool``, ``.nodes_used()``.
    """
    cluster = _make_sqlite_cluster(tmp_path, clock=fake_clock)
    try:
        yield cluster
    finally:
        cluster.dispose()


@pytest.fixture
def routing_pool(sqlite_cluster: SQLiteCluster) -> RoutingPool:
    """``sqlite_cluster``'s :class:`~scalekit.routing.RoutingPool` (primary + ``replica1``)."""
    return sqlite_cluster.pool


# -- real servers (scalekit.testing.servers) ----------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL primary and 2 streaming replicas for the session (skips with no binaries).

    ``pg_cluster.url``, ``.replica_urls``, ``.engine()``; controls on its nodes
    (``pg_cluster.replicas[0].pause()``...). See :mod:`scalekit.testing.servers`.
    """
    from scalekit.testing.servers import ServersUnavailable, postgres_cluster

    try:
        # Its own temporary folder: pytest's are private to us, and PostgreSQL may run
        # as another user (when we are root).
        manager = postgres_cluster(replicas=2)
        cluster = manager.__enter__()
    except ServersUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        manager.__exit__(None, None, None)


@pytest.fixture(scope="session")
def redis_node() -> Iterator[RedisNode]:
    """A standalone Redis server for the session (skips with no binaries); ``redis_node.url``."""
    from scalekit.testing.servers import ServersUnavailable, redis_server

    try:
        manager = redis_server()
        node = manager.__enter__()
    except ServersUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield node
    finally:
        manager.__exit__(None, None, None)
