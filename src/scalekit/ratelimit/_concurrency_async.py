"""The asyncio concurrency limiter: at most N requests in flight per key, across processes.

Every decision (leases, grants, fallbacks, how long to wait) is in
``_concurrency_base.py``; this shell only calls the store and sleeps. It is
the source of the blocking limiter too (``scripts/unasync.py`` generates
``_concurrency_sync.py``); only the asyncio-only ``timeout`` and the
awaitable ``acquire()`` differ.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit._redis_bounded import DEFAULT_OP_TIMEOUT
from scalekit._unasync import IS_ASYNC
from scalekit.ratelimit._backends import StoreUnavailable
from scalekit.ratelimit._base import FallbackPolicy, async_backend, sync_backend
from scalekit.ratelimit._concurrency_base import ConcurrencyLogic, Grant, check_timeout

if TYPE_CHECKING:
    from scalekit.ratelimit._backends import AsyncBackend
    from scalekit.typing import Clock

__all__ = ["AsyncConcurrencyLimiter", "AsyncLease"]

__unasync__ = {
    "_Acquiring": "Lease",
    "The asyncio concurrency limiter": "The blocking concurrency limiter",
    "\n\nEvery decision (leases, grants, fallbacks, how long to wait) is in\n"
    "``_concurrency_base.py``; this shell only calls the store and sleeps. It is\n"
    "the source of the blocking limiter too (``scripts/unasync.py`` generates\n"
    "``_concurrency_sync.py``); only the asyncio-only ``timeout`` and the\n"
    "awaitable ``acquire()`` differ.": (
        "\n\nEvery decision (leases, grants, fallbacks, how long to wait) is in\n"
        "``_concurrency_base.py``; this shell only calls the store and sleeps."
    ),
    "an async context manager": "a context manager",
    "``async with lease:``, ``await lease.renew()``": "``with lease:``, ``lease.renew()``",
    """    >>> import asyncio
    >>> from scalekit.ratelimit import AsyncConcurrencyLimiter, MemoryBackend
    >>> async def main() -> int:
    ...     limiter = AsyncConcurrencyLimiter(MemoryBackend(), limit=2)
    ...     async with limiter.acquire("report:7") as lease:
    ...         return lease.in_flight
    >>> asyncio.run(main())
    1""": """    >>> from scalekit.ratelimit import ConcurrencyLimiter, MemoryBackend
    >>> limiter = ConcurrencyLimiter(MemoryBackend(), limit=2)
    >>> with limiter.acquire("report:7") as lease:
    ...     lease.in_flight
    1""",
    "a ``redis.asyncio.Redis``/``RedisCluster``": "a ``redis.Redis``/``RedisCluster``",
    "        timeout: asyncio only: seconds that bound each store call\n"
    "            (``asyncio.wait_for``) when set.\n": "",
    "``async with limiter.acquire(key):`` (or ``lease = await\n"
    "        limiter.acquire(key)``": "``with limiter.acquire(key):`` (or ``lease =\n"
    "        limiter.acquire(key)``",
}


@dataclass(slots=True)
class AsyncLease:
    """One held slot; an async context manager that releases it on exit.

    ``async with lease:``, ``await lease.renew()``, ``await lease.release()``.
    ``fallback`` is ``None`` when the slot is held in Redis, else the policy
    that granted it. ``in_flight`` is the count including this one, when known.
    """

    key: str
    lease_id: str
    in_flight: int
    fallback: str | None
    _limiter: AsyncConcurrencyLimiter = field(repr=False)
    _store_key: str = field(repr=False)
    released: bool = False

    async def renew(self) -> bool:
        """Extend the lease by the limiter's lease time; False if it had already expired."""
        return await self._limiter._renew(self)

    async def release(self) -> None:
        """Free the slot (idempotent)."""
        if not self.released:
            self.released = True
            await self._limiter._release(self)

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.release()


class _Acquiring:  # unasync: async-only
    """What :meth:`AsyncConcurrencyLimiter.acquire` returns: await it or ``async with`` it."""

    __slots__ = ("_key", "_lease", "_limiter", "_timeout")

    def __init__(self, limiter: AsyncConcurrencyLimiter, key: str | bytes, timeout: float) -> None:
        self._limiter = limiter
        self._key = key
        self._timeout = timeout
        self._lease: AsyncLease | None = None

    def __await__(self) -> Any:
        return self._limiter._acquire(self._key, self._timeout).__await__()

    async def __aenter__(self) -> AsyncLease:
        self._lease = await self._limiter._acquire(self._key, self._timeout)
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._lease is not None:
            await self._lease.release()


