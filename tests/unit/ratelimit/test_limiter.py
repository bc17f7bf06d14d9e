"""RateLimiter and AsyncRateLimiter over fakes: one scenario list, run through both shells.

Stores: the memory backend on a FakeClock, and fakeredis (the Lua scripts).
Failures come from a switchable proxy that raises ``ConnectionError`` while
``down``, and counts the calls that reach it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis.exceptions

from scalekit.errors import (
    CircuitOpenError,
    ConfigurationError,
    RateLimiterUnavailable,
    RateLimitExceeded,
)
from scalekit.instrumentation import FallbackUsed, Recovered
from scalekit.ratelimit import (
    AsyncRateLimiter,
    AsyncRedisBackend,
    Limit,
    MemoryBackend,
    RateLimiter,
    RedisBackend,
    ShadowDenied,
)
from scalekit.testing import FakeClock, capture_events
from tests.unit.ratelimit._drivers import AsyncDriver, SyncDriver

Driver = SyncDriver | AsyncDriver


class Switchable:
    """A redis client proxy that fails with ConnectionError while ``down``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.down = False
        self.calls = 0

    def _guard(self) -> None:
        self.calls += 1
        if self.down:
            raise redis.exceptions.ConnectionError("Error 111 connecting to secret-host:6379")

    def evalsha(self, *args: Any) -> Any:
        self._guard()
        return self.client.evalsha(*args)

    def eval(self, *args: Any) -> Any:
        self._guard()
        return self.client.eval(*args)

    def delete(self, *keys: Any) -> Any:
        self._guard()
        return self.client.delete(*keys)

    def zrem(self, *args: Any) -> Any:
        self._guard()
        return self.client.zrem(*args)


class AsyncSwitchable(Switchable):
    async def evalsha(self, *args: Any) -> Any:
        self._guard()
        return await self.client.evalsha(*args)

    async def eval(self, *args: Any) -> Any:
        self._guard()
        return await self.client.eval(*args)

    async def delete(self, *keys: Any) -> Any:
        self._guard()
        return await self.client.delete(*keys)

    async def zrem(self, *args: Any) -> Any:
        self._guard()
        return await self.client.zrem(*args)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


Make = Callable[..., Driver]


@pytest.fixture(params=["sync", "async"])
def shell(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["memory", "fakeredis"])
def make(
    request: pytest.FixtureRequest, shell: str, clock: FakeClock, loop: asyncio.AbstractEventLoop
) -> Make:
    """Build a limiter driver over this test's store; kwargs go to the limiter."""
    server = fakeredis.FakeServer()
    memory = MemoryBackend(clock=clock)

    def build(**kwargs: Any) -> Driver:
        kwargs.setdefault("clock", clock)
        if request.param == "memory":
            store: Any = memory
        elif shell == "sync":
            store = fakeredis.FakeRedis(server=server)
        else:
            store = fakeredis.FakeAsyncRedis(server=server)
        if shell == "sync":
            return SyncDriver(RateLimiter(store, **kwargs))
        return AsyncDriver(AsyncRateLimiter(store, **kwargs), loop)

    return build


@pytest.fixture
def make_switchable(shell: str, clock: FakeClock, loop: asyncio.AbstractEventLoop) -> Any:
    """Build ``(driver, proxy)`` over fakeredis behind a switchable proxy."""

    def build(**kwargs: Any) -> tuple[Driver, Switchable]:
        kwargs.setdefault("clock", clock)
        server = fakeredis.FakeServer()
        if shell == "sync":
            proxy = Switchable(fakeredis.FakeRedis(server=server))
            return SyncDriver(RateLimiter(RedisBackend(proxy), **kwargs)), proxy
        aproxy = AsyncSwitchable(fakeredis.FakeAsyncRedis(server=server))
        limiter = AsyncRateLimiter(AsyncRedisBackend(aproxy), **kwargs)
        return AsyncDriver(limiter, loop), aproxy

    return build


