"""Read/write routing over a PostgreSQL primary and its streaming replicas.

::

    from scalekit.routing import RoutingPool

    pool = RoutingPool(primary=engine, replicas=[r1, r2], max_lag_seconds=5.0)
    Session = pool.sessionmaker()          # reads -> replicas, writes -> primary
    with pool.use_primary(): ...           # force the primary in this context
    pool.health()                          # per node: role, up, lag, pool usage

How the parts fit: ``_core.py`` is the pure rule (node health with blacklist
and back-off, lag from LSNs, consistency tokens, replica choice, failover
roles) on an injected clock; ``_statements.py`` says whether a SQLAlchemy
statement writes; ``_router.py`` does the I/O once, over sync engines, and
listens to the engines' events; ``_orm.py`` is the ``Session`` whose
``get_bind`` routes; ``_base.py`` is what both pools share without I/O;
``_async.py`` is the asyncio pool (it runs the same router inside
SQLAlchemy's greenlet bridge) and ``_sync.py`` the sync pool, generated from
it by ``scripts/unasync.py``.

The pools and sessions import SQLAlchemy; they are loaded on first access so
that importing this package for the core alone stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalekit.errors import NoHealthyNode, ReadOnlyViolation, RoutingError
from scalekit.routing._core import (
    Classification,
    ConsistencyToken,
    RoutingConfig,
    Target,
    format_lsn,
    parse_lsn,
)
from scalekit.routing._events import (
    FailoverEvent,
    LagChanged,
    NodeEjected,
    NodeReadmitted,
    ReadRetried,
    RouteDecision,
)
from scalekit.routing._statements import ROUTE_OPTION, classify, read_only, route_to_primary

if TYPE_CHECKING:
    from scalekit.routing._async import AsyncRoutingPool
    from scalekit.routing._orm import AsyncRoutingSession, RoutingSession
    from scalekit.routing._sync import RoutingPool

__all__ = [
    "AsyncRoutingPool",
    "AsyncRoutingSession",
    "Classification",
    "ConsistencyToken",
    "FailoverEvent",
    "LagChanged",
    "NoHealthyNode",
    "NodeEjected",
    "NodeReadmitted",
    "ROUTE_OPTION",
    "ReadOnlyViolation",
    "ReadRetried",
    "RouteDecision",
    "RoutingConfig",
    "RoutingError",
    "RoutingPool",
    "RoutingSession",
    "Target",
    "classify",
    "format_lsn",
    "parse_lsn",
    "read_only",
    "route_to_primary",
]

_LAZY = {
    "AsyncRoutingPool": "scalekit.routing._async",
    "AsyncRoutingSession": "scalekit.routing._orm",
    "RoutingSession": "scalekit.routing._orm",
    "RoutingPool": "scalekit.routing._sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
