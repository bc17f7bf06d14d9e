"""Event values: what happened, as frozen dataclasses.

Each primitive defines its own event classes by subclassing :class:`Event`
(``BreakerStateChanged``, ``RetryScheduled``, ``CacheFallback``...). An event
is a plain value: hooks may keep it, log it, count it. Events never carry
secrets (no DSNs, passwords or cached values), only names and numbers.

An event that reports how long something took or lasted names that duration
``seconds`` (a field, or a read-only property when the field has a more
specific name, as :attr:`Recovered.seconds_degraded`): the metrics hooks
read that one name for their duration histograms.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["Event", "FallbackUsed", "Recovered"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of every scalekit event.

    ``name`` is the name of the object that emitted it (a breaker's name, a
    pool's name, a cache namespace). Subclasses set the class attributes
    ``kind`` (dotted, component first: ``"breaker.state_change"``) and
    ``level`` (the logging level the logging hook uses).
    """

    kind: ClassVar[str] = "event"
    level: ClassVar[int] = logging.DEBUG

    name: str

    @property
    def component(self) -> str:
        """The emitting component: the part of :attr:`kind` before the first dot."""
        return self.kind.partition(".")[0]

    def labels(self) -> dict[str, str]:
        """Low-cardinality labels for metrics (``kind`` and ``name``)."""
        return {"kind": self.kind, "name": self.name}

    def fields(self) -> dict[str, object]:
        """The event's fields as a dict, for structured logs."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(Event):
    """A primitive fell back to its documented degraded path.

    Emitted once per incident (the first failure after a healthy period), not
    on every call that takes the fallback. ``reason`` is a short description
    (an exception class name, never a message that could hold a secret).
    """

    kind: ClassVar[str] = "fallback.used"
    level: ClassVar[int] = logging.WARNING

    component_name: str
    fallback: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovered(Event):
    """A primitive left its fallback path; ``seconds_degraded`` is how long it was on it."""

    kind: ClassVar[str] = "fallback.recovered"
    level: ClassVar[int] = logging.INFO

    component_name: str
    seconds_degraded: float

    @property
    def seconds(self) -> float:
        """The event's duration under the name every event uses: :attr:`seconds_degraded`."""
        return self.seconds_degraded
