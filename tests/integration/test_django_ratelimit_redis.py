"""``@ratelimit`` and ``RateLimitMiddleware`` on a real Redis: the unit tests, run again.

The limiters are built as a project builds them, from ``SCALEKIT['REDIS_URL']``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.django.test_ratelimit import (
    configure,
    test_decorator_async_client,
    test_decorator_sync_client,
    test_key_function_counts_each_key,
    test_methods_filter,
    test_middleware_and_decorator_give_one_header_set,
    test_middleware_denies_async,
    test_middleware_denies_sync_and_exempts,
)

__all__ = [
    "configure",
    "test_decorator_async_client",
    "test_decorator_sync_client",
    "test_key_function_counts_each_key",
    "test_methods_filter",
    "test_middleware_and_decorator_give_one_header_set",
    "test_middleware_denies_async",
    "test_middleware_denies_sync_and_exempts",
]


@pytest.fixture
def scalekit_redis(redis_client: Any) -> dict[str, Any]:
    """``REDIS_URL`` of the harness's Redis (flushed by ``redis_client``)."""
    kwargs = redis_client.connection_pool.connection_kwargs
    return {"REDIS_URL": f"redis://{kwargs['host']}:{kwargs['port']}/0"}


def test_redis_stopped_mid_run_is_never_a_500(configure: Any, redis_server_factory: Any) -> None:
    """Redis stops between requests: the ``local`` fallback answers; nothing fails."""
    from django.test import Client
    from redis.retry import Retry  # noqa: F401  (the limiter bounds its own commands)

    node = redis_server_factory()
    configure(REDIS_URL=node.url, RATELIMIT={"DEFAULT": "3/minute"})
    client = Client()
    assert client.get("/plain").status_code == 200
    node.stop()
    statuses = [client.get("/plain").status_code for _ in range(4)]
    assert 500 not in statuses
    assert statuses[-1] == 429
