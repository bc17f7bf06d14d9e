"""Concurrency limiters: at most N requests in flight per key, across processes.

Stripe's concurrent-request limiter. Each holder takes a *lease*: an entry in
a Redis sorted set scored by its expiry. Releasing removes it; a holder that
dies without releasing loses its slot when the lease expires (``lease``
seconds, renewable with :meth:`Lease.renew`). Taking a slot is one script call
that first drops expired leases, on Redis's clock
(``_lua/concurrency_acquire.lua``, mirrored by
:func:`scalekit.ratelimit._core.concurrency_acquire`).

The fallback policies are those of the rate limiters: ``local`` keeps an
in-process semaphore per key allowing ``limit // instances``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit._redis_bounded import DEFAULT_OP_TIMEOUT
from scalekit.errors import ConcurrencyLimitExceeded, ConfigurationError
from scalekit.ratelimit._backends import MemoryBackend, StoreUnavailable
from scalekit.ratelimit._base import (
    FallbackPolicy,
    StoreGuard,
    async_backend,
    check_count,
    check_fallback,
    check_positive,
    sync_backend,
    unavailable,
)
from scalekit.ratelimit._core import (
    MAX_AMOUNT,
    MAX_PERIOD,
    US_PER_SECOND,
    check_namespace,
    concurrency_key,
    is_number,
)

if TYPE_CHECKING:
    from scalekit.ratelimit._backends import AsyncBackend, SyncBackend
    from scalekit.typing import Clock

__all__ = ["AsyncConcurrencyLimiter", "AsyncLease", "ConcurrencyLimiter", "Lease"]

#: How often a waiting acquire polls for a free slot.
POLL_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class _Grant:
    granted: bool
    in_flight: int
    retry_after: float
    fallback: str | None
    local: bool


class _ConcurrencyLogic:
    """The I/O-free part of both concurrency limiters."""

    def __init__(
        self,
        *,
        limit: int,
        lease: timedelta | float,
        namespace: str,
        fallback: str,
        instances: int,
        failure_threshold: int,
        recovery_interval: float,
        max_local_keys: int,
        clock: Clock,
        name: str | None,
    ) -> None:
        self.limit = check_count(limit, "limit")
        if self.limit > MAX_AMOUNT:
            raise ConfigurationError(
                f"limit must be at most {MAX_AMOUNT}, got {limit!r}", parameter="limit"
            )
        seconds = lease.total_seconds() if isinstance(lease, timedelta) else lease
        self.lease_seconds = check_positive(seconds, "lease", most=MAX_PERIOD.total_seconds())
        self.lease_us = float(round(self.lease_seconds * US_PER_SECOND))
        self.namespace = check_namespace(namespace)
        self.fallback = check_fallback(fallback)
        self.instances = check_count(instances, "instances")
        self.clock = clock
        self.name = name or namespace
        self.guard = StoreGuard(
            name=self.name,
            fallback=self.fallback,
            failure_threshold=failure_threshold,
            recovery_interval=recovery_interval,
            clock=clock,
        )
        self.local = MemoryBackend(max_keys=max_local_keys, clock=clock)

    def key(self, key: str | bytes) -> str:
        return concurrency_key(self.namespace, key, self.limit)

    def granted(self, reply: tuple[bool, int, float]) -> _Grant:
        self.guard.succeeded()
        granted, in_flight, retry_after = reply
        return _Grant(granted, in_flight, retry_after / US_PER_SECOND, None, False)

    def degraded(self, store_key: str, lease_id: str, error: StoreUnavailable | None) -> _Grant:
        if error is not None:
            self.guard.failed(error.reason)
        if self.fallback == "raise":
            raise unavailable(self.guard, error)
        if self.fallback == "allow":
            return _Grant(True, 0, 0.0, "allow", False)
        if self.fallback == "deny":
            return _Grant(False, 0, max(self.guard.retry_after(), 1.0), "deny", False)
        share = max(1, self.limit // self.instances)
        granted, in_flight, retry_after = self.local.acquire(
            store_key, share, self.lease_us, lease_id
        )
        return _Grant(granted, in_flight, retry_after / US_PER_SECOND, "local", True)

    def denied(self, key: str | bytes, grant: _Grant) -> ConcurrencyLimitExceeded:
        text = key if isinstance(key, str) else key.decode("utf-8", "replace")
        return ConcurrencyLimitExceeded(text, grant.retry_after, self.limit, grant.in_flight)

    def wait_time(self, deadline: float, grant: _Grant) -> float | None:
        """Seconds to sleep before trying again, or None when out of time."""
        left = deadline - self.clock.monotonic()
        if left <= 0:
            return None
        return min(POLL_INTERVAL, left, max(grant.retry_after, 0.001))


def _check_timeout(timeout: float) -> float:
    if not is_number(timeout) or not timeout >= 0:  # also NaN
        raise ConfigurationError(
            f"timeout must be a number >= 0, got {timeout!r}", parameter="timeout"
        )
    return float(timeout)


@dataclass(slots=True)
class Lease:
    """One held slot; a context manager that releases it on exit.

    ``fallback`` is ``None`` when the slot is held in Redis, else the policy
    that granted it. ``in_flight`` is the count including this one, when known.
    """

    key: str
    lease_id: str
    in_flight: int
    fallback: str | None
    _limiter: ConcurrencyLimiter = field(repr=False)
    _store_key: str = field(repr=False)
    released: bool = False

    def renew(self) -> bool:
        """Extend the lease by the limiter's lease time; False if it had already expired."""
        return self._limiter._renew(self)

    def release(self) -> None:
        """Free the slot (idempotent)."""
        if not self.released:
            self.released = True
            self._limiter._release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class ConcurrencyLimiter:
    """At most ``limit`` holders per key at once, across every process on one Redis.

    >>> from scalekit.ratelimit import ConcurrencyLimiter, MemoryBackend
    >>> limiter = ConcurrencyLimiter(MemoryBackend(), limit=2)
    >>> with limiter.acquire("report:7") as lease:
    ...     lease.in_flight
    1

    Args:
        store: a ``redis.Redis``/``RedisCluster`` or a :class:`MemoryBackend`.
        limit: slots per key.
        lease: seconds (or timedelta) after which a slot held by a dead
            holder frees itself; renew long work with :meth:`Lease.renew`.
        fallback, instances, failure_threshold, recovery_interval, op_timeout:
            as for :class:`RateLimiter`.

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
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        clock: Clock = SYSTEM_CLOCK,
        name: str | None = None,
    ) -> None:
        self.backend: SyncBackend = sync_backend(store, op_timeout)
        self._logic = _ConcurrencyLogic(
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

    def acquire(self, key: str | bytes, *, timeout: float = 0.0) -> Lease:
        """Take a slot for ``key``, waiting up to ``timeout`` seconds for one.

        Use the returned lease as a context manager, or call ``release()``.

        Raises:
            ConcurrencyLimitExceeded: no slot freed within ``timeout``.
            ConfigurationError: a bad key or timeout.
        """
        logic = self._logic
        deadline = logic.clock.monotonic() + _check_timeout(timeout)
        store_key = logic.key(key)
        lease_id = uuid.uuid4().hex
        while True:
            grant = self._try(store_key, lease_id)
            if grant.granted:
                text = key if isinstance(key, str) else key.decode("utf-8", "replace")
                return Lease(text, lease_id, grant.in_flight, grant.fallback, self, store_key)
            pause = logic.wait_time(deadline, grant)
            if pause is None:
                raise logic.denied(key, grant)
            logic.clock.sleep(pause)

    def close(self) -> None:
        """Close the connections the limiter opened; the client you passed stays open."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def _try(self, store_key: str, lease_id: str) -> _Grant:
        logic = self._logic
        if not logic.guard.available():
            return logic.degraded(store_key, lease_id, None)
        try:
            reply = self.backend.acquire(store_key, logic.limit, logic.lease_us, lease_id)
        except StoreUnavailable as error:
            return logic.degraded(store_key, lease_id, error)
        return logic.granted(reply)

    def _renew(self, lease: Lease) -> bool:
        if lease.fallback == "local":
            return self._logic.local.renew(lease._store_key, self._logic.lease_us, lease.lease_id)
        if lease.fallback is not None:
            return True
        try:
            return self.backend.renew(lease._store_key, self._logic.lease_us, lease.lease_id)
        except StoreUnavailable:
            return False

    def _release(self, lease: Lease) -> None:
        if lease.fallback == "local":
            self._logic.local.release(lease._store_key, lease.lease_id)
        elif lease.fallback is None:
            try:
                self.backend.release(lease._store_key, lease.lease_id)
            except StoreUnavailable:
                pass  # the lease expires on its own

    def __repr__(self) -> str:
        return f"ConcurrencyLimiter({self.backend!r}, limit={self.limit})"


