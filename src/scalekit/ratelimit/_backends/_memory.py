"""The in-process store: the pure core over a bounded dict.

Used for tests and examples, as a single-process limiter, and by the ``local``
fallback when Redis is down.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from scalekit._clock import SYSTEM_CLOCK
from scalekit.errors import ConfigurationError
from scalekit.ratelimit._core import (
    US_PER_SECOND,
    Outcome,
    State,
    concurrency_acquire,
    evaluate,
    is_int,
)

if TYPE_CHECKING:
    from scalekit.typing import Clock

__all__ = ["AsyncMemoryBackend", "MemoryBackend"]


class MemoryBackend:
    """Rate-limit state in this process, at most ``max_keys`` keys (LRU).

    Time comes from ``clock.monotonic()``. When more than ``max_keys`` keys
    are live, the least recently used key's state is dropped (that key starts
    afresh), so memory stays bounded under a flood of distinct keys.
    Thread-safe. Works with both :class:`RateLimiter` and
    :class:`AsyncRateLimiter`.

    >>> from scalekit.ratelimit import Limit, MemoryBackend, RateLimiter
    >>> limiter = RateLimiter(MemoryBackend())
    >>> limiter.hit("k", Limit(2, per=60)).remaining
    1

    Raises:
        ConfigurationError: ``max_keys`` below 1.
    """

    def __init__(self, *, max_keys: int = 100_000, clock: Clock = SYSTEM_CLOCK) -> None:
        if not is_int(max_keys) or max_keys < 1:
            raise ConfigurationError(
                f"max_keys must be an int >= 1, got {max_keys!r}", parameter="max_keys"
            )
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._states: OrderedDict[str, State] = OrderedDict()
        self._leases: OrderedDict[str, dict[str, float]] = OrderedDict()

    def now(self) -> float:
        """The backend's time in microseconds."""
        return float(math.floor(self._clock.monotonic() * US_PER_SECOND))

    def __len__(self) -> int:
        return len(self._states) + len(self._leases)

    def evaluate(
        self,
        algorithm: str,
        keys: Sequence[str],
        params: Sequence[tuple[float, float, float]],
        cost: float,
        *,
        consume_denied: bool,
        write: bool,
        now: float | None = None,
    ) -> Outcome:
        """Run one check of ``algorithm`` against every key at once; returns the raw outcome.

        ``now`` (microseconds) replaces the store's clock: for tests only.
        """
        when = self.now() if now is None else now
        with self._lock:
            states = [self._states.get(key) for key in keys]
            outcome, finals = evaluate(
                algorithm, states, when, params, cost, consume_denied=consume_denied, write=write
            )
            if finals is not None:
                for key, final, (a, p, b) in zip(keys, finals, params, strict=True):
                    self._store(key, final, algorithm, when, a, p, b)
        return outcome

    def _store(
        self, key: str, state: State, algorithm: str, now: float, a: float, p: float, b: float
    ) -> None:
        from scalekit.ratelimit._core import RULES

        _remaining, reset_after = RULES[algorithm][1](state, now, a, p, b)
        if reset_after <= 0:
            # Equivalent to no state at all (the Lua driver DELs it too).
            self._states.pop(key, None)
            return
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self.max_keys:
            self._states.popitem(last=False)

    def delete(self, keys: Sequence[str]) -> None:
        """Delete the state under ``keys`` (``reset``)."""
        with self._lock:
            for key in keys:
                self._states.pop(key, None)
                self._leases.pop(key, None)

    def acquire(
        self, key: str, limit: int, lease: float, lease_id: str, *, now: float | None = None
    ) -> tuple[bool, int, float]:
        """Try to take one of ``limit`` slots of ``key``: ``(granted, in_flight, retry_after)``.

        Expired leases are dropped first; ``lease`` and ``retry_after`` are in microseconds.
        """
        when = self.now() if now is None else now
        with self._lock:
            granted, in_flight, retry_after, leases = concurrency_acquire(
                self._leases.get(key, {}), when, limit, lease, lease_id
            )
            if leases:
                self._leases[key] = leases
                self._leases.move_to_end(key)
                while len(self._leases) > self.max_keys:
                    self._leases.popitem(last=False)
            else:
                self._leases.pop(key, None)
        return granted, in_flight, retry_after

    def renew(self, key: str, lease: float, lease_id: str) -> bool:
        """Extend a live lease by ``lease`` microseconds; False if it expired or was released."""
        when = self.now()
        with self._lock:
            leases = self._leases.get(key)
            if leases is None or leases.get(lease_id, 0.0) <= when:
                return False
            leases[lease_id] = when + lease
            return True

    def release(self, key: str, lease_id: str) -> bool:
        """Remove a lease; False if it was not there (expired, or released already)."""
        with self._lock:
            leases = self._leases.get(key)
            if leases is None or lease_id not in leases:
                return False
            del leases[lease_id]
            if not leases:
                del self._leases[key]
            return True

    def __repr__(self) -> str:
        return f"MemoryBackend(max_keys={self.max_keys}, keys={len(self)})"


class AsyncMemoryBackend:
    """:class:`MemoryBackend` behind ``async`` methods (no I/O, never awaits)."""

    def __init__(self, memory: MemoryBackend) -> None:
        self.memory = memory

    async def evaluate(
        self,
        algorithm: str,
        keys: Sequence[str],
        params: Sequence[tuple[float, float, float]],
        cost: float,
        *,
        consume_denied: bool,
        write: bool,
        now: float | None = None,
    ) -> Outcome:
        """Run one check of ``algorithm`` against every key at once; returns the raw outcome.

        ``now`` (microseconds) replaces the store's clock: for tests only.
        """
        return self.memory.evaluate(
            algorithm, keys, params, cost, consume_denied=consume_denied, write=write, now=now
        )

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete the state under ``keys`` (``reset``)."""
        self.memory.delete(keys)

    async def acquire(
        self, key: str, limit: int, lease: float, lease_id: str, *, now: float | None = None
    ) -> tuple[bool, int, float]:
        """Try to take one of ``limit`` slots of ``key``: ``(granted, in_flight, retry_after)``.

        Expired leases are dropped first; ``lease`` and ``retry_after`` are in microseconds.
        """
        return self.memory.acquire(key, limit, lease, lease_id, now=now)

    async def renew(self, key: str, lease: float, lease_id: str) -> bool:
        """Extend a live lease by ``lease`` microseconds; False if it expired or was released."""
        return self.memory.renew(key, lease, lease_id)

    async def release(self, key: str, lease_id: str) -> bool:
        """Remove a lease; False if it was not there (expired, or released already)."""
        return self.memory.release(key, lease_id)
