"""The health shells: run the plan's probes side by side, each under its own timeout.

Only I/O lives here (the decisions are in ``_plan.py``, ``_probes.py`` and
``_core.py``). The colours differ only in how probes run side by side: tasks
(``_run``) in asyncio, daemon threads (``_base.py``) in the generated sync shell.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit._unasync import IS_ASYNC
from scalekit.health._base import ProbeThread, bounded_twin
from scalekit.health._core import HealthReport, Thresholds
from scalekit.health._plan import DEFAULT_TIMEOUT, IN_FLIGHT, Outcome, Probe, finish, plan
from scalekit.health._probes import (
    database_queries,
    database_sample,
    redis_cluster_sample,
    redis_sample,
)
from scalekit.health._ready import READINESS_TIMEOUT, readiness_status
from scalekit.typing import Clock

__unasync__ = {"acheck_health": "check_health", "areadiness": "readiness"}

__all__ = ["acheck_health", "areadiness"]


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
    """Probe databases, pools and Redis concurrently and report their health.

    ``pool`` is a :class:`~scalekit.routing.AsyncRoutingPool` (each node is
    probed, plus a ``routing:<name>`` component; its lag limits become the lag
    warning levels), ``engines`` a mapping of name to ``AsyncEngine``,
    ``redis`` a client of ``redis.asyncio`` or a mapping of name to client
    (standalone or cluster). ``breakers`` (:class:`~scalekit.breaker.CircuitBreaker`),
    ``limiters`` (:class:`~scalekit.ratelimit.AsyncRateLimiter`) and ``caches``
    (:class:`~scalekit.cache.AsyncCache`), of either colour, are each one
    object, a list, or a mapping of name to object; they are judged from their
    public state with no I/O (``breaker:<name>``, ``limiter:<name>``,
    ``cache:<name>``: state, whether a fallback is in force, since when), and
    count at most as a warning. Probes run side by side, each under its own
    ``timeout`` (seconds), and never wait for a pool slot: an engine whose pool
    is exhausted is reported critical at once, unprobed. Nothing raises for a
    server that is down; it is reported.

    Examples:
        >>> report = await acheck_health(engines={"main": engine}, redis=client)  # doctest: +SKIP
        >>> report.status, report.to_dict()["components"]["db:main"]["up"]  # doctest: +SKIP
        ('ok', True)

    Raises:
        ConfigurationError: an argument of the wrong kind (an engine or Redis
            client of the other colour), a bad ``timeout``, a breaker, limiter
            or cache of the wrong type, or two components with the same name.
    """
    the_plan = plan(
        pool=pool,
        engines=engines,
        redis=redis,
        breakers=breakers,
        limiters=limiters,
        caches=caches,
        thresholds=thresholds,
        timeout=timeout,
        asynchronous=IS_ASYNC,
        clock=clock,
    )
    return finish(the_plan, await _run_all(the_plan.to_run(), clock))


async def areadiness(
    *,
    pool: Any = None,
    engines: Mapping[str, Any] | None = None,
    redis: Any = None,
    breakers: Any = None,
    limiters: Any = None,
    caches: Any = None,
    thresholds: Thresholds | None = None,
    timeout: float = READINESS_TIMEOUT,
    clock: Clock = SYSTEM_CLOCK,
) -> HealthReport:
    """:func:`acheck_health` judged for a load balancer: ready unless ``status == "critical"``.

    The components are the full reports; only the overall ``status`` follows
    :func:`readiness_status`. Answer 503 when it is ``"critical"``.

    >>> report = await areadiness(pool=routing_pool, redis=client)  # doctest: +SKIP
    >>> status_code = 503 if report.status == "critical" else 200  # doctest: +SKIP
    """
    report = await acheck_health(
        pool=pool,
        engines=engines,
        redis=redis,
        breakers=breakers,
        limiters=limiters,
        caches=caches,
        thresholds=thresholds,
        timeout=timeout,
        clock=clock,
    )
    return replace(report, status=readiness_status(report))


async def _run_all(probes: list[Probe], clock: Clock) -> list[Outcome]:
    """Start every probe, then collect each outcome (in order) by its probe's deadline."""
    if IS_ASYNC:
        return await asyncio.gather(*(_run(probe, clock) for probe in probes))
    else:
        runs = [ProbeThread(probe, functools.partial(_probe, probe, clock)) for probe in probes]
        return [run.wait() for run in runs]


async def _run(probe: Probe, clock: Clock) -> Outcome:  # unasync: async-only
    """One probe as a task; past its deadline it is cancelled and left behind, so cleanup
    that talks to a frozen server cannot hold up the report."""
    if not IN_FLIGHT.claim(probe.target):
        return Outcome(still_running=True)
    task = asyncio.ensure_future(_probe(probe, clock))
    task.add_done_callback(lambda done: _finished(done, probe))
    finished, _ = await asyncio.wait({task}, timeout=probe.timeout)
    if not finished:
        task.cancel()
        return Outcome(timed_out=True)
    return task.result()


def _finished(task: asyncio.Future[Outcome], probe: Probe) -> None:  # unasync: async-only
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
    setup, query = database_queries(engine.dialect.name, timeout, with_size=with_size)
    async with engine.connect() as connection:
        if setup is not None:
            await connection.exec_driver_sql(setup)
        started = clock.monotonic()
        result = await connection.execute(query)
        latency_ms = (clock.monotonic() - started) * 1000.0
        sample = database_sample(engine.dialect.name, result)
    return Outcome(sample=sample, latency_ms=latency_ms)


async def _redis(client: Any, timeout: float, clock: Clock) -> Outcome:
    from redis.exceptions import ResponseError

    # A task past its deadline is cancelled (redis-py then drops the connection), so
    # asyncio uses the user's own client; a thread cannot be, so it uses a bounded twin.
    twin = client if IS_ASYNC else bounded_twin(client, timeout)
    started = clock.monotonic()
    await twin.ping()
    latency_ms = (clock.monotonic() - started) * 1000.0
    if hasattr(twin, "get_nodes"):  # RedisCluster
        node = twin.get_random_node()
        info = await twin.info(target_nodes=node)
        sample = redis_cluster_sample(await twin.cluster_info(target_nodes=node), info)
    else:
        try:
            info = await twin.info()
        except ResponseError:  # INFO renamed or refused (ACL, fakes): ping only
            info = {}
        sample = redis_sample(info)
    return Outcome(sample=sample, latency_ms=latency_ms)
