"""The one outage rule: a dependency is down, a fallback serves, it comes back.

Every component that falls back when a dependency fails (the breaker's Redis
storage, the Redis retry budget, a spent retry budget, the rate limiter's
store guard, the cache) reports an incident the same way, through one
:class:`Incident`: :class:`~scalekit.instrumentation.FallbackUsed` once, at
the first failure of an incident (the WARNING line of the whole outage,
however many calls it spans), and :class:`~scalekit.instrumentation.Recovered`
once, at the first success after it, with the seconds it lasted. Pure: time
is passed in (each caller reads its own injected clock) and the only effect
is emitting the two events. Safe to share between threads and tasks.
"""

from __future__ import annotations

import threading

from scalekit.instrumentation import FallbackUsed, Recovered, emit

__all__ = ["Incident"]


class Incident:
    """One dependency's outages, as seen by one component.

    ``name`` and ``component`` name the component in the events
    (``component_name``); ``fallback`` says what serves meanwhile
    (``FallbackUsed.fallback``). :attr:`count` is the number of incidents
    seen so far.

    >>> from scalekit.testing import capture_events
    >>> incident = Incident("orders", "retry.budget", "local")
    >>> with capture_events() as events:
    ...     incident.failed(10.0, "ConnectionError"), incident.failed(11.0, "TimeoutError")
    ...     incident.recovered(15.0), incident.recovered(16.0)
    (True, False)
    (5.0, None)
    >>> [event.kind for event in events]
    ['fallback.used', 'fallback.recovered']
    """

    __slots__ = ("_lock", "component", "count", "fallback", "name", "since")

    def __init__(self, name: str, component: str, fallback: str) -> None:
        self.name = name
        self.component = component
        self.fallback = fallback
        #: The monotonic time the current incident started; ``None`` when healthy.
        self.since: float | None = None
        self.count = 0
        self._lock = threading.Lock()

    @property
    def degraded(self) -> bool:
        """True during an incident (between a failure and the next success)."""
        return self.since is not None

    def failed(self, now: float, reason: str) -> bool:
        """The dependency failed at ``now``; True when this starts an incident.

        Emits ``FallbackUsed`` (with ``reason``, e.g. the error's type name)
        only then; a failure during an incident costs one comparison.
        """
        seen = self.since
        if seen is not None:
            return False
        with self._lock:
            if self.since is not None:
                return False
            self.since = now
            self.count += 1
        emit(
            FallbackUsed(
                name=self.name,
                component_name=self.component,
                fallback=self.fallback,
                reason=reason,
            )
        )
        return True

    def recovered(self, now: float) -> float | None:
        """The dependency answered at ``now``; the incident's length when this ends one.

        Emits ``Recovered`` only then; a success while healthy costs one comparison.
        """
        seen = self.since
        if seen is None:
            return None
        with self._lock:
            since = self.since
            if since is None:
                return None
            self.since = None
        seconds = max(0.0, now - since)
        emit(Recovered(name=self.name, component_name=self.component, seconds_degraded=seconds))
        return seconds
