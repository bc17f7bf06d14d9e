"""The Django cache backend's contract scenarios on real Redis and on Redis Cluster.

Clients are built as a Django project builds them: from ``LOCATION`` URLs
(``redis.Redis.from_url``, ``RedisCluster.from_url`` with ``CLUSTER``).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from scalekit.contrib.django import ScalekitCache
from tests.unit.django import _django  # noqa: F401  (configures Django)
from tests.unit.django._cache_scenarios import SCENARIOS, Driver

_ids = itertools.count()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_contract_on_redis(scenario: Any, is_async: bool, redis_client: Any) -> None:
    url = redis_client.connection_pool.connection_kwargs
    location = f"redis://{url['host']}:{url['port']}/0"
    namespace = f"dj{next(_ids)}"

    def make(**params: Any) -> ScalekitCache:
        options = {"NAMESPACE": namespace, **params.pop("OPTIONS", {})}
        return ScalekitCache(location, {"OPTIONS": options, **params})

    await scenario(Driver(make(), is_async, redis_client, make))


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_contract_on_cluster(scenario: Any, is_async: bool, redis_cluster: Any) -> None:
    client = redis_cluster.client()
    client.flushall()
    namespace = f"djc{next(_ids)}"
    host, port = redis_cluster.startup_nodes[0]
    location = f"redis://{host}:{port}"  # a cluster has no database number

    def make(**params: Any) -> ScalekitCache:
        options = {"NAMESPACE": namespace, "CLUSTER": True, **params.pop("OPTIONS", {})}
        return ScalekitCache(location, {"OPTIONS": options, **params})

    try:
        await scenario(Driver(make(), is_async, client, make))
    finally:
        client.close()
