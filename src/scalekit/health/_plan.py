"""Plan a health check, then fold its outcomes into a report. No I/O.

:func:`plan` turns the caller's arguments (``pool=``, ``engines=``,
``redis=``) into a list of :class:`Probe` values, reading only what is in
memory: a routing pool's nodes and ``health()``, each engine's pool counters.
Breakers, limiters and caches (``breakers=``, ``limiters=``, ``caches=``)
are judged here too, from their public state alone: they need no probe.
A probe whose engine pool is exhausted is *decided* here, with no I/O: it
gets its report at once (critical, "pool exhausted") and the shell never asks
the pool for a connection, because that would wait up to the pool's
``timeout`` (30 s by default: the mozilla-ai/otari#1240 failure). The shells
then run the remaining probes concurrently, each under its own timeout, and
hand :class:`Outcome` values to :func:`finish`.

Why check the counters rather than open a separate connection: the probe
then sees what the application sees. If the pool is full, the application
cannot reach the database either, and the report says so immediately. The
check and the checkout are not atomic: if the last free connection is taken
between them, the probe waits for a connection like any checkout, and the
report gives up on it at the probe's timeout (the shell does not wait).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from scalekit._clock import SYSTEM_CLOCK
from scalekit.errors import ConfigurationError
from scalekit.health._core import (
    ComponentReport,
    DatabaseSample,
    HealthReport,
    PoolStats,
    PostgresSample,
    RedisSample,
    Thresholds,
    database_component,
    error_component,
    fallback_component,
    pool_exhausted,
    postgres_component,
    redis_component,
    routing_component,
    skipped_component,
)
from scalekit.health._monitor import monitor_for
from scalekit.health._probes import breaker_sample, cache_sample, limiter_sample, pool_stats
from scalekit.typing import Clock

__all__ = ["IN_FLIGHT", "InFlight", "Outcome", "Plan", "Probe", "finish", "judge", "plan"]

ProbeKind = Literal["postgres", "redis"]

#: Default seconds each probe may take.
DEFAULT_TIMEOUT = 2.0

#: Seconds between two reads of a database's size (``pg_database_size`` stats every file).
DATABASE_SIZE_EVERY = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """One component to probe: its report name, what to ask, and how to judge it."""

    name: str
    kind: ProbeKind
    target: Any
    timeout: float
    required: bool = True
    expected_role: str | None = None
    pool: PoolStats | None = None
    #: The report, when it was decided without I/O (an exhausted pool); nothing to run.
    decided: ComponentReport | None = None
    #: Whether a PostgreSQL probe asks the database size (see :class:`NodeMemo`).
    with_size: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What running a probe gave: a sample, an error, or no answer in time."""

    sample: PostgresSample | DatabaseSample | RedisSample | None = None
    error: BaseException | None = None
    timed_out: bool = False
    latency_ms: float | None = None
    #: A previous probe of the same server has not returned yet; none was started.
    still_running: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    probes: tuple[Probe, ...]
    thresholds: Thresholds
    routing: Mapping[str, Any] | None = None
    routing_name: str | None = None
    fallback_to_primary: bool = True
    routing_nodes: tuple[str, ...] = ()
    #: Components judged without I/O (breakers, limiters, caches), by report name.
    local: Mapping[str, ComponentReport] | None = None
    #: When the check started (wall seconds), for :class:`NodeMemo` and the report.
    now: float = 0.0
    memo: NodeMemo | None = None
    #: The check's clock, and its ``monotonic()`` once planned: the report's duration.
    clock: Clock = SYSTEM_CLOCK
    started: float = 0.0

    def to_run(self) -> list[Probe]:
        """The probes that need I/O (the others were decided while planning)."""
        return [probe for probe in self.probes if probe.decided is None]


class _Node:
    __slots__ = ("caught_up_at", "size", "size_at")

    def __init__(self) -> None:
        self.size: int | None = None
        self.size_at = 0.0
        self.caught_up_at: float | None = None


