"""The Django cache backend against Django's cache contract, on fakeredis (sync and async).

The same scenarios run on real Redis and Redis Cluster in
``tests/integration/test_django_cache_redis.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from scalekit.contrib.django import ScalekitCache
from tests.unit.django import _django  # noqa: F401  (configures Django)
from tests.unit.django._cache_scenarios import SCENARIOS, Driver

_ids = itertools.count()


def fake_maker() -> tuple[Any, Callable[..., ScalekitCache]]:
    server = fakeredis.FakeServer()
    namespace = f"dj{next(_ids)}"

    def make(**params: Any) -> ScalekitCache:
        options = {
            "CLIENT": lambda: fakeredis.FakeRedis(server=server),
            "ASYNC_CLIENT": lambda: fakeredis.FakeAsyncRedis(server=server),
            "NAMESPACE": namespace,
            "OP_TIMEOUT": 5.0,  # a contract test on a busy machine, not an outage test
            **params.pop("OPTIONS", {}),
        }
        return ScalekitCache("", {"OPTIONS": options, **params})

    return fakeredis.FakeRedis(server=server), make


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_contract(scenario: Any, is_async: bool) -> None:
    redis, make = fake_maker()
    await scenario(Driver(make(), is_async, redis, make))


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_redis_down_takes_the_fallback_never_an_error(is_async: bool) -> None:
    """The default ``bypass``: reads miss, writes are dropped, loaders run, nothing raises
    but ``incr`` (its ``ValueError`` for a missing key, which callers already handle)."""
    location = f"redis://127.0.0.1:{_closed_port()}/0"
    backend = ScalekitCache(location, {"OPTIONS": {"NAMESPACE": f"down{next(_ids)}"}})
    d = Driver(backend, is_async, None, lambda **_: backend)
    await d.set("key", "value")
    assert await d.get("key", "fallback") == "fallback"
    assert await d.add("key", "value") is False
    assert await d.get_or_set("key", lambda: "loaded") == "loaded"
    assert await d.get_many(["key"]) == {}
    assert await d.set_many({"key": 1}) == ["key"]
    assert await d.delete("key") is False
    assert await d.touch("key") is False
    assert await d.has_key("key") is False
    await d.delete_many(["key"])
    await d.clear()
    with pytest.raises(ValueError, match="not found"):
        await d.incr("key")
