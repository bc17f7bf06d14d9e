"""One scenario list, run against Cache and AsyncCache over memory and fakeredis.

Each test reads as a specification of the read path; ``make`` (see
``_drivers.py``) builds the cache under test, so every behaviour here is
checked for the sync shell and the asyncio shell, on both backends.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from scalekit.breaker import BreakerStateChanged, CircuitBreaker, State
from scalekit.cache import (
    NOT_FOUND,
    CacheDecodeFailed,
    CacheLeaseWait,
    CacheLoaded,
    CacheRefreshFailed,
    CacheStaleServed,
    LocalCache,
    SignedPickleSerializer,
)
from scalekit.cache._core import Envelope, Kind, pack_envelope
from scalekit.errors import CacheUnavailable, ConfigurationError, SerializationError
from scalekit.instrumentation import FallbackUsed, Recovered
from scalekit.testing import capture_events, set_testing
from tests.unit.cache._drivers import KINDS, Factory

KEYS = {"k1": b"k1-secret-k1-secret-k1"}


async def _factory(kind: str) -> AsyncIterator[Factory]:
    factory = Factory(kind)
    try:
        yield factory
    finally:
        await factory.close()


@pytest.fixture(params=KINDS)
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    async for factory in _factory(request.param):
        yield factory


@pytest.fixture(params=[kind for kind in KINDS if kind.endswith("fakeredis")])
async def make_redis(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Only the Redis backends: they are the ones that can go down."""
    async for factory in _factory(request.param):
        yield factory


