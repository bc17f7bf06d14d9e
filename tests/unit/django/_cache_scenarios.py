"""Django's cache contract as a scenario list, run on every Redis the tests have.

Each scenario is an ``async def`` over a :class:`Driver`, which calls the
backend's blocking methods (``get``) or its coroutines (``aget``), so one list
checks both colours. ``driver.redis`` is a plain client on the same Redis, to
plant and inspect raw entries.
"""

from __future__ import annotations

import asyncio
import pickle
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import CacheKeyWarning

from scalekit.contrib.django import ScalekitCache


@dataclass
class Driver:
    """One backend, driven in one colour."""

    backend: ScalekitCache
    is_async: bool
    redis: Any
    make: Callable[..., ScalekitCache]  # another backend on the same Redis (other params)

    def on(self, backend: ScalekitCache) -> Driver:
        return Driver(backend, self.is_async, self.redis, self.make)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if self.is_async:
            return getattr(self.backend, "a" + name)  # type: ignore[no-any-return]
        method = getattr(self.backend, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


class Point:
    """A user's class: any picklable value round-trips."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


def _raw_key(driver: Driver, full: str) -> str:
    """The Redis key of Django key ``full`` (prefix and version applied)."""
    if not isinstance(driver.backend, ScalekitCache):  # another backend (django-redis)
        return full
    return driver.backend._shared.sync().cache.keys.data(full)


def _redis_key(driver: Driver, key: str, version: int | None = None) -> str:
    return _raw_key(driver, driver.backend.make_key(key, version=version))


async def simple_set_get(d: Driver) -> None:
    await d.set("key", "value")
    assert await d.get("key") == "value"


async def missing_default(d: Driver) -> None:
    assert await d.get("missing") is None
    assert await d.get("missing", "fallback") == "fallback"


async def stored_none_is_not_missing(d: Driver) -> None:
    await d.set("none", None)
    assert await d.get("none", "fallback") is None
    assert await d.has_key("none") is True


async def add_keeps_existing(d: Driver) -> None:
    assert await d.add("addkey", "first") is True
    assert await d.add("addkey", "second") is False
    assert await d.get("addkey") == "first"


async def delete_says_whether_it_existed(d: Driver) -> None:
    await d.set("k1", "a")
    assert await d.delete("k1") is True
    assert await d.delete("k1") is False
    assert await d.get("k1") is None


async def has_key(d: Driver) -> None:
    await d.set("hello", "world")
    assert await d.has_key("hello") is True
    assert await d.has_key("goodbye") is False


async def incr_and_decr(d: Driver) -> None:
    await d.set("answer", 41)
    assert await d.incr("answer") == 42
    assert await d.get("answer") == 42
    assert await d.incr("answer", 10) == 52
    assert await d.decr("answer") == 51
    assert await d.decr("answer", 60) == -9
    assert await d.incr("answer", -1) == -10
    with pytest.raises(ValueError, match="not found"):
        await d.incr("does_not_exist")
    with pytest.raises(ValueError, match="not found"):
        await d.decr("does_not_exist")


async def incr_is_atomic(d: Driver) -> None:
    await d.set("counter", 0)
    if d.is_async:
        await asyncio.gather(*(d.incr("counter") for _ in range(50)))
    else:
        import threading

        threads = [
            threading.Thread(target=lambda: [d.backend.incr("counter") for _ in range(10)])
            for _ in range(5)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert await d.get("counter") == 50


async def incr_keeps_the_ttl(d: Driver) -> None:
    await d.set("ttl-counter", 1, 100)
    await d.incr("ttl-counter")
    assert 90_000 < d.redis.pttl(_redis_key(d, "ttl-counter")) <= 100_000


async def incr_of_text_is_a_type_error(d: Driver) -> None:
    await d.set("text", "abc")
    with pytest.raises(TypeError):
        await d.incr("text")


async def picklable_values(d: Driver) -> None:
    values = {
        "string": "this is a string",
        "int": 42,
        "big": 2**80,
        "float": 1.5,
        "bool": True,
        "bytes": b"\x00\xff binary",
        "list": [1, 2, "three"],
        "dict": {"a": 1, "b": (2, 3)},
        "set": {1, 2, 3},
        "decimal": Decimal("1.10"),
        "date": date(2026, 1, 2),
        "object": Point(1, 2),
        "unicode": "Ångström ∑ 😀",
    }
    for key, value in values.items():
        await d.set(key, value)
    for key, value in values.items():
        got = await d.get(key)
        assert got == value
        assert type(got) is type(value)


async def unicode_keys(d: Driver) -> None:
    await d.set("ключ-🔑", "значение")
    assert await d.get("ключ-🔑") == "значение"


async def large_value(d: Driver) -> None:
    value = "x" * 1_000_000
    await d.set("large", value)
    assert await d.get("large") == value


async def get_many_and_set_many(d: Driver) -> None:
    assert await d.set_many({"a": 1, "b": "two", "c": None}) == []
    assert await d.get_many(["a", "b", "c", "d"]) == {"a": 1, "b": "two", "c": None}
    await d.delete_many(["a", "b"])
    assert await d.get_many(["a", "b", "c"]) == {"c": None}


async def expiration(d: Driver) -> None:
    await d.set("expires", "soon", 1)
    await d.add("expires-add", "soon", 1)
    await d.set_many({"expires-many": 1}, 1)
    assert await d.get("expires") == "soon"
    await asyncio.sleep(1.3)
    assert await d.get("expires") is None
    assert await d.get("expires-add") is None
    assert await d.get("expires-many") is None
    assert await d.has_key("expires") is False
    assert await d.add("expires", "again") is True


async def touch(d: Driver) -> None:
    await d.set("touched", "value", 1)
    assert await d.touch("touched", 10) is True
    await asyncio.sleep(1.3)
    assert await d.get("touched") == "value"
    assert await d.touch("nothing-here", 10) is False


async def touch_forever(d: Driver) -> None:
    await d.set("touched", "value", 10)
    assert await d.touch("touched", None) is True
    assert d.redis.pttl(_redis_key(d, "touched")) == -1
    assert await d.get("touched") == "value"


async def timeout_none_is_forever(d: Driver) -> None:
    await d.set("forever", "value", None)
    await d.add("forever-add", "value", None)
    await d.set_many({"forever-many": 1}, None)
    for key in ("forever", "forever-add", "forever-many"):
        assert d.redis.pttl(_redis_key(d, key)) == -1
        assert await d.get(key) is not None
    assert await d.incr("forever-many") == 2


async def timeout_zero_expires_at_once(d: Driver) -> None:
    await d.set("zero", "value", 0)
    assert await d.get("zero") is None
    assert await d.add("zero-add", "value", 0) is True
    assert await d.get("zero-add") is None
    await d.set_many({"zero-many": 1}, 0)
    assert await d.get("zero-many") is None
    await d.set("zero-touch", "value")
    assert await d.touch("zero-touch", 0) is True
    assert await d.get("zero-touch") is None
    await d.set("zero-negative", "value", -1)
    assert await d.get("zero-negative") is None


async def default_timeout_setting(d: Driver) -> None:
    backend = d.make(TIMEOUT=None)
    await d.on(backend).set("default-forever", 1)
    assert d.redis.pttl(_redis_key(d.on(backend), "default-forever")) == -1
    timed = d.make(TIMEOUT=60)
    await d.on(timed).set("default-timed", 1)
    assert 50_000 < d.redis.pttl(_redis_key(d.on(timed), "default-timed")) <= 60_000


async def versions(d: Driver) -> None:
    await d.set("answer", 42, version=1)
    await d.set("answer", 37, version=2)
    assert await d.get("answer", version=1) == 42
    assert await d.get("answer", version=2) == 37
    assert await d.get("answer") == 42  # VERSION defaults to 1
    assert await d.incr_version("answer", version=2) == 3
    assert await d.get("answer", version=2) is None
    assert await d.get("answer", version=3) == 37
    assert await d.decr_version("answer", version=3) == 2
    assert await d.get("answer", version=2) == 37
    with pytest.raises(ValueError, match="not found"):
        await d.incr_version("does_not_exist")
    other = d.on(d.make(VERSION=2))
    assert await other.get("answer") == 37


async def key_prefix_isolates(d: Driver) -> None:
    prefixed = d.on(d.make(KEY_PREFIX="tenant-a"))
    await d.set("shared-name", "plain")
    await prefixed.set("shared-name", "prefixed")
    assert await d.get("shared-name") == "plain"
    assert await prefixed.get("shared-name") == "prefixed"
    assert await prefixed.delete("shared-name") is True
    assert await d.get("shared-name") == "plain"


def reverse_key(key: str, key_prefix: str, version: int) -> str:
    return f"{version}|{key_prefix}|{key[::-1]}"


async def key_function(d: Driver) -> None:
    custom = d.on(d.make(KEY_FUNCTION=reverse_key))
    dotted = d.on(d.make(KEY_FUNCTION=f"{__name__}.reverse_key"))
    await custom.set("abc", "custom")
    assert await dotted.get("abc") == "custom"
    assert await d.get("abc") is None
    assert d.redis.get(_raw_key(d, "1||cba")) is not None


async def key_validation_warnings(d: Driver) -> None:
    for key in ("key with spaces", "k" * 251, "key\x00null"):
        with pytest.warns(CacheKeyWarning):
            await d.set(key, "value")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheKeyWarning)
            assert await d.get(key) == "value"


async def get_or_set(d: Driver) -> None:
    assert await d.get_or_set("projector", 42) == 42
    assert await d.get("projector") == 42
    assert await d.get_or_set("projector", 43) == 42
    assert await d.get_or_set("null", None) is None
    assert await d.get("null", "default") is None  # the None was stored
    calls: list[int] = []

    def load() -> str:
        calls.append(1)
        return "loaded"

    assert await d.get_or_set("callable", load) == "loaded"
    assert await d.get_or_set("callable", load) == "loaded"
    assert calls == [1]
    assert await d.get_or_set("versioned", "v2", version=2) == "v2"
    assert await d.get("versioned", version=2) == "v2"
    assert await d.get("versioned") is None
    assert await d.get_or_set("forever-gos", "v", None) == "v"
    assert d.redis.pttl(_redis_key(d, "forever-gos")) == -1
    assert await d.get_or_set("zero-gos", "v", 0) == "v"
    assert await d.get("zero-gos") is None


async def clear(d: Driver) -> None:
    await d.set_many({"a": 1, "b": 2})
    await d.clear()
    assert await d.get_many(["a", "b"]) == {}


async def planted_pickle_is_never_unpickled(d: Driver) -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (pytest.fail, ("a planted pickle was unpickled",))

    planted = pickle.dumps(Boom())
    key = _redis_key(d, "planted")
    d.redis.set(key, planted)  # someone with write access to Redis, without the key
    assert await d.get("planted", "fallback") == "fallback"
    if isinstance(d.backend, ScalekitCache):
        # Dressed as an entry of this backend, with a forged signature.
        await d.set("planted", "honest value")
        honest = d.redis.get(key)
        header_end = honest.index(b"p", 40)
        d.redis.set(
            key,
            honest[: header_end + 1]
            + honest[header_end + 1 : header_end + 12]
            + b"\x00" * 32
            + planted,
        )
        assert await d.get("planted", "fallback") == "fallback"


async def other_secret_reads_nothing(d: Driver) -> None:
    await d.set("signed", {"a": 1})
    other = d.on(d.make(OPTIONS={"SIGNING_KEYS": {"other": b"another-secret-of-32-bytes......"}}))
    assert await other.get("signed", "fallback") == "fallback"


async def close_keeps_it_usable(d: Driver) -> None:
    await d.set("before-close", 1)
    await d.close()
    assert await d.get("before-close") == 1


SCENARIOS = [
    simple_set_get,
    missing_default,
    stored_none_is_not_missing,
    add_keeps_existing,
    delete_says_whether_it_existed,
    has_key,
    incr_and_decr,
    incr_is_atomic,
    incr_keeps_the_ttl,
    incr_of_text_is_a_type_error,
    picklable_values,
    unicode_keys,
    large_value,
    get_many_and_set_many,
    expiration,
    touch,
    touch_forever,
    timeout_none_is_forever,
    timeout_zero_expires_at_once,
    default_timeout_setting,
    versions,
    key_prefix_isolates,
    key_function,
    key_validation_warnings,
    get_or_set,
    clear,
    planted_pickle_is_never_unpickled,
    other_secret_reads_nothing,
    close_keeps_it_usable,
]
