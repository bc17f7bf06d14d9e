"""The asyncio rate limiter. All logic lives in :mod:`._base` and :mod:`._core`.

This file is the source of the blocking limiter too (``scripts/unasync.py``
generates it); only the store calls differ, and the asyncio-only ``timeout``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit._redis_bounded import DEFAULT_OP_TIMEOUT
from scalekit._unasync import IS_ASYNC
from scalekit.ratelimit._backends import AsyncRedisBackend, StoreUnavailable
from scalekit.ratelimit._base import FallbackPolicy, LimiterLogic, Plan, async_backend, sync_backend
from scalekit.ratelimit._core import Algorithm, Decision, Limit

if TYPE_CHECKING:
    from scalekit.typing import Clock

__all__ = ["AsyncRateLimiter"]

__unasync__ = {
    "The asyncio rate limiter": "The blocking rate limiter",
    "\n\nThis file is the source of the blocking limiter too (``scripts/unasync.py``\n"
    "generates it); only the store calls differ, and the asyncio-only ``timeout``.": "",
    "        timeout: asyncio only: seconds that bound each store call\n"
    "            (``asyncio.wait_for``) when set.\n": "",
}


class AsyncRateLimiter:
    """Limit how often a key may act, shared by every process on one Redis.

    ``store`` is your ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``
    (or a :class:`MemoryBackend` for one process and tests). Each check is one
    EVALSHA that runs on Redis's clock and returns the whole decision. Call
    :meth:`aclose` when done: it closes the connections the limiter opened
    (never your client).

    Args:
        algorithm: ``"gcra"`` (default), ``"token_bucket"``,
            ``"sliding_window_log"`` (exact), ``"sliding_window_counter"``
            (approximate, two counters) or ``"fixed_window"``.
        namespace: prefix of every Redis key; limiters with different
            namespaces never share state.
        fallback: when Redis is unreachable: ``"local"`` (default: an
            in-process limiter with each limit divided by ``instances``),
            ``"allow"`` (fail open), ``"deny"`` (fail closed) or ``"raise"``.
        instances: how many processes share the limit, for ``"local"``.
        local_cache: deny locally, without a round trip, a key known to be
            over its limit until its ``retry_after`` (``True`` or a max size).
        shadow: decide and report but never deny (for rolling out a limit);
            would-be denials emit ``ShadowDenied`` events.
        consume_denied: count denied hits against the limit too.
        failure_threshold: consecutive store failures before the store is
            skipped for ``recovery_interval`` seconds.
        max_local_keys: bound on the keys the local fallback keeps.
        timeout: asyncio only: seconds that bound each store call
            (``asyncio.wait_for``) when set.
        op_timeout: seconds a Redis command may take per phase (connect,
            then reply): a stopped, killed or paused Redis costs a check at
            most about ``2 * op_timeout`` once per probe, then the fallback
            answers at once, whatever the client's own timeouts and retries
            (see :class:`AsyncRedisBackend`; for a backend you pass, set it there).
        clock: time for the breaker and the local limiter.
        name: the name in events (defaults to ``namespace``).

    >>> from scalekit.ratelimit import MemoryBackend, AsyncRateLimiter
    >>> limiter = AsyncRateLimiter(MemoryBackend())
    >>> decision = await limiter.hit("customer:42", "2/minute")
    >>> decision.allowed, decision.remaining
    (True, 1)

    Raises:
        ConfigurationError: a bad parameter (``parameter`` names it).
    """

    def __init__(
        self,
        store: Any,
        *,
        algorithm: Algorithm = "gcra",
        namespace: str = "scalekit:rl",
        fallback: FallbackPolicy = "local",
        instances: int = 1,
        local_cache: bool | int = False,
        shadow: bool = False,
        consume_denied: bool = False,
        failure_threshold: int = 1,
        recovery_interval: float = 1.0,
        max_local_keys: int = 10_000,
        timeout: float | None = None,  # unasync: async-only
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        clock: Clock = SYSTEM_CLOCK,
        name: str | None = None,
    ) -> None:
        if IS_ASYNC:
            self.backend = async_backend(store, timeout, op_timeout)
        else:
            self.backend = sync_backend(store, op_timeout)
        self._logic = LimiterLogic(
            algorithm=algorithm,
            namespace=namespace,
            fallback=fallback,
            instances=instances,
            local_cache=local_cache,
            shadow=shadow,
            consume_denied=consume_denied,
            failure_threshold=failure_threshold,
            recovery_interval=recovery_interval,
            max_local_keys=max_local_keys,
            clock=clock,
            name=name,
        )
        # ``hit`` against one limit goes straight to a request encoded once per
        # limit and cost, unless a local over-limit cache must be consulted.
        self._one_key: AsyncRedisBackend | None = None
        if isinstance(self.backend, AsyncRedisBackend) and self._logic.prepares_hits:
            self._one_key = self.backend

    @property
    def algorithm(self) -> Algorithm:
        """The algorithm this limiter runs."""
        return self._logic.algorithm

    @property
    def degraded(self) -> bool:
        """Whether the store is failing now (checks take the fallback)."""
        return self._logic.guard.degraded

    async def hit(self, key: str | bytes, limit: Limit | str, cost: int = 1) -> Decision:
        """Count a hit of ``cost`` against ``limit`` for ``key``, if allowed.

        >>> decision = await AsyncRateLimiter(MemoryBackend()).hit("ip:10.0.0.1", Limit(1, per=1))
        >>> decision.allowed
        True

        Raises:
            ConfigurationError: a bad limit, key or cost (more than the limit's capacity).
        """
        logic = self._logic
        backend = self._one_key
        if backend is not None:
            prepared = logic.prepared_hit(key, limit, cost)
            if prepared is not None:
                request, storage_key, limits = prepared
                try:
                    outcome = await backend.hit_one(request, storage_key)
                except StoreUnavailable as error:
                    return logic.degraded(logic.plan_one(key, limit, cost, write=True), error)
                return logic.finish_one(key, limits, outcome)
        plan = logic.plan_one(key, limit, cost, write=True)
        if backend is not None:
            logic.prepare_hit(limit, cost)
        return await self._check(plan)

    async def hit_all(
        self, key: str | bytes, limits: Sequence[Limit | str], cost: int = 1
    ) -> Decision:
        """Hit several limits atomically (one script call): allowed only if all allow.

        Nothing is counted when any limit denies. The decision reports the most
        restrictive limit: the denial with the longest ``retry_after``, or the
        allowance with the fewest ``remaining``.

        >>> limiter = AsyncRateLimiter(MemoryBackend())
        >>> decision = await limiter.hit_all("k", ["10/second", "1000/hour"])
        >>> decision.limit
        Limit(10/1s)

        Raises:
            ConfigurationError: no limits, or a bad limit, key or cost.
        """
        return await self._check(self._logic.plan(key, limits, cost, write=True))

    async def peek(self, key: str | bytes, limit: Limit | str | Sequence[Limit | str]) -> Decision:
        """Whether a hit of 1 would be allowed now, and what remains; counts nothing.

        Raises:
            ConfigurationError: a bad limit or key.
        """
        return await self._check(self._logic.plan(key, limit, 1, write=False))

    async def enforce(
        self, key: str | bytes, limit: Limit | str | Sequence[Limit | str], cost: int = 1
    ) -> Decision:
        """Like :meth:`hit_all`, but raise when denied.

        Raises:
            RateLimitExceeded: denied; ``.decision`` holds the decision.
            ConfigurationError: a bad limit, key or cost.
        """
        plan = self._logic.plan(key, limit, cost, write=True)
        return (await self._check(plan)).raise_for_denied()

    async def reset(self, key: str | bytes, limit: Limit | str | Sequence[Limit | str]) -> None:
        """Forget ``key``'s usage of ``limit`` (or of several limits), in Redis and locally.

        Raises:
            ConfigurationError: a bad limit or key.
            redis.exceptions.RedisError: the store failed (reset has no fallback).
        """
        plan = self._logic.plan(key, limit, 0, write=False)
        self._logic.forget(plan.keys)
        await self.backend.delete(plan.keys)

    async def aclose(self) -> None:
        """Close the connections the limiter opened (see :meth:`AsyncRedisBackend.aclose`).

        The client you passed stays open, and the limiter usable.
        """
        aclose = getattr(self.backend, "aclose", None)
        if aclose is not None:
            await aclose()

    async def _check(self, plan: Plan) -> Decision:
        logic = self._logic
        decision = logic.cached(plan)
        if decision is not None:
            return decision
        if not logic.guard.available():
            return logic.degraded(plan, None)
        try:
            outcome = await self.backend.evaluate(
                logic.algorithm,
                plan.keys,
                plan.params,
                plan.cost,
                consume_denied=logic.consume_denied,
                write=plan.write,
            )
        except StoreUnavailable as error:
            return logic.degraded(plan, error)
        return logic.finish(plan, outcome)

    def __repr__(self) -> str:
        return (
            f"AsyncRateLimiter({self.backend!r}, algorithm={self.algorithm!r}, "
            f"namespace={self._logic.namespace!r}, fallback={self._logic.fallback!r})"
        )
