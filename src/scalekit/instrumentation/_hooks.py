"""Hook registry: where events go.

A hook is any callable taking one :class:`Event`. The registry holds an
immutable tuple that is swapped whole, so emitting reads one global and
never locks. A hook that raises is logged and skipped; instrumentation must
never break the caller's work.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import cast

from scalekit.instrumentation._events import Event
from scalekit.instrumentation._logging import LoggingHook
from scalekit.typing import Hook

__all__ = ["capture_events", "emit", "get_hooks", "set_hooks"]

_log = logging.getLogger("scalekit.instrumentation")

_hooks: tuple[Hook, ...] = (LoggingHook(),)
_lock = threading.Lock()
_failed_hooks: set[int] = set()


def set_hooks(hooks: Iterable[Hook]) -> None:
    """Replace the hooks that receive scalekit's events.

    The default is ``[LoggingHook()]``. Pass an empty list to turn
    instrumentation off (emitting then costs one tuple check).

    >>> from scalekit import LoggingHook, PrometheusHook, set_hooks
    >>> set_hooks([LoggingHook(), PrometheusHook()])  # doctest: +SKIP
    """
    global _hooks
    candidates: tuple[object, ...] = tuple(hooks)
    for hook in candidates:
        if not callable(hook):
            from scalekit.errors import ConfigurationError

            raise ConfigurationError(f"hook {hook!r} is not callable", parameter="hooks")
    new = cast("tuple[Hook, ...]", candidates)
    with _lock:
        _hooks = new
        _failed_hooks.clear()


def get_hooks() -> tuple[Hook, ...]:
    """The hooks currently registered, in call order."""
    return _hooks


def emit(event: Event) -> None:
    """Send ``event`` to every registered hook. Never raises."""
    for hook in _hooks:
        try:
            hook(event)
        except Exception:
            # Log a broken hook once, not once per event.
            if id(hook) not in _failed_hooks:
                _failed_hooks.add(id(hook))
                _log.exception(
                    "scalekit hook %r failed on %s; further failures are silent", hook, event.kind
                )


@contextlib.contextmanager
def capture_events() -> Iterator[list[Event]]:
    """Collect the events emitted inside the block, in addition to the current hooks.

    >>> from scalekit.testing import capture_events
    >>> with capture_events() as events:
    ...     pass
    >>> events
    []
    """
    captured: list[Event] = []
    previous = _hooks
    set_hooks((*previous, captured.append))
    try:
        yield captured
    finally:
        set_hooks(previous)
