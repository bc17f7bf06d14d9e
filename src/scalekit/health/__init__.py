"""Health reports, pool monitoring and pool sizing for apps on PostgreSQL and Redis.

::

    from scalekit.health import check_health, PoolMonitor, pool_size_for

    report = check_health(pool=routing_pool, redis=redis_client, timeout=2.0)
    report.status                 # "ok", "warn" or "critical"
    report.to_dict()              # JSON-ready, stable keys (docs/health.md)
    PoolMonitor(engine, warn_at=0.8, critical_at=0.95)   # PoolPressure events
    pool_size_for(max_connections=200, instances=10)     # per-instance pool size
    liveness(); readiness(pool=routing_pool)             # for container probes

How the parts fit: ``_core.py`` is the rule (thresholds, what each sample
means, lag, the overall status, pool sizing), with no I/O; ``_probes.py`` the
SQL a probe sends and how a reply becomes a sample; ``_plan.py`` decides what
to probe and folds outcomes into a report (an exhausted pool is decided there,
without a checkout); ``_async.py`` only runs the probes (tasks, each under
its own timeout) and ``_sync.py`` is generated from it (threads, with the
helpers in ``_base.py``); ``_monitor.py`` watches a pool's events.
SQLAlchemy and redis-py are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalekit.errors import ConfigurationError
from scalekit.health._core import (
    SCHEMA_VERSION,
    STATUSES,
    ComponentReport,
    HealthReport,
    Status,
    Thresholds,
    pool_size_for,
)
from scalekit.health._events import PoolPressure

if TYPE_CHECKING:
    from scalekit.health._async import acheck_health, areadiness
    from scalekit.health._monitor import PoolMonitor
    from scalekit.health._ready import liveness
    from scalekit.health._sync import check_health, readiness

__all__ = [
    "ComponentReport",
    "ConfigurationError",
    "HealthReport",
    "PoolMonitor",
    "PoolPressure",
    "SCHEMA_VERSION",
    "STATUSES",
    "Status",
    "Thresholds",
    "acheck_health",
    "areadiness",
    "check_health",
    "liveness",
    "pool_size_for",
    "readiness",
]

_LAZY = {
    "PoolMonitor": "scalekit.health._monitor",
    "acheck_health": "scalekit.health._async",
    "areadiness": "scalekit.health._async",
    "check_health": "scalekit.health._sync",
    "liveness": "scalekit.health._ready",
    "readiness": "scalekit.health._sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
