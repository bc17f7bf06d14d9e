"""``ScalekitCache``: a Django cache backend on :mod:`scalekit.cache`.

::

    CACHES = {
        "default": {
            "BACKEND": "scalekit.contrib.django.ScalekitCache",
            "LOCATION": "redis://localhost:6379/0",
            "OPTIONS": {"CLUSTER": False, "LOCAL": {"maxsize": 10_000, "ttl": 5.0}},
        }
    }

Django builds one backend object per thread; they share one
:class:`~scalekit.cache.Cache` (and its connection pool) per configuration, and
one :class:`~scalekit.cache.AsyncCache` per configuration and event loop (an
asyncio connection belongs to the loop that opened it).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.utils.module_loading import import_string

from scalekit.cache import AsyncCache, Cache, LocalCache
from scalekit.contrib.django._cache_async import AsyncCacheOps
from scalekit.contrib.django._cache_core import DjangoCodec, signing_keys, ttl_of
from scalekit.contrib.django._cache_sync import CacheOps
from scalekit.contrib.django._loops import PerLoop
from scalekit.errors import ConfigurationError

__all__ = ["ScalekitCache"]

_OPTIONS = frozenset(
    {
        "CLIENT",
        "ASYNC_CLIENT",
        "CLUSTER",
        "NAMESPACE",
        "LOCAL",
        "ON_REDIS_DOWN",
        "OP_TIMEOUT",
        "SIGNING_KEYS",
        "SIGNING_KEY_ID",
        "LEASE_WAIT",
        "MAX_ENTRIES",  # Django's own, for the in-process backends; accepted and unused
        "CULL_FREQUENCY",
    }
)


class _Shared:
    """One configuration's caches: the blocking one, and one per event loop."""

    def __init__(self, location: str, options: Mapping[str, Any], default_ttl: float) -> None:
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"unknown ScalekitCache OPTIONS {unknown}; known: {sorted(_OPTIONS)}",
                parameter="OPTIONS",
            )
        self.location = location
        self.options = options
        self.default_ttl = default_ttl
        self.lock = threading.Lock()
        self._sync: CacheOps | None = None
        self._loops: PerLoop[AsyncCacheOps] = PerLoop()

    def _factory(self, name: str, is_async: bool) -> Callable[[], Any]:
        given = self.options.get(name)
        if given is not None:
            factory = import_string(given) if isinstance(given, str) else given
            if not callable(factory):
                raise ConfigurationError(f"OPTIONS[{name!r}] must be callable", parameter=name)
            return factory  # type: ignore[no-any-return]
        if not self.location:
            raise ConfigurationError(
                "ScalekitCache needs a LOCATION (a redis:// URL) or OPTIONS['CLIENT']",
                parameter="LOCATION",
            )
        cluster = bool(self.options.get("CLUSTER", False))
        if is_async:
            import redis.asyncio as aredis
            import redis.asyncio.cluster as acluster

            cls: Any = acluster.RedisCluster if cluster else aredis.Redis
        else:
            import redis
            import redis.cluster

            cls = redis.cluster.RedisCluster if cluster else redis.Redis
        return lambda: cls.from_url(self.location)

    def _kwargs(self) -> dict[str, Any]:
        from django.conf import settings

        options = self.options
        keys = options.get("SIGNING_KEYS")
        if keys is None:
            keys, current = signing_keys(
                settings.SECRET_KEY, getattr(settings, "SECRET_KEY_FALLBACKS", ())
            )
        else:
            current = options.get("SIGNING_KEY_ID") or next(iter(keys))
        local = options.get("LOCAL")
        kwargs: dict[str, Any] = {
            "namespace": options.get("NAMESPACE", "django"),
            "default_ttl": self.default_ttl,
            # Django's contract: a value is gone at its timeout, never served stale.
            "stale_ttl": 0.0,
            "jitter": 0.0,
            "beta": 0.0,
            "serializer": DjangoCodec(keys, current),
            "on_redis_down": options.get("ON_REDIS_DOWN", "bypass"),
            "local": None if local is None else LocalCache(**local),
        }
        if "OP_TIMEOUT" in options:
            kwargs["op_timeout"] = options["OP_TIMEOUT"]
        if "LEASE_WAIT" in options:
            kwargs["lease_wait"] = options["LEASE_WAIT"]
        return kwargs

    def sync(self) -> CacheOps:
        ops = self._sync
        if ops is None:
            with self.lock:
                if self._sync is None:
                    client = self._factory("CLIENT", False)()
                    self._sync = CacheOps(Cache(client, **self._kwargs()))
                ops = self._sync
        return ops

    def for_loop(self) -> AsyncCacheOps:
        return self._loops.get(self._build_async)

    def _build_async(self) -> tuple[AsyncCacheOps, Callable[[], Awaitable[None]]]:
        client = self._factory("ASYNC_CLIENT", True)()
        cache = AsyncCache(client, **self._kwargs())

        async def close() -> None:
            await cache.aclose()
            await client.aclose()

        return AsyncCacheOps(cache), close


