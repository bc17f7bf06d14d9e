"""check_health / acheck_health over SQLite, fakeredis and stubs: the shells' promises.

The same scenarios run sync and async: components named and judged, an
exhausted pool decided without a checkout, a probe that hangs cut off at its
timeout, wrong-colour arguments refused, no secret in a report.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from typing import Any

import fakeredis
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import QueuePool

from scalekit.errors import ConfigurationError
from scalekit.health import PoolMonitor, PoolPressure, acheck_health, check_health
from scalekit.instrumentation import capture_events

HANG_GUARD = 20.0  # seconds; the probes under test take well under a second


def queue_engine(size: int = 2, overflow: int = 0) -> Any:
    return create_engine(
        "sqlite:///file:health?mode=memory&cache=shared&uri=true",
        poolclass=QueuePool,
        pool_size=size,
        max_overflow=overflow,
        pool_timeout=30,
    )


def test_sqlite_and_fakeredis_are_ok() -> None:
    engine = queue_engine()
    report = check_health(engines={"main": engine}, redis=fakeredis.FakeRedis())
    assert set(report.components) == {"db:main", "redis:default"}
    assert report.status == "ok", report.to_dict()
    db = report.components["db:main"]
    assert db.up and db.kind == "database" and db.details["pool"]["capacity"] == 2
    json.dumps(report.to_dict(), allow_nan=False)
    engine.dispose()


async def test_async_sqlite_and_fakeredis_are_ok() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    report = await acheck_health(
        engines={"main": engine}, redis={"cache": fakeredis.FakeAsyncRedis()}
    )
    assert set(report.components) == {"db:main", "redis:cache"}
    assert report.status == "ok", report.to_dict()
    await engine.dispose()


def test_an_exhausted_pool_is_critical_without_a_checkout() -> None:
    engine = queue_engine(size=1)
    held = engine.connect()
    held.execute(text("SELECT 1"))
    done = threading.Event()
    result: list[Any] = []

    def run() -> None:
        result.append(check_health(engines={"main": engine}))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    # pool_timeout is 30 s: a probe that waited for a slot would miss this guard.
    assert done.wait(HANG_GUARD)
    db = result[0].components["db:main"]
    assert db.status == "critical" and db.up is None
    assert "pool exhausted: 1/1" in db.reasons[0]
    held.close()
    engine.dispose()


class _Hanging:
    """A sync Redis stand-in whose PING never answers (until released)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def ping(self) -> bool:
        self.release.wait(HANG_GUARD)
        raise ConnectionError("gave up")


