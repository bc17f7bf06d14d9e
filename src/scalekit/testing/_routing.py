"""A routing pool over SQLite files, and controls for its nodes' health."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from scalekit.routing import RoutingPool
    from scalekit.typing import Clock

__all__ = [
    "SQLiteCluster",
    "mark_node_caught_up",
    "mark_node_down",
    "mark_node_lagging",
    "sqlite_cluster",
]


@dataclass
class SQLiteCluster:
    """A :class:`~scalekit.routing.RoutingPool` over one SQLite file, as a primary and replicas.

    Every node is its own engine on the same file, so a replica is never
    behind unless marked so (:func:`mark_node_lagging`). Replica engines
    open their connections with ``PRAGMA query_only``: a write that reaches
    a replica fails, as on a hot standby. :attr:`queries` records which node
    ran each statement, in order, as ``(node, sql)``.
    """

    pool: RoutingPool
    path: Path
    queries: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def nodes_used(self) -> list[str]:
        """The node of each statement run so far, in order."""
        with self._lock:
            return [node for node, _ in self.queries]

    def clear(self) -> None:
        """Forget the recorded statements."""
        with self._lock:
            self.queries.clear()

    def dispose(self) -> None:
        """Detach the pool and close every engine."""
        self.pool.close()
        for engine in self.pool.nodes.values():
            engine.dispose()


def sqlite_cluster(
    directory: str | Path,
    *,
    replicas: int = 1,
    clock: Clock = SYSTEM_CLOCK,
    **pool_options: Any,
) -> SQLiteCluster:
    """A primary (``"primary"``) and ``replicas`` replicas (``"replica1"``...) on SQLite.

    The database file is ``directory/scalekit-routing.sqlite``. ``pool_options``
    go to :class:`~scalekit.routing.RoutingPool` (``check_interval`` is None
    by default: nothing to probe on SQLite).

    Raises:
        ConfigurationError: ``replicas`` below 1; SQLAlchemy is not installed.
    """
    if type(replicas) is not int or replicas < 1:
        raise ConfigurationError(
            f"replicas must be an int >= 1, got {replicas!r}", parameter="replicas"
        )
    try:
        import sqlalchemy as sa
        from sqlalchemy import event
    except ImportError as exc:
        raise ConfigurationError(
            "the SQLite routing pool needs SQLAlchemy: pip install 'scalekit-blocks[sqlalchemy]'"
        ) from exc
    from scalekit.routing import RoutingPool

    path = Path(directory) / "scalekit-routing.sqlite"
    url = f"sqlite:///{path}"
    primary = sa.create_engine(url)
    replica_engines = [sa.create_engine(url) for _ in range(replicas)]
    for engine in replica_engines:
        event.listen(engine, "connect", _query_only)
    pool_options.setdefault("check_interval", None)
    pool = RoutingPool(primary=primary, replicas=replica_engines, clock=clock, **pool_options)
    cluster = SQLiteCluster(pool=pool, path=path)
    for node, engine in pool.nodes.items():
        event.listen(engine, "before_cursor_execute", _recorder(cluster, node))
    return cluster


def _query_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only = ON")
    cursor.close()


def _recorder(cluster: SQLiteCluster, node: str) -> Any:
    def before_cursor_execute(*args: Any) -> None:
        with cluster._lock:
            cluster.queries.append((node, str(args[2])))

    return before_cursor_execute


def _check_node(pool: RoutingPool, node: str) -> None:
    if node not in pool.nodes:
        raise ConfigurationError(
            f"no node {node!r} in pool {pool.name!r} (nodes: {', '.join(pool.nodes)})",
            parameter="node",
        )


def mark_node_down(pool: RoutingPool, node: str) -> float | None:
    """Take ``node`` out as a failed connection would; returns its blacklist seconds.

    The pool routes around it (reads to other replicas or the primary) until
    its blacklist period is over; then the next statement that succeeds on
    it brings it back. Move the pool's :class:`~scalekit.testing.FakeClock`
    by the returned seconds to end the period. ``None`` when it was already out.

    Raises:
        ConfigurationError: no node of that name.
    """
    _check_node(pool, node)
    core = pool.router.core
    before = core.snapshot()[node].down_until
    pool.router.record_failure(node, "marked down by scalekit.testing")
    after = core.snapshot()[node].down_until
    return None if after == before or after is None else after - pool.router.clock.monotonic()


def mark_node_lagging(pool: RoutingPool, node: str, seconds: float) -> None:
    """Report replica ``node`` ``seconds`` behind the primary, as a health check would.

    Over the pool's ``max_lag_seconds`` the replica stops taking reads (and
    :class:`~scalekit.routing.LagChanged` is emitted) until
    :func:`mark_node_caught_up`.

    Raises:
        ConfigurationError: no node of that name, not a replica, or a negative ``seconds``.
    """
    _check_node(pool, node)
    if type(seconds) not in (int, float) or seconds < 0:
        raise ConfigurationError(
            f"seconds must be a number >= 0, got {seconds!r}", parameter="seconds"
        )
    _observe(pool, node, behind=1 if seconds > 0 else 0, seconds=float(seconds))


def mark_node_caught_up(pool: RoutingPool, node: str) -> None:
    """Report replica ``node`` level with the primary again.

    Raises:
        ConfigurationError: no node of that name, or not a replica.
    """
    _check_node(pool, node)
    _observe(pool, node, behind=0, seconds=0.0)


_POSITION = 1 << 32  # any WAL position: only the difference matters


def _observe(pool: RoutingPool, node: str, *, behind: int, seconds: float) -> None:
    from scalekit.instrumentation._hooks import emit
    from scalekit.routing import LagChanged

    router = pool.router
    core = router.core
    primary = core.primary
    if node == primary or node not in core.replicas():
        raise ConfigurationError(f"{node!r} is not a replica", parameter="node")
    now = router.clock.time()
    if primary is not None:
        core.observe_position(primary, in_recovery=False, lsn=_POSITION, server_time=now)
    flipped = core.observe_position(
        node,
        in_recovery=True,
        lsn=_POSITION - behind,
        server_time=now,
        replay_time=now - seconds,
    )
    if flipped:
        state = core.snapshot()[node]
        emit(
            LagChanged(
                name=pool.name,
                node=node,
                lagging=state.lagging,
                lag_seconds=state.lag_seconds,
                lag_bytes=state.lag_bytes,
            )
        )
