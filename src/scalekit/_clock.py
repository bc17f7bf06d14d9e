"""The real clock: ``time.monotonic``, ``time.time`` and real sleeps."""

from __future__ import annotations

import time
from typing import Final

__all__ = ["SYSTEM_CLOCK", "SystemClock"]


class SystemClock:
    """The process's real clock. Stateless; use the shared :data:`SYSTEM_CLOCK`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        import asyncio  # imported here so that importing scalekit stays light

        await asyncio.sleep(max(seconds, 0.0))

    def __repr__(self) -> str:
        return "SYSTEM_CLOCK"


SYSTEM_CLOCK: Final = SystemClock()
"""The default clock of every scalekit primitive."""
