# This file is generated from src/scalekit/ratelimit/_concurrency_async.py by scripts/unasync.py.
# DO NOT EDIT; edit the async file and run: python scripts/unasync.py
"""The blocking concurrency limiter: at most N requests in flight per key, across processes.

Every decision (leases, grants, fallbacks, how long to wait) is in
``_concurrency_base.py``; this shell only calls the store and sleeps.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit._redis_bounded import DEFAULT_OP_TIMEOUT
from scalekit.ratelimit._backends import StoreUnavailable
from scalekit.ratelimit._base import FallbackPolicy, sync_backend
from scalekit.ratelimit._concurrency_base import ConcurrencyLogic, Grant, check_timeout

if TYPE_CHECKING:
    from scalekit.typing import Clock

__all__ = ["ConcurrencyLimiter", "Lease"]


@dataclass(slots=True)
class Lease:
    """One held slot; a context manager that releases it on exit.

    ``with lease:``, ``lease.renew()``, ``lease.release()``.
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

    def acquire(self, key: str | bytes, *, timeout: float = 0.0) -> Lease:
        """Take a slot for ``key``, waiting up to ``timeout`` seconds for one.

        Use it as ``with limiter.acquire(key):`` (or ``lease =
        limiter.acquire(key)``, then ``release()`` the lease).

        Raises:
            ConcurrencyLimitExceeded: no slot freed within ``timeout``.
            ConfigurationError: a bad key or timeout.
        """
        return self._acquire(key, check_timeout(timeout))

    def _acquire(self, key: str | bytes, timeout: float) -> Lease:
        logic = self._logic
        deadline = logic.clock.monotonic() + timeout
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

    def _try(self, store_key: str, lease_id: str) -> Grant:
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
