"""The I/O-free part of the concurrency limiters: leases, grants, fallbacks, waiting.

Stripe's concurrent-request limiter. Each holder takes a *lease*: an entry in
a Redis sorted set scored by its expiry. Releasing removes it; a holder that
dies without releasing loses its slot when the lease expires (``lease``
seconds, renewable with ``Lease.renew``). Taking a slot is one script call
that first drops expired leases, on Redis's clock
(``_lua/concurrency_acquire.lua``, mirrored by
:func:`scalekit.ratelimit._core.concurrency_acquire`).

The fallback policies are those of the rate limiters: ``local`` keeps an
in-process semaphore per key allowing ``limit // instances``.

:class:`ConcurrencyLogic` holds every decision; the asyncio shell
(``_concurrency_async.py``) and the blocking shell generated from it
(``_concurrency_sync.py``) only call the store and sleep.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from scalekit.errors import ConcurrencyLimitExceeded, ConfigurationError
from scalekit.ratelimit._backends import MemoryBackend, StoreUnavailable
from scalekit.ratelimit._base import (
    StoreGuard,
    check_count,
    check_fallback,
    check_positive,
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
from scalekit.testing import _switch as _testmode

if TYPE_CHECKING:
    from scalekit.typing import Clock

__all__ = ["POLL_INTERVAL", "ConcurrencyLogic", "Grant", "check_timeout", "key_text"]

#: How often a waiting acquire polls for a free slot.
POLL_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class Grant:
    """One answer to "may I take a slot?", from the store or a fallback."""

    granted: bool
    in_flight: int
    retry_after: float
    fallback: str | None
    local: bool


class ConcurrencyLogic:
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

    def granted(self, reply: tuple[bool, int, float]) -> Grant:
        self.guard.succeeded()
        granted, in_flight, retry_after = reply
        return Grant(granted, in_flight, retry_after / US_PER_SECOND, None, False)

    def degraded(self, store_key: str, lease_id: str, error: StoreUnavailable | None) -> Grant:
        if error is not None:
            self.guard.failed(error.reason)
        if self.fallback == "raise":
            raise unavailable(self.guard, error)
        if self.fallback == "allow":
            return Grant(True, 0, 0.0, "allow", False)
        if self.fallback == "deny":
            return Grant(False, 0, max(self.guard.retry_after(), 1.0), "deny", False)
        share = max(1, self.limit // self.instances)
        granted, in_flight, retry_after = self.local.acquire(
            store_key, share, self.lease_us, lease_id
        )
        return Grant(granted, in_flight, retry_after / US_PER_SECOND, "local", True)

    def denied(self, key: str | bytes, grant: Grant) -> ConcurrencyLimitExceeded:
        return ConcurrencyLimitExceeded(
            key_text(key), grant.retry_after, self.limit, grant.in_flight
        )

    def wait_time(self, deadline: float, grant: Grant) -> float | None:
        """Seconds to sleep before trying again, or None when out of time."""
        left = deadline - self.clock.monotonic()
        if left <= 0 or _testmode.is_testing():  # testing mode: as if the timeout passed
            return None
        return min(POLL_INTERVAL, left, max(grant.retry_after, 0.001))


def check_timeout(timeout: float) -> float:
    """``acquire``'s ``timeout`` as a float. Raises :class:`ConfigurationError`."""
    if not is_number(timeout) or not timeout >= 0:  # also NaN
        raise ConfigurationError(
            f"timeout must be a number >= 0, got {timeout!r}", parameter="timeout"
        )
    return float(timeout)


def key_text(key: str | bytes) -> str:
    """``key`` as the text a lease and an error carry."""
    return key if isinstance(key, str) else key.decode("utf-8", "replace")