ALL = ("gcra", "token_bucket", "sliding_window_log", "sliding_window_counter", "fixed_window")


# -- the basic contract, every algorithm -------------------------------------


@pytest.mark.parametrize("algorithm", ALL)
def test_admits_the_limit_then_denies(make: Make, algorithm: str) -> None:
    limiter = make(algorithm=algorithm)
    limit = Limit(3, per=60)
    remaining = [limiter.hit("user:1", limit).remaining for _ in range(3)]
    assert remaining == [2, 1, 0]
    denied = limiter.hit("user:1", limit)
    assert not denied.allowed and not denied
    assert denied.retry_after > 0
    assert denied.headers()["Retry-After"] == str(max(int(-(-denied.retry_after // 1)), 1))
    assert limiter.hit("user:2", limit).allowed  # other keys are untouched


@pytest.mark.parametrize("algorithm", ALL)
def test_peek_counts_nothing_and_reset_forgets(make: Make, algorithm: str) -> None:
    limiter = make(algorithm=algorithm)
    limit = Limit(2, per=60)
    assert limiter.peek("k", limit).remaining == 2
    limiter.hit("k", limit)
    for _ in range(3):
        assert limiter.peek("k", limit).remaining == 1
    limiter.hit("k", limit)
    assert not limiter.peek("k", limit).allowed
    limiter.reset("k", limit)
    assert limiter.hit("k", limit).remaining == 1


@pytest.mark.parametrize("algorithm", ALL)
def test_hit_all_is_atomic_and_reports_the_most_restrictive(make: Make, algorithm: str) -> None:
    limiter = make(algorithm=algorithm)
    wide, narrow = Limit(10, per=60), Limit(2, per=30)
    first = limiter.hit_all("k", [wide, narrow])
    assert first.allowed and first.limit == narrow and first.remaining == 1
    assert first.limits == (wide, narrow)
    limiter.hit_all("k", [wide, narrow])
    denied = limiter.hit_all("k", [wide, narrow])
    assert not denied.allowed and denied.limit == narrow
    # The denial counted nothing against the limit that allowed it.
    assert limiter.peek("k", wide).remaining == 8


@pytest.mark.parametrize("algorithm", ALL)
def test_denied_hits_consume_only_when_asked(make: Make, algorithm: str) -> None:
    limit = Limit(2, per=60)
    for consume, expected in ((False, 0), (True, 0)):
        limiter = make(algorithm=algorithm, consume_denied=consume, namespace=f"c{consume}")
        limiter.hit("k", limit)
        limiter.hit("k", limit)
        assert not limiter.hit("k", limit).allowed
        assert limiter.peek("k", limit).remaining == expected


def test_consumed_denials_delay_recovery(make: Make, clock: FakeClock) -> None:
    plain = make(algorithm="gcra", namespace="plain")
    strict = make(algorithm="gcra", namespace="strict", consume_denied=True)
    limit = Limit(1, per=10)
    for limiter in (plain, strict):
        limiter.hit("k", limit)
        for _ in range(3):
            limiter.hit("k", limit)
    # The strict limiter counted the 3 denials: 40 s of debt instead of 10 s.
    assert plain.peek("k", limit).retry_after <= 10
    assert strict.peek("k", limit).retry_after > 25


def test_enforce_raises_with_the_decision(make: Make) -> None:
    limiter = make()
    limiter.enforce("k", "1/minute")
    with pytest.raises(RateLimitExceeded) as caught:
        limiter.enforce("k", "1/minute")
    assert caught.value.key == "k"
    assert caught.value.retry_after == caught.value.decision.retry_after > 0
    assert caught.value.decision.headers()["Retry-After"]


def test_cost_counts_several_units(make: Make) -> None:
    limiter = make(algorithm="token_bucket")
    assert limiter.hit("k", "10/minute", cost=7).remaining == 3
    assert not limiter.hit("k", "10/minute", cost=4).allowed
    assert limiter.hit("k", "10/minute", cost=3).remaining == 0


def test_gcra_burst_then_steady_rate(make: Make) -> None:
    limiter = make()
    limit = Limit(1, per=1, burst=5)
    assert all(limiter.hit("k", limit).allowed for _ in range(5))
    assert not limiter.hit("k", limit).allowed


def test_namespaces_never_share_state(make: Make) -> None:
    one, two = make(namespace="app-one"), make(namespace="app-two")
    one.hit("k", "1/minute")
    assert not one.hit("k", "1/minute").allowed
    assert two.hit("k", "1/minute").allowed


@pytest.mark.parametrize(
    "key",
    [
        "ü-ñicode-🔥",
        b"\xff\xfe raw bytes",
        "glob*?[a-z]{tag}",
        "x" * 5000,
        "",
        "spaces and\nnewlines",
    ],
)
def test_any_key_is_safe_and_isolated(make: Make, key: str | bytes) -> None:
    limiter = make()
    assert limiter.hit(key, "1/minute").allowed
    assert not limiter.hit(key, "1/minute").allowed
    assert limiter.hit("other", "1/minute").allowed
    assert limiter.hit(key + (b"!" if isinstance(key, bytes) else "!"), "1/minute").allowed


@pytest.mark.parametrize("algorithm", ALL)
def test_time_passing_restores_capacity(
    shell: str, clock: FakeClock, loop: asyncio.AbstractEventLoop, algorithm: str
) -> None:
    store = MemoryBackend(clock=clock)  # fakeredis keeps real time: see tests/integration
    limiter: Driver = (
        SyncDriver(RateLimiter(store, algorithm=algorithm, clock=clock))
        if shell == "sync"
        else AsyncDriver(AsyncRateLimiter(store, algorithm=algorithm, clock=clock), loop)
    )
    limit = Limit(2, per=10)
    limiter.hit("k", limit)
    limiter.hit("k", limit)
    denied = limiter.hit("k", limit)
    assert not denied.allowed and 0 < denied.retry_after <= 20  # two windows at most
    clock.advance(denied.retry_after)
    assert limiter.hit("k", limit).allowed


# -- shadow mode and the local over-limit cache ------------------------------


def test_shadow_mode_never_denies_but_reports(make: Make) -> None:
    limiter = make(shadow=True, name="rollout")
    with capture_events() as events:
        decisions = [limiter.hit("ip:203.0.113.9", "1/minute") for _ in range(3)]
    assert all(decision.allowed for decision in decisions)
    assert [decision.shadowed for decision in decisions] == [False, True, True]
    shadow = [event for event in events if isinstance(event, ShadowDenied)]
    assert len(shadow) == 2 and shadow[0].name == "rollout"
    assert "203.0.113.9" not in repr(shadow)  # the key is hashed


def test_local_cache_denies_without_a_round_trip(make_switchable: Any, clock: FakeClock) -> None:
    limiter, proxy = make_switchable(local_cache=True)
    limiter.hit("k", "1/minute")
    assert not limiter.hit("k", "1/minute").allowed
    calls = proxy.calls
    cached = limiter.hit("k", "1/minute")
    assert not cached.allowed and cached.cached
    assert proxy.calls == calls
    clock.advance(61)  # past retry_after: ask the store again
    limiter.hit("k", "1/minute")
    assert proxy.calls == calls + 1


# -- the store down ----------------------------------------------------------


def test_fallback_allow_fails_open_and_skips_the_store(
    make_switchable: Any, clock: FakeClock
) -> None:
    limiter, proxy = make_switchable(fallback="allow", recovery_interval=5.0, name="api")
    limiter.hit("k", "1/minute")
    proxy.down = True
    before = proxy.calls
    with capture_events() as events:
        decisions = [limiter.hit("k", "1/minute") for _ in range(5)]
    assert all(d.allowed and d.fallback == "allow" for d in decisions)
    assert proxy.calls == before + 1  # one failed call; the breaker then skips the store
    used = [event for event in events if isinstance(event, FallbackUsed)]
    assert len(used) == 1 and used[0].reason == "ConnectionError" and used[0].name == "api"
    assert "secret-host" not in repr(events)
    proxy.down = False
    clock.advance(5.0)
    with capture_events() as events:
        again = limiter.hit("k", "1/minute")
    assert again.fallback is None and not again.allowed  # the store's state survived
    assert [type(event) for event in events] == [Recovered]
    assert not limiter.degraded


def test_fallback_deny_fails_closed(make_switchable: Any) -> None:
    limiter, proxy = make_switchable(fallback="deny")
    proxy.down = True
    decision = limiter.hit("k", "100/minute")
    assert not decision.allowed and decision.fallback == "deny"
    assert decision.headers()["Retry-After"] == "1"
    assert limiter.degraded


def test_fallback_local_divides_the_limit_among_instances(make_switchable: Any) -> None:
    limiter, proxy = make_switchable(fallback="local", instances=4)
    proxy.down = True
    decisions = [limiter.hit("k", "20/minute") for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert all(d.fallback == "local" for d in decisions)
    assert decisions[0].limit == Limit(5, per=60)


@pytest.mark.parametrize("failure_threshold", [1, 3])
def test_fallback_raise_raises_one_scalekit_error_through_an_outage(
    make_switchable: Any, clock: FakeClock, failure_threshold: int
) -> None:
    limiter, proxy = make_switchable(
        fallback="raise", failure_threshold=failure_threshold, recovery_interval=2.0
    )
    proxy.down = True
    calls: list[Callable[[], Any]] = [
        lambda: limiter.hit("k", "1/minute"),
        lambda: limiter.hit_all("k", ["1/minute", "5/hour"]),
        lambda: limiter.peek("k", "1/minute"),
        lambda: limiter.enforce("k", "1/minute"),
    ]
    errors = []
    for call in calls * 3:
        with pytest.raises(RateLimiterUnavailable) as caught:
            call()
        errors.append(caught.value)
    reached = errors[: min(failure_threshold, len(errors))]
    # The calls that reached the store chain its error; the others skipped it.
    assert all(isinstance(e.__cause__, redis.exceptions.ConnectionError) for e in reached)
    assert proxy.calls == failure_threshold
    assert all(e.__cause__ is None for e in errors[failure_threshold:])
    assert errors[-1].retry_after == 2.0 and isinstance(errors[-1], CircuitOpenError)
    assert "secret-host" not in str(errors[0])  # the store's message stays in the cause
    clock.advance(2.0)
    proxy.down = False
    assert limiter.hit("k", "1/minute").fallback is None


def test_probe_after_recovery_interval_while_still_down(
    make_switchable: Any, clock: FakeClock
) -> None:
    limiter, proxy = make_switchable(fallback="allow", recovery_interval=2.0)
    proxy.down = True
    limiter.hit("k", "1/minute")
    clock.advance(1.0)
    limiter.hit("k", "1/minute")
    assert proxy.calls == 1
    clock.advance(1.5)
    with capture_events() as events:
        limiter.hit("k", "1/minute")  # the probe fails: no second FallbackUsed
        limiter.hit("k", "1/minute")  # skipped again
    assert proxy.calls == 2
    assert events == []


def test_script_errors_are_bugs_not_outages(make_switchable: Any) -> None:
    limiter, proxy = make_switchable()

    def broken(*args: Any) -> Any:
        raise redis.exceptions.ResponseError("ERR Error running script: bad")

    proxy.evalsha = broken
    with pytest.raises(redis.exceptions.ResponseError):
        limiter.hit("k", "1/minute")


# -- configuration errors ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"algorithm": "leaky"}, "algorithm"),
        ({"fallback": "maybe"}, "fallback"),
        ({"namespace": "has space"}, "namespace"),
        ({"namespace": ""}, "namespace"),
        ({"instances": 0}, "instances"),
        ({"local_cache": -1}, "local_cache"),
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"recovery_interval": 0}, "recovery_interval"),
        ({"recovery_interval": float("inf")}, "recovery_interval"),
        ({"recovery_interval": float("nan")}, "recovery_interval"),
    ],
)
def test_bad_configuration_fails_at_construction(
    make: Make, kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make(**kwargs)
    assert caught.value.parameter == parameter


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda lim: lim.hit("k", "10/minute", cost=11), "cost"),
        (lambda lim: lim.hit("k", "10/minute", cost=-1), "cost"),
        (lambda lim: lim.hit("k", "10/minute", cost=True), "cost"),
        (lambda lim: lim.hit("k", "10/minute", cost=1.0), "cost"),
        (lambda lim: lim.hit("k", Limit(10, per=60), cost=2.0), "cost"),
        (lambda lim: lim.hit("k", "ten per minute"), "limit"),
        (lambda lim: lim.hit("k", ["10/minute"]), "limit"),
        (lambda lim: lim.hit(42, "10/minute"), "key"),
        (lambda lim: lim.hit(None, Limit(10, per=60)), "key"),
        (lambda lim: lim.hit_all("k", []), "limits"),
        (lambda lim: lim.hit("k", Limit(5, per=60, burst=9)), "burst"),
        (lambda lim: lim.hit("k", "10/minute", cost=10**30), "cost"),
        (lambda lim: lim.hit("k", "10/1000000000000w"), "limit"),
        (lambda lim: lim.hit_all("k", None), "limits"),
        (lambda lim: lim.hit_all("k", 5), "limits"),
        (lambda lim: lim.hit_all("k", ["10/minute", 5]), "limit"),
        (lambda lim: lim.hit_all(b"k", ("10/minute", "20/hour"), cost=11), "cost"),
        (lambda lim: lim.peek("k", 5), "limits"),
        (lambda lim: lim.peek("k", []), "limits"),
        (lambda lim: lim.peek(1.5, "10/minute"), "key"),
        (lambda lim: lim.enforce("k", None), "limits"),
        (lambda lim: lim.enforce("k", "10/minute", cost=0.5), "cost"),
        (lambda lim: lim.reset("k", 5), "limits"),
        (lambda lim: lim.reset(["k"], "10/minute"), "key"),
    ],
)
@pytest.mark.parametrize("warm", [False, True])
def test_bad_calls_raise_configuration_error(
    make: Make, call: Callable[[Any], Any], parameter: str, warm: bool
) -> None:
    limiter = make(algorithm="fixed_window")
    if warm:  # the limits and costs seen before take the hot path of ``hit``
        for limit in ("10/minute", Limit(10, per=60)):
            limiter.hit("w", limit)
            limiter.hit("w", limit, cost=2)
    with pytest.raises(ConfigurationError) as caught:
        call(limiter)
    assert caught.value.parameter == parameter


