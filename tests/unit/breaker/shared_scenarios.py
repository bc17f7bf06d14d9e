"""Scenarios of the Redis-shared breaker, run on fakeredis here and on real Redis
(standalone and Cluster) in ``tests/integration/test_breaker_redis.py``.

Each breaker stands for one process: two breakers with the same name on the
same Redis share state. Local caches run on a :class:`FakeClock` (moved by
hand); open durations are measured by Redis ``TIME``, so the scenarios sleep
for the (short) ``reset_timeout`` they configure.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from scalekit.breaker import CircuitBreaker, RedisStorage, State
from scalekit.errors import CircuitOpenError
from scalekit.testing import FakeClock

OPEN_SECONDS = 0.3
# Scenarios that never wait for the circuit to half-open keep it open for long, so a
# slow machine cannot let the open duration pass in the middle of a scenario.
LONG_OPEN_SECONDS = 30.0


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom


class Fleet:
    """Breakers of one name on one Redis, one per simulated process."""

    def __init__(self, client_factory: Callable[[], Any], **options: Any) -> None:
        self.client_factory = client_factory
        self.name = f"svc-{uuid.uuid4().hex[:8]}"
        self.clock = FakeClock()
        self.options = {"fail_max": 2, "reset_timeout": OPEN_SECONDS, **options}
        self.storage_options: dict[str, Any] = {}

    def process(self, **storage_options: Any) -> CircuitBreaker:
        storage = RedisStorage(
            self.client_factory(),
            local_cache_seconds=1.0,
            **{**self.storage_options, **storage_options},
        )
        return CircuitBreaker(self.name, storage=storage, clock=self.clock, **self.options)

    def expire_caches(self) -> None:
        self.clock.advance(1.0)

    def wait_open(self) -> None:
        time.sleep(OPEN_SECONDS + 0.05)
        self.clock.advance(OPEN_SECONDS + 0.05)


def count_script_calls(breaker: CircuitBreaker) -> list[int]:
    shared = breaker._shared
    assert shared is not None
    calls = [0]
    script = shared._script

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return script(*args, **kwargs)

    shared._script = counting
    return calls


def trip_is_seen_by_other_processes(client_factory: Callable[[], Any]) -> None:
    fleet = Fleet(client_factory, reset_timeout=LONG_OPEN_SECONDS)
    a, b = fleet.process(), fleet.process()
    assert b.call(len, "x") == 1  # b caches "closed"
    for _ in range(2):
        with pytest.raises(Boom):
            a.call(fail)
    assert a.state is State.OPEN
    fleet.expire_caches()
    runs = []
    with pytest.raises(CircuitOpenError) as error:
        b.call(lambda: runs.append(1))
    assert runs == []
    assert error.value.retry_after is not None
    assert LONG_OPEN_SECONDS - 10 < error.value.retry_after <= LONG_OPEN_SECONDS
    assert b.state is State.OPEN


def success_path_makes_no_round_trip(client_factory: Callable[[], Any]) -> None:
    fleet = Fleet(client_factory)
    breaker = fleet.process()
    breaker.call(len, "x")
    calls = count_script_calls(breaker)
    for _ in range(100):
        breaker.call(len, "x")
    assert calls[0] == 0
    fleet.expire_caches()
    breaker.call(len, "x")
    assert calls[0] == 1  # one refresh per local_cache_seconds


def open_rejections_make_no_round_trip(client_factory: Callable[[], Any]) -> None:
    fleet = Fleet(client_factory, reset_timeout=LONG_OPEN_SECONDS)
    breaker = fleet.process()
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    calls = count_script_calls(breaker)
    for _ in range(20):
        with pytest.raises(CircuitOpenError):
            breaker.call(len, "x")
    assert calls[0] == 0
    assert breaker.metrics().rejected == 20


def successes_are_flushed_into_the_shared_window(client_factory: Callable[[], Any]) -> None:
    fleet = Fleet(client_factory, fail_max=None, failure_rate=0.5, window=20, min_calls=10)
    a, b = fleet.process(), fleet.process()
    for _ in range(6):
        a.call(len, "x")  # counted locally, no round trip after the first
    for _ in range(4):
        with pytest.raises(Boom):
            b.call(fail)
    assert b.state is State.CLOSED  # 4 failures: below min_calls
    fleet.expire_caches()
    a.call(len, "x")  # the refresh flushes a's 6 successes: 10 calls, 4 failed
    assert a.state is State.CLOSED
    with pytest.raises(Boom):
        b.call(fail)
    assert b.state is State.CLOSED  # 5 of 11
    with pytest.raises(Boom):
        b.call(fail)
    assert b.state is State.OPEN  # 6 of 12: the shared window saw a's successes


def half_open_probe_is_reserved_across_processes(client_factory: Callable[[], Any]) -> None:
    fleet = Fleet(client_factory, half_open_max_calls=1)
    a, b = fleet.process(), fleet.process()
    for _ in range(2):
        with pytest.raises(Boom):
            a.call(fail)
    fleet.wait_open()
    probe = a.acquire()
    assert probe.is_probe
    with pytest.raises(CircuitOpenError) as error:
        b.acquire()
    assert error.value.retry_after is not None and error.value.retry_after > 0
    probe.record_success()
    assert a.state is State.CLOSED
    fleet.expire_caches()
    assert b.call(len, "ab") == 2
    assert b.state is State.CLOSED


def stale_probe_is_released_after_probe_timeout(client_factory: Callable[[], Any]) -> None:
    fleet = Fleet(client_factory, probe_timeout=0.3)
    a, b = fleet.process(), fleet.process()
    for _ in range(2):
        with pytest.raises(Boom):
            a.call(fail)
    fleet.wait_open()
    lost = a.acquire()  # this "process" dies without reporting
    assert lost.is_probe
    with pytest.raises(CircuitOpenError):
        b.acquire()
    time.sleep(0.35)
    b.acquire().record_success()
    assert b.state is State.CLOSED


def failed_probe_reopens_for_longer(client_factory: Callable[[], Any]) -> None:
    fleet = Fleet(client_factory, reset_backoff=2.0)
    a = fleet.process()
    for _ in range(2):
        with pytest.raises(Boom):
            a.call(fail)
    fleet.wait_open()
    with pytest.raises(Boom):
        a.call(fail)
    with pytest.raises(CircuitOpenError) as error:
        a.call(len, "x")
    assert error.value.retry_after is not None
    assert OPEN_SECONDS < error.value.retry_after <= 2 * OPEN_SECONDS


def manual_commands_are_shared(client_factory: Callable[[], Any]) -> None:
    fleet = Fleet(client_factory)
    a, b = fleet.process(), fleet.process()
    b.call(len, "x")
    a.force_open()
    fleet.expire_caches()
    with pytest.raises(CircuitOpenError) as error:
        b.call(len, "x")
    assert error.value.retry_after is None
    a.disable()
    fleet.expire_caches()
    for _ in range(5):
        with pytest.raises(Boom):
            b.call(fail)
    assert b.state is State.DISABLED
    a.close()
    fleet.expire_caches()
    assert b.call(len, "xy") == 2
    assert b.state is State.CLOSED


def keys_share_one_hash_tag(client_factory: Callable[[], Any]) -> None:
    fleet = Fleet(client_factory, fail_max=None, failure_rate=0.5, window=4, min_calls=4)
    breaker = fleet.process()
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    keys = RedisStorage(client_factory()).keys(fleet.name)
    tags = {key[key.index("{") : key.index("}") + 1] for key in keys}
    assert tags == {f"{{scalekit:breaker:{fleet.name}}}"}
    client = client_factory()
    assert client.exists(keys[0]) == 1
    assert client.exists(keys[2]) == 1  # the count window list
    assert client.pttl(keys[0]) > 0


def time_window_forgets_old_calls(client_factory: Callable[[], Any]) -> None:
    """Buckets older than ``window_seconds`` (by Redis TIME) drop out of the rate."""
    fleet = Fleet(
        client_factory,
        fail_max=None,
        failure_rate=0.5,
        window_seconds=1.2,
        window_buckets=4,
        min_calls=3,
        reset_timeout=LONG_OPEN_SECONDS,
    )
    a, b = fleet.process(), fleet.process()
    for breaker in (a, b):
        with pytest.raises(Boom):
            breaker.call(fail)
    time.sleep(1.3)  # both failures fall out of the window
    a.call(len, "x")
    fleet.expire_caches()
    a.call(len, "x")  # flushes the success: 1 call in the window, not 3 with 2 failures
    assert a.state is State.CLOSED
    with pytest.raises(Boom):
        b.call(fail)
    assert b.state is State.CLOSED  # 1 of 2: below min_calls
    with pytest.raises(Boom):
        b.call(fail)
    assert b.state is State.OPEN  # 2 of 3


def fail_open_uses_the_local_breaker(breaker: CircuitBreaker, events: list[Any]) -> None:
    """``breaker``'s Redis is down: calls run, the local breaker still trips."""
    from scalekit.instrumentation import FallbackUsed

    assert breaker.call(len, "abc") == 3
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(fail)
    with pytest.raises(CircuitOpenError):
        breaker.call(len, "x")
    fallbacks = [e for e in events if isinstance(e, FallbackUsed)]
    assert len(fallbacks) == 1  # once per incident
    assert fallbacks[0].fallback == "fail_open"