class AsyncConcurrencyLimiter:
    """At most ``limit`` holders per key at once, across every process on one Redis.

    >>> import asyncio
    >>> from scalekit.ratelimit import AsyncConcurrencyLimiter, MemoryBackend
    >>> async def main() -> int:
    ...     limiter = AsyncConcurrencyLimiter(MemoryBackend(), limit=2)
    ...     async with limiter.acquire("report:7") as lease:
    ...         return lease.in_flight
    >>> asyncio.run(main())
    1

    Args:
        store: a ``redis.asyncio.Redis``/``RedisCluster`` or a :class:`MemoryBackend`.
        limit: slots per key.
        lease: seconds (or timedelta) after which a slot held by a dead
            holder frees itself; renew long work with :meth:`AsyncLease.renew`.
        timeout: asyncio only: seconds that bound each store call
            (``asyncio.wait_for``) when set.
        fallback, instances, failure_threshold, recovery_interval, op_timeout:
            as for :class:`AsyncRateLimiter`.

    Raises:
        ConfigurationError: a bad parameter.
    """

    def __init__(
        self,
        store: Any,
        limit: int,
        *,
        lease: timedelta | float = 60.0,
        namespace: str = "scalekit:cc",
        fallback: FallbackPolicy = "local",
        instances: int = 1,
        failure_threshold: int = 1,
        recovery_interval: float = 1.0,
        max_local_keys: int = 10_000,
        timeout: float | None = None,  # unasync: async-only
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        clock: Clock = SYSTEM_CLOCK,
        name: str | None = None,
    ) -> None:
        if IS_ASYNC:
            self.backend: AsyncBackend = async_backend(store, timeout, op_timeout)
        else:
            self.backend = sync_backend(store, op_timeout)
        self._logic = ConcurrencyLogic(
            limit=limit,
            lease=lease,
            namespace=namespace,
            fallback=fallback,
            instances=instances,
            failure_threshold=failure_threshold,
            recovery_interval=recovery_interval,
            max_local_keys=max_local_keys,
            clock=clock,
            name=name,
        )

    @property
    def limit(self) -> int:
        """Slots per key."""
        return self._logic.limit

    def acquire(self, key: str | bytes, *, timeout: float = 0.0) -> _Acquiring:
        """Take a slot for ``key``, waiting up to ``timeout`` seconds for one.

        Use it as ``async with limiter.acquire(key):`` (or ``lease = await
        limiter.acquire(key)``, then ``release()`` the lease).

        Raises:
            ConcurrencyLimitExceeded: no slot freed within ``timeout``.
            ConfigurationError: a bad key or timeout.
        """
        if IS_ASYNC:
            return _Acquiring(self, key, check_timeout(timeout))
        else:
            return self._acquire(key, check_timeout(timeout))

    async def _acquire(self, key: str | bytes, timeout: float) -> AsyncLease:
        logic = self._logic
        deadline = logic.clock.monotonic() + timeout
        store_key = logic.key(key)
        lease_id = uuid.uuid4().hex
        while True:
            grant = await self._try(store_key, lease_id)
            if grant.granted:
                text = key if isinstance(key, str) else key.decode("utf-8", "replace")
                return AsyncLease(text, lease_id, grant.in_flight, grant.fallback, self, store_key)
            pause = logic.wait_time(deadline, grant)
            if pause is None:
                raise logic.denied(key, grant)
            await logic.clock.asleep(pause)

    async def aclose(self) -> None:
        """Close the connections the limiter opened; the client you passed stays open."""
        aclose = getattr(self.backend, "aclose", None)
        if aclose is not None:
            await aclose()

    async def _try(self, store_key: str, lease_id: str) -> Grant:
        logic = self._logic
        if not logic.guard.available():
            return logic.degraded(store_key, lease_id, None)
        try:
            reply = await self.backend.acquire(store_key, logic.limit, logic.lease_us, lease_id)
        except StoreUnavailable as error:
            return logic.degraded(store_key, lease_id, error)
        return logic.granted(reply)

    async def _renew(self, lease: AsyncLease) -> bool:
        if lease.fallback == "local":
            return self._logic.local.renew(lease._store_key, self._logic.lease_us, lease.lease_id)
        if lease.fallback is not None:
            return True
        try:
            return await self.backend.renew(lease._store_key, self._logic.lease_us, lease.lease_id)
        except StoreUnavailable:
            return False

    async def _release(self, lease: AsyncLease) -> None:
        if lease.fallback == "local":
            self._logic.local.release(lease._store_key, lease.lease_id)
        elif lease.fallback is None:
            try:
                await self.backend.release(lease._store_key, lease.lease_id)
            except StoreUnavailable:
                pass  # the lease expires on its own

    def __repr__(self) -> str:
        return f"AsyncConcurrencyLimiter({self.backend!r}, limit={self.limit})"