@pytest.mark.parametrize("algorithm", ALL)
@pytest.mark.parametrize("shadow", [False, True])
def test_hit_decides_as_the_general_path(
    shell: str, loop: asyncio.AbstractEventLoop, algorithm: str, shadow: bool
) -> None:
    # ``hit`` against one limit sends a request encoded once per limit and cost
    # (the hot path); ``hit_all`` with that one limit plans it afresh each time.
    # Over the same sequence both decide alike; only a cost's first hit is planned.
    server = fakeredis.FakeServer()
    options: dict[str, Any] = {"algorithm": algorithm, "shadow": shadow}
    driver: Driver
    if shell == "sync":
        driver = SyncDriver(RateLimiter(fakeredis.FakeRedis(server=server), **options))
    else:
        limiter = AsyncRateLimiter(fakeredis.FakeAsyncRedis(server=server), **options)
        driver = AsyncDriver(limiter, loop)
    logic = driver.limiter._logic
    planned: list[tuple[Any, int]] = []
    plan_one = logic.plan_one

    def spy(key: Any, limit: Any, cost: int, *, write: bool) -> Any:
        if str(key).startswith("user"):
            planned.append((key, cost))
        return plan_one(key, limit, cost, write=write)

    logic.plan_one = spy  # type: ignore[method-assign]
    limit = Limit(4, per=3600)
    for step, cost in enumerate([1, 1, 2, 1, 1, 3, 0, 1]):
        fast = driver.hit(f"user:{step % 2}", limit, cost=cost)
        general = driver.hit_all(f"other:{step % 2}", [limit], cost=cost)
        assert fast.key == f"user:{step % 2}"
        assert (fast.allowed, fast.remaining, fast.limit, fast.limits, fast.shadowed) == (
            general.allowed,
            general.remaining,
            general.limit,
            general.limits,
            general.shadowed,
        ), step
        assert (fast.retry_after > 0) == (general.retry_after > 0), step
        assert fast.fallback is None and not fast.cached
    # Only the first hit of each cost was planned; the others took the hot path.
    assert planned == [("user:0", 1), ("user:0", 2), ("user:1", 3), ("user:0", 0)]
    assert set(logic.known_spec(limit).requests) == {0, 1, 2, 3}


