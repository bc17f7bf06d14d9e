"""The asyncio shell: run the plan's probes as tasks, each under its own timeout.

Only I/O lives here (the decisions are in ``_plan.py`` and ``_core.py``), and
it mirrors ``_sync.py`` function for function. A probe that misses its
deadline is cancelled and not awaited, so cleanup that talks to a frozen
server cannot hold up the report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit.health._core import DatabaseSample, HealthReport, Thresholds
from scalekit.health._plan import DEFAULT_TIMEOUT, IN_FLIGHT, Outcome, Probe, finish, plan
from scalekit.health._probes import (
    postgres_sample,
    postgres_sql,
    redis_cluster_sample,
    redis_sample,
    statement_timeout_sql,
)
from scalekit.typing import Clock

__all__ = ["acheck_health"]


async def acheck_health(
    *,
    pool: Any = None,
    engines: Mapping[str, Any] | None = None,
    redis: Any = None,
    breakers: Any = None,
    limiters: Any = None,
    caches: Any = None,
    thresholds: Thresholds | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    clock: Clock = SYSTEM_CLOCK,
) -> HealthReport:
    """The asyncio twin of :func:`check_health`: ``AsyncRoutingPool``, ``AsyncEngine`` and
    ``redis.asyncio`` clients, probed as concurrent tasks with the same rules.
    ``breakers``, ``limiters`` and ``caches`` may be of either colour (no I/O).

    >>> report = await acheck_health(engines={"main": async_engine})  # doctest: +SKIP

    Raises:
        ConfigurationError: as :func:`check_health`, and for sync engines or clients.
    """
    checked_at = clock.time()
    the_plan = plan(
        pool=pool,
        engines=engines,
        redis=redis,
        breakers=breakers,
        limiters=limiters,
        caches=caches,
        thresholds=thresholds,
        timeout=timeout,
        asynchronous=True,
        now=checked_at,
    )
    started = clock.monotonic()
    runs = {probe.name: _run(probe, clock) for probe in the_plan.probes if probe.decided is None}
    results = await asyncio.gather(*runs.values())
    outcomes = dict(zip(runs, results, strict=True))
    duration_ms = (clock.monotonic() - started) * 1000.0
    return finish(the_plan, outcomes, checked_at=checked_at, duration_ms=duration_ms)


async def _run(probe: Probe, clock: Clock) -> Outcome:
    if not IN_FLIGHT.claim(probe.target):
        return Outcome(still_running=True)
    task = asyncio.ensure_future(_probe(probe, clock))
    task.add_done_callback(lambda done: _finished(done, probe))
    finished, _ = await asyncio.wait({task}, timeout=probe.timeout)
    if not finished:
        task.cancel()
        return Outcome(timed_out=True)
    return task.result()


def _finished(task: asyncio.Future[Outcome], probe: Probe) -> None:
    IN_FLIGHT.release(probe.target)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it


async def _probe(probe: Probe, clock: Clock) -> Outcome:
    try:
        if probe.kind == "postgres":
            return await _database(probe.target, probe.timeout, clock, with_size=probe.with_size)
        return await _redis(probe.target, probe.timeout, clock)
    except Exception as error:
        return Outcome(error=error)


async def _database(engine: Any, timeout: float, clock: Clock, *, with_size: bool) -> Outcome:
    from sqlalchemy import text

    async with engine.connect() as connection:
        if engine.dialect.name != "postgresql":
            started = clock.monotonic()
            await connection.execute(text("SELECT 1"))
            latency_ms = (clock.monotonic() - started) * 1000.0
            sample = DatabaseSample(dialect=engine.dialect.name)
            return Outcome(sample=sample, latency_ms=latency_ms)
        await connection.exec_driver_sql(statement_timeout_sql(timeout))
        started = clock.monotonic()
        row = (await connection.execute(text(postgres_sql(with_size=with_size)))).mappings().one()
        latency_ms = (clock.monotonic() - started) * 1000.0
        await connection.rollback()
    return Outcome(sample=postgres_sample(row), latency_ms=latency_ms)


async def _redis(client: Any, timeout: float, clock: Clock) -> Outcome:
    from redis.exceptions import ResponseError

    # The user's own client: a probe past its deadline is cancelled, and
    # redis-py drops a connection whose command was cancelled.
    started = clock.monotonic()
    await client.ping()
    latency_ms = (clock.monotonic() - started) * 1000.0
    if hasattr(client, "get_nodes"):  # RedisCluster
        node = client.get_random_node()
        info = await client.info(target_nodes=node)
        sample = redis_cluster_sample(await client.cluster_info(target_nodes=node), info)
    else:
        try:
            info = await client.info()
        except ResponseError:  # INFO renamed or refused (ACL, fakes): ping only
            info = {}
        sample = redis_sample(info)
    return Outcome(sample=sample, latency_ms=latency_ms)
