"""The Redis-shared breaker on fakeredis (the same scenarios run on real Redis in
``tests/integration/test_breaker_redis.py``), plus Redis-down behaviour."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalekit.breaker import CircuitBreaker, RedisStorage, State
from scalekit.errors import CircuitOpenError, ConfigurationError
from scalekit.instrumentation import Recovered
from scalekit.testing import FakeClock, capture_events
from tests.unit.breaker import shared_scenarios as scenarios


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.mark.parametrize("scenario", scenarios.SYNC_SCENARIOS, ids=lambda f: f.__name__)
def test_shared_scenarios(scenario: Callable[[Any], None], server: fakeredis.FakeServer) -> None:
    scenario(lambda: fakeredis.FakeRedis(server=server))


async def test_async_scenario(server: fakeredis.FakeServer) -> None:
    await scenarios.async_scenario(lambda: fakeredis.FakeAsyncRedis(server=server))


def test_redis_down_fail_open_then_recovered(server: fakeredis.FakeServer) -> None:
    clock = FakeClock()
    storage = RedisStorage(fakeredis.FakeRedis(server=server), retry_interval=5.0)
    breaker = CircuitBreaker("svc", fail_max=2, reset_timeout=30.0, storage=storage, clock=clock)
    breaker.call(len, "x")
    server.connected = False
    with capture_events() as events:
        scenarios.fail_open_uses_the_local_breaker(breaker, events)
        metrics = breaker.metrics()
        assert metrics.degraded and metrics.fallback_incidents == 1
        assert metrics.state is State.OPEN  # the local breaker's state while degraded
        server.connected = True
        breaker.close()  # the operator closes it: through Redis, which is back
        clock.advance(5.0)
        assert breaker.call(len, "ab") == 2
    assert any(isinstance(e, Recovered) for e in events)
    assert breaker.state is State.CLOSED
    metrics = breaker.metrics()
    assert not metrics.degraded and metrics.fallback_incidents == 1


def test_redis_down_fail_closed(server: fakeredis.FakeServer) -> None:
    clock = FakeClock()
    storage = RedisStorage(
        fakeredis.FakeRedis(server=server), on_redis_error="fail_closed", retry_interval=2.0
    )
    breaker = CircuitBreaker("svc", storage=storage, clock=clock)
    server.connected = False
    scenarios.fail_closed_rejects(breaker)
    server.connected = True
    with pytest.raises(CircuitOpenError):
        breaker.call(len, "x")  # not retried before retry_interval
    clock.advance(2.0)
    assert breaker.call(len, "x") == 1


def test_redis_down_during_a_failure_record_keeps_the_error(
    server: fakeredis.FakeServer,
) -> None:
    breaker = CircuitBreaker(
        "svc", storage=RedisStorage(fakeredis.FakeRedis(server=server)), clock=FakeClock()
    )
    breaker.call(len, "x")
    server.connected = False
    with pytest.raises(scenarios.Boom):  # the caller sees its own error, not Redis's
        breaker.call(scenarios.fail)


async def test_redis_down_async_fail_open(server: fakeredis.FakeServer) -> None:
    clock = FakeClock()
    storage = RedisStorage(fakeredis.FakeAsyncRedis(server=server))
    breaker = CircuitBreaker("svc", fail_max=1, storage=storage, clock=clock)
    server.connected = False

    async def ok() -> str:
        return "ran"

    assert await breaker.acall(ok) == "ran"


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"client": object()}, "client"),
        ({"prefix": "a{b}"}, "prefix"),
        ({"local_cache_seconds": -1}, "local_cache_seconds"),
        ({"retry_interval": 0}, "retry_interval"),
        ({"ttl_seconds": float("inf")}, "ttl_seconds"),
        ({"on_redis_error": "ignore"}, "on_redis_error"),
        ({"op_timeout": 0}, "op_timeout"),
        ({"op_timeout": "fast"}, "op_timeout"),
    ],
)
def test_bad_storage_parameters(kwargs: dict[str, Any], parameter: str) -> None:
    options: dict[str, Any] = {"client": fakeredis.FakeRedis(), **kwargs}
    with pytest.raises(ConfigurationError) as error:
        RedisStorage(**options)
    assert error.value.parameter == parameter


POLICIES = {
    "consecutive": {"fail_max": 3},
    "rate": {"failure_rate": 0.5, "window": 6, "min_calls": 3},
    "both": {"fail_max": 2, "failure_rate": 0.6, "window": 5, "min_calls": 4},
    # A time window too long for anything to expire during the test (the script
    # reads Redis TIME, the core a FakeClock): it must count exactly like the core.
    "time": {"failure_rate": 0.5, "window_seconds": 1000.0, "min_calls": 3},
    "slow": {
        "failure_rate": 0.9,
        "window": 5,
        "min_calls": 3,
        "slow_call_seconds": 1.0,
        "slow_call_rate": 0.6,
    },
}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(POLICIES)),
    outcomes=st.lists(
        st.sampled_from(["success", "failure", "ignored", "slow", "slow_failure"]), max_size=30
    ),
)
def test_the_lua_script_admits_exactly_as_the_core(kind: str, outcomes: list[str]) -> None:
    """Differential test: the shared state machine (Lua on fakeredis) and the pure
    core, fed the same outcomes, admit and reject exactly the same calls."""
    options: dict[str, Any] = {**POLICIES[kind], "reset_timeout": 1000.0}
    clock = FakeClock()
    local = CircuitBreaker("local", clock=clock, **options)
    storage = RedisStorage(fakeredis.FakeRedis(), local_cache_seconds=0.0)
    shared = CircuitBreaker("shared", clock=clock, storage=storage, **options)
    for step, outcome in enumerate(outcomes):
        admitted = []
        for breaker in (local, shared):
            try:
                permit = breaker.acquire()
            except CircuitOpenError:
                admitted.append(False)
                continue
            admitted.append(True)
            if outcome == "success":
                permit.record_success(duration=0.1)
            elif outcome == "failure":
                permit.record_failure(duration=0.1)
            elif outcome == "slow":
                permit.record_success(duration=2.0)
            elif outcome == "slow_failure":
                permit.record_failure(duration=2.0)
            else:
                permit.release()
        assert admitted[0] == admitted[1], (step, outcomes[: step + 1])


def test_an_open_state_outlives_a_shorter_ttl(server: fakeredis.FakeServer) -> None:
    client = fakeredis.FakeRedis(server=server)
    storage = RedisStorage(client, ttl_seconds=1.0)
    breaker = CircuitBreaker("svc", fail_max=1, reset_timeout=300.0, storage=storage)
    with pytest.raises(scenarios.Boom):
        breaker.call(scenarios.fail)
    assert breaker.state is State.OPEN
    assert client.pttl(storage.keys("svc")[0]) > 299_000


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_a_redis_outage_is_logged_once_per_incident(
    server: fakeredis.FakeServer, mode: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """200 calls through an outage, Redis probed 20 times: one WARNING, one line at recovery."""
    clock = FakeClock()
    storage = RedisStorage(
        fakeredis.FakeRedis(server=server), retry_interval=1.0, on_redis_error=mode
    )
    breaker = CircuitBreaker("svc", fail_max=1000, storage=storage, clock=clock)
    breaker.call(len, "x")
    caplog.set_level(logging.DEBUG, logger="scalekit")
    server.connected = False
    clock.advance(5.0)
    for call in range(200):
        if call % 10 == 9:
            clock.advance(1.0)  # past retry_interval: Redis is probed (and fails) again
        try:
            breaker.call(len, "x")
        except CircuitOpenError:
            assert mode == "fail_closed"
    lines = [r for r in caplog.records if r.name.startswith("scalekit")]
    warnings = [r.getMessage() for r in lines if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and mode in warnings[0], warnings
    assert breaker.metrics().fallback_incidents == 1
    caplog.clear()
    server.connected = True
    clock.advance(1.0)
    assert breaker.call(len, "xy") == 2
    lines = [r for r in caplog.records if r.name.startswith("scalekit")]
    assert [r.levelno for r in lines if r.levelno >= logging.INFO] == [logging.INFO]
    assert any("fallback.recovered" in r.getMessage() for r in lines)
