"""Health events. They carry a pool's label (host, port and database, never a URL or
password) and numbers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from scalekit.instrumentation import Event

__all__ = ["PoolPressure"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolPressure(Event):
    """An engine's pool crossed a usage level: ``level`` is the new one, ``previous`` the old.

    Levels are ``"ok"``, ``"warn"`` and ``"critical"``; emitted by
    :class:`~scalekit.health.PoolMonitor` once per crossing, up or down, not
    per checkout. ``usage`` is ``checked_out / capacity``; ``waiting`` the
    checkouts blocked for a connection at that moment.
    """

    kind: ClassVar[str] = "health.pool_pressure"
    level: ClassVar[int] = logging.WARNING

    pressure: str
    previous: str
    usage: float
    checked_out: int
    capacity: int
    waiting: int
