"""Public protocols: what scalekit expects of the objects you hand it.

These are structural (``typing.Protocol``): anything with the right methods
fits, no subclassing needed. :class:`scalekit.testing.FakeClock` is a
:class:`Clock`; so is the default :data:`scalekit.SYSTEM_CLOCK`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from scalekit.instrumentation import Event

__all__ = ["Clock", "Hook"]


@runtime_checkable
class Clock(Protocol):
    """A source of time and a way to wait.

    Cores read time only through a clock so that tests can drive them by hand.
    ``monotonic()`` is for durations and deadlines (never goes back);
    ``time()`` is wall-clock seconds since the epoch, for values that leave the
    process (cursors, cache envelopes, tokens).
    """

    def monotonic(self) -> float:
        """Seconds from an arbitrary, fixed origin; never decreases."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``; cancellable."""
        ...


class Hook(Protocol):
    """Receives every instrumentation event; see :func:`scalekit.set_hooks`."""

    def __call__(self, event: Event, /) -> None: ...
