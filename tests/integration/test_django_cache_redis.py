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
        options = {"NAMESPACE": namespace, "OP_TIMEOUT": 5.0, **params.pop("OPTIONS", {})}
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
        options = {
            "NAMESPACE": namespace,
            "CLUSTER": True,
            "OP_TIMEOUT": 5.0,
            **params.pop("OPTIONS", {}),
        }
        return ScalekitCache(location, {"OPTIONS": options, **params})

    try:
        await scenario(Driver(make(), is_async, client, make))
    finally:
        client.close()


# Where django-redis (the usual Django Redis backend) departs from Django's cache
# contract, as these scenarios state it. Run so the table stays honest: a scenario
# django-redis starts passing fails here (strict xfail) and comes off the list.
DJANGO_REDIS_DEPARTS = {
    ("incr_is_atomic", "async"): "aincr is BaseCache's get + set: increments are lost",
    ("incr_keeps_the_ttl", "async"): "aincr is BaseCache's get + set: the TTL is reset",
    ("get_many_and_set_many", "sync"): "set_many returns None, not the list of failed keys",
    ("key_validation_warnings", "sync"): "no CacheKeyWarning",
    ("key_validation_warnings", "async"): "no CacheKeyWarning",
    ("planted_pickle_is_never_unpickled", "sync"): "plain pickle: a planted value is unpickled",
    ("planted_pickle_is_never_unpickled", "async"): "plain pickle: a planted value is unpickled",
    ("other_secret_reads_nothing", "sync"): "values are not signed",
    ("other_secret_reads_nothing", "async"): "values are not signed",
}


def _differential_cases() -> list[Any]:
    cases = []
    for scenario in SCENARIOS:
        for colour in ("sync", "async"):
            departs = DJANGO_REDIS_DEPARTS.get((scenario.__name__, colour))
            marks = [pytest.mark.xfail(reason=departs, strict=True)] if departs else []
            cases.append(
                pytest.param(
                    scenario, colour == "async", marks=marks, id=f"{scenario.__name__}-{colour}"
                )
            )
    return cases


@pytest.mark.parametrize(("scenario", "is_async"), _differential_cases())
async def test_django_redis_differential(scenario: Any, is_async: bool, redis_client: Any) -> None:
    """The same scenarios on django-redis's ``RedisCache``: where it departs, an xfail."""
    pytest.importorskip("django_redis")
    url = redis_client.connection_pool.connection_kwargs
    location = f"redis://{url['host']}:{url['port']}/0"

    def make(**params: Any) -> Any:
        from django.utils.module_loading import import_string

        params.pop("OPTIONS", None)  # scalekit's own options
        return import_string("django_redis.cache.RedisCache")(location, params)

    await scenario(Driver(make(), is_async, redis_client, make))
