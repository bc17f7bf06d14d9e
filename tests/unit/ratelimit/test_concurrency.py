"""ConcurrencyLimiter and AsyncConcurrencyLimiter over the memory backend and fakeredis."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest
import redis.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import (
    ConcurrencyLimitExceeded,
    ConfigurationError,
    RateLimiterUnavailable,
    RateLimitExceeded,
)
from scalekit.instrumentation import FallbackUsed
from scalekit.ratelimit import (
    AsyncConcurrencyLimiter,
    ConcurrencyLimiter,
    MemoryBackend,
    RedisBackend,
)
from scalekit.ratelimit._core import concurrency_acquire
from scalekit.testing import FakeClock, capture_events, set_testing


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=50.0)


def test_at_most_limit_holders(clock: FakeClock) -> None:
    limiter = ConcurrencyLimiter(MemoryBackend(clock=clock), limit=2, clock=clock)
    first = limiter.acquire("job")
    second = limiter.acquire("job")
    assert (first.in_flight, second.in_flight) == (1, 2)
    with pytest.raises(ConcurrencyLimitExceeded) as caught:
        limiter.acquire("job")
    assert isinstance(caught.value, RateLimitExceeded)
    assert caught.value.in_flight == 2 and caught.value.limit == 2
    assert caught.value.retry_after == pytest.approx(60.0)
    with limiter.acquire("other"):
        pass
    first.release()
    first.release()  # idempotent
    with limiter.acquire("job") as third:
        assert third.in_flight == 2
    assert limiter.acquire("job").in_flight == 2


def test_a_dead_holders_lease_expires(clock: FakeClock) -> None:
    limiter = ConcurrencyLimiter(MemoryBackend(clock=clock), limit=1, lease=5.0, clock=clock)
    limiter.acquire("job")  # never released: its holder "died"
    with pytest.raises(ConcurrencyLimitExceeded):
        limiter.acquire("job")
    clock.advance(5.0)
    assert limiter.acquire("job").in_flight == 1


def test_renew_keeps_a_lease_alive(clock: FakeClock) -> None:
    limiter = ConcurrencyLimiter(MemoryBackend(clock=clock), limit=1, lease=5.0, clock=clock)
    lease = limiter.acquire("job")
    clock.advance(4.0)
    assert lease.renew()
    clock.advance(4.0)
    with pytest.raises(ConcurrencyLimitExceeded):
        limiter.acquire("job")
    clock.advance(2.0)
    assert not lease.renew()  # expired: the slot may already be someone else's


def test_acquire_waits_up_to_timeout(clock: FakeClock) -> None:
    limiter = ConcurrencyLimiter(MemoryBackend(clock=clock), limit=1, lease=1.0, clock=clock)
    limiter.acquire("job")
    lease = limiter.acquire("job", timeout=2.0)  # the first lease expires after 1 s
    assert lease.in_flight == 1
    assert 0.95 <= sum(clock.sleeps) <= 1.1
    limiter.acquire("job2")
    with pytest.raises(ConcurrencyLimitExceeded):
        limiter.acquire("job2", timeout=0.3)


@pytest.mark.parametrize("testing", [False, True])
async def test_testing_mode_denies_at_once_instead_of_waiting(
    clock: FakeClock, testing: bool
) -> None:
    # set_testing(True): acquire(timeout=...) decides as if the timeout had passed.
    limiter = ConcurrencyLimiter(MemoryBackend(clock=clock), limit=1, lease=10.0, clock=clock)
    alimiter = AsyncConcurrencyLimiter(MemoryBackend(clock=clock), limit=1, lease=10.0, clock=clock)
    limiter.acquire("job")
    await alimiter.acquire("job")
    with set_testing(testing):
        with pytest.raises(ConcurrencyLimitExceeded):
            limiter.acquire("job", timeout=2.0)
        with pytest.raises(ConcurrencyLimitExceeded):
            await alimiter.acquire("job", timeout=2.0)
    if testing:
        assert clock.sleeps == []
    else:
        assert sum(clock.sleeps) == pytest.approx(4.0)


async def test_async_context_manager(clock: FakeClock) -> None:
    limiter = AsyncConcurrencyLimiter(MemoryBackend(clock=clock), limit=1, lease=3.0, clock=clock)
    async with limiter.acquire("job") as lease:
        assert lease.in_flight == 1
        with pytest.raises(ConcurrencyLimitExceeded):
            await limiter.acquire("job")
    held = await limiter.acquire("job")
    assert await held.renew()
    clock.advance(3.5)
    async with limiter.acquire("job", timeout=0) as again:
        assert again.in_flight == 1


def test_on_fakeredis_leases_expire_on_the_servers_clock() -> None:
    limiter = ConcurrencyLimiter(fakeredis.FakeRedis(), limit=1, lease=0.2)
    limiter.acquire(b"\xffjob")
    with pytest.raises(ConcurrencyLimitExceeded):
        limiter.acquire(b"\xffjob")
    time.sleep(0.25)
    with limiter.acquire(b"\xffjob") as lease:
        assert lease.fallback is None and lease.renew()


async def test_async_on_fakeredis() -> None:
    client = fakeredis.FakeAsyncRedis()
    limiter = AsyncConcurrencyLimiter(client, limit=2, lease=10)
    async with limiter.acquire("job"), limiter.acquire("job"):
        with pytest.raises(ConcurrencyLimitExceeded):
            await limiter.acquire("job")
    assert await client.zcard(limiter._logic.key("job")) == 0
    await client.aclose()


class Down:
    def evalsha(self, *args: Any) -> Any:
        raise redis.exceptions.ConnectionError("down")

    def eval(self, *args: Any) -> Any:
        raise redis.exceptions.ConnectionError("down")

    def zrem(self, *args: Any) -> Any:
        raise redis.exceptions.ConnectionError("down")


@pytest.mark.parametrize(("fallback", "admitted"), [("allow", 5), ("deny", 0), ("local", 2)])
def test_fallbacks_when_the_store_is_down(fallback: str, admitted: int, clock: FakeClock) -> None:
    limiter = ConcurrencyLimiter(
        RedisBackend(Down()),
        limit=4,
        instances=2,
        fallback=fallback,
        clock=clock,  # type: ignore[arg-type]
    )
    leases = []
    with capture_events() as events:
        for _ in range(5):
            try:
                leases.append(limiter.acquire("job"))
            except ConcurrencyLimitExceeded:
                pass
    assert len(leases) == admitted
    assert all(lease.fallback == fallback for lease in leases)
    assert len([e for e in events if isinstance(e, FallbackUsed)]) == 1
    for lease in leases:
        lease.release()  # never raises, even with the store down


def test_fallback_raise_raises_one_scalekit_error_through_an_outage(clock: FakeClock) -> None:
    limiter = ConcurrencyLimiter(
        RedisBackend(Down()),
        limit=4,
        fallback="raise",
        recovery_interval=2.0,
        clock=clock,  # type: ignore[arg-type]
    )
    with pytest.raises(RateLimiterUnavailable) as first:
        limiter.acquire("job")
    assert isinstance(first.value.__cause__, redis.exceptions.ConnectionError)
    with pytest.raises(RateLimiterUnavailable) as skipped:
        limiter.acquire("job", timeout=5.0)  # skipped: no waiting on a store that is down
    assert skipped.value.__cause__ is None and skipped.value.retry_after == 2.0
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": 10**13},
        {"limit": 1, "lease": 0},
        {"limit": 1, "lease": 1e300},
        {"limit": 1, "lease": float("nan")},
        {"limit": 1, "fallback": "x"},
    ],
)
def test_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ConcurrencyLimiter(MemoryBackend(), **kwargs)


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1", None])
def test_bad_timeout(timeout: Any) -> None:
    with pytest.raises(ConfigurationError):
        ConcurrencyLimiter(MemoryBackend(), 1).acquire("k", timeout=timeout)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["acquire", "release"])), max_size=40),
    st.integers(1, 4),
)
def test_core_never_grants_more_than_the_limit(steps: list[tuple[int, str]], limit: int) -> None:
    leases: dict[str, float] = {}
    now = 0.0
    for number, (delta, action) in enumerate(steps):
        now += delta
        if action == "release" and leases:
            leases.pop(next(iter(leases)))
            continue
        granted, in_flight, retry_after, leases = concurrency_acquire(
            leases, now, limit, 5.0, f"id{number}"
        )
        live = [expiry for expiry in leases.values() if expiry > now]
        assert len(live) <= limit and in_flight <= limit
        assert granted or retry_after > 0
