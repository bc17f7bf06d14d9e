"""Metrics hooks for Prometheus and OpenTelemetry.

Both import their library on the first event, not when built or registered,
so ``set_hooks([PrometheusHook()])`` is free until something happens. Each
event increments a counter labelled with the event's :meth:`~Event.labels`;
events that carry a duration (always named ``seconds``) also feed a histogram.
"""

from __future__ import annotations

import threading
from typing import Any

from scalekit.errors import ConfigurationError
from scalekit.instrumentation._events import Event

__all__ = ["OpenTelemetryHook", "PrometheusHook"]


class PrometheusHook:
    """Count events in ``<prefix>_events_total``; time them in ``<prefix>_event_duration_seconds``.

    ``registry`` defaults to prometheus_client's global registry. Build one
    hook per registry: the metrics are registered on the first event.

    Raises:
        ConfigurationError: on the first event, if prometheus-client is not
            installed (``pip install 'scalekit-blocks[prometheus]'``).
    """

    def __init__(self, registry: Any = None, *, prefix: str = "scalekit") -> None:
        self._registry = registry
        self._prefix = prefix
        self._lock = threading.Lock()
        self._counter: Any = None
        self._histogram: Any = None
        # (kind, name) -> (counter child, histogram child): labels() is the costly part.
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def _ensure(self) -> None:
        with self._lock:
            if self._counter is not None:
                return
            try:
                import prometheus_client
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ConfigurationError(
                    "PrometheusHook needs prometheus-client: "
                    "pip install 'scalekit-blocks[prometheus]'"
                ) from exc
            registry = self._registry or prometheus_client.REGISTRY
            self._histogram = prometheus_client.Histogram(
                f"{self._prefix}_event_duration_seconds",
                "Duration carried by scalekit events",
                ["kind", "name"],
                registry=registry,
            )
            self._counter = prometheus_client.Counter(
                f"{self._prefix}_events",
                "scalekit events by kind and emitter",
                ["kind", "name"],
                registry=registry,
            )

    def __call__(self, event: Event) -> None:
        if self._counter is None:
            self._ensure()
        key = (event.kind, event.name)
        children = self._children.get(key)
        if children is None:
            children = (self._counter.labels(*key), self._histogram.labels(*key))
            self._children[key] = children
        children[0].inc()
        duration = getattr(event, "seconds", None)
        if isinstance(duration, (int, float)):
            children[1].observe(duration)


class OpenTelemetryHook:
    """Record events on an OpenTelemetry meter: counter ``scalekit.events``,
    histogram ``scalekit.event.duration`` (seconds).

    ``meter`` defaults to ``opentelemetry.metrics.get_meter("scalekit")``.

    Raises:
        ConfigurationError: on the first event, if opentelemetry-api is not
            installed (``pip install 'scalekit-blocks[otel]'``).
    """

    def __init__(self, meter: Any = None) -> None:
        self._meter = meter
        self._lock = threading.Lock()
        self._counter: Any = None
        self._histogram: Any = None

    def _ensure(self) -> None:
        with self._lock:
            if self._counter is not None:
                return
            try:
                from opentelemetry import metrics
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ConfigurationError(
                    "OpenTelemetryHook needs opentelemetry-api: pip install 'scalekit-blocks[otel]'"
                ) from exc
            meter = self._meter or metrics.get_meter("scalekit")
            self._histogram = meter.create_histogram(
                "scalekit.event.duration", unit="s", description="Duration carried by events"
            )
            self._counter = meter.create_counter(
                "scalekit.events", description="scalekit events by kind and emitter"
            )

    def __call__(self, event: Event) -> None:
        if self._counter is None:
            self._ensure()
        attributes = event.labels()
        self._counter.add(1, attributes)
        duration = getattr(event, "seconds", None)
        if isinstance(duration, (int, float)):
            self._histogram.record(duration, attributes)