@pytest.fixture(params=[kind for kind in KINDS if kind.startswith("async")])
async def make_async(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    async for factory in _factory(request.param):
        yield factory


class Counter:
    """A loader that counts its calls and returns ``value`` (or what ``values`` give)."""

    def __init__(self, value: Any = "v", *, raises: BaseException | None = None) -> None:
        self.value = value
        self.raises = raises
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.raises is not None:
            raise self.raises
        return self.value


class FixedRandom(random.Random):
    """``random()`` returns ``value``: drives the XFetch draw exactly."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# --------------------------------------------------------------------------- plain operations


async def test_get_set_delete(make: Factory) -> None:
    cache = make()
    assert await cache.get("missing") is None
    assert await cache.get("missing", "default") == "default"
    assert await cache.set("user:1", {"name": "Ada", "ids": (1, 2)})
    assert await cache.get("user:1") == {"name": "Ada", "ids": (1, 2)}
    assert await cache.call("delete", "user:1")
    assert await cache.get("user:1", "gone") == "gone"


async def test_a_cached_none_is_not_a_miss(make: Factory) -> None:
    cache = make()
    await cache.set("nothing", None)
    assert await cache.get("nothing", "default") is None
    loader = Counter()
    assert await cache.get_or_set("nothing", loader) is None
    assert loader.calls == 0


async def test_values_expire_after_ttl_and_stale_window(make: Factory) -> None:
    cache = make(default_ttl=10, stale_ttl=5)
    await cache.set("k", 1)
    make.clock.advance(12)
    assert await cache.get("k") == 1  # stale, still served by get
    make.clock.advance(4)
    assert await cache.get("k", "expired") == "expired"


async def test_get_many_and_set_many(make: Factory) -> None:
    cache = make()
    assert await cache.call("set_many", {"a": 1, "b": [2], "c": None})
    assert await cache.call("get_many", ["a", "b", "c", "d", "a"]) == {"a": 1, "b": [2], "c": None}
    assert await cache.call("get_many", []) == {}
    assert await cache.call("set_many", {})


async def test_get_or_set_loads_once_then_hits(make: Factory) -> None:
    cache = make()
    loader = Counter({"x": 1})
    assert await cache.get_or_set("k", loader, ttl=60) == {"x": 1}
    assert await cache.get_or_set("k", loader, ttl=60) == {"x": 1}
    assert loader.calls == 1
    stats = cache.cache.stats()
    assert (stats.hits, stats.misses, stats.loads) == (1, 1, 1)


async def test_async_loaders_are_awaited(make_async: Factory) -> None:
    make = make_async

    async def load() -> int:
        await asyncio.sleep(0)
        return 7

    cache = make()
    assert await cache.get_or_set("k", load) == 7
    assert await cache.get("k") == 7


async def test_loader_errors_reach_the_caller_and_are_not_cached(make: Factory) -> None:
    cache = make()
    failing = Counter(raises=RuntimeError("db down"))
    for _ in range(2):
        with pytest.raises(RuntimeError, match="db down"):
            await cache.get_or_set("k", failing)
    assert failing.calls == 2
    assert await cache.get_or_set("k", Counter(3)) == 3


async def test_unencodable_values_raise_serialization_error(make: Factory) -> None:
    cache = make()
    with pytest.raises(SerializationError):
        await cache.set("k", object())
    with pytest.raises(SerializationError):
        await cache.get_or_set("k", Counter(object()))


# --------------------------------------------------------------------------- negative caching


async def test_not_found_is_cached_for_negative_ttl(make: Factory) -> None:
    cache = make(negative_ttl=5, default_ttl=100)
    loader = Counter(NOT_FOUND)
    assert await cache.get_or_set("user:404", loader) is NOT_FOUND
    assert await cache.get_or_set("user:404", loader) is NOT_FOUND
    assert loader.calls == 1
    assert await cache.get("user:404", "default") == "default"
    make.clock.advance(6)
    assert await cache.get_or_set("user:404", loader) is NOT_FOUND
    assert loader.calls == 2


async def test_chosen_exceptions_are_cached(make: Factory) -> None:
    cache = make(cache_errors=[LookupError], negative_ttl=5)
    loader = Counter(raises=LookupError("no such user", 404))
    for _ in range(3):
        with pytest.raises(LookupError) as info:
            await cache.get_or_set("user:404", loader)
        assert info.value.args == ("no such user", 404)
    assert loader.calls == 1
    assert await cache.get("user:404", "default") == "default"
    make.clock.advance(6)
    with pytest.raises(LookupError):
        await cache.get_or_set("user:404", loader)
    assert loader.calls == 2


# --------------------------------------------------------------------------- stampede protection


async def test_stale_values_are_served_while_one_caller_refreshes(make: Factory) -> None:
    cache = make(default_ttl=10, stale_ttl=10, beta=0)
    assert await cache.get_or_set("k", Counter("old")) == "old"
    make.clock.advance(12)
    refresh = Counter("new")
    with capture_events() as events:
        assert await cache.get_or_set("k", refresh) == "old"
        await cache.settle()
    assert refresh.calls == 1
    assert await cache.get_or_set("k", Counter("never")) == "new"
    assert any(isinstance(e, CacheStaleServed) for e in events)
    assert [e.reason for e in events if isinstance(e, CacheLoaded)] == ["stale"]
    assert cache.cache.stats().stale == 1


async def test_a_refresh_that_cannot_start_leaves_the_key_free(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread (or task) to be had for a background refresh: the caller gets
    the error, and the key is not left claimed by a refresh that never ran, so
    the next stale read refreshes it and a miss never waits for it."""
    cache = make(default_ttl=10, stale_ttl=10, beta=0)
    await cache.get_or_set("k", Counter("old"))
    make.clock.advance(12)

    def cannot_start(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("can't start new thread")

    if cache.is_async:
        loop = asyncio.get_running_loop()
        create_task = loop.create_task

        def no_cache_task(coro: Any, **kwargs: Any) -> Any:  # the client's own tasks still run
            if "scalekit/cache" in coro.cr_code.co_filename.replace("\\", "/"):
                cannot_start()
            return create_task(coro, **kwargs)

        monkeypatch.setattr(loop, "create_task", no_cache_task)
    else:
        monkeypatch.setattr(threading.Thread, "start", cannot_start)
    refresh = Counter("new")
    with pytest.raises(RuntimeError, match="can't start"):
        await cache.get_or_set("k", refresh)
    monkeypatch.undo()
    assert not cache.cache._flights
    assert await cache.get_or_set("k", refresh) == "old"
    await cache.settle()
    assert refresh.calls == 1
    assert await cache.get("k") == "new"


async def test_stale_refresh_in_the_foreground(make: Factory) -> None:
    cache = make(default_ttl=10, stale_ttl=10, beta=0, background_refresh=False)
    await cache.get_or_set("k", Counter("old"))
    make.clock.advance(12)
    assert await cache.get_or_set("k", Counter("new")) == "new"


async def test_a_failed_refresh_keeps_serving_the_old_value(make: Factory) -> None:
    cache = make(default_ttl=10, stale_ttl=10, beta=0, background_refresh=False)
    await cache.get_or_set("k", Counter("old"))
    make.clock.advance(12)
    with capture_events() as events:
        assert await cache.get_or_set("k", Counter(raises=RuntimeError("boom"))) == "old"
    assert any(isinstance(e, CacheRefreshFailed) for e in events)
    assert cache.cache.stats().errors == 1


async def test_xfetch_recomputes_early_from_the_measured_cost(make: Factory) -> None:
    # The loader takes 2 s (on the fake clock); random() = 0.999999 gives
    # -ln(1e-6) = 13.8, so XFetch volunteers 27.6 s ahead of expiry.
    cache = make(default_ttl=100, beta=1.0, rng=FixedRandom(0.999999), background_refresh=False)

    def slow() -> str:
        make.clock.advance(2)
        return "first"

    assert await cache.get_or_set("k", slow) == "first"
    make.clock.advance(50)  # 50 s left: not yet
    assert await cache.get_or_set("k", Counter("never")) == "first"
    make.clock.advance(30)  # 20 s left: now
    assert await cache.get_or_set("k", Counter("early")) == "early"
    assert cache.cache.stats().early == 1


async def test_xfetch_is_off_with_beta_zero(make: Factory) -> None:
    cache = make(default_ttl=100, beta=0.0, rng=FixedRandom(0.999999), background_refresh=False)

    def slow() -> str:
        make.clock.advance(2)
        return "first"

    await cache.get_or_set("k", slow)
    make.clock.advance(97)
    assert await cache.get_or_set("k", Counter("early")) == "first"
    assert cache.cache.stats().early == 0


async def test_concurrent_callers_run_one_loader(make: Factory) -> None:
    cache = make()
    calls = 0
    if make.is_async:

        async def load() -> str:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.2)
            return "v"

        results = await asyncio.gather(*(cache.get_or_set("k", load) for _ in range(100)))
    else:
        lock = threading.Lock()

        def load_sync() -> str:
            nonlocal calls
            with lock:
                calls += 1
            time.sleep(0.2)
            return "v"

        results = []
        barrier = threading.Barrier(50)

        def caller() -> None:
            barrier.wait()
            results.append(cache.cache.get_or_set("k", load_sync))

        threads = [threading.Thread(target=caller) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert calls == 1
    assert set(results) == {"v"} and len(results) in (50, 100)


async def test_a_loader_error_reaches_every_waiting_caller(make_async: Factory) -> None:
    make = make_async
    cache = make()
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)  # long enough for every caller's first read to arrive
        raise RuntimeError("boom")

    results = await asyncio.gather(
        *(cache.get_or_set("k", load) for _ in range(10)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_a_held_lease_makes_others_wait_then_load(make: Factory) -> None:
    # Another process holds the lease and never fills the key: we wait
    # lease_wait (fake time), then load ourselves.
    cache = make(lease_wait=1.0, poll_interval=0.1)
    backend = cache.cache.backend
    lease = cache.cache.keys.lease("k")
    held = backend.acquire(lease, "other-process", 60_000)
    if make.is_async:
        held = await held
    assert held
    loader = Counter("mine")
    with capture_events() as events:
        assert await cache.get_or_set("k", loader) == "mine"
    assert loader.calls == 1
    waits = [e for e in events if isinstance(e, CacheLeaseWait)]
    assert [w.outcome for w in waits] == ["timeout"]
    assert waits[0].seconds == pytest.approx(1.0)
    assert cache.cache.stats().lease_waits == 1


@pytest.mark.parametrize("testing", [False, True])
async def test_testing_mode_gives_up_a_lease_wait_without_sleeping(
    make: Factory, testing: bool
) -> None:
    # set_testing(True): one more look for the holder's value, then load as if
    # lease_wait had passed; normal mode polls (sleeps) until lease_wait.
    cache = make(lease_wait=1.0, poll_interval=0.1)
    lease = cache.cache.keys.lease("k")
    held = cache.cache.backend.acquire(lease, "other-process", 60_000)
    if make.is_async:
        held = await held
    assert held
    loader = Counter("mine")
    with set_testing(testing), capture_events() as events:
        assert await cache.get_or_set("k", loader) == "mine"
    assert loader.calls == 1
    assert [e.outcome for e in events if isinstance(e, CacheLeaseWait)] == ["timeout"]
    if testing:
        assert make.clock.sleeps == []
    else:
        assert sum(make.clock.sleeps) == pytest.approx(1.0)


async def test_a_lease_waiter_takes_the_holders_value(make: Factory) -> None:
    holder = make(lease_wait=5.0, poll_interval=0.1)
    waiter = make(lease_wait=5.0, poll_interval=0.1)
    lease = holder.cache.keys.lease("k")
    got = holder.cache.backend.acquire(lease, "holder", 60_000)
    if make.is_async:
        got = await got
    assert got
    # The holder's value lands while the waiter polls (the clock's sleep is the hook).

    def fill() -> None:
        if len(make.clock.sleeps) == 3:
            make.raw_set(holder.cache.keys.data("k"), _packed(holder, "from-holder"))

    make.clock.on_sleep = fill
    loader = Counter("waiter")
    with capture_events() as events:
        assert await waiter.get_or_set("k", loader) == "from-holder"
    assert loader.calls == 0
    assert [e.outcome for e in events if isinstance(e, CacheLeaseWait)] == ["filled"]


async def test_a_freed_lease_is_rechecked_before_loading(make: Factory) -> None:
    # Another process stored the value and released the lease after our read
    # missed: the lease is ours, but the value is there, so nothing is loaded.
    cache = make()
    store_key = cache.cache.keys.data("k")
    loader = Counter("loaded")
    backend = cache.cache.backend
    original = backend.acquire

    def racing_acquire(*args: Any) -> Any:
        acquired = original(*args)
        make.raw_set(store_key, _packed(cache, "other-process"))  # just after the lease
        return acquired

    async def aracing_acquire(*args: Any) -> Any:
        acquired = await original(*args)
        make.raw_set(store_key, _packed(cache, "other-process"))
        return acquired

    backend.acquire = aracing_acquire if make.is_async else racing_acquire
    assert await cache.get_or_set("k", loader) == "other-process"
    assert loader.calls == 0


def _packed(driver: Any, value: Any) -> bytes:
    """The bytes another process would store for ``value``."""
    data: bytes = driver.cache._build(Kind.VALUE, value, 60, 0.0, (), [])[1]
    return data


async def test_lease_is_released_only_by_its_owner(make: Factory) -> None:
    cache = make()
    backend = cache.cache.backend

    async def run(result: Any) -> Any:
        return await result if make.is_async else result

    assert await run(backend.acquire("lease", "mine", 60_000))
    assert not await run(backend.acquire("lease", "theirs", 60_000))
    assert not await run(backend.release("lease", "theirs"))
    assert await run(backend.release("lease", "mine"))
    assert await run(backend.acquire("lease", "theirs", 60_000))


# --------------------------------------------------------------------------- tags and keys


async def test_tags_invalidate_every_entry_that_carries_them(make: Factory) -> None:
    cache = make()
    await cache.get_or_set("profile:1", Counter("p1"), tags=["user:1"])
    await cache.get_or_set("orders:1", Counter("o1"), tags=["user:1", "orders"])
    await cache.get_or_set("profile:2", Counter("p2"), tags=["user:2"])
    await cache.set("settings:1", "s1", tags=["user:1"])
    assert await cache.call("invalidate_tags", "user:1")
    assert await cache.get("profile:1", "gone") == "gone"
    assert await cache.get("settings:1", "gone") == "gone"
    assert await cache.call("get_many", ["orders:1", "profile:2"]) == {"profile:2": "p2"}
    reload = Counter("o1-new")
    assert await cache.get_or_set("orders:1", reload, tags=["user:1", "orders"]) == "o1-new"
    assert await cache.get_or_set("orders:1", reload, tags=["user:1", "orders"]) == "o1-new"
    assert reload.calls == 1
    assert await cache.call("invalidate_tags")


async def test_namespaces_never_see_each_other(make: Factory) -> None:
    one, two = make(namespace="one"), make(namespace="two")
    await one.set("k", 1)
    assert await two.get("k", "none") == "none"
    await two.set("k", 2)
    assert (await one.get("k"), await two.get("k")) == (1, 2)
    await two.call("invalidate_tags", "t")
    v1 = make(namespace="one", schema_version=2)
    assert await v1.get("k", "none") == "none"


async def test_odd_and_huge_keys_are_hashed_not_refused(make: Factory) -> None:
    cache = make()
    for key in ("with space", "x" * 10_000, "new\nline", "#hash", "ünïcode"):
        await cache.set(key, key[:5])
        assert await cache.get(key) == key[:5]


# --------------------------------------------------------------------------- decorator


async def test_decorator_keys_by_arguments(make: Factory) -> None:
    cache = make()
    calls: list[tuple[Any, ...]] = []

    def lookup(user_id: int, fields: list[str] | None = None, *, deep: bool = False) -> str:
        calls.append((user_id, fields, deep))
        return f"{user_id}:{fields}:{deep}"

    cached = cache.decorate(lookup, ttl=60)
    assert await cached(1) == "1:None:False"
    assert await cached(user_id=1) == "1:None:False"  # same bound call, same key
    assert await cached(1, None, deep=False) == "1:None:False"
    assert len(calls) == 1
    assert await cached(1, ["name", "email"]) == "1:['name', 'email']:False"  # unhashable
    assert await cached(1, ["x" * 5000]) == f"1:{['x' * 5000]}:False"  # oversized
    assert await cached(1, deep=True) == "1:None:True"
    assert len(calls) == 4
    assert await cached.invalidate(1)
    assert await cached(1) == "1:None:False"
    assert len(calls) == 5
    assert "lookup" in cached.key_for(1) and "test_shells" in cached.key_for(1)


async def test_decorator_keeps_the_signature_and_name(make: Factory) -> None:
    import inspect

    cache = make()

    def lookup(user_id: int, *, deep: bool = False) -> str:
        """Find a user."""
        return str(user_id)

    target = cache.decorate(lookup)
    wrapped = target.wrapped if hasattr(target, "wrapped") else target
    assert str(inspect.signature(wrapped)) == str(inspect.signature(lookup))
    assert wrapped.__name__ == "lookup" and wrapped.__doc__ == "Find a user."
    with pytest.raises(TypeError):
        await target(1, 2, 3)


async def test_decorator_custom_key_and_tags(make: Factory) -> None:
    cache = make()
    calls = []

    def lookup(user_id: int) -> int:
        calls.append(user_id)
        return user_id * 10

    cached = cache.decorate(
        lookup, key=lambda user_id: f"user:{user_id}", tags=lambda user_id: [f"user:{user_id}"]
    )
    assert await cached(3) == 30
    assert await cache.get("user:3") == 30
    await cache.call("invalidate_tags", "user:3")
    assert await cached(3) == 30
    assert calls == [3, 3]


async def test_decorated_methods_skip_self(make: Factory) -> None:
    cache = make()

    class Repo:
        def __init__(self, name: str) -> None:
            self.name = name
            self.calls = 0

    def find(self: Repo, user_id: int) -> str:
        self.calls += 1
        return f"{self.name}:{user_id}"

    if make.is_async:

        async def afind(self: Repo, user_id: int) -> str:
            return find(self, user_id)

        Repo.find = cache.cache.cached()(afind)  # type: ignore[attr-defined]
    else:
        Repo.find = cache.cache.cached()(find)  # type: ignore[attr-defined]
    one, two = Repo("a"), Repo("b")

    async def call(repo: Repo, user_id: int) -> Any:
        result = repo.find(user_id)  # type: ignore[attr-defined]
        return await result if make.is_async else result

    assert await call(one, 1) == "a:1"
    assert await call(two, 1) == "a:1"  # self is not part of the key
    assert (one.calls, two.calls) == (1, 0)
    invalidated = one.find.invalidate(1)  # type: ignore[attr-defined]
    assert (await invalidated) if make.is_async else invalidated
    assert await call(two, 1) == "b:1"


# --------------------------------------------------------------------------- serialisation


async def test_entries_of_another_serialiser_are_misses(make: Factory) -> None:
    json_cache = make()
    pickle_cache = make(serializer=SignedPickleSerializer(KEYS, current_key_id="k1"))
    await json_cache.set("k", [1, 2])
    with capture_events() as events:
        assert await pickle_cache.get("k", "miss") == "miss"
        assert await pickle_cache.get_or_set("k", Counter({3})) == {3}
    assert any(isinstance(e, CacheDecodeFailed) for e in events)
    assert await json_cache.get("k", "miss") == "miss"  # and the other way round


async def test_corrupted_entries_are_misses_and_logged(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make()
    store_key = cache.cache.keys.data("k")
    for garbage in (b"", b"garbage", b"\xa7SK\x01" + b"\x00" * 10):
        make.raw_set(store_key, garbage)
        assert await cache.get("k", "miss") == "miss"
    make.raw_set(store_key, b"garbage")
    assert await cache.get_or_set("k", Counter("loaded")) == "loaded"
    assert cache.cache.stats().errors >= 4  # the recheck under the lease reads it again
    # One incident, one report (not one per read)...
    assert caplog.text.count("cache.decode_failed") == 1
    # ...until a minute passes without an undecodable entry: a new incident.
    make.clock.advance(61)
    make.raw_set(store_key, b"garbage")
    assert await cache.get("k", "miss") == "miss"
    assert caplog.text.count("cache.decode_failed") == 2


def _hostile_entries(clock: Any) -> dict[str, bytes]:
    """Stored entries no cache can use, each in a well-formed envelope where possible."""
    now = clock.time()

    def envelope(
        payload: bytes, *, kind: Kind = Kind.VALUE, codec: int = 1, tags: Any = ()
    ) -> bytes:
        return pack_envelope(
            Envelope(payload, now, 0.0, now + 60, now + 90, codec, kind, tuple(tags))
        )

    def error(body: object) -> bytes:
        return envelope(json.dumps(body).encode(), kind=Kind.ERROR)

    deep = b"[" * 100_000 + b"]" * 100_000
    return {
        "error of an unknown type": error({"type": "os.system", "args": ["rm -rf /"]}),
        "error of a known type, bad args": error(
            {"type": "test_shells.NeedsTwo", "args": ["only one"]}
        ),
        "error, args not a list": error({"type": "builtins.LookupError", "args": 5}),
        "error, not JSON": envelope(b"\xff{", kind=Kind.ERROR),
        "error, deeply nested JSON": envelope(deep, kind=Kind.ERROR),
        "value, deeply nested JSON": envelope(deep),
        "value, deeply nested markers": envelope(
            b'{"__sk__":"tuple","v":' * 50_000 + b"1" + b"}" * 50_000
        ),
        "value, unknown marker": envelope(b'{"__sk__":"pickle","v":"x"}'),
        "value, bad marker data": envelope(b'{"__sk__":"map","v":5}'),
        "value, another codec": envelope(b"[1]", codec=77),
        "unknown kind": envelope(b"", kind=Kind.VALUE)[:3] + b"\x01\x01\x09" + b"\x00" * 34,
        "truncated tags": envelope(b"1", tags=[("t", 1)])[:-12],
        "not an envelope": b"\x00" * 7,
    }


class NeedsTwo(Exception):
    def __init__(self, first: str, second: str) -> None:
        super().__init__(first, second)


NeedsTwo.__module__ = "test_shells"


async def test_undecodable_entries_are_misses_on_every_read_path(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    # Whatever sits under a key (corrupt, hostile, from another version), every
    # read path sees a miss: never SerializationError, RecursionError or the like.
    cache = make(cache_errors=[LookupError, NeedsTwo], local=LocalCache(maxsize=10, ttl=1.0))
    decorated = cache.decorate(lambda x: f"loaded {x}", ttl=60)
    for name, raw in _hostile_entries(make.clock).items():
        for path in ("get", "get_or_set", "tagged"):
            make.raw_set(cache.cache.keys.data(f"{path}:{name}"), raw)
        assert await cache.get(f"get:{name}", "miss") == "miss", name
        assert await cache.call("get_many", [f"get:{name}"]) == {}, name
        assert await cache.get_or_set(f"get_or_set:{name}", Counter("loaded")) == "loaded", name
        tagged = await cache.get_or_set(f"tagged:{name}", Counter("tagged"), tags=["t"])
        assert tagged == "tagged", name
        make.raw_set(decorated.key_for(name), raw)
        assert await decorated(name) == f"loaded {name}", name
    assert caplog.text.count("cache.decode_failed") == 1  # one incident


async def test_a_bad_ttl_is_refused_before_any_io(make: Factory) -> None:
    # A value Redis would refuse is the caller's error, found before anything is
    # sent: the breaker never hears of it and every other key keeps caching.
    cache = make()
    loader = Counter("v")
    with capture_events() as events:
        for ttl in (10**20, 1e300, float("inf"), float("nan"), -1, 0, 2e9):
            with pytest.raises(ConfigurationError, match="ttl"):
                await cache.set("t", 1, ttl=ttl)
            with pytest.raises(ConfigurationError, match="ttl"):
                await cache.get_or_set("t", loader, ttl=ttl)
            with pytest.raises(ConfigurationError, match="ttl"):
                await cache.call("set_many", {"t": 1}, ttl)
            with pytest.raises(ConfigurationError, match="ttl"):
                cache.decorate(lambda: 1, ttl=ttl)
        assert loader.calls == 0
        assert await cache.set("t", 1, ttl=1e9)  # the documented maximum is accepted
        assert await cache.get_or_set("other", loader) == "v"
        assert await cache.get_or_set("other", loader) == "v"
    assert loader.calls == 1
    assert cache.cache.breaker.state is State.CLOSED
    assert not [e for e in events if isinstance(e, FallbackUsed)]
    assert cache.cache.stats().fallbacks == 0


async def test_set_many_takes_a_mapping_or_pairs(make: Factory) -> None:
    cache = make()
    assert await cache.call("set_many", [("a", 1), ("b", 2)])
    assert await cache.call("set_many", (pair for pair in [("c", 3)]))
    assert await cache.call("set_many", {"d": 4})
    assert await cache.call("get_many", ["a", "b", "c", "d"]) == {"a": 1, "b": 2, "c": 3, "d": 4}


async def test_bad_arguments_get_configuration_errors(make: Factory) -> None:
    cache = make()
    bad_calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("set_many", ("ab",), {}),
        ("set_many", (None,), {}),
        ("set_many", ([("k", 1, 2)],), {}),
        ("set_many", (["kv"],), {}),
        ("set_many", ({1: "v"},), {}),
        ("get_many", ("abc",), {}),
        ("get_many", (None,), {}),
        ("get_many", ([1],), {}),
        ("get", (None,), {}),
        ("set", (b"k", 1), {}),
        ("delete", (["k"],), {}),
        ("invalidate_tags", (1,), {}),
        ("get_or_set", ("k", None), {}),
        ("get_or_set", ("k", lambda: 1), {"tags": 5}),
        ("get_or_set", ("k", lambda: 1), {"tags": "t"}),
        ("get_or_set", ("k", lambda: 1), {"ttl": "60"}),
    ]
    for name, args, kwargs in bad_calls:
        with pytest.raises(ConfigurationError):
            await cache.call(name, *args, **kwargs)
    for options in ({"skip": 5}, {"skip": "self"}, {"key": "k"}, {"tags": 5}, {"ttl": True}):
        with pytest.raises(ConfigurationError):
            cache.decorate(lambda x: x, **options)
    with pytest.raises(ConfigurationError):
        cache.cache.cached()(5)
    bad_tags = cache.decorate(lambda x: x, tags=lambda x: 5)
    with pytest.raises(ConfigurationError):
        await bad_tags(1)
    assert cache.cache.breaker.state is State.CLOSED


async def test_tampered_pickle_is_refused(make: Factory) -> None:
    cache = make(serializer=SignedPickleSerializer(KEYS, current_key_id="k1"))
    await cache.set("k", {"amount": 10})
    store_key = cache.cache.keys.data("k")
    data = make.raw_get(store_key)
    assert data is not None
    make.raw_set(store_key, data[:-3] + bytes(b ^ 1 for b in data[-3:]))
    assert await cache.get("k", "refused") == "refused"


# --------------------------------------------------------------------------- redis down


async def test_bypass_runs_the_loader_when_redis_is_down(make_redis: Factory) -> None:
    make = make_redis
    cache = make(retry_interval=0.5)
    await cache.set("k", "cached")
    make.server.connected = False
    loader = Counter("loaded")
    with capture_events() as events:
        for _ in range(3):
            assert await cache.get_or_set("k", loader) == "loaded"
            assert await cache.get_or_set("tagged", loader, tags=["t"]) == "loaded"
        assert await cache.get("k", "default") == "default"
        assert not await cache.set("k", "x")
        assert not await cache.call("delete", "k")
        assert not await cache.call("invalidate_tags", "t")
        assert await cache.call("get_many", ["k"]) == {}
    assert loader.calls == 6
    assert len([e for e in events if isinstance(e, FallbackUsed)]) == 1
    assert cache.cache.stats().fallbacks >= 8
    make.server.connected = True
    make.clock.advance(0.5)
    with capture_events() as events:
        assert await cache.get("k") == "cached"
    assert [type(e) for e in events if isinstance(e, Recovered)] == [Recovered]


async def test_the_breaker_skips_redis_between_probes(make_redis: Factory) -> None:
    make = make_redis
    cache = make(retry_interval=1.0)
    make.server.connected = False
    await cache.get("k")
    attempts = 0
    original = cache.cache.backend.get

    def counting(*args: Any) -> Any:
        nonlocal attempts
        attempts += 1
        return original(*args)

    cache.cache.backend.get = counting
    for _ in range(20):
        await cache.get("k")
    assert attempts == 0
    make.clock.advance(1.0)
    for _ in range(20):
        await cache.get("k")
    assert attempts == 1  # one probe per retry_interval


def _count_calls(make: Factory, cache: Any, name: str = "get") -> list[int]:
    """Count the calls of the cache's backend method ``name`` (sync or async)."""
    backend = cache.cache.backend
    original = getattr(backend, name)
    calls: list[int] = []

    def counting(*args: Any) -> Any:
        calls.append(1)
        return original(*args)

    setattr(backend, name, counting)
    return calls


async def test_the_default_breaker_opens_probes_and_closes(make_redis: Factory) -> None:
    make = make_redis
    cache = make(retry_interval=0.5)
    breaker = cache.cache.breaker
    assert breaker.state is State.CLOSED
    assert breaker.policy.fail_max == 1 and breaker.policy.reset_timeout == 0.5
    await cache.set("k", "cached")
    calls = _count_calls(make, cache)
    make.server.connected = False
    with capture_events() as events:
        assert await cache.get("k", "default") == "default"  # the first outage error opens it
        assert breaker.state is State.OPEN
        for _ in range(5):
            assert await cache.get("k", "default") == "default"
        assert len(calls) == 1  # skipped while open
        make.clock.advance(0.5)
        assert await cache.get("k", "default") == "default"  # a probe, failed: open again
        assert len(calls) == 2 and breaker.state is State.OPEN
        make.server.connected = True
        assert await cache.get("k", "default") == "default"  # still open: not asked
        make.clock.advance(0.5)
        assert await cache.get("k") == "cached"  # the probe succeeds: closed
    assert breaker.state is State.CLOSED and len(calls) == 3
    changes = [(e.old_state, e.new_state) for e in events if isinstance(e, BreakerStateChanged)]
    assert changes == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert len([e for e in events if isinstance(e, FallbackUsed)]) == 1
    recovered = [e for e in events if isinstance(e, Recovered)]
    assert len(recovered) == 1 and recovered[0].seconds_degraded == pytest.approx(1.0)


async def test_only_outage_errors_count_as_breaker_failures(make_redis: Factory) -> None:
    make = make_redis
    cache = make()
    breaker = cache.cache.breaker
    loader = Counter(raises=RuntimeError("loader failed"))
    with pytest.raises(RuntimeError):
        await cache.get_or_set("missing", loader)  # a miss, then a loader's own error
    assert await cache.get("missing", "default") == "default"
    make.raw_set(cache.cache.keys.data("corrupt"), b"not an envelope")
    assert await cache.get("corrupt", "default") == "default"
    assert await cache.get_or_set("corrupt", Counter("v")) == "v"
    assert breaker.state is State.CLOSED
    assert breaker.metrics().failures == 0


async def test_a_shared_breaker_opens_for_every_cache(make_redis: Factory) -> None:
    make = make_redis
    breaker = CircuitBreaker("redis", fail_max=1, reset_timeout=1.0, clock=make.clock)
    first = make(namespace="first", breaker=breaker)
    second = make(namespace="second", breaker=breaker)
    assert first.cache.breaker is breaker is second.cache.breaker
    await second.set("k", "second's")
    calls = _count_calls(make, second)
    make.server.connected = False
    with capture_events() as events:
        assert await first.get_or_set("k", Counter("loaded")) == "loaded"
        assert breaker.state is State.OPEN
        # The second cache skips Redis without ever failing itself.
        assert await second.get_or_set("k", Counter("also loaded")) == "also loaded"
        assert await second.get("k", "default") == "default"
    assert calls == []
    fallbacks = [e.name for e in events if isinstance(e, FallbackUsed)]
    assert sorted(fallbacks) == ["first", "second"]  # one incident each
    make.server.connected = True
    make.clock.advance(1.0)
    with capture_events() as events:
        assert await second.get("k") == "second's"  # its probe closes the breaker for both
        assert breaker.state is State.CLOSED
        assert await first.get("k", "default") == "default"
    assert sorted(e.name for e in events if isinstance(e, Recovered)) == ["first", "second"]


async def test_a_failure_streak_is_reset_by_a_success(make_redis: Factory) -> None:
    make = make_redis
    breaker = CircuitBreaker("redis", fail_max=3, reset_timeout=1.0, clock=make.clock)
    cache = make(breaker=breaker)
    await cache.set("k", "v")
    for _ in range(2):
        make.server.connected = False
        assert await cache.get("k", "default") == "default"
        make.server.connected = True
        assert breaker.fail_counter == 1
        assert await cache.get("k") == "v"  # reaches Redis: the streak ends
        assert breaker.fail_counter == 0
    make.server.connected = False
    for _ in range(3):
        assert await cache.get("k", "default") == "default"
    assert breaker.state is State.OPEN


async def test_a_rate_breaker_hears_every_outcome(make_redis: Factory) -> None:
    # A breaker with a rate window needs successes too: every call gets a permit.
    make = make_redis
    breaker = CircuitBreaker(
        "redis", failure_rate=0.5, window=4, min_calls=4, reset_timeout=1.0, clock=make.clock
    )
    cache = make(breaker=breaker)
    await cache.set("k", "v")
    for _ in range(3):
        assert await cache.get("k") == "v"
    make.server.connected = False
    assert await cache.get("k", "default") == "default"  # 1 failure in 4: still closed
    assert breaker.state is State.CLOSED
    assert await cache.get("k", "default") == "default"  # 2 in 4: opens
    assert breaker.state is State.OPEN
    metrics = breaker.metrics()
    assert (metrics.successes, metrics.failures) == (4, 2)  # the set and three hits


@pytest.mark.parametrize("light", [True, False])
async def test_an_open_breaker_is_asked_once_per_retry_after(
    make_redis: Factory, light: bool
) -> None:
    make = make_redis
    options: dict[str, Any] = (
        {"fail_max": 1} if light else {"failure_rate": 0.5, "window": 4, "min_calls": 2}
    )
    breaker = CircuitBreaker("redis", reset_timeout=1.0, clock=make.clock, **options)
    cache = make(breaker=breaker)
    await cache.set("k", "v")
    breaker.open()  # by hand, or by another cache: this one has not failed
    calls = _count_calls(make, cache)
    for _ in range(20):
        assert await cache.get("k", "default") == "default"
    assert breaker.metrics().rejected == 1  # the answer holds for its retry_after
    make.clock.advance(0.5)
    assert await cache.get("k", "default") == "default"
    assert breaker.metrics().rejected == 1
    breaker.close()  # seen at once, retry_after or not
    assert await cache.get("k") == "v"
    assert len(calls) == 1
    assert cache.cache.stats().fallbacks == 21


async def test_raise_policy(make_redis: Factory) -> None:
    make = make_redis
    cache = make(on_redis_down="raise")
    make.server.connected = False
    with pytest.raises(CacheUnavailable) as info:
        await cache.get("k")
    assert info.value.namespace == "test"
    loader = Counter()
    with pytest.raises(CacheUnavailable):
        await cache.get_or_set("k", loader)  # the guard rejects at once, too
    assert loader.calls == 0


async def test_stale_local_serves_the_local_tier(make_redis: Factory) -> None:
    make = make_redis
    cache = make(on_redis_down="stale_local", local=LocalCache(maxsize=10, ttl=1.0))
    await cache.get_or_set("k", Counter("cached"))
    make.server.connected = False
    make.clock.advance(5)  # past the local TTL: only served because Redis is down
    loader = Counter("loaded")
    assert await cache.get_or_set("k", loader) == "cached"
    assert await cache.get("k") == "cached"
    assert loader.calls == 0
    assert await cache.get_or_set("other", loader) == "loaded"  # nothing local: bypass


# --------------------------------------------------------------------------- local tier


async def test_local_tier_serves_hits_without_the_store(make: Factory) -> None:
    cache = make(local=LocalCache(maxsize=10, ttl=5.0))
    await cache.get_or_set("k", Counter("v"))
    make.raw_set(cache.cache.keys.data("k"), b"garbage")  # the store changed behind our back
    assert await cache.get("k") == "v"
    assert await cache.get_or_set("k", Counter("never")) == "v"
    assert cache.cache.stats().local_hits == 2
    make.clock.advance(5)  # the local TTL caps how long that can last
    assert await cache.get("k", "miss") == "miss"


async def test_local_tier_follows_own_invalidations(make: Factory) -> None:
    cache = make(local=LocalCache(maxsize=10, ttl=60.0))
    await cache.get_or_set("a", Counter("a1"), tags=["t"])
    await cache.get_or_set("b", Counter("b1"))
    await cache.call("invalidate_tags", "t")
    await cache.call("delete", "b")
    assert await cache.get("a", "gone") == "gone"
    assert await cache.get("b", "gone") == "gone"
    await cache.set("a", "a2")
    assert await cache.get("a") == "a2"


async def test_an_exhausted_pool_fails_one_call_not_the_cache(make_redis: Factory) -> None:
    # redis-py raises MaxConnectionsError when its pool is full: Redis is fine,
    # so this call falls back, but nobody else skips Redis because of it.
    from redis.exceptions import MaxConnectionsError

    make = make_redis
    cache = make()
    backend = cache.cache.backend
    original = backend.get
    failures = [MaxConnectionsError("Too many connections")]

    def busy_once(key: str) -> Any:
        if failures:
            raise failures.pop()
        return original(key)

    async def abusy_once(key: str) -> Any:
        if failures:
            raise failures.pop()
        return await original(key)

    backend.get = abusy_once if make.is_async else busy_once
    loader = Counter("v")
    with capture_events() as events:
        assert await cache.get_or_set("k", loader) == "v"  # the read failed, the store did not
        assert await cache.get_or_set("k", loader) == "v"
    assert loader.calls == 1
    assert not [e for e in events if isinstance(e, FallbackUsed)]
    assert cache.cache.breaker.state is State.CLOSED
    assert cache.cache.stats().fallbacks == 1


async def test_a_client_bug_falls_back_and_is_logged_once(
    make_redis: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    make = make_redis
    cache = make()
    backend = cache.cache.backend

    def broken(key: str) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    async def abroken(key: str) -> Any:
        broken(key)

    backend.get = abroken if make.is_async else broken
    loader = Counter("v")
    assert await cache.get_or_set("k", loader) == "v"
    assert await cache.get("k", "default") == "default"
    assert loader.calls == 1
    assert caplog.text.count("unexpected AttributeError") == 1
    assert cache.cache.breaker.state is State.CLOSED
