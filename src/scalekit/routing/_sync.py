"""The sync routing pool over ``sqlalchemy.Engine`` objects."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from scalekit.routing._core import ConsistencyToken
from scalekit.routing._orm import RoutingSession
from scalekit.routing._pool import PoolBase

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import sessionmaker

__all__ = ["RoutingPool"]


class RoutingPool(PoolBase):
    """Reads on healthy, fresh replicas; writes on the primary; your writes visible to you.

    Wraps the engines you already have (their pools are kept, never copied).
    ``primary`` is an ``Engine``, or a list/dict of candidate engines for
    failover (the first is the primary until a role check says otherwise);
    ``replicas`` a list or a dict of name -> ``Engine`` (names default to
    ``replica1``, ``replica2``...). An empty replica list sends everything to
    the primary.

    >>> pool = RoutingPool(primary=engine, replicas=[r1, r2])  # doctest: +SKIP
    >>> Session = pool.sessionmaker()                          # doctest: +SKIP
    >>> with Session() as session:                             # doctest: +SKIP
    ...     session.add(Order(total=10)); session.commit()      # primary
    ...     session.scalars(select(Order)).all()               # a caught-up replica

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
        ConfigurationError: bad durations or names, an AsyncEngine, the same
            engine twice, ``consistency="lsn"`` on a non-PostgreSQL engine.
    """

    def sessionmaker(self, **kwargs: Any) -> sessionmaker[RoutingSession]:
        """A ``sessionmaker`` of :class:`RoutingSession` bound to this pool.

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
        ...     conn.execute(select(Order)).all()

        Raises:
            NoHealthyNode: no node accepted a connection.
        """
        router = self._router
        _, conn = router.connect_read() if readonly else router.connect_write()
        with conn:
            yield conn

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A Core connection to the primary inside a transaction, committed on success.

        Raises:
            NoHealthyNode: no primary is known (failover in progress, split brain).
        """
        _, conn = self._router.connect_write()
        with conn, conn.begin():
            yield conn

    def export_token(self) -> str | None:
        """This context's consistency token as a string, or None when it wrote nothing.

        Hand it to the next request or job and :meth:`import_token` it there.
        Resolving a pending write costs one query on the primary.
        """
        token = self._router.current_token()
        return None if token is None else token.encode()

    def token(self) -> ConsistencyToken | None:
        """This context's consistency token (resolved), or None."""
        return self._router.current_token()

    def refresh(self) -> None:
        """Check roles and lag of every node now (one query per node)."""
        self._router.refresh()
