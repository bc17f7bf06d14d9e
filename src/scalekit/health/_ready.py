"""Liveness and readiness: the two questions a container orchestrator or load balancer asks.

``liveness()`` does no I/O: a process that can run it is alive, and a
database outage must not restart every instance at once. ``readiness()``
(in the shells, ``_async.py`` and its generated ``_sync.py``) runs the
ordinary check and judges it here, by what a load balancer needs: the
required servers answer and their pools are not exhausted. Warnings that do
not stop this instance from serving (slow queries, a high cache-miss rate,
wraparound creeping up, one replica down) keep it ready, so a fleet-wide
condition cannot take every instance out of rotation at once.
"""

from __future__ import annotations

import os

from scalekit._clock import SYSTEM_CLOCK
from scalekit.health._core import ComponentReport, HealthReport, Status, worst
from scalekit.typing import Clock

__all__ = ["liveness", "readiness_status"]

#: Default seconds each readiness probe may take: below a typical probe's 3 s deadline.
READINESS_TIMEOUT = 1.0

#: Components whose own status is their readiness (they have no server to answer).
_SELF_JUDGED = frozenset({"routing", "breaker", "limiter", "cache"})


def liveness(*, clock: Clock = SYSTEM_CLOCK) -> HealthReport:
    """A report that the process is alive, with no I/O: always ``"ok"``.

    Its one component, ``process``, carries the process id. Use it for a
    Kubernetes ``livenessProbe``; use :func:`readiness` for ``readinessProbe``.

    >>> liveness().status
    'ok'
    """
    process = ComponentReport(kind="process", status="ok", up=True, details={"pid": os.getpid()})
    return HealthReport.build({"process": process}, checked_at=clock.time())


def _ready(component: ComponentReport) -> Status:
    if component.kind in _SELF_JUDGED:
        # A routing pool: no primary, split brain, or no node for reads. A
        # breaker, limiter or cache: at most a warning (its fallback serves).
        status = component.status
    else:
        status = "ok" if component.up is True else "critical"
    if not component.required and status == "critical":
        return "warn"
    return status


def readiness_status(report: HealthReport) -> Status:
    """The status of ``report`` judged for readiness: ``"critical"`` means not ready.

    A required component that did not answer (down, timed out, or behind an
    exhausted pool) is critical; one that is not required (a replica) counts
    as a warning; a routing pool keeps its own status. Measurements past
    their thresholds do not count.
    """
    return worst(_ready(component) for component in report.components.values())
