"""Instrumentation: events, the hooks that receive them, and ready-made adapters.

scalekit reports what it does (a breaker opening, a retry scheduled, a cache
falling back) as frozen :class:`Event` values handed to every registered
hook. The default hook logs to stdlib ``logging`` under ``scalekit.*``;
:class:`PrometheusHook` and :class:`OpenTelemetryHook` count and time events
and import their library only when the first event arrives.
"""

from __future__ import annotations

from scalekit.instrumentation._events import Event, FallbackUsed, Recovered
from scalekit.instrumentation._hooks import capture_events, emit, get_hooks, set_hooks
from scalekit.instrumentation._logging import LoggingHook
from scalekit.instrumentation._metrics import OpenTelemetryHook, PrometheusHook

__all__ = [
    "Event",
    "FallbackUsed",
    "LoggingHook",
    "OpenTelemetryHook",
    "PrometheusHook",
    "Recovered",
    "capture_events",
    "emit",
    "get_hooks",
    "set_hooks",
]
