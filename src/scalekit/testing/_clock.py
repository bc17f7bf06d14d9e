"""A clock you move by hand, for tests that must not wait."""

from __future__ import annotations

import asyncio
import threading

from scalekit.errors import ConfigurationError

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`scalekit.typing.Clock` that only moves when told to.

    ``sleep()`` and ``asleep()`` return at once and advance the clock by the
    requested amount, so code that backs off or waits runs instantly and
    deterministically. Every sleep is recorded in :attr:`sleeps`.
    ``asleep()`` still yields to the event loop once, so other tasks run and
    cancellation is delivered as it would be in a real sleep.

    Thread-safe: the clock may be shared by threads and tasks.

    >>> clock = FakeClock()
    >>> clock.advance(1.5)
    >>> clock.monotonic()
    1.5
    >>> clock.sleep(2)
    >>> clock.monotonic(), clock.sleeps
    (3.5, [2])

    Raises:
        ConfigurationError: when asked to move backwards.
    """

    __slots__ = ("_lock", "_monotonic", "_wall_offset", "sleeps")

    def __init__(self, start: float = 0.0, *, wall: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._monotonic = float(start)
        # Wall time moves with monotonic time; it starts at ``wall``.
        self._wall_offset = float(wall) - float(start)
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._monotonic + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ConfigurationError(
                f"a clock cannot go back (advance by {seconds!r})", parameter="seconds"
            )
        with self._lock:
            self._monotonic += seconds

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock to ``wall`` without touching monotonic time (NTP steps)."""
        with self._lock:
            self._wall_offset = float(wall) - self._monotonic

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._monotonic += max(seconds, 0.0)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._monotonic!r}, sleeps={len(self.sleeps)})"
