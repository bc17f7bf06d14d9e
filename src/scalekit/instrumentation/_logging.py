"""The default hook: events to stdlib logging under ``scalekit.<component>``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scalekit.instrumentation._events import Event

__all__ = ["LoggingHook"]


class LoggingHook:
    """Log each event to the ``scalekit.<component>`` logger at the event's level.

    The record's message is ``"<kind> <name> field=value ..."`` and the event
    itself is attached as ``record.scalekit_event`` for structured handlers.
    Configure handlers and levels in your app; scalekit never does.
    """

    __slots__ = ("_loggers",)

    def __init__(self) -> None:
        self._loggers: dict[str, logging.Logger] = {}

    def __call__(self, event: Event) -> None:
        # Keyed by kind, so the disabled path is one dict lookup and isEnabledFor().
        logger = self._loggers.get(event.kind)
        if logger is None:
            logger = self._loggers[event.kind] = logging.getLogger(f"scalekit.{event.component}")
        if not logger.isEnabledFor(event.level):
            return
        details = " ".join(
            f"{key}={value!r}" for key, value in event.fields().items() if key != "name"
        )
        logger.log(
            event.level,
            "%s %s %s",
            event.kind,
            event.name,
            details,
            extra={"scalekit_event": event},
        )

    def __repr__(self) -> str:
        return "LoggingHook()"
