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
    seconds: float


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
    emit(Timed(name="x", seconds=1.0))  # must not raise
    assert get_hooks() == ()


def test_a_broken_hook_never_breaks_the_caller_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    set_hooks([broken, received.append])
    with caplog.at_level(logging.ERROR, logger="scalekit.instrumentation"):
        emit(Timed(name="a", seconds=0.1))
        emit(Timed(name="b", seconds=0.2))
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
        emit(Timed(name="t", seconds=0.5))
    first, second = caplog.records
    assert first.name == "scalekit.fallback" and first.levelno == logging.WARNING
    assert "fallback.used app" in first.getMessage() and "reason='Timeout'" in first.getMessage()
    assert first.scalekit_event.reason == "Timeout"  # type: ignore[attr-defined]
    assert second.name == "scalekit.demo" and second.levelno == logging.INFO


def test_logging_hook_skips_formatting_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    set_hooks([LoggingHook()])
    with caplog.at_level(logging.ERROR, logger="scalekit"):
        emit(Timed(name="t", seconds=0.5))
    assert caplog.records == []


def test_capture_events_adds_and_restores() -> None:
    before = get_hooks()
    with capture_events() as events:
        emit(Timed(name="t", seconds=0.1))
        assert len(get_hooks()) == len(before) + 1
    emit(Timed(name="after", seconds=0.1))
    assert [e.name for e in events] == ["t"]
    assert get_hooks() == before


def test_pytest_plugin_fixtures(fake_clock, scalekit_events) -> None:  # type: ignore[no-untyped-def]
    fake_clock.advance(1)
    emit(Timed(name="plugin", seconds=0.0))
    assert fake_clock.monotonic() == 1
    assert [e.name for e in scalekit_events] == ["plugin"]


def test_prometheus_hook_counts_and_times() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    hook = PrometheusHook(registry)
    set_hooks([hook])
    emit(Timed(name="db", seconds=0.25))
    emit(Timed(name="db", seconds=0.75))
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
    emit(Timed(name="db", seconds=0.5))
    emit(Timed(name="db", seconds=1.5))
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


# -- one name for durations (issue 13, item 14) ---------------------------------------


def _timed_events() -> list[Event]:
    from scalekit.batch._events import BatchChunkWritten, BatchFinished
    from scalekit.cache._events import CacheLeaseWait, CacheLoaded
    from scalekit.retry._events import RetryBudgetExhausted, RetryGaveUp
    from scalekit.routing._events import NodeEjected, NodeReadmitted

    counts = {"rows": 1, "inserted": 1, "updated": 0, "skipped": 0}
    return [
        BatchChunkWritten(name="t", chunk_index=0, seconds=0.5, **counts),
        BatchFinished(name="t", method="copy", rejected=0, chunks=1, seconds=0.5, **counts),
        CacheLoaded(name="t", reason="miss", seconds=0.5),
        CacheLeaseWait(name="t", outcome="filled", seconds=0.5),
        RetryGaveUp(name="t", attempts=3, reason="attempts", error="E", seconds=0.5),
        RetryBudgetExhausted(
            name="t", attempts=1, reason="budget", error="E", seconds=0.5, budget="b"
        ),
        NodeEjected(name="t", node="replica1", error="E", seconds=0.5),
        NodeReadmitted(name="t", node="replica1", seconds_down=0.5),
        Recovered(name="t", component_name="cache", seconds_degraded=0.5),
    ]


def _all_event_classes() -> set[type[Event]]:
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(scalekit.__path__, "scalekit."):
        if module.name.endswith("._events"):
            importlib.import_module(module.name)
    found: set[type[Event]] = set()
    todo = [Event]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("scalekit.") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_event_names_its_duration_seconds() -> None:
    timed = {type(event).__qualname__ for event in _timed_events()}
    for cls in _all_event_classes():
        names = {f.name for f in dataclasses.fields(cls)}
        assert "duration" not in names, f"{cls.__name__}: durations are named 'seconds'"
        if "seconds" in names:
            assert cls.__qualname__ in timed, f"{cls.__name__} has a duration: add it here"


def test_every_timed_event_lands_in_the_prometheus_histogram() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    set_hooks([PrometheusHook(registry)])
    events = _timed_events()
    for event in events:
        emit(event)
    for event in events:
        labels = {"kind": event.kind, "name": "t"}
        count = registry.get_sample_value("scalekit_event_duration_seconds_count", labels)
        assert count == 1, event.kind
        assert registry.get_sample_value("scalekit_event_duration_seconds_sum", labels) == 0.5


def test_every_timed_event_lands_in_the_opentelemetry_histogram() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    set_hooks([OpenTelemetryHook(meter)])
    events = _timed_events()
    for event in events:
        emit(event)
    data = reader.get_metrics_data()
    points = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "scalekit.event.duration"
        for point in metric.data.data_points
    ]
    assert sorted(point.attributes["kind"] for point in points) == sorted(e.kind for e in events)
    assert all(point.sum == 0.5 and point.count == 1 for point in points)


def test_the_old_duration_name_still_reads_with_a_warning() -> None:
    from scalekit.retry._events import RetryGaveUp

    event = RetryGaveUp(name="t", attempts=3, reason="attempts", error="E", seconds=0.5)
    with pytest.warns(DeprecationWarning, match="seconds"):
        assert event.duration == 0.5  # type: ignore[attr-defined]