class NodeMemo:
    """What earlier checks learnt about each PostgreSQL node (per engine). No I/O.

    * **The database size.** ``pg_database_size()`` stats every file of the
      database: on a database of many relations it is the dearest part of a
      probe, and a size changes slowly. A probe asks it when it is due (never
      read, or read :data:`DATABASE_SIZE_EVERY` seconds ago or more); in
      between the report shows the last size read.
    * **When a replica was last seen caught up** (streaming, 0 bytes behind).
      WAL it has not replayed now was written after that, so its lag cannot
      exceed the time since (give or take the network's delay). This bounds
      the age of the last replayed transaction, which after a long idle spell
      reads the whole spell for the instant between the first new WAL's
      arrival and its replay.
    """

    def __init__(self, size_every: float = DATABASE_SIZE_EVERY) -> None:
        import threading

        self.size_every = size_every
        self._lock = threading.Lock()
        self._nodes: weakref.WeakKeyDictionary[Any, _Node] = weakref.WeakKeyDictionary()

    def _node(self, engine: Any) -> _Node:
        key = getattr(engine, "sync_engine", engine)
        node = self._nodes.get(key)
        if node is None:
            node = self._nodes[key] = _Node()
        return node

    def size_due(self, engine: Any, now: float) -> bool:
        """Whether a probe of ``engine`` at ``now`` should ask the database size."""
        with self._lock:
            node = self._node(engine)
            return node.size is None or not 0 <= now - node.size_at < self.size_every

    def learn(
        self,
        engine: Any,
        sample: PostgresSample,
        *,
        asked_size: bool,
        now: float,
        latency_ms: float | None,
    ) -> PostgresSample:
        """Remember what ``sample`` tells, and return it completed with what was remembered:
        the last size read (when not asked) and the time since the replica was caught up."""
        with self._lock:
            node = self._node(engine)
            size = sample.database_size_bytes
            if asked_size and size is not None:
                node.size, node.size_at = size, now
            elif not asked_size:
                size = node.size
            since = None
            if node.caught_up_at is not None and now >= node.caught_up_at:
                since = now - node.caught_up_at + (latency_ms or 0.0) / 1000.0
            caught_up = (
                sample.in_recovery
                and sample.receiver_status == "streaming"
                and sample.lag_bytes is not None
                and sample.lag_bytes <= 0
            )
            if caught_up:
                node.caught_up_at = now
            elif not sample.in_recovery or sample.receiver_status != "streaming":
                node.caught_up_at = None  # a new start: nothing known
        return replace(sample, database_size_bytes=size, seconds_since_caught_up=since)


MEMO = NodeMemo()


class Sightings:
    """When a check in this process first saw each breaker, limiter or cache in its state.

    The components do not expose when their state last changed, so ``since``
    is the first check that saw the current state (as exact as checks are
    frequent). Bounded: the oldest entries go first.
    """

    def __init__(self, limit: int = 1024) -> None:
        import threading

        self._lock = threading.Lock()
        self._limit = limit
        self._seen: OrderedDict[tuple[str, int], tuple[str, bool, float]] = OrderedDict()

    def since(self, name: str, target: object, state: str, fallback: bool, now: float) -> float:
        key = (name, id(target))
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and seen[:2] == (state, fallback):
                self._seen.move_to_end(key)
                return seen[2]
            self._seen[key] = (state, fallback, now)
            self._seen.move_to_end(key)
            while len(self._seen) > self._limit:
                self._seen.popitem(last=False)
            return now


SIGHTINGS = Sightings()


class InFlight:
    """The servers a probe is still running against, so a frozen one gets no pile of probes.

    A sync probe that timed out keeps its thread until the server answers or
    its socket times out; an async one until its cancellation finishes. The
    next check reports such a server at once ("previous probe has not
    returned") instead of starting another probe that would hang the same way.
    """

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._keys: set[int] = set()

    def claim(self, target: object) -> bool:
        with self._lock:
            if id(target) in self._keys:
                return False
            self._keys.add(id(target))
            return True

    def release(self, target: object) -> None:
        with self._lock:
            self._keys.discard(id(target))


