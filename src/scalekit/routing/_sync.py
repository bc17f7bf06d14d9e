# This file is generated from src/scalekit/routing/_async.py by scripts/unasync.py.
# DO NOT EDIT; edit the async file and run: python scripts/unasync.py
"""The sync routing pool over ``Engine`` objects.

The rule lives in ``_core.py``, its I/O in :class:`~scalekit.routing._router.Router`
(written once over sync engines), and what the pools share without I/O in
``_base.py``. This file holds only the entry points that talk to a server;
``_bridge`` runs the router: in SQLAlchemy's greenlet bridge for the asyncio
pool (as SQLAlchemy's asyncio ORM runs), in the caller's thread for the sync
one, which is generated from this file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.exc import DBAPIError

from scalekit.routing._base import PoolBase, ReadWalk
from scalekit.routing._core import ConsistencyToken
from scalekit.routing._orm import RoutingSession
from scalekit.routing._router import READONLY_OPTION

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import sessionmaker

__all__ = ["RoutingPool"]

_T = TypeVar("_T")


def _bridge(fn: Callable[..., _T], *args: Any) -> _T:
    """Run a router call: the sync pool runs it in the caller's thread."""
    return fn(*args)


class RoutingPool(PoolBase):
    """Reads on healthy, fresh replicas; writes on the primary; your writes visible to you.

    Wraps the ``Engine`` objects you already have (their pools are kept,
    never copied). ``primary`` is an ``Engine``, or a list/dict of
    candidate engines for failover (the first is the primary until a role
    check says otherwise); ``replicas`` a list or a dict of name -> engine
    (names default to ``replica1``, ``replica2``...). An empty replica list
    sends everything to the primary.

    >>> pool = RoutingPool(primary=engine, replicas=[r1, r2])  # doctest: +SKIP
    >>> Session = pool.sessionmaker()  # doctest: +SKIP
    >>> with Session() as session:  # doctest: +SKIP
    ...     session.add(Order(total=10)); session.commit()  # the primary
    ...     session.get(Order, 1)  # a caught-up replica

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

    _async = False

    def _engine(self, node: str) -> Engine:
        engine: Engine = self._originals[node]
        return engine

    def sessionmaker(self, **kwargs: Any) -> sessionmaker[RoutingSession]:
        """A session factory of :class:`RoutingSession` bound to this pool.

        Keyword arguments go to ``sqlalchemy.orm.sessionmaker`` (not ``bind``).
        """
        from sqlalchemy.orm import sessionmaker

        return sessionmaker(class_=RoutingSession, routing_pool=self, **kwargs)

    @contextlib.contextmanager
    def connect(self, *, readonly: bool = False) -> Iterator[Connection]:
        """A Core connection: a replica's when ``readonly``, else the primary's.

        A read-only connection rejects statements that write with
        :class:`~scalekit.errors.ReadOnlyViolation`. Choosing the node retries
        on another one when a connection cannot be opened; errors after that
        are yours to handle.

        >>> with pool.connect(readonly=True) as conn:  # doctest: +SKIP
        ...     rows = (conn.execute(select(Order))).all()

        Raises:
            NoHealthyNode: no node accepted a connection.
        """
        if not readonly:
            node = _bridge(self._router.route_write)
            with self._engine(node).connect() as conn:
                yield conn
            return
        conn = self._connect_read()
        try:
            yield conn
        finally:
            conn.close()

    def _connect_read(self) -> Connection:
        walk = ReadWalk(self._router)
        for _ in walk.rounds():
            for node in _bridge(walk.plan):
                try:
                    conn = self._engine(node).connect()
                except DBAPIError as exc:
                    walk.refused(node, exc)
                    continue
                if node != self._router.core.primary:
                    conn.execution_options(**{READONLY_OPTION: True})
                return conn
        walk.exhausted()

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A Core connection to the primary inside a transaction, committed on success.

        Raises:
            NoHealthyNode: no primary is known (failover in progress, split brain).
        """
        node = _bridge(self._router.route_write)
        with self._engine(node).connect() as conn, conn.begin():
            yield conn

    def export_token(self) -> str | None:
        """This context's consistency token as a string, or None when it wrote nothing.

        Hand it to the next request or job and :meth:`import_token` it there.
        Resolving a pending write costs one query on the primary.
        """
        token = _bridge(self._router.current_token)
        return None if token is None else token.encode()

    def token(self) -> ConsistencyToken | None:
        """This context's consistency token (resolved), or None."""
        token: ConsistencyToken | None = _bridge(self._router.current_token)
        return token

    def refresh(self) -> None:
        """Check roles and lag of every node now (one query per node)."""
        _bridge(self._router.refresh)
