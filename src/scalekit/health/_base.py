"""What the sync health shell needs beside its generated code: probe threads
and bounded Redis twins. The asyncio shell runs probes as tasks on the user's
own clients, so it needs neither; the rules stay in ``_plan.py`` and ``_core.py``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from scalekit.health._plan import IN_FLIGHT, Outcome, Probe

__all__ = ["ProbeThread", "bounded_twin"]


class ProbeThread:
    """One probe in a daemon thread; :meth:`wait` gives up at the probe's deadline.

    A probe stuck on a frozen server so holds up neither the report past its
    timeout nor the interpreter's exit.

    ``work`` runs the probe and returns its outcome (it catches the probe's
    own errors). A target whose previous probe is still running is not
    probed again: its outcome is ``still_running``.
    """

    def __init__(self, probe: Probe, work: Callable[[], Outcome]) -> None:
        self.probe = probe
        self._work = work
        self._done = threading.Event()
        self._outcome = Outcome(timed_out=True)
        self._deadline = time.monotonic() + probe.timeout
        if not IN_FLIGHT.claim(probe.target):
            self._outcome = Outcome(still_running=True)
            self._done.set()
            return
        name = f"scalekit-health-{probe.name}"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._outcome = self._work()
        finally:
            IN_FLIGHT.release(self.probe.target)
            self._done.set()

    def wait(self) -> Outcome:
        if not self._done.wait(max(self._deadline - time.monotonic(), 0.0)):
            return Outcome(timed_out=True)
        return self._outcome


# Bounded twins of users' clients (commands capped at the probe's timeout, never
# retried), kept per client so a probe does not open a new connection each time.
_TWINS: weakref.WeakKeyDictionary[Any, tuple[float, Any]] = weakref.WeakKeyDictionary()
_TWINS_LOCK = threading.Lock()


def bounded_twin(client: Any, timeout: float) -> Any:
    """The bounded twin of a sync Redis client for probes with this ``timeout``."""
    from scalekit._redis_bounded import bounded

    with _TWINS_LOCK:
        try:
            cached = _TWINS.get(client)
        except TypeError:  # not weak-referenceable: no cache
            return bounded(client, timeout)
        if cached is not None and cached[0] == timeout:
            return cached[1]
        twin = bounded(client, timeout)
        _TWINS[client] = (timeout, twin)
        return twin
