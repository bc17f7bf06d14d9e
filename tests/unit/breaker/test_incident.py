"""The one outage rule (issue 14): FallbackUsed once per incident, Recovered once at its end."""

from __future__ import annotations

import threading

from scalekit.breaker._incident import Incident
from scalekit.instrumentation import FallbackUsed, Recovered
from scalekit.testing import capture_events


def test_an_incident_is_reported_once_at_each_end() -> None:
    incident = Incident("orders", "retry.budget", "local")
    with capture_events() as events:
        assert incident.recovered(1.0) is None  # healthy: nothing to end
        assert incident.failed(10.0, "ConnectionError") is True
        assert incident.failed(11.0, "TimeoutError") is False
        assert incident.degraded
        assert incident.recovered(14.5) == 4.5
        assert incident.recovered(15.0) is None
        assert not incident.degraded
        assert incident.failed(20.0, "ConnectionError") is True  # a second incident
    assert [type(e) for e in events] == [FallbackUsed, Recovered, FallbackUsed]
    first = events[0]
    assert isinstance(first, FallbackUsed)
    assert (first.name, first.component_name, first.fallback, first.reason) == (
        "orders",
        "retry.budget",
        "local",
        "ConnectionError",
    )
    recovered = events[1]
    assert isinstance(recovered, Recovered) and recovered.seconds_degraded == 4.5
    assert incident.count == 2


def test_racing_threads_start_and_end_one_incident() -> None:
    incident = Incident("svc", "breaker", "fail_open")
    barrier = threading.Barrier(8)
    started: list[bool] = []

    def fail() -> None:
        barrier.wait()
        started.append(incident.failed(1.0, "OSError"))

    with capture_events() as events:
        threads = [threading.Thread(target=fail) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert sorted(started) == [False] * 7 + [True]
    assert sum(isinstance(e, FallbackUsed) for e in events) == 1
