"""scalekit: scale-out building blocks for apps on PostgreSQL and Redis.

Each primitive lives in its own subpackage (``scalekit.routing``,
``scalekit.breaker``, ``scalekit.retry``, ``scalekit.cache``...) and imports
its optional dependency only when used. This top level re-exports the shared
pieces: the error tree, the clock, and instrumentation.
"""

from __future__ import annotations

from typing import Any

from scalekit._clock import SYSTEM_CLOCK, SystemClock
from scalekit.errors import (
    BatchChunkError,
    BatchInsertError,
    CacheError,
    CacheUnavailable,
    CircuitOpenError,
    ConcurrencyLimitExceeded,
    ConfigurationError,
    InvalidBatchRow,
    InvalidCursor,
    NoHealthyNode,
    RateLimiterUnavailable,
    RateLimitExceeded,
    ReadOnlyViolation,
    RetryError,
    RoutingError,
    ScalekitError,
    SerializationError,
    ShardingError,
    UnknownShard,
)
from scalekit.instrumentation import (
    Event,
    FallbackUsed,
    LoggingHook,
    OpenTelemetryHook,
    PrometheusHook,
    Recovered,
    get_hooks,
    set_hooks,
)
from scalekit.typing import Clock, Hook

__all__ = [
    "BatchChunkError",
    "BatchInsertError",
    "CacheError",
    "CacheUnavailable",
    "CircuitOpenError",
    "Clock",
    "ConcurrencyLimitExceeded",
    "ConfigurationError",
    "Event",
    "FallbackUsed",
    "Hook",
    "InvalidBatchRow",
    "InvalidCursor",
    "LoggingHook",
    "NoHealthyNode",
    "OpenTelemetryHook",
    "PrometheusHook",
    "RateLimitExceeded",
    "RateLimiterUnavailable",
    "ReadOnlyViolation",
    "Recovered",
    "RetryError",
    "RoutingError",
    "SYSTEM_CLOCK",
    "ScalekitError",
    "SerializationError",
    "ShardingError",
    "SystemClock",
    "UnknownShard",
    "get_hooks",
    "set_hooks",
]


def __getattr__(name: str) -> Any:
    # The version is read from the installed metadata on first access only,
    # so importing scalekit does no I/O.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("scalekit-blocks")
        except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