def test_a_hanging_probe_is_cut_off_at_its_timeout_and_not_piled_up() -> None:
    hanging = _Hanging()
    report = check_health(redis={"stuck": hanging, "ok": fakeredis.FakeRedis()}, timeout=0.2)
    assert report.components["redis:stuck"].status == "critical"
    assert "no answer within 0.2s" in report.components["redis:stuck"].reasons[0]
    assert report.components["redis:ok"].status == "ok"
    # The first probe is still stuck: the next check does not start another.
    again = check_health(redis={"stuck": hanging}, timeout=0.2)
    assert "has not returned" in again.components["redis:stuck"].reasons[0]
    hanging.release.set()


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"engines": {"main": "sqlite://"}}, "needs Engine"),
        ({"redis": {"": fakeredis.FakeRedis()}}, "non-empty"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "1"}, "timeout"),
        ({"pool": object()}, "RoutingPool"),
        ({"thresholds": {"usage_warn": 0.5}}, "Thresholds"),
    ],
)
def test_bad_arguments_raise_configuration_error(arguments: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        check_health(**arguments)


def test_the_wrong_colour_is_refused() -> None:
    async_engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(ConfigurationError, match="acheck_health"):
        check_health(engines={"main": async_engine})
    with pytest.raises(ConfigurationError, match="needs sync redis"):
        check_health(redis=fakeredis.FakeAsyncRedis())
    with pytest.raises(ConfigurationError, match="AsyncEngine"):
        asyncio.run(acheck_health(engines={"main": queue_engine()}))


def test_pool_monitor_emits_once_per_crossing() -> None:
    engine = queue_engine(size=5, overflow=5)
    monitor = PoolMonitor(engine, warn_at=0.5, critical_at=0.9, hysteresis=0.0)
    with capture_events() as events:
        held = [engine.connect() for _ in range(10)]
        for connection in held:
            connection.close()
        held = [engine.connect() for _ in range(3)]
        for connection in held:
            connection.close()
    crossings = [(e.previous, e.pressure) for e in events if isinstance(e, PoolPressure)]
    assert crossings == [("ok", "warn"), ("warn", "critical"), ("critical", "warn"), ("warn", "ok")]
    assert monitor.level == "ok" and monitor.checked_out == 0
    assert monitor.wait_ms_max is not None and monitor.waiting == 0
    with pytest.raises(ConfigurationError, match="already has a PoolMonitor"):
        PoolMonitor(engine)
    monitor.close()
    PoolMonitor(engine, warn_at=0.5).close()  # closed: a new one may attach
    engine.dispose()


@pytest.mark.parametrize("levels", [{"warn_at": 0.9, "critical_at": 0.5}, {"warn_at": 2.0}])
def test_pool_monitor_rejects_bad_levels(levels: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        PoolMonitor(queue_engine(), **levels)


def test_the_monitor_feeds_waiters_into_the_report() -> None:
    engine = queue_engine(size=1)
    monitor = PoolMonitor(engine)
    with engine.connect():
        pass
    report = check_health(engines={"main": engine})
    pool = report.components["db:main"].details["pool"]
    assert pool["waiting"] == 0 and pool["wait_ms_max"] is not None
    monitor.close()
    engine.dispose()


class _CountingClock:
    """The system clock, counting how often the monitor reads it."""

    def __init__(self) -> None:
        import time

        self._time = time
        self.reads = 0

    def time(self) -> float:
        return self._time.time()

    def monotonic(self) -> float:
        self.reads += 1
        return self._time.monotonic()

    def sleep(self, seconds: float) -> None:
        self._time.sleep(seconds)


def test_pool_monitor_reads_the_clock_only_for_a_checkout_that_waits() -> None:
    engine = queue_engine(size=1)
    clock = _CountingClock()
    monitor = PoolMonitor(engine, clock=clock)
    for _ in range(50):
        with engine.connect():
            pass
    assert clock.reads == 0  # a connection was free every time: no wait to time
    assert monitor.wait_ms_last == 0.0 and monitor.wait_ms_max == 0.0
    assert monitor.stats()["checkouts"] == 50

    held = engine.connect()
    waited = threading.Event()

    def waiter() -> None:
        with engine.connect():
            waited.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    deadline = threading.Event()
    while monitor.waiting != 1:
        assert not deadline.wait(0.005) and thread.is_alive()
    held.close()
    assert waited.wait(HANG_GUARD)
    thread.join(HANG_GUARD)
    assert clock.reads == 2  # the waiter's start and end
    assert monitor.waiting == 0 and monitor.checked_out == 0
    assert monitor.wait_ms_max is not None and monitor.wait_ms_max > 0
    monitor.close()
    engine.dispose()


def test_pool_monitor_follows_the_new_pool_after_dispose() -> None:
    engine = queue_engine(size=4)
    monitor = PoolMonitor(engine, warn_at=0.5, critical_at=1.0, hysteresis=0.0)
    with capture_events() as events:
        held = [engine.connect() for _ in range(4)]
        assert monitor.checked_out == 4 and monitor.level == "critical"
        engine.dispose()  # the held connections belong to the old pool now
        held.pop().close()
        held.pop().close()
        assert monitor.checked_out == 2
        fresh = engine.connect()  # the new pool's first connection
        for connection in held:  # returned to the old pool: no longer counted
            connection.close()
        assert monitor.checked_out == 1 and monitor.level == "warn"  # kept: hysteresis
        more = [engine.connect() for _ in range(3)]
        assert monitor.checked_out == 4 and monitor.level == "critical"
        for connection in [fresh, *more]:
            connection.close()
    assert monitor.checked_out == 0 and monitor.level == "ok"
    pressure = [e for e in events if isinstance(e, PoolPressure)]
    for before, after in itertools.pairwise(pressure):
        assert after.previous == before.pressure != after.pressure
    assert [e.pressure for e in pressure][-1] == "ok"
    monitor.close()
    engine.dispose()
