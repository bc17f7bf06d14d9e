"""The ORM side: a ``Session`` whose ``get_bind`` routes each statement.

:class:`RoutingSession` serves both pools: ``RoutingPool.sessionmaker()``
uses it directly and ``AsyncRoutingPool.sessionmaker()`` makes
:class:`AsyncRoutingSession`, an ``AsyncSession`` whose ``sync_session_class``
it is (the ORM runs it inside the greenlet bridge, so the same code routes
async sessions).

Per transaction it remembers whether it wrote (later reads stay on the
primary, to see their own uncommitted rows), which nodes it used (a read
reuses the replica the transaction already holds) and which nodes failed.
A read that fails with a connection error is retried on another node when
the transaction is safe to restart: it was begun implicitly, has not written
and holds nothing but replica connections. The retry rolls the session back
first, which expires loaded instances as any rollback does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction, SessionTransactionOrigin

from scalekit.errors import ConfigurationError, NoHealthyNode
from scalekit.instrumentation import emit
from scalekit.routing._core import ContextState, Target, decide
from scalekit.routing._events import ReadRetried
from scalekit.routing._statements import FLUSH, classify

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from scalekit.routing._router import Router

__all__ = ["AsyncRoutingSession", "RoutingSession"]


class _HasRouter(Protocol):
    @property
    def router(self) -> Router: ...


class RoutingSession(Session):
    """A ``Session`` that sends reads to replicas and everything else to the primary.

    Build it through ``pool.sessionmaker()`` or pass ``routing_pool=pool``
    to ``sessionmaker(class_=RoutingSession, routing_pool=pool)``.

    >>> Session = pool.sessionmaker()  # doctest: +SKIP
    >>> with Session() as session:  # doctest: +SKIP
    ...     user = session.get(User, 1)          # a replica
    ...     user.name = "x"; session.commit()    # the primary

    Raises:
        ConfigurationError: built without ``routing_pool``.
        ReadOnlyViolation: a write inside ``pool.use_replica()``.
        NoHealthyNode: no node can serve a statement.
    """

    _sk_router: Router

    def __init__(self, *args: Any, routing_pool: _HasRouter | None = None, **kwargs: Any) -> None:
        if routing_pool is None:
            raise ConfigurationError(
                "RoutingSession needs routing_pool=...; use pool.sessionmaker()",
                parameter="routing_pool",
            )
        if not _installed:
            _install_session_events()
        self._sk_router = routing_pool.router
        self._sk_reset()
        super().__init__(*args, **kwargs)

    def _sk_reset(self) -> None:
        self._sk_wrote = False
        self._sk_nodes: set[str] = set()
        self._sk_replica: str | None = None
        self._sk_state: ContextState | None = None
        self._sk_failed: frozenset[str] = frozenset()
        self._sk_fallback = False

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        bind: Engine | Connection | None = None,
        **kw: Any,
    ) -> Engine | Connection:
        """The engine for ``clause``: routed by what the statement does and the context."""
        if bind is not None:
            return bind
        router = self._sk_router
        classification = FLUSH if self._flushing else classify(clause)
        state = router.var.get()
        if not (classification.writes or self._sk_wrote):
            # The fast path of a plain read: the replica this transaction already holds,
            # or an O(1) pick when the context is clean and every node is healthy.
            held = self._sk_replica
            if held is not None and state is self._sk_state:
                if not router.core.is_blacklisted(held):
                    return router.engines[held]
            elif not self._sk_failed:
                attempts = router.core.fast_read(state)
                if attempts is not None:
                    node = attempts[0]
                    self._sk_state = state
                    self._sk_replica = node
                    self._sk_nodes.add(node)
                    return router.engines[node]
        target = decide(classification, state, wrote=self._sk_wrote)
        if target is Target.PRIMARY:
            node = router.route_write()
            if classification.writes:
                self._sk_wrote = True
        else:
            held = self._sk_replica if state is self._sk_state else None
            if held is not None and not router.core.is_blacklisted(held):
                node = held
            else:
                node = router.route_read(self._sk_failed, fast=False)
                self._sk_state = router.var.get()
                if router.is_replica(node):
                    self._sk_replica = node
                else:
                    self._sk_fallback = True  # a read meant for a replica, on the primary
        self._sk_nodes.add(node)
        return router.engines[node]

    # -- retry of reads --------------------------------------------------------------------------

    def _sk_can_retry(self) -> bool:
        if self._sk_wrote:
            return False
        if self._transaction is None and not self._sk_nodes:
            return True  # the common case: the statement will begin the transaction itself
        transaction = self.get_transaction()
        if transaction is not None and transaction.origin is not SessionTransactionOrigin.AUTOBEGIN:
            return False
        router = self._sk_router
        return all(router.is_replica(node) for node in self._sk_nodes)

    def _sk_run(self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> Any:
        if not self._sk_can_retry():
            return method(*args, **kwargs)
        router = self._sk_router
        failed: set[str] = set()
        last: DBAPIError | None = None
        for _ in range(len(router.engines) + 1):
            try:
                return method(*args, **kwargs)
            except DBAPIError as exc:
                node = getattr(exc, "scalekit_node", None)
                if node is not None and node == router.core.primary and self._sk_fallback:
                    # The read's last resort (the primary) is down too.
                    tried = [*router.core.replicas(), node]
                    raise NoHealthyNode("replica", tried=tried, reason="every node failed") from exc
                if node is None or not self._sk_can_retry():
                    raise
                failed.add(node)
                last = exc
                emit(ReadRetried(name=router.name, failed_node=node, error=type(exc.orig).__name__))
                self.rollback()
                self._sk_failed = frozenset(failed)
            except NoHealthyNode as exc:
                if last is None:
                    raise
                raise NoHealthyNode("replica", tried=sorted(failed), reason=exc.reason) from last
        raise NoHealthyNode("replica", tried=sorted(failed), reason="every node failed") from last

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._sk_run(super().execute, args, kwargs)

    def scalars(self, *args: Any, **kwargs: Any) -> Any:
        return self._sk_run(super().scalars, args, kwargs)

    def scalar(self, *args: Any, **kwargs: Any) -> Any:
        return self._sk_run(super().scalar, args, kwargs)


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

    def __init__(self, *args: Any, routing_pool: _HasRouter, **kwargs: Any) -> None:
        kwargs.setdefault("sync_session_class", RoutingSession)
        super().__init__(*args, routing_pool=routing_pool, **kwargs)


_installed = False


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and isinstance(session, RoutingSession):
        session._sk_reset()


def _install_session_events() -> None:
    global _installed
    if not _installed:
        event.listen(RoutingSession, "after_transaction_end", _after_transaction_end)
        _installed = True