IN_FLIGHT = InFlight()


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigurationError(f"timeout must be a number, got {timeout!r}", parameter="timeout")
    if not 0 < float(timeout) <= 300:
        raise ConfigurationError(
            f"timeout must be above 0 and at most 300 seconds, got {timeout!r}",
            parameter="timeout",
        )
    return float(timeout)


def _redis_clients(redis: object) -> list[tuple[str, Any]]:
    if redis is None:
        return []
    if isinstance(redis, Mapping):
        items = list(redis.items())
        for name, _ in items:
            if not isinstance(name, str) or not name:
                raise ConfigurationError("redis names must be non-empty strings", parameter="redis")
        return items
    return [("default", redis)]


def _named(
    argument: object, parameter: str, kind: type | tuple[type, ...], name_of: Callable[[Any], str]
) -> list[tuple[str, Any]]:
    """``argument`` (one object, a sequence, or a mapping of name to object) as (name, object)."""
    if argument is None:
        return []
    if isinstance(argument, Mapping):
        items = list(argument.items())
    else:
        objects = list(argument) if isinstance(argument, (list, tuple)) else [argument]
        items = [
            (name_of(item) if isinstance(item, kind) else type(item).__name__, item)
            for item in objects
        ]
    for name, item in items:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"{parameter} names must be non-empty strings", parameter=parameter
            )
        if not isinstance(item, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            wanted = " or ".join(k.__name__ for k in kinds)
            raise ConfigurationError(
                f"{parameter}: {name!r} must be a {wanted}, got {type(item).__name__}",
                parameter=parameter,
            )
    return items


def _local(
    breakers: object, limiters: object, caches: object, now: float, sightings: Sightings
) -> dict[str, ComponentReport]:
    """Breakers, limiters and caches judged from their public state: no I/O."""
    groups: list[tuple[str, list[tuple[str, Any]], Callable[[Any], Any]]] = []
    if breakers is not None:
        from scalekit.breaker import CircuitBreaker

        groups.append(
            (
                "breaker",
                _named(breakers, "breakers", CircuitBreaker, lambda b: b.name),
                breaker_sample,
            )
        )
    if limiters is not None:
        from scalekit.ratelimit import AsyncRateLimiter, RateLimiter

        if isinstance(limiters, (list, tuple)) and len(limiters) > 1:
            raise ConfigurationError(
                "name several limiters with a mapping: limiters={'api': limiter, ...}",
                parameter="limiters",
            )
        items = _named(limiters, "limiters", (RateLimiter, AsyncRateLimiter), lambda _: "default")
        groups.append(("limiter", items, limiter_sample))
    if caches is not None:
        from scalekit.cache import AsyncCache, Cache

        items = _named(caches, "caches", (Cache, AsyncCache), lambda c: c.namespace)
        groups.append(("cache", items, cache_sample))
    components: dict[str, ComponentReport] = {}
    for kind, items, read in groups:
        for name, target in items:
            key = f"{kind}:{name}"
            if key in components:
                raise ConfigurationError(
                    f"two components share a name: {key}", parameter=f"{kind}s"
                )
            sample = read(target)
            since = sightings.since(key, target, sample.state, sample.fallback, now)
            components[key] = fallback_component(sample, since=since)
    return components


def _is_async_engine(engine: object) -> bool:
    from sqlalchemy.ext.asyncio import AsyncEngine

    return isinstance(engine, AsyncEngine)


def _is_async_redis(client: object) -> bool:
    import inspect

    try:
        from redis.asyncio import Redis, RedisCluster
    except ImportError:  # pragma: no cover - redis-py is not installed
        return False
    if isinstance(client, (Redis, RedisCluster)):
        return True
    return inspect.iscoroutinefunction(getattr(client, "execute_command", None))


def _postgres_probe(
    name: str,
    engine: Any,
    *,
    asynchronous: bool,
    timeout: float,
    required: bool,
    expected_role: str | None,
    memo: NodeMemo,
    now: float,
) -> Probe:
    from sqlalchemy import Engine

    if _is_async_engine(engine) != asynchronous or not (
        isinstance(engine, Engine) or _is_async_engine(engine)
    ):
        wanted = "AsyncEngine objects" if asynchronous else "Engine objects"
        hint = ""
        if isinstance(engine, Engine) or _is_async_engine(engine):
            hint = " (use check_health)" if asynchronous else " (use acheck_health)"
        raise ConfigurationError(
            f"{name}: {'acheck_health' if asynchronous else 'check_health'} needs {wanted}, "
            f"got {type(engine).__name__}{hint}",
            parameter="engines",
        )
    sync_engine = engine.sync_engine if asynchronous else engine
    stats = pool_stats(sync_engine.pool, monitor_for(sync_engine))
    decided = None
    if pool_exhausted(stats):
        # Decided without I/O: a checkout would wait for the pool's timeout.
        decided = postgres_pool_exhausted(stats, required=required)
    return Probe(
        name=name,
        kind="postgres",
        target=engine,
        timeout=timeout,
        required=required,
        expected_role=expected_role,
        pool=stats,
        decided=decided,
        with_size=memo.size_due(engine, now),
    )


def postgres_pool_exhausted(stats: PoolStats, *, required: bool) -> ComponentReport:
    waiting = "" if stats.waiting is None else f", {stats.waiting} waiting"
    return skipped_component(
        "postgres",
        f"pool exhausted: {stats.checked_out}/{stats.capacity} checked out{waiting}; "
        "server not probed",
        details={"pool": stats.details()},
        required=required,
    )


def plan(
    *,
    pool: Any = None,
    engines: Mapping[str, Any] | None = None,
    redis: Any = None,
    breakers: Any = None,
    limiters: Any = None,
    caches: Any = None,
    thresholds: Thresholds | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    asynchronous: bool,
    clock: Clock = SYSTEM_CLOCK,
    sightings: Sightings = SIGHTINGS,
    memo: NodeMemo = MEMO,
) -> Plan:
    """The probes of one health check, timed by ``clock`` from now.

    Raises:
        ConfigurationError: an argument of the wrong kind.
    """
    now = clock.time()
    timeout = _check_timeout(timeout)
    if thresholds is not None and not isinstance(thresholds, Thresholds):
        raise ConfigurationError("thresholds must be a Thresholds value", parameter="thresholds")
    probes: list[Probe] = []
    routing = None
    routing_name = None
    fallback = True
    routing_nodes: tuple[str, ...] = ()
    if pool is not None:
        nodes = getattr(pool, "nodes", None)
        health = getattr(pool, "health", None)
        if not isinstance(nodes, Mapping) or not callable(health):
            raise ConfigurationError(
                "pool must be a RoutingPool or AsyncRoutingPool", parameter="pool"
            )
        config = getattr(pool, "config", None)
        if thresholds is None and config is not None:
            thresholds = Thresholds().with_lag_limits(
                getattr(config, "max_lag_seconds", None), getattr(config, "max_lag_bytes", None)
            )
        if config is not None:
            fallback = bool(getattr(config, "fallback_to_primary", True))
        routing = health()
        routing_name = str(routing.get("name") or getattr(pool, "name", "default"))
        routing_nodes = tuple(nodes)
        known = routing.get("nodes", {})
        for node, engine in nodes.items():
            role = known.get(node, {}).get("role")
            probes.append(
                _postgres_probe(
                    f"db:{node}",
                    engine,
                    asynchronous=asynchronous,
                    timeout=timeout,
                    required=role == "primary",
                    expected_role=role if role in ("primary", "replica") else None,
                    memo=memo,
                    now=now,
                )
            )
    engine_items: list[tuple[object, Any]] = list((engines or {}).items())
    for name, engine in engine_items:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("engine names must be non-empty strings", parameter="engines")
        probes.append(
            _postgres_probe(
                f"db:{name}",
                engine,
                asynchronous=asynchronous,
                timeout=timeout,
                required=True,
                expected_role=None,
                memo=memo,
                now=now,
            )
        )
    for name, client in _redis_clients(redis):
        if _is_async_redis(client) != asynchronous:
            wanted = "redis.asyncio clients" if asynchronous else "sync redis clients"
            raise ConfigurationError(
                f"redis {name!r}: {'acheck_health' if asynchronous else 'check_health'} "
                f"needs {wanted}, got {type(client).__name__}",
                parameter="redis",
            )
        probes.append(Probe(name=f"redis:{name}", kind="redis", target=client, timeout=timeout))
    local = _local(breakers, limiters, caches, now, sightings)
    names = [probe.name for probe in probes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigurationError(
            f"two components share a name: {', '.join(duplicates)}", parameter="engines"
        )
    return Plan(
        probes=tuple(probes),
        thresholds=thresholds or Thresholds(),
        routing=routing,
        routing_name=routing_name,
        fallback_to_primary=fallback,
        routing_nodes=routing_nodes,
        local=local,
        now=now,
        memo=memo,
        clock=clock,
        started=clock.monotonic(),
    )


def judge(probe: Probe, outcome: Outcome, thresholds: Thresholds) -> ComponentReport:
    """The component report of one probe from its outcome."""
    if probe.decided is not None:
        return probe.decided
    details: dict[str, Any] = {}
    if probe.pool is not None:
        details["pool"] = probe.pool.details()
    if outcome.still_running:
        return skipped_component(
            probe.kind,
            "the previous probe of this server has not returned yet",
            details=details,
            required=probe.required,
        )
    if outcome.timed_out:
        return error_component(
            probe.kind, timed_out=probe.timeout, details=details, required=probe.required
        )
    if outcome.error is not None or outcome.sample is None:
        return error_component(
            probe.kind, error=outcome.error, details=details, required=probe.required
        )
    if isinstance(outcome.sample, PostgresSample):
        return postgres_component(
            outcome.sample,
            thresholds,
            latency_ms=outcome.latency_ms,
            pool=probe.pool,
            expected_role=probe.expected_role,
            required=probe.required,
        )
    if isinstance(outcome.sample, DatabaseSample):
        return database_component(
            outcome.sample,
            thresholds,
            latency_ms=outcome.latency_ms,
            pool=probe.pool,
            required=probe.required,
        )
    return redis_component(
        outcome.sample, thresholds, latency_ms=outcome.latency_ms, required=probe.required
    )


def _remembered(probe: Probe, outcome: Outcome, the_plan: Plan) -> Outcome:
    """``outcome`` with its sample completed by the plan's :class:`NodeMemo`."""
    sample = outcome.sample
    if not isinstance(sample, PostgresSample) or the_plan.memo is None:
        return outcome
    sample = the_plan.memo.learn(
        probe.target,
        sample,
        asked_size=probe.with_size,
        now=the_plan.now,
        latency_ms=outcome.latency_ms,
    )
    return replace(outcome, sample=sample)


def finish(the_plan: Plan, outcomes: Sequence[Outcome]) -> HealthReport:
    """The report of a plan, timed now, from the outcomes of :meth:`Plan.to_run`'s probes
    (in that order)."""
    duration_ms = (the_plan.clock.monotonic() - the_plan.started) * 1000.0
    ran = [probe.name for probe in the_plan.to_run()]
    by_name = dict(zip(ran, outcomes, strict=True))
    components: dict[str, ComponentReport] = {}
    for probe in the_plan.probes:
        outcome = _remembered(probe, by_name.get(probe.name, Outcome(timed_out=True)), the_plan)
        components[probe.name] = judge(probe, outcome, the_plan.thresholds)
    components.update(the_plan.local or {})
    if the_plan.routing is not None:
        nodes = {
            node: components[f"db:{node}"]
            for node in the_plan.routing_nodes
            if f"db:{node}" in components
        }
        components[f"routing:{the_plan.routing_name}"] = routing_component(
            the_plan.routing, nodes, fallback_to_primary=the_plan.fallback_to_primary
        )
    return HealthReport.build(components, checked_at=the_plan.now, duration_ms=duration_ms)
