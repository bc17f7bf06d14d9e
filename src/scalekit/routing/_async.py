"""The asyncio routing pool over ``AsyncEngine`` objects.

The rule lives in ``_core.py``, its I/O in :class:`~scalekit.routing._router.Router`
(written once over sync engines), and what the pools share without I/O in
``_base.py``. This file holds only the entry points that talk to a server;
``_bridge`` runs the router: in SQLAlchemy's greenlet bridge for the asyncio
pool (as SQLAlchemy's asyncio ORM runs), in the caller's thread for the sync
one, which is generated from this file.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.exc import DBAPIError

from scalekit._unasync import IS_ASYNC
from scalekit.routing._base import PoolBase, ReadWalk
from scalekit.routing._core import ConsistencyToken
from scalekit.routing._orm import AsyncRoutingSession
from scalekit.routing._router import READONLY_OPTION

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

__all__ = ["AsyncRoutingPool"]

__unasync__ = {"The asyncio routing pool": "The sync routing pool"}

_T = TypeVar("_T")

if IS_ASYNC:
    from sqlalchemy.util import greenlet_spawn as _bridge
else:

    def _bridge(fn: Callable[..., _T], *args: Any) -> _T:
        """Run a router call: the sync pool runs it in the caller's thread."""
        return fn(*args)


class AsyncRoutingPool(PoolBase):
    """Reads on healthy, fresh replicas; writes on the primary; your writes visible to you.

    Wraps the ``AsyncEngine`` objects you already have (their pools are kept,
    never copied). ``primary`` is an ``AsyncEngine``, or a list/dict of
    candidate engines for failover (the first is the primary until a role
    check says otherwise); ``replicas`` a list or a dict of name -> engine
    (names default to ``replica1``, ``replica2``...). An empty replica list
    sends everything to the primary.

    >>> pool = AsyncRoutingPool(primary=engine, replicas=[r1, r2])  # doctest: +SKIP
    >>> Session = pool.sessionmaker()  # doctest: +SKIP
    >>> async with Session() as session:  # doctest: +SKIP
    ...     session.add(Order(total=10)); await session.commit()  # the primary
    ...     await session.get(Order, 1)  # a caught-up replica

    Tunables (seconds unless said): ``blacklist_seconds`` (doubled per
    consecutive failure up to ``max_blacklist_seconds``), ``max_lag_seconds``,
    ``max_lag_bytes`` (None disables), ``lag_readmit_ratio``, ``consistency``
    (``"auto"``: LSN tokens on PostgreSQL, time elsewhere; ``"lsn"``,
    ``"time"``, ``"none"``), ``sticky_seconds`` (time mode), ``sticky_timeout``
    (how long a read may wait for a replica to reach its token before using
    the primary), ``balancer`` (``"round_robin"``, ``"random"``,
    ``"least_in_use"``) with ``weights``, ``fallback_to_primary``,
    ``max_primary_read_share`` (cap on reads spilled to the primary when every
    replica lags), ``check_interval`` (health/lag checks, None: only on
    :meth:`refresh`), ``clock``.

    Raises:
        ConfigurationError: bad durations or names, an engine of the other
            colour (sync/asyncio), the same engine twice,
            ``consistency="lsn"`` on a non-PostgreSQL engine.
    """

    _async = IS_ASYNC

    def _engine(self, node: str) -> AsyncEngine:
        engine: AsyncEngine = self._originals[node]
        return engine

    def sessionmaker(self, **kwargs: Any) -> async_sessionmaker[AsyncRoutingSession]:
        """A session factory of :class:`AsyncRoutingSession` bound to this pool.

        Keyword arguments go to ``sqlalchemy.ext.asyncio.async_sessionmaker`` (not ``bind``).
        """
        from sqlalchemy.ext.asyncio import async_sessionmaker

        return async_sessionmaker(class_=AsyncRoutingSession, routing_pool=self, **kwargs)

    @contextlib.asynccontextmanager
    async def connect(self, *, readonly: bool = False) -> AsyncIterator[AsyncConnection]:
        """A Core connection: a replica's when ``readonly``, else the primary's.

        A read-only connection rejects statements that write with
        :class:`~scalekit.errors.ReadOnlyViolation`. Choosing the node retries
        on another one when a connection cannot be opened; errors after that
        are yours to handle.

        >>> async with pool.connect(readonly=True) as conn:  # doctest: +SKIP
        ...     rows = (await conn.execute(select(Order))).all()

        Raises:
            NoHealthyNode: no node accepted a connection.
        """
        if not readonly:
            node = await _bridge(self._router.route_write)
            async with self._engine(node).connect() as conn:
                yield conn
            return
        conn = await self._connect_read()
        try:
            yield conn
        finally:
            await conn.close()

    async def _connect_read(self) -> AsyncConnection:
        walk = ReadWalk(self._router)
        for _ in walk.rounds():
            for node in await _bridge(walk.plan):
                try:
                    conn = await self._engine(node).connect()
                except DBAPIError as exc:
                    walk.refused(node, exc)
                    continue
                if node != self._router.core.primary:
                    await conn.execution_options(**{READONLY_OPTION: True})
                return conn
        walk.exhausted()

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection to the primary inside a transaction, committed on success.

        Raises:
            NoHealthyNode: no primary is known (failover in progress, split brain).
        """
        node = await _bridge(self._router.route_write)
        async with self._engine(node).connect() as conn, conn.begin():
            yield conn

    async def export_token(self) -> str | None:
        """This context's consistency token as a string, or None when it wrote nothing.

        Hand it to the next request or job and :meth:`import_token` it there.
        Resolving a pending write costs one query on the primary.
        """
        token = await _bridge(self._router.current_token)
        return None if token is None else token.encode()

    async def token(self) -> ConsistencyToken | None:
        """This context's consistency token (resolved), or None."""
        token: ConsistencyToken | None = await _bridge(self._router.current_token)
        return token

    async def refresh(self) -> None:
        """Check roles and lag of every node now (one query per node)."""
        await _bridge(self._router.refresh)
