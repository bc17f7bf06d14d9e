"""The routing pool's instrumentation events (see :mod:`scalekit.instrumentation`).

``name`` is the pool's name. Events carry node names (``"primary"``,
``"replica1"``...), never URLs or passwords.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from scalekit.instrumentation import Event

__all__ = [
    "FailoverEvent",
    "LagChanged",
    "NodeEjected",
    "NodeReadmitted",
    "ReadRetried",
    "RouteDecision",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteDecision(Event):
    """A read was not sent to a replica in the ordinary way; ``reason`` says why.

    Reasons: ``"forced_primary"``, ``"sticky"``, ``"token_ahead"``,
    ``"no_replica"``, ``"all_lagging"`` (a spill to the primary, ``spill`` is
    true), ``"spill_capped"`` (a read sent to a lagging replica because the
    primary's read share is used up). Plain replica reads and writes emit
    nothing, to keep the hot path cheap.
    """

    kind: ClassVar[str] = "routing.decision"
    level: ClassVar[int] = logging.DEBUG

    node: str
    reason: str
    spill: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeEjected(Event):
    """A node was blacklisted for ``seconds`` after a connection error (``error`` is its class)."""

    kind: ClassVar[str] = "routing.ejected"
    level: ClassVar[int] = logging.WARNING

    node: str
    seconds: float
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeReadmitted(Event):
    """A blacklisted node served again after ``seconds_down``."""

    kind: ClassVar[str] = "routing.readmitted"
    level: ClassVar[int] = logging.INFO

    node: str
    seconds_down: float

    @property
    def seconds(self) -> float:
        """The event's duration under the name every event uses: :attr:`seconds_down`."""
        return self.seconds_down


@dataclass(frozen=True, slots=True, kw_only=True)
class LagChanged(Event):
    """A replica left (``lagging=True``) or rejoined the rotation because of its lag."""

    kind: ClassVar[str] = "routing.lag"
    level: ClassVar[int] = logging.WARNING

    node: str
    lagging: bool
    lag_seconds: float | None
    lag_bytes: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadRetried(Event):
    """A read failed on ``failed_node`` with a connection error and was retried elsewhere."""

    kind: ClassVar[str] = "routing.read_retried"
    level: ClassVar[int] = logging.INFO

    failed_node: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverEvent(Event):
    """A role check changed where writes go (``new_primary`` None: writes are refused)."""

    kind: ClassVar[str] = "routing.failover"
    level: ClassVar[int] = logging.WARNING

    old_primary: str | None
    new_primary: str | None
    split_brain: bool
