"""liveness() and readiness(): no I/O for the one, a load balancer's judgement for the other."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import fakeredis
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import QueuePool

from scalekit.health import (
    ComponentReport,
    HealthReport,
    Thresholds,
    areadiness,
    check_health,
    liveness,
    readiness,
)
from scalekit.health._ready import readiness_status
from scalekit.testing import FakeClock

HANG_GUARD = 20.0  # seconds; these checks take well under a second

#: Every measurement past its critical level: check_health says critical, readiness does not care.
EVERYTHING_CRITICAL = Thresholds(latency_ms_warn=0.0, latency_ms_critical=0.0)


def queue_engine(size: int = 1) -> Any:
    return create_engine(
        "sqlite:///file:ready?mode=memory&cache=shared&uri=true",
        poolclass=QueuePool,
        pool_size=size,
        max_overflow=0,
        pool_timeout=30,
        connect_args={"check_same_thread": False},  # probes run in threads
    )


def component(*, up: bool | None, required: bool = True, kind: str = "postgres") -> ComponentReport:
    return ComponentReport(
        kind=kind, status="critical" if up is not True else "warn", up=up, required=required
    )


def test_liveness_is_ok_and_json_ready_without_io() -> None:
    clock = FakeClock()
    report = liveness(clock=clock)
    assert report.status == "ok"
    assert report.exit_code == 0
    assert report.checked_at == clock.time()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["components"]["process"]["kind"] == "process"
    assert isinstance(data["components"]["process"]["details"]["pid"], int)


def test_readiness_ok_on_sqlite_and_fakeredis() -> None:
    engine = queue_engine()
    report = readiness(engines={"main": engine}, redis=fakeredis.FakeRedis())
    assert report.status == "ok"
    assert set(report.components) == {"db:main", "redis:default"}
    engine.dispose()


def test_readiness_ignores_measurements_past_their_thresholds() -> None:
    engine = queue_engine()
    full = check_health(engines={"main": engine}, thresholds=EVERYTHING_CRITICAL)
    ready = readiness(engines={"main": engine}, thresholds=EVERYTHING_CRITICAL)
    assert full.status == "critical"
    assert ready.status == "ok"
    assert ready.components["db:main"].status == "critical"  # the full report is kept
    engine.dispose()


def test_readiness_is_not_ready_at_once_when_the_pool_is_exhausted() -> None:
    engine = queue_engine(size=1)
    held = engine.connect()
    result: list[HealthReport] = []
    worker = threading.Thread(target=lambda: result.append(readiness(engines={"main": engine})))
    worker.start()
    worker.join(HANG_GUARD)
    held.close()
    assert result, "readiness waited for a pool slot"
    assert result[0].status == "critical"
    assert result[0].components["db:main"].up is None
    engine.dispose()


def test_readiness_status_rules() -> None:
    def report(**components: ComponentReport) -> HealthReport:
        return HealthReport.build(components, checked_at=0.0)

    assert readiness_status(report()) == "ok"
    assert readiness_status(report(a=component(up=True))) == "ok"
    assert readiness_status(report(a=component(up=False))) == "critical"
    assert readiness_status(report(a=component(up=None))) == "critical"  # exhausted pool
    assert readiness_status(report(a=component(up=False, required=False))) == "warn"
    routing = ComponentReport(kind="routing", status="critical", up=None, reasons=("no primary",))
    assert readiness_status(report(r=routing)) == "critical"


@pytest.mark.parametrize("thresholds", [None, EVERYTHING_CRITICAL])
def test_areadiness_matches_readiness(thresholds: Thresholds | None) -> None:
    async def main() -> HealthReport:
        engine = create_async_engine("sqlite+aiosqlite:///:memory:")
        try:
            return await asyncio.wait_for(
                areadiness(engines={"main": engine}, thresholds=thresholds), HANG_GUARD
            )
        finally:
            await engine.dispose()

    assert asyncio.run(main()).status == "ok"
