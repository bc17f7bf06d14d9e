"""The asyncio rate limiter: :class:`RateLimiter` with ``await``. Logic in :mod:`._shell`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit._redis_bounded import DEFAULT_OP_TIMEOUT, check_op_timeout
from scalekit.errors import ConfigurationError
from scalekit.ratelimit._backends import AsyncRedisBackend, MemoryBackend, StoreUnavailable
from scalekit.ratelimit._backends._memory import AsyncMemoryBackend
from scalekit.ratelimit._core import Algorithm, Decision, Limit
from scalekit.ratelimit._shell import FallbackPolicy, LimiterLogic, Plan, check_positive
from scalekit.ratelimit._sync import is_async_client

if TYPE_CHECKING:
    from scalekit.ratelimit._backends import AsyncBackend
    from scalekit.typing import Clock

__all__ = ["AsyncRateLimiter"]


def async_backend(
    store: Any, timeout: float | None, op_timeout: float = DEFAULT_OP_TIMEOUT
) -> AsyncBackend:
    """The backend for an asyncio ``store``; raises ConfigurationError if it is not one.

    ``timeout`` and ``op_timeout`` are validated, and apply to a backend built here.
    """
    op_timeout = check_op_timeout(op_timeout)
    if timeout is not None:
        timeout = check_positive(timeout, "timeout")
    if isinstance(store, (AsyncRedisBackend, AsyncMemoryBackend)):
        return store
    if isinstance(store, MemoryBackend):
        return AsyncMemoryBackend(store)
    if is_async_client(store):
        return AsyncRedisBackend(store, timeout=timeout, op_timeout=op_timeout)
    if callable(getattr(store, "evalsha", None)):
        raise ConfigurationError(
            f"{type(store).__name__} is a blocking client: use RateLimiter, or pass a "
            "redis.asyncio client",
            parameter="store",
        )
    raise ConfigurationError(
        f"store must be a redis.asyncio client or a MemoryBackend, got {type(store).__name__}",
        parameter="store",
    )


class AsyncRateLimiter:
    """The asyncio twin of :class:`RateLimiter`, same parameters and methods, awaited.

    ``store`` is a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``
    (or a :class:`MemoryBackend`). ``op_timeout`` bounds what an outage costs,
    as for :class:`RateLimiter`; ``timeout`` (seconds), when set, also bounds
    each store call with ``asyncio.wait_for``. Call :meth:`aclose` when done:
    it closes the connections the limiter opened (never your client).

    >>> import asyncio
    >>> from scalekit.ratelimit import AsyncRateLimiter, MemoryBackend
    >>> limiter = AsyncRateLimiter(MemoryBackend())
    >>> asyncio.run(limiter.hit("k", "5/second")).remaining
    4

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
        timeout: float | None = None,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        clock: Clock = SYSTEM_CLOCK,
        name: str | None = None,
    ) -> None:
        self.backend = async_backend(store, timeout, op_timeout)
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
        # As in RateLimiter: ``hit`` against one limit sends a request encoded once.
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
        """See :meth:`RateLimiter.hit`."""
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
        """See :meth:`RateLimiter.hit_all`."""
        return await self._check(self._logic.plan(key, limits, cost, write=True))

    async def peek(self, key: str | bytes, limit: Limit | str | Sequence[Limit | str]) -> Decision:
        """See :meth:`RateLimiter.peek`."""
        return await self._check(self._logic.plan(key, limit, 1, write=False))

    async def enforce(
        self, key: str | bytes, limit: Limit | str | Sequence[Limit | str], cost: int = 1
    ) -> Decision:
        """See :meth:`RateLimiter.enforce`.

        Raises:
            RateLimitExceeded: denied; ``.decision`` holds the decision.
        """
        decision = await self._check(self._logic.plan(key, limit, cost, write=True))
        return decision.raise_for_denied()

    async def reset(self, key: str | bytes, limit: Limit | str | Sequence[Limit | str]) -> None:
        """See :meth:`RateLimiter.reset`."""
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
