"""Helpers for testing code that uses scalekit: fakes, failure controls, a pytest plugin.

``scalekit.testing`` is public API for *your* test suite. Importing it
imports no optional dependency; each helper imports its own (fakeredis,
SQLAlchemy) when called. The pytest plugin (registered when scalekit is
installed) offers the fixtures ``fake_clock``, ``scalekit_events``,
``redis_faults``, ``fake_redis``, ``fake_async_redis``, ``cache``,
``async_cache``, ``limiter``, ``async_limiter``, ``breaker``,
``sqlite_cluster``, ``routing_pool``, and on real servers (see
:mod:`scalekit.testing.servers`) ``pg_cluster`` and ``redis_node``; each
is used only by a test that names it.

Failures without servers: :func:`force_breaker` puts a breaker in any state;
:class:`RedisFaults` makes a fake Redis fail (stopped, timing out, READONLY)
for its next round trips; :func:`mark_node_down` and :func:`mark_node_lagging`
take a routing node out as a failed connection or a health check would;
:func:`assert_allowed` and :func:`assert_limited` check what a rate limiter
would decide for a key without counting a hit.

:func:`set_testing` turns every wait in scalekit off (retry backoff, the
cache's wait for a lease holder, a concurrency limiter's ``acquire(timeout=)``,
a routed read's ``sticky_timeout``) and caps retry attempts, so failure paths
in your tests never sleep::

    from scalekit.testing import set_testing

    with set_testing(True, attempts=1):  # or call it once in conftest.py
        ...
"""

from __future__ import annotations

from scalekit.instrumentation._hooks import capture_events
from scalekit.testing._breaker import BreakerTarget, force_breaker
from scalekit.testing._clock import FakeClock
from scalekit.testing._limits import (
    aassert_allowed,
    aassert_limited,
    assert_allowed,
    assert_limited,
)
from scalekit.testing._redis import (
    FaultKind,
    RedisFaults,
    fake_async_redis,
    fake_redis,
    faults_of,
)
from scalekit.testing._routing import (
    SQLiteCluster,
    mark_node_caught_up,
    mark_node_down,
    mark_node_lagging,
    sqlite_cluster,
)
from scalekit.testing._switch import TestingMode, is_testing, set_testing

__all__ = [
    "BreakerTarget",
    "FakeClock",
    "FaultKind",
    "RedisFaults",
    "SQLiteCluster",
    "TestingMode",
    "aassert_allowed",
    "aassert_limited",
    "assert_allowed",
    "assert_limited",
    "capture_events",
    "fake_async_redis",
    "fake_redis",
    "faults_of",
    "force_breaker",
    "is_testing",
    "mark_node_caught_up",
    "mark_node_down",
    "mark_node_lagging",
    "set_testing",
    "sqlite_cluster",
]