def test_wrong_client_kind_is_refused(loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(ConfigurationError):
        RateLimiter(fakeredis.FakeAsyncRedis())
    with pytest.raises(ConfigurationError):
        AsyncRateLimiter(fakeredis.FakeRedis())
    with pytest.raises(ConfigurationError):
        RateLimiter(object())


def test_repr_shows_no_secrets() -> None:
    client = fakeredis.FakeRedis(password="hunter2")
    assert "hunter2" not in repr(RateLimiter(client))


def test_memory_backend_is_bounded(clock: FakeClock) -> None:
    store = MemoryBackend(max_keys=50, clock=clock)
    limiter = RateLimiter(store, clock=clock)
    for number in range(500):
        limiter.hit(f"ip:{number}", "5/minute")
    assert len(store) == 50
    assert limiter.hit("ip:499", "5/minute").remaining == 3  # recent keys are kept
    assert limiter.hit("ip:0", "5/minute").remaining == 4  # the oldest were dropped
    with pytest.raises(ConfigurationError):
        MemoryBackend(max_keys=0)


def test_local_fallback_is_bounded(make_switchable: Any) -> None:
    limiter, proxy = make_switchable(fallback="local", max_local_keys=20)
    proxy.down = True
    for number in range(300):
        assert limiter.hit(f"ip:{number}", "5/minute").fallback == "local"
    assert len(limiter.limiter._logic.local) == 20


@pytest.mark.parametrize("algorithm", ALL)
def test_threads_sharing_a_memory_limiter_admit_exactly_the_limit(algorithm: str) -> None:
    limiter = RateLimiter(MemoryBackend(), algorithm=algorithm)
    admitted: list[bool] = []

    def worker() -> None:
        results = [limiter.hit("shared", "100/day").allowed for _ in range(50)]
        admitted.extend(results)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 400 and sum(admitted) == 100


def test_limits_differing_by_name_share_state_and_burst_does_not(make: Make) -> None:
    limiter = make()
    named, renamed = Limit(2, per=60, name="a"), Limit(2, per=60, name="b")
    decision = limiter.hit_all("k", [named, renamed])
    assert decision.allowed and decision.remaining == 1  # counted once, not twice
    assert limiter.peek("k", renamed).remaining == 1
    assert limiter.peek("k", Limit(2, per=60, burst=5)).remaining == 5  # its own key