def fail_closed_rejects(breaker: CircuitBreaker) -> None:
    runs: list[int] = []
    with pytest.raises(CircuitOpenError) as error:
        breaker.call(lambda: runs.append(1))
    assert runs == []
    assert error.value.retry_after is not None and error.value.retry_after > 0


SYNC_SCENARIOS = [
    trip_is_seen_by_other_processes,
    success_path_makes_no_round_trip,
    open_rejections_make_no_round_trip,
    successes_are_flushed_into_the_shared_window,
    half_open_probe_is_reserved_across_processes,
    stale_probe_is_released_after_probe_timeout,
    failed_probe_reopens_for_longer,
    manual_commands_are_shared,
    keys_share_one_hash_tag,
    time_window_forgets_old_calls,
]


async def async_scenario(client_factory: Callable[[], Any]) -> None:
    """The async front-ends over an asyncio client: trip, share, probe, close."""
    fleet = Fleet(client_factory)
    a, b = fleet.process(), fleet.process()

    @a
    async def failing() -> None:
        raise Boom

    async def ok(x: str) -> int:
        return len(x)

    assert await b.acall(ok, "x") == 1
    for _ in range(2):
        with pytest.raises(Boom):
            await failing()
    fleet.expire_caches()
    with pytest.raises(CircuitOpenError):
        await b.acall(ok, "x")
    fleet.wait_open()
    async with b.guard() as probe:
        assert probe.is_probe
        with pytest.raises(CircuitOpenError):
            await a.aacquire()
    assert b.state is State.CLOSED
    await a.aforce_open()
    fleet.expire_caches()
    with pytest.raises(CircuitOpenError):
        await b.acall(ok, "x")
    await b.aclose_circuit()
    assert await b.acall(ok, "abc") == 3
    # The sync front-ends refuse an asyncio client.
    from scalekit.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        b.call(len, "x")
    for breaker in (a, b):  # release the bounded twins the storages made
        assert breaker._shared is not None
        await breaker._shared.storage.aclose()
