"""breakers=, limiters=, caches=: state, fallback and since, read from public state, no I/O.

Real breakers, limiters and caches over fakeredis; Redis "goes down" by
disconnecting the fake server, so each takes its documented fallback.
"""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest

from scalekit.breaker import CircuitBreaker
from scalekit.cache import AsyncCache, Cache
from scalekit.errors import ConfigurationError
from scalekit.health import acheck_health, check_health, readiness
from scalekit.ratelimit import AsyncRateLimiter, ConcurrencyLimiter, RateLimiter
from scalekit.testing import FakeClock


def trip(breaker: CircuitBreaker, failures: int) -> None:
    def fail() -> None:
        raise ZeroDivisionError

    for _ in range(failures):
        with pytest.raises(ZeroDivisionError):
            breaker.call(fail)


def test_healthy_components_are_ok_and_json_ready() -> None:
    client = fakeredis.FakeRedis()
    breaker = CircuitBreaker("billing")
    limiter = RateLimiter(client)
    cache = Cache(client, namespace="app")
    assert limiter.hit("customer:1", "5/minute").allowed
    assert cache.get_or_set("user:1", lambda: {"id": 1}) == {"id": 1}

    report = check_health(breakers=[breaker], limiters={"api": limiter}, caches=cache)

    assert set(report.components) == {"breaker:billing", "limiter:api", "cache:app"}
    assert report.status == "ok", report.to_dict()
    for component in report.components.values():
        assert component.up is True and component.reasons == ()
        assert component.details["fallback"] is False
        assert component.details["since"] is not None
        assert component.required is False and component.latency_ms is None
    assert report.components["breaker:billing"].details["state"] == "closed"
    assert report.components["limiter:api"].details["state"] == "normal"
    assert report.components["cache:app"].details["state"] == "closed"
    json.dumps(report.to_dict(), allow_nan=False)


def test_redis_down_puts_limiter_and_cache_in_fallback_and_the_report_warns() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    limiter = RateLimiter(client)
    cache = Cache(client, namespace="app")
    server.connected = False

    assert limiter.hit("customer:1", "5/minute").allowed  # the local fallback answers
    assert cache.get_or_set("user:1", lambda: 1) == 1  # the loader runs

    report = check_health(limiters=limiter, caches={"users": cache})

    assert report.status == "warn"
    limiter_report = report.components["limiter:default"]
    assert limiter_report.status == "warn" and limiter_report.up is False
    assert limiter_report.details["state"] == "degraded" and limiter_report.details["fallback"]
    cache_report = report.components["cache:users"]
    assert cache_report.status == "warn" and cache_report.details["state"] == "open"
    assert cache_report.details["fallback"] is True
    assert cache_report.details["on_redis_down"] == "bypass"
    assert cache_report.details["fallbacks"] >= 1
    assert "on_redis_down='bypass'" in cache_report.reasons[0]


def test_an_open_breaker_warns_and_readiness_stays_ready() -> None:
    breaker = CircuitBreaker("billing", fail_max=2)
    trip(breaker, 2)

    report = check_health(breakers={"payments": breaker})
    component = report.components["breaker:payments"]
    assert report.status == "warn"
    assert component.details["state"] == "open" and component.details["fallback"] is True
    assert component.details["consecutive_failures"] == 2
    assert component.details["retry_after"] is not None
    assert component.reasons == ("circuit open: calls are rejected",)
    # A fallback in force is worth a look, not taking the instance out of rotation.
    assert readiness(breakers=breaker).status == "warn"


def test_since_is_when_a_check_first_saw_the_state() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("since-test", fail_max=1, clock=clock)
    first = check_health(breakers=breaker, clock=clock)
    assert first.components["breaker:since-test"].details["since"] == first.to_dict()["checked_at"]

    clock.advance(30.0)
    again = check_health(breakers=breaker, clock=clock)
    assert again.components["breaker:since-test"].details["since"] == first.to_dict()["checked_at"]

    trip(breaker, 1)
    clock.advance(5.0)
    opened = check_health(breakers=breaker, clock=clock)
    component = opened.components["breaker:since-test"]
    assert component.details["state"] == "open"
    assert component.details["since"] == opened.to_dict()["checked_at"]


async def test_async_components_in_both_shells() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server)
    limiter = AsyncRateLimiter(client)
    cache = AsyncCache(client, namespace="app")
    server.connected = False
    assert (await limiter.hit("customer:1", "5/minute")).allowed
    assert await cache.get_or_set("user:1", lambda: 1) == 1

    for report in (
        await acheck_health(limiters=limiter, caches=cache),
        check_health(limiters=limiter, caches=cache),  # no I/O: either colour
    ):
        assert report.status == "warn"
        assert report.components["limiter:default"].details["fallback"] is True
        assert report.components["cache:app"].details["fallback"] is True
    await limiter.aclose()
    await cache.aclose()


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"breakers": object()}, "breakers: 'object' must be a CircuitBreaker"),
        ({"breakers": {"": CircuitBreaker("x")}}, "non-empty"),
        ({"caches": [fakeredis.FakeRedis()]}, "must be a Cache or AsyncCache"),
        ({"limiters": {"a": "100/hour"}}, "must be a RateLimiter or AsyncRateLimiter"),
        (
            {"limiters": [RateLimiter(fakeredis.FakeRedis()), RateLimiter(fakeredis.FakeRedis())]},
            "name several limiters with a mapping",
        ),
        ({"breakers": [CircuitBreaker("x"), CircuitBreaker("x")]}, "share a name: breaker:x"),
    ],
)
def test_bad_arguments_raise_configuration_error(arguments: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        check_health(**arguments)


def test_a_concurrency_limiter_is_refused_clearly() -> None:
    limiter = ConcurrencyLimiter(fakeredis.FakeRedis(), limit=2)
    with pytest.raises(ConfigurationError, match="got ConcurrencyLimiter"):
        check_health(limiters=limiter)