_registry: dict[tuple[str, str, float], _Shared] = {}
_registry_lock = threading.Lock()


def _shared(location: str, options: Mapping[str, Any], default_ttl: float) -> _Shared:
    key = (location, repr(sorted(options.items())), default_ttl)
    with _registry_lock:
        shared = _registry.get(key)
        if shared is None:
            shared = _registry[key] = _Shared(location, options, default_ttl)
        return shared


class ScalekitCache(BaseCache):  # type: ignore[misc]  # Django ships no type hints
    """A Django cache backend on :class:`scalekit.cache.Cache` over Redis or Redis Cluster.

    ``LOCATION`` is a ``redis://`` (or ``rediss://``) URL; ``OPTIONS``:

    - ``CLUSTER``: ``True`` for Redis Cluster (``RedisCluster.from_url``).
    - ``CLIENT`` / ``ASYNC_CLIENT``: a zero-argument factory (or its dotted path)
      returning the ``redis.Redis`` / ``redis.asyncio.Redis`` (or cluster) client to
      use instead of one built from ``LOCATION``.
    - ``LOCAL``: keyword arguments of a :class:`~scalekit.cache.LocalCache`, the
      in-process tier (off by default).
    - ``ON_REDIS_DOWN``: the cache's outage policy, ``"bypass"`` by default (a read
      misses, a write is dropped, ``incr`` raises ``ValueError`` as for a missing
      key; no request fails on an outage), ``"stale_local"`` or ``"raise"``.
    - ``OP_TIMEOUT``, ``LEASE_WAIT``: as :class:`~scalekit.cache.Cache`'s.
    - ``SIGNING_KEYS`` / ``SIGNING_KEY_ID``: the pickle's HMAC keys; by default keys
      derived from ``SECRET_KEY`` (and ``SECRET_KEY_FALLBACKS``).

    Django's contract holds: ``KEY_PREFIX``, ``VERSION``, ``KEY_FUNCTION``,
    ``TIMEOUT`` (``None`` keeps a value forever, ``0`` expires it at once), key
    validation warnings, ``add``, ``get_or_set``, ``incr``/``decr`` (one atomic
    script, the TTL kept), ``touch``, ``delete`` (whether the key existed),
    ``*_many``, versions, ``clear`` (flushes the Redis database, as Django's own
    Redis backend). Any picklable value is stored (integers as digits, so
    ``incr`` runs on Redis). ``get_or_set`` is the scalekit cache's: one loader
    per key across threads and instances. Every method has a real ``a``-prefixed
    coroutine twin on ``redis.asyncio``.

    Raises:
        ConfigurationError: an unknown option, no ``LOCATION`` and no ``CLIENT``,
            an empty ``SECRET_KEY`` (at the first operation).
    """

    def __init__(self, location: str | list[str], params: dict[str, Any]) -> None:
        super().__init__(params)
        if isinstance(location, list | tuple):
            location = location[0] if location else ""
        default = self.default_timeout
        default_ttl = float(default) if isinstance(default, int | float) and default > 0 else 300.0
        self._shared = _shared(location or "", dict(params.get("OPTIONS", {})), default_ttl)

    def _ttl(self, timeout: Any) -> float | None:
        return ttl_of(timeout, self.default_timeout, DEFAULT_TIMEOUT)

    def _key(self, key: Any, version: int | None) -> str:
        return self.make_and_validate_key(key, version=version)  # type: ignore[no-any-return]

    def _forever_or_now(self, ttl: float | None) -> bool:
        return ttl is None or ttl == 0

    # ------------------------------------------------------------------ blocking

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self._shared.sync().get(self._key(key, version), default)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        self._shared.sync().set_many({self._key(key, version): value}, self._ttl(timeout))

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return self._shared.sync().add(self._key(key, version), value, self._ttl(timeout))

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return self._shared.sync().touch(self._key(key, version), self._ttl(timeout))

    def delete(self, key: Any, version: int | None = None) -> bool:
        return self._shared.sync().delete(self._key(key, version))

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self._shared.sync().has_key(self._key(key, version))

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        result = self._shared.sync().incr(self._key(key, version), delta)
        if result is None:
            raise ValueError(f"Key '{key}' not found")
        return result

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        named = {self._key(key, version): key for key in keys}
        found = self._shared.sync().get_many(list(named))
        return {named[full]: value for full, value in found.items()}

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        named = {self._key(key, version): key for key in data}
        items = {full: data[key] for full, key in named.items()}
        failed = self._shared.sync().set_many(items, self._ttl(timeout))
        return [named[full] for full in failed]

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        self._shared.sync().delete_many([self._key(key, version) for key in keys])

    def get_or_set(
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> Any:
        ttl = self._ttl(timeout)
        if self._forever_or_now(ttl):
            return super().get_or_set(key, default, timeout, version)
        loader = default if callable(default) else (lambda: default)
        return self._shared.sync().get_or_set(self._key(key, version), loader, ttl)  # type: ignore[arg-type]

    def clear(self) -> None:
        self._shared.sync().clear()

    def close(self, **kwargs: Any) -> None:
        """Nothing to do: Django calls this after every request, and the pool is shared."""

    # ------------------------------------------------------------------ asyncio

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return await self._shared.for_loop().get(self._key(key, version), default)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        ops = self._shared.for_loop()
        await ops.set_many({self._key(key, version): value}, self._ttl(timeout))

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return await self._shared.for_loop().add(self._key(key, version), value, self._ttl(timeout))

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return await self._shared.for_loop().touch(self._key(key, version), self._ttl(timeout))

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        return await self._shared.for_loop().delete(self._key(key, version))

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        return await self._shared.for_loop().has_key(self._key(key, version))

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        result = await self._shared.for_loop().incr(self._key(key, version), delta)
        if result is None:
            raise ValueError(f"Key '{key}' not found")
        return result

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return await self.aincr(key, -delta, version)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        named = {self._key(key, version): key for key in keys}
        found = await self._shared.for_loop().get_many(list(named))
        return {named[full]: value for full, value in found.items()}

    async def aset_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        named = {self._key(key, version): key for key in data}
        items = {full: data[key] for full, key in named.items()}
        failed = await self._shared.for_loop().set_many(items, self._ttl(timeout))
        return [named[full] for full in failed]

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        await self._shared.for_loop().delete_many([self._key(key, version) for key in keys])

    async def aget_or_set(
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> Any:
        ttl = self._ttl(timeout)
        if self._forever_or_now(ttl):
            return await super().aget_or_set(key, default, timeout, version)
        loader = default if callable(default) else (lambda: default)
        return await self._shared.for_loop().get_or_set(self._key(key, version), loader, ttl)  # type: ignore[arg-type]

    async def aclear(self) -> None:
        await self._shared.for_loop().clear()

    async def aclose(self, **kwargs: Any) -> None:
        """Nothing to do (see :meth:`close`)."""
