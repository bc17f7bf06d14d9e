"""The breaker's instrumentation events (see :mod:`scalekit.instrumentation`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from scalekit.instrumentation import Event

__all__ = ["BreakerRejected", "BreakerStateChanged"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStateChanged(Event):
    """A breaker moved from ``old_state`` to ``new_state``.

    ``trigger`` is what moved it (``"trip"``, ``"open_elapsed"``,
    ``"probes_passed"``, ``"probe_failed"``, ``"manual_open"``,
    ``"manual_close"``, ``"force_open"``, ``"disable"``); ``reason`` a short
    description (``"5 consecutive failures"``); ``retry_after`` the open
    duration when it opened. ``shared`` is true when the change was seen in
    Redis-shared state (it may have been made by another process).
    """

    kind: ClassVar[str] = "breaker.state_change"
    level: ClassVar[int] = logging.WARNING

    old_state: str
    new_state: str
    trigger: str
    reason: str
    retry_after: float | None = None
    shared: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerRejected(Event):
    """A breaker rejected a call without running it (it raised ``CircuitOpenError``)."""

    kind: ClassVar[str] = "breaker.rejected"
    level: ClassVar[int] = logging.DEBUG

    state: str
    retry_after: float | None
