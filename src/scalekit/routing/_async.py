"""The asyncio routing pool over ``AsyncEngine`` objects.

The routing rule and its I/O live in :class:`~scalekit.routing._router.Router`
(over each ``AsyncEngine.sync_engine``); here they run inside SQLAlchemy's
greenlet bridge, the way ``AsyncSession`` runs the ORM. Only the entry
points are ``async def``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.util import greenlet_spawn

from scalekit.errors import NoHealthyNode
from scalekit.routing._core import ConsistencyToken
from scalekit.routing._orm import RoutingSession
from scalekit.routing._pool import PoolBase
from scalekit.routing._router import READONLY_OPTION
from scalekit.typing import Clock

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

__all__ = ["AsyncRoutingPool", "AsyncRoutingSession"]


class AsyncRoutingSession(AsyncSession):
    """An ``AsyncSession`` whose statements are routed like :class:`RoutingSession`'s.

    Build it through ``pool.sessionmaker()`` (an ``async_sessionmaker``). The
    routing runs in the wrapped sync :class:`RoutingSession`, inside
    SQLAlchemy's greenlet bridge, so both pools share one implementation.

    >>> Session = pool.sessionmaker()  # doctest: +SKIP
    >>> async with Session() as session:  # doctest: +SKIP
    ...     await session.get(Order, 1)              # a replica

    Raises:
        ReadOnlyViolation: a write inside ``pool.use_replica()``.
        NoHealthyNode: no node can serve a statement.
    """

    sync_session_class = RoutingSession

    def __init__(self, *args: Any, routing_pool: AsyncRoutingPool, **kwargs: Any) -> None:
        kwargs.setdefault("sync_session_class", RoutingSession)
        super().__init__(*args, routing_pool=routing_pool, **kwargs)


class AsyncRoutingPool(PoolBase):
    """The asyncio twin of :class:`~scalekit.routing.RoutingPool`, over ``AsyncEngine`` objects.

    Same parameters and behaviour; the methods that talk to a server are
    coroutines or async context managers.

    >>> pool = AsyncRoutingPool(primary=async_engine, replicas=[ar1])  # doctest: +SKIP
    >>> Session = pool.sessionmaker()                                  # doctest: +SKIP
    >>> async with Session() as session:                               # doctest: +SKIP
    ...     await session.scalar(select(func.count()).select_from(Order))

    Raises:
        ConfigurationError: as ``RoutingPool``, and for sync engines.
    """

    _async = True

    def _greenlet_sleep(self, clock: Clock) -> Callable[[float], None]:
        # Router I/O runs inside the greenlet bridge, where await_ suspends the task.
        from sqlalchemy.util import await_only

        def sleep(seconds: float) -> None:
            await_only(clock.asleep(seconds))

        return sleep

    def _engine(self, node: str) -> AsyncEngine:
        engine: AsyncEngine = self._originals[node]
        return engine

    def sessionmaker(self, **kwargs: Any) -> async_sessionmaker[AsyncRoutingSession]:
        """An ``async_sessionmaker`` of :class:`AsyncRoutingSession` bound to this pool."""
        from sqlalchemy.ext.asyncio import async_sessionmaker

        return async_sessionmaker(class_=AsyncRoutingSession, routing_pool=self, **kwargs)

    @contextlib.asynccontextmanager
    async def connect(self, *, readonly: bool = False) -> AsyncIterator[AsyncConnection]:
        """An ``AsyncConnection``: a replica's when ``readonly``, else the primary's.

        Raises:
            NoHealthyNode: no node accepted a connection.
            ReadOnlyViolation: a write on a read-only connection.
        """
        if not readonly:
            node = await greenlet_spawn(self._router.route_write)
            async with self._engine(node).connect() as conn:
                yield conn
            return
        conn = await self._connect_read()
        try:
            yield conn
        finally:
            await conn.close()

    async def _connect_read(self) -> AsyncConnection:
        router = self._router
        tried: list[str] = []
        exclude: frozenset[str] = frozenset()
        last: BaseException | None = None
        for _ in range(len(router.engines) + 1):
            try:
                plan = await greenlet_spawn(router.plan_read, exclude)
            except NoHealthyNode as exc:
                if last is None:
                    raise
                raise NoHealthyNode("replica", tried=tried, reason=exc.reason) from last
            for node in plan.attempts:
                try:
                    conn = await self._engine(node).connect()
                except DBAPIError as exc:
                    if getattr(exc, "scalekit_node", None) != node:
                        raise
                    tried.append(node)
                    exclude = exclude | {node}
                    last = exc
                    continue
                if node != router.core.primary:
                    await conn.execution_options(**{READONLY_OPTION: True})
                return conn
        raise NoHealthyNode("replica", tried=tried, reason="every node refused") from last

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """An ``AsyncConnection`` to the primary in a transaction, committed on success.

        Raises:
            NoHealthyNode: no primary is known.
        """
        node = await greenlet_spawn(self._router.route_write)
        async with self._engine(node).begin() as conn:
            yield conn

    async def export_token(self) -> str | None:
        """This context's consistency token as a string (see ``RoutingPool.export_token``)."""
        token = await greenlet_spawn(self._router.current_token)
        return None if token is None else token.encode()

    async def token(self) -> ConsistencyToken | None:
        """This context's consistency token (resolved), or None."""
        token: ConsistencyToken | None = await greenlet_spawn(self._router.current_token)
        return token

    async def refresh(self) -> None:
        """Check roles and lag of every node now."""
        await greenlet_spawn(self._router.refresh)
