from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import ClassVar

import pytest

import scalekit
from scalekit.instrumentation import (
    Event,
    FallbackUsed,
    LoggingHook,
    OpenTelemetryHook,
    PrometheusHook,
    Recovered,
    capture_events,
    emit,
    get_hooks,
    set_hooks,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timed(Event):
    kind: ClassVar[str] = "demo.timed"
    level: ClassVar[int] = logging.INFO
    duration: float


@pytest.fixture(autouse=True)
def restore_hooks():
    previous = get_hooks()
    yield
    set_hooks(previous)


def test_default_hook_logs() -> None:
    assert [type(h) for h in get_hooks()] == [LoggingHook]


def test_events_are_frozen_values() -> None:
    event = FallbackUsed(
        name="app", component_name="cache", fallback="loader", reason="TimeoutError"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.name = "other"  # type: ignore[misc]
    assert event.component == "fallback"
    assert event.labels() == {"kind": "fallback.used", "name": "app"}
    assert event.fields()["reason"] == "TimeoutError"
    assert event == FallbackUsed(
        name="app", component_name="cache", fallback="loader", reason="TimeoutError"
    )


def test_emit_reaches_every_hook_in_order() -> None:
    seen: list[tuple[str, str]] = []
    set_hooks([lambda e: seen.append(("first", e.kind)), lambda e: seen.append(("second", e.kind))])
    emit(Recovered(name="x", component_name="ratelimit", seconds_degraded=3.0))
    assert seen == [("first", "fallback.recovered"), ("second", "fallback.recovered")]


def test_no_hooks_means_nothing_happens() -> None:
    set_hooks([])
    emit(Timed(name="x", duration=1.0))  # must not raise
    assert get_hooks() == ()


def test_a_broken_hook_never_breaks_the_caller_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    set_hooks([broken, received.append])
    with caplog.at_level(logging.ERROR, logger="scalekit.instrumentation"):
        emit(Timed(name="a", duration=0.1))
        emit(Timed(name="b", duration=0.2))
    assert [e.name for e in received] == ["a", "b"]
    assert len([r for r in caplog.records if "hook bug" in (r.exc_text or "")]) == 1


def test_set_hooks_rejects_non_callables() -> None:
    with pytest.raises(scalekit.ConfigurationError) as info:
        set_hooks(["not a hook"])  # type: ignore[list-item]
    assert info.value.parameter == "hooks"


def test_logging_hook_uses_component_logger_and_level(caplog: pytest.LogCaptureFixture) -> None:
    set_hooks([LoggingHook()])
    with caplog.at_level(logging.DEBUG, logger="scalekit"):
        emit(FallbackUsed(name="app", component_name="cache", fallback="loader", reason="Timeout"))
        emit(Timed(name="t", duration=0.5))
    first, second = caplog.records
    assert first.name == "scalekit.fallback" and first.levelno == logging.WARNING
    assert "fallback.used app" in first.getMessage() and "reason='Timeout'" in first.getMessage()
    assert first.scalekit_event.reason == "Timeout"  # type: ignore[attr-defined]
    assert second.name == "scalekit.demo" and second.levelno == logging.INFO


def test_logging_hook_skips_formatting_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    set_hooks([LoggingHook()])
    with caplog.at_level(logging.ERROR, logger="scalekit"):
        emit(Timed(name="t", duration=0.5))
    assert caplog.records == []


def test_capture_events_adds_and_restores() -> None:
    before = get_hooks()
    with capture_events() as events:
        emit(Timed(name="t", duration=0.1))
        assert len(get_hooks()) == len(before) + 1
    emit(Timed(name="after", duration=0.1))
    assert [e.name for e in events] == ["t"]
    assert get_hooks() == before


def test_pytest_plugin_fixtures(fake_clock, scalekit_events) -> None:  # type: ignore[no-untyped-def]
    fake_clock.advance(1)
    emit(Timed(name="plugin", duration=0.0))
    assert fake_clock.monotonic() == 1
    assert [e.name for e in scalekit_events] == ["plugin"]


def test_prometheus_hook_counts_and_times() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    hook = PrometheusHook(registry)
    set_hooks([hook])
    emit(Timed(name="db", duration=0.25))
    emit(Timed(name="db", duration=0.75))
    emit(Recovered(name="db", component_name="routing", seconds_degraded=1.0))
    labels = {"kind": "demo.timed", "name": "db"}
    assert registry.get_sample_value("scalekit_events_total", labels) == 2
    assert registry.get_sample_value("scalekit_event_duration_seconds_sum", labels) == 1.0
    assert (
        registry.get_sample_value(
            "scalekit_events_total", {"kind": "fallback.recovered", "name": "db"}
        )
        == 1
    )


def test_opentelemetry_hook_counts_and_times() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    set_hooks([OpenTelemetryHook(meter)])
    emit(Timed(name="db", duration=0.5))
    emit(Timed(name="db", duration=1.5))
    data = reader.get_metrics_data()
    metrics = {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    counter_point = next(iter(metrics["scalekit.events"].data.data_points))
    assert counter_point.value == 2
    assert dict(counter_point.attributes) == {"kind": "demo.timed", "name": "db"}
    histogram_point = next(iter(metrics["scalekit.event.duration"].data.data_points))
    assert histogram_point.sum == 2.0 and histogram_point.count == 2