@dataclass(slots=True)
class AsyncLease:
    """The asyncio twin of :class:`Lease`: ``async with``, ``await lease.renew()``..."""

    key: str
    lease_id: str
    in_flight: int
    fallback: str | None
    _limiter: AsyncConcurrencyLimiter = field(repr=False)
    _store_key: str = field(repr=False)
    released: bool = False

    async def renew(self) -> bool:
        """Extend the lease; False if it had already expired."""
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


class _Acquiring:
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
    """The asyncio twin of :class:`ConcurrencyLimiter`.

    >>> import asyncio
    >>> from scalekit.ratelimit import AsyncConcurrencyLimiter, MemoryBackend
    >>> async def main() -> int:
    ...     limiter = AsyncConcurrencyLimiter(MemoryBackend(), limit=2)
    ...     async with limiter.acquire("report:7") as lease:
    ...         return lease.in_flight
    >>> asyncio.run(main())
    1

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
        timeout: float | None = None,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        clock: Clock = SYSTEM_CLOCK,
        name: str | None = None,
    ) -> None:
        self.backend: AsyncBackend = async_backend(store, timeout, op_timeout)
        self._logic = _ConcurrencyLogic(
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
        """Take a slot: ``async with limiter.acquire(key):`` or ``await limiter.acquire(key)``.

        Raises:
            ConcurrencyLimitExceeded: no slot freed within ``timeout``.
            ConfigurationError: a bad key or timeout.
        """
        return _Acquiring(self, key, _check_timeout(timeout))

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

    async def _try(self, store_key: str, lease_id: str) -> _Grant:
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
