"""``@ratelimit`` and ``RateLimitMiddleware`` through Django's test clients, sync and async.

Headers are parsed as HTTP structured fields (``http_sf``), as a client would.
``tests/integration/test_django_ratelimit_redis.py`` runs these tests again on
a real Redis (it overrides the ``scalekit_redis`` fixture).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import fakeredis
import http_sf
import pytest
from django.core import checks
from django.test import AsyncClient, Client, override_settings

from scalekit.contrib.django import _settings
from tests.unit.django import _django, _views  # noqa: F401  (configures Django)

URLS = "tests.unit.django._views"
MIDDLEWARE = ["scalekit.contrib.django.RateLimitMiddleware"]


@pytest.fixture
def scalekit_redis() -> dict[str, Any]:
    """The ``SCALEKIT`` keys that point the limiters at a Redis (fakeredis here)."""
    server = fakeredis.FakeServer()
    return {
        "REDIS_CLIENT": lambda: fakeredis.FakeRedis(server=server),
        "ASYNC_REDIS_CLIENT": lambda: fakeredis.FakeAsyncRedis(server=server),
    }


@pytest.fixture
def configure(scalekit_redis: dict[str, Any]) -> Iterator[Any]:
    """``configure(RATELIMIT=..., MIDDLEWARE=...)``: settings for one test."""
    overrides: list[Any] = []

    def apply(middleware: list[str] | None = None, **scalekit: Any) -> None:
        override = override_settings(
            ROOT_URLCONF=URLS,
            MIDDLEWARE=MIDDLEWARE if middleware is None else middleware,
            SCALEKIT={**scalekit_redis, **scalekit},
        )
        override.enable()
        overrides.append(override)
        _settings.reset()

    try:
        yield apply
    finally:
        for override in reversed(overrides):
            override.disable()
        _settings.reset()


def parsed(response: Any) -> tuple[list[Any], list[Any]]:
    """The RateLimit-Policy and RateLimit fields as structured-field lists."""
    policy = http_sf.parse(response["RateLimit-Policy"].encode(), tltype="list")
    state = http_sf.parse(response["RateLimit"].encode(), tltype="list")
    return policy, state


@pytest.mark.parametrize("view", ["limited", "alimited"])
def test_decorator_sync_client(configure: Any, view: str) -> None:
    configure(middleware=[])
    client = Client()
    for remaining in (1, 0):
        response = client.get(f"/{view}")
        assert response.status_code == 200
        policy, state = parsed(response)
        assert [params for _, params in policy] == [{"q": 2, "w": 60}]
        assert state[0][1]["r"] == remaining
        assert 0 <= state[0][1]["t"] <= 60
        assert "Retry-After" not in response
    _views.calls.clear()
    response = client.get(f"/{view}")
    assert response.status_code == 429
    assert _views.calls == []  # the view did not run
    assert 1 <= int(response["Retry-After"]) <= 30
    assert parsed(response)[1][0][1]["r"] == 0


@pytest.mark.parametrize("view", ["limited", "alimited"])
async def test_decorator_async_client(configure: Any, view: str) -> None:
    configure(middleware=[])
    client = AsyncClient()
    statuses = [(await client.get(f"/{view}")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_middleware_and_decorator_give_one_header_set(configure: Any, is_async: bool) -> None:
    configure(RATELIMIT={"DEFAULT": "10/second", "KEY": "ip"})
    view = "alimited" if is_async else "limited"
    if is_async:
        response = await AsyncClient().get(f"/{view}")
    else:
        response = Client().get(f"/{view}")
    assert response.status_code == 200
    policy, state = parsed(response)
    assert sorted((params["q"], params["w"]) for _, params in policy) == [(2, 60), (10, 1)]
    names = [name for name, _ in policy]
    assert len(names) == len(set(names)) == 2
    assert sorted(name for name, _ in state) == sorted(names)
    headers = [name.lower() for name in response.headers]
    assert headers.count("ratelimit") == headers.count("ratelimit-policy") == 1


async def test_middleware_denies_async(configure: Any) -> None:
    configure(RATELIMIT={"DEFAULT": "2/minute"})
    client = AsyncClient()
    statuses = [(await client.get("/aplain")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_middleware_denies_sync_and_exempts(configure: Any) -> None:
    configure(RATELIMIT={"DEFAULT": "2/minute", "EXEMPT": ["/health"]})
    client = Client()
    assert [client.get("/plain").status_code for _ in range(3)] == [200, 200, 429]
    response = client.get("/health/plain")
    assert response.status_code == 200
    assert "RateLimit" not in response


def test_key_function_counts_each_key(configure: Any) -> None:
    configure(middleware=[])
    client = Client()
    a = [client.get("/by-key", HTTP_X_API_KEY="a").status_code for _ in range(4)]
    b = client.get("/by-key", HTTP_X_API_KEY="b").status_code
    assert (a, b) == ([200, 200, 200, 429], 200)


def test_methods_filter(configure: Any) -> None:
    configure(middleware=[])
    client = Client()
    assert [client.get("/writes").status_code for _ in range(3)] == [200, 200, 200]
    assert [client.post("/writes").status_code for _ in range(2)] == [200, 429]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_redis_down_never_a_500(configure: Any, is_async: bool) -> None:
    """The default ``local`` fallback keeps limiting in the process; no request fails."""
    configure(
        REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0",
        REDIS_CLIENT=None,
        ASYNC_REDIS_CLIENT=None,
        RATELIMIT={"DEFAULT": "3/minute"},
    )
    if is_async:
        client = AsyncClient()
        statuses = [(await client.get("/aplain")).status_code for _ in range(4)]
    else:
        statuses = [Client().get("/plain").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


@pytest.mark.parametrize(
    ("scalekit", "expected"),
    [
        ([], "scalekit.E001"),
        ({"RATELIMITS": {}}, "scalekit.E002"),
        ({"RATELIMIT": {"DEFALT": "1/s"}, "REDIS_URL": "redis://localhost"}, "scalekit.E002"),
        ({"RATELIMIT": {"DEFAULT": "lots"}, "REDIS_URL": "redis://localhost"}, "scalekit.E003"),
        ({"RATELIMIT": {"KEY": "cookie"}, "REDIS_URL": "redis://localhost"}, "scalekit.E004"),
        ({"REDIS_URL": "http://x"}, "scalekit.E005"),
        ({"REDIS_CLIENT": "no.such.factory"}, "scalekit.E005"),
        ({"ROUTING": {"REPLICAS": ["replica9"]}}, "scalekit.E006"),
        ({"ROUTING": {"MAX_LAG_SECONDS": -1}}, "scalekit.E007"),
        ({"RATELIMIT": {"FALLBACK": "maybe"}, "REDIS_URL": "redis://localhost"}, "scalekit.E007"),
        ({"RATELIMIT": {"DEFAULT": "1/s"}}, "scalekit.W001"),
    ],
)
def test_system_checks(scalekit: Any, expected: str) -> None:
    with override_settings(SCALEKIT=scalekit):
        found = [message.id for message in checks.run_checks(tags=["scalekit"])]
    assert found == [expected]


def test_good_settings_pass_the_checks() -> None:
    good = {
        "REDIS_URL": "redis://localhost:6379/0",
        "RATELIMIT": {"DEFAULT": "10/second; 1000/hour", "KEY": "header:X-Api-Key"},
        "ROUTING": {"PRIMARY": "default", "REPLICAS": [], "MAX_LAG_SECONDS": 5},
        "CONSISTENCY": {"COOKIE": "lsn"},
    }
    with override_settings(SCALEKIT=good):
        assert checks.run_checks(tags=["scalekit"]) == []
