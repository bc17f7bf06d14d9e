"""The health rule, with no I/O: samples in, component reports and one overall status out.

Theory of operation
-------------------

A health check is three steps. The shells (``_sync.py``, ``_async.py``) read
*samples* from servers: plain values such as "in recovery", "WAL receiver
status", "connections 180 of 200" (:class:`PostgresSample`), an engine's pool
counters (:class:`PoolStats`), a Redis ``INFO`` reply (:class:`RedisSample`).
This module turns each sample into a :class:`ComponentReport` (``status``,
``up``, ``latency_ms``, ``details``, ``reasons``) by comparing it with a
:class:`Thresholds` value, and folds the components into one
:class:`HealthReport`. Everything that decides (what is a warning, what is
critical, what lag means, when a probe must not even try) lives here, so the
sync and async shells only do I/O and cannot disagree.

Statuses are ordered ``ok < warn < critical``. The overall status is the worst
*effective* status of the components: a component marked ``required=False``
(a replica of a routing pool, which reads fall back from) counts at most as
``warn``, so one stopped replica makes its own component critical and the
report ``warn``. A required component (a primary, an engine, a Redis client)
counts in full.

Replication lag
---------------

Lag is the classic place where health checks lie (postgres_exporter #907,
#977, #545): ``now() - pg_last_xact_replay_timestamp()`` grows forever on an
idle primary, and a replica whose WAL receiver died reads "0 bytes behind"
because it has replayed everything it *received*. The rule here:

* a server that is not in recovery is a primary: its lag is 0 by definition;
* a replica whose WAL receiver is not ``streaming`` (stopped, starting,
  waiting, or absent) is reported as **not streaming**, with ``lag_seconds``
  and ``lag_bytes`` unknown (``None``), never 0; it is critical;
* a streaming replica's byte lag is the primary's WAL end (as last reported to
  the receiver) minus the replayed position; when that is 0 the replica has
  applied everything the primary wrote, so its lag is 0 seconds however long
  the primary has been idle; otherwise the seconds are the age of the last
  replayed transaction, but no more than the time since an earlier check saw
  the replica caught up (``seconds_since_caught_up``): the WAL it has not
  replayed was written after that. Without this bound, the first write after
  a long idle spell would read, for the instant between its arrival and its
  replay, a lag as long as the whole spell.

Secrets
-------

Nothing here ever sees a URL or a query: the shells hand over numbers and
names. Error reasons are reduced by :func:`describe_error` to the error's
class name and a first line with anything that looks like a password or a
URL's credentials removed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Final, Literal

from scalekit.errors import ConfigurationError

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "XID_SPACE",
    "ComponentReport",
    "DatabaseSample",
    "FallbackSample",
    "HealthReport",
    "PoolStats",
    "PostgresSample",
    "RedisSample",
    "Status",
    "Thresholds",
    "database_component",
    "describe_error",
    "error_component",
    "exit_code",
    "fallback_component",
    "judge_pool",
    "judge_usage",
    "pool_exhausted",
    "pool_size_for",
    "pressure_band",
    "pressure_level",
    "postgres_component",
    "redis_component",
    "routing_component",
    "skipped_component",
    "slot_coverage",
    "worst",
]

Status = Literal["ok", "warn", "critical"]

#: The statuses, best first.
STATUSES: Final[tuple[Status, ...]] = ("ok", "warn", "critical")
_RANK: Final[dict[str, int]] = {status: rank for rank, status in enumerate(STATUSES)}

#: The version of :meth:`HealthReport.to_dict`'s layout; bumped on any change of keys.
SCHEMA_VERSION: Final = 1

#: Transaction IDs PostgreSQL can hand out before wraparound (2^31).
XID_SPACE: Final = 2**31

#: A Redis Cluster has 16384 hash slots.
CLUSTER_SLOTS: Final = 16384


def worst(statuses: Iterable[Status]) -> Status:
    """The worst of ``statuses`` (``"ok"`` for none)."""
    rank = max((_RANK[status] for status in statuses), default=0)
    return STATUSES[rank]


def exit_code(status: Status) -> int:
    """The process exit code for ``status``: 0 ok, 1 warn, 2 critical (cron, probes)."""
    return _RANK[status]


# -- thresholds ---------------------------------------------------------------------------------


def _number(name: str, value: object, *, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, got {value!r}", parameter=name)
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ConfigurationError(
            f"{name} must be between {low:g} and {high:g}, got {value!r}", parameter=name
        )
    return number


def _pair(name: str, warn: float | None, critical: float | None) -> None:
    if warn is not None and critical is not None and warn > critical:
        raise ConfigurationError(
            f"{name}: the warning level ({warn:g}) must not exceed the critical one ({critical:g})",
            parameter=name,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """When a measurement turns a component ``warn`` or ``critical``. Frozen, validated.

    Usages are fractions (``0.8`` is 80%) of a limit: a pool's size plus
    overflow, the server's ``max_connections``, Redis's ``maxmemory``. A level
    of ``None`` turns that check off (the value is still reported).

    ============================  ========  ==========  ===================================
    threshold                     warn      critical    measured as
    ============================  ========  ==========  ===================================
    ``usage_*``                   0.8       0.95        pool, connections, Redis memory
    ``lag_seconds_*``             5.0       30.0        replica replay lag, seconds
    ``lag_bytes_*``               None      None        replica replay lag, bytes of WAL
    ``latency_ms_*``              250       1000        the probe's round trip
    ``long_query_seconds_*``      60        None        the longest running query
    ``idle_in_transaction_*``     60        None        the longest idle-in-transaction
    ``wraparound_*``              0.5       0.75        share of the 2^31 XIDs consumed
    ``cache_hit_ratio_warn``      0.9       (none)      below it warns, after 10 000 reads
    ============================  ========  ==========  ===================================

    Raises:
        ConfigurationError: a level that is not a finite number in range, or a
            warning level above its critical level (``parameter`` names it).

    >>> Thresholds(usage_warn=0.7).usage_critical
    0.95
    """

    usage_warn: float = 0.8
    usage_critical: float = 0.95
    lag_seconds_warn: float | None = 5.0
    lag_seconds_critical: float | None = 30.0
    lag_bytes_warn: int | None = None
    lag_bytes_critical: int | None = None
    latency_ms_warn: float | None = 250.0
    latency_ms_critical: float | None = 1000.0
    long_query_seconds_warn: float | None = 60.0
    long_query_seconds_critical: float | None = None
    idle_in_transaction_seconds_warn: float | None = 60.0
    idle_in_transaction_seconds_critical: float | None = None
    wraparound_warn: float = 0.5
    wraparound_critical: float = 0.75
    cache_hit_ratio_warn: float | None = 0.9
    #: Reads (``blks_hit + blks_read``) below which the cache hit ratio is not judged.
    cache_hit_min_reads: int = 10_000

    def __post_init__(self) -> None:
        _number("usage_warn", self.usage_warn, low=0.0, high=1.0)
        _number("usage_critical", self.usage_critical, low=0.0, high=1.0)
        _pair("usage", self.usage_warn, self.usage_critical)
        _number("wraparound_warn", self.wraparound_warn, low=0.0, high=1.0)
        _number("wraparound_critical", self.wraparound_critical, low=0.0, high=1.0)
        _pair("wraparound", self.wraparound_warn, self.wraparound_critical)
        for stem in (
            "lag_seconds",
            "lag_bytes",
            "latency_ms",
            "long_query_seconds",
            "idle_in_transaction_seconds",
        ):
            warn = getattr(self, f"{stem}_warn")
            critical = getattr(self, f"{stem}_critical")
            if warn is not None:
                _number(f"{stem}_warn", warn)
            if critical is not None:
                _number(f"{stem}_critical", critical)
            _pair(stem, warn, critical)
        if self.cache_hit_ratio_warn is not None:
            _number("cache_hit_ratio_warn", self.cache_hit_ratio_warn, low=0.0, high=1.0)
        if isinstance(self.cache_hit_min_reads, bool) or not isinstance(
            self.cache_hit_min_reads, int
        ):
            raise ConfigurationError(
                "cache_hit_min_reads must be an int", parameter="cache_hit_min_reads"
            )
        _number("cache_hit_min_reads", self.cache_hit_min_reads)

    def with_lag_limits(
        self, max_lag_seconds: float | None, max_lag_bytes: int | None = None
    ) -> Thresholds:
        """These thresholds with a routing pool's lag limits as the warning levels.

        A replica beyond the pool's ``max_lag_seconds`` is out of the read
        rotation: that is a warning. The critical level stays, raised to the
        warning level if it was below it.
        """
        seconds_critical = self.lag_seconds_critical
        if max_lag_seconds is not None and seconds_critical is not None:
            seconds_critical = max(seconds_critical, max_lag_seconds)
        bytes_critical = self.lag_bytes_critical
        if max_lag_bytes is not None and bytes_critical is not None:
            bytes_critical = max(bytes_critical, max_lag_bytes)
        return replace(
            self,
            lag_seconds_warn=self.lag_seconds_warn if max_lag_seconds is None else max_lag_seconds,
            lag_seconds_critical=seconds_critical,
            lag_bytes_warn=self.lag_bytes_warn if max_lag_bytes is None else max_lag_bytes,
            lag_bytes_critical=bytes_critical,
        )


def _level(value: float | None, warn: float | None, critical: float | None) -> Status:
    """``value`` against a warn/critical pair (higher is worse); unknown is ok."""
    if value is None:
        return "ok"
    if critical is not None and value >= critical:
        return "critical"
    if warn is not None and value >= warn:
        return "warn"
    return "ok"


def judge_usage(usage: float | None, thresholds: Thresholds) -> Status:
    """The status of a usage fraction (pool, connections, memory): monotonic in ``usage``."""
    return _level(usage, thresholds.usage_warn, thresholds.usage_critical)


# -- reports ------------------------------------------------------------------------------------


def _jsonable(value: object) -> Any:
    """``value`` as JSON-ready data: dicts with str keys, lists, str, int, finite float, None."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in sorted(value.items(), key=_key)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return str(value)


def _key(item: tuple[object, object]) -> str:
    return str(item[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentReport:
    """The health of one component: a database node, an engine's pool, a Redis server.

    ``up`` is whether the component answered (``None`` when it was not asked,
    such as a node behind an exhausted pool); ``latency_ms`` the probe's round
    trip; ``details`` the measurements (each kind has a fixed set of keys,
    ``None`` when unknown); ``reasons`` one short sentence per finding that
    made the status worse than ``ok``. ``required=False`` marks a component the
    application can do without for a while (a replica): its status counts at
    most as ``warn`` in the overall status.
    """

    kind: str
    status: Status
    up: bool | None
    latency_ms: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    required: bool = True

    @property
    def effective_status(self) -> Status:
        """The status this component contributes to the overall one."""
        if not self.required and self.status == "critical":
            return "warn"
        return self.status

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``kind``, ``status``, ``up``, ``required``, ``latency_ms``, ``reasons``,
        ``details``, always all present."""
        latency = None if self.latency_ms is None else round(self.latency_ms, 3)
        return {
            "kind": self.kind,
            "status": self.status,
            "up": self.up,
            "required": self.required,
            "latency_ms": _jsonable(latency),
            "reasons": list(self.reasons),
            "details": _jsonable(self.details),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    """The result of a health check: one overall ``status`` and a report per component.

    ``status`` is the worst effective status of the components (see
    :class:`ComponentReport`), ``"ok"`` when there are none. ``checked_at`` is
    wall-clock seconds since the epoch when the check started; ``duration_ms``
    how long it took.

    :meth:`to_dict` is the stable, documented JSON schema (``docs/health.md``)::

        {"schema": 1, "status": "warn", "checked_at": "2025-01-01T00:00:00.000Z",
         "duration_ms": 12.5,
         "components": {"db:replica1": {"kind": "postgres", "status": "critical",
                                        "up": false, "required": false, ...}}}
    """

    status: Status
    components: Mapping[str, ComponentReport]
    checked_at: float
    duration_ms: float = 0.0

    @classmethod
    def build(
        cls,
        components: Mapping[str, ComponentReport],
        *,
        checked_at: float,
        duration_ms: float = 0.0,
    ) -> HealthReport:
        """A report over ``components`` with its overall status computed."""
        ordered = dict(sorted(components.items()))
        status = worst(component.effective_status for component in ordered.values())
        return cls(
            status=status, components=ordered, checked_at=checked_at, duration_ms=duration_ms
        )

    @property
    def ok(self) -> bool:
        """Whether the overall status is ``"ok"``."""
        return self.status == "ok"

    @property
    def exit_code(self) -> int:
        """0, 1 or 2 for ok, warn, critical: for cron jobs and container probes."""
        return exit_code(self.status)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data with stable keys (see :data:`SCHEMA_VERSION`)."""
        return {
            "schema": SCHEMA_VERSION,
            "status": self.status,
            "checked_at": _iso(self.checked_at),
            "duration_ms": round(self.duration_ms, 3),
            "components": {name: report.to_dict() for name, report in self.components.items()},
        }


# -- errors, timeouts and skipped probes ---------------------------------------------------------

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^@/\s]*@")
_PASSWORD_PAIR = re.compile(r"(?i)(password|passwd|pwd|secret|token)(\s*[=:]\s*)('[^']*'|\S+)")


def describe_error(error: BaseException) -> str:
    """A short, secret-free description: the error's class and first line, credentials removed.

    ``user:password@`` in URLs and ``password=...`` pairs are replaced by
    ``***``; the text is cut at 200 characters.
    """
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    text = _PASSWORD_PAIR.sub(r"\1\2***", text)
    if len(text) > 200:
        text = text[:197] + "..."
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def error_component(
    kind: str,
    *,
    error: BaseException | None = None,
    timed_out: float | None = None,
    details: Mapping[str, Any] | None = None,
    required: bool = True,
) -> ComponentReport:
    """A component whose probe failed (``error``) or did not answer within ``timed_out`` seconds.

    It is down and critical.
    """
    if timed_out is not None:
        reason = f"no answer within {timed_out:g}s"
    elif error is not None:
        reason = f"unreachable: {describe_error(error)}"
    else:
        reason = "unreachable"
    return ComponentReport(
        kind=kind,
        status="critical",
        up=False,
        details=dict(details or {}),
        reasons=(reason,),
        required=required,
    )


def skipped_component(
    kind: str,
    reason: str,
    *,
    status: Status = "critical",
    details: Mapping[str, Any] | None = None,
    required: bool = True,
) -> ComponentReport:
    """A component that was not probed, for ``reason`` (``up`` is unknown: ``None``)."""
    return ComponentReport(
        kind=kind,
        status=status,
        up=None,
        details=dict(details or {}),
        reasons=(reason,),
        required=required,
    )


# -- SQLAlchemy pools ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStats:
    """An engine's pool counters, read without I/O.

    ``capacity`` is ``size + max_overflow`` (``None`` for a pool without a
    bound, such as ``NullPool`` or ``max_overflow=-1``). ``waiting`` and the
    wait times are known only when a :class:`~scalekit.health.PoolMonitor`
    watches the engine.
    """

    pool_class: str
    size: int | None = None
    checked_out: int | None = None
    overflow: int | None = None
    capacity: int | None = None
    timeout: float | None = None
    waiting: int | None = None
    wait_ms_last: float | None = None
    wait_ms_max: float | None = None

    @property
    def usage(self) -> float | None:
        """Checked-out connections as a fraction of capacity (``None`` when unbounded)."""
        if self.capacity is None or self.checked_out is None or self.capacity <= 0:
            return None
        return self.checked_out / self.capacity

    def details(self) -> dict[str, Any]:
        usage = self.usage
        return {
            "pool_class": self.pool_class,
            "size": self.size,
            "checked_out": self.checked_out,
            "overflow": self.overflow,
            "capacity": self.capacity,
            "usage": None if usage is None else round(usage, 4),
            "timeout_seconds": self.timeout,
            "waiting": self.waiting,
            "wait_ms_last": self.wait_ms_last,
            "wait_ms_max": self.wait_ms_max,
        }


def pool_exhausted(stats: PoolStats) -> bool:
    """Whether every connection of the pool is checked out, so a probe would have to wait."""
    return (
        stats.capacity is not None
        and stats.checked_out is not None
        and stats.checked_out >= stats.capacity
    )


def judge_pool(stats: PoolStats, thresholds: Thresholds) -> tuple[Status, list[str]]:
    """The pool's status and reasons: usage against the thresholds, waiters, exhaustion."""
    reasons: list[str] = []
    usage = stats.usage
    status = judge_usage(usage, thresholds)
    if pool_exhausted(stats):
        status = "critical"
        waiting = "" if stats.waiting is None else f", {stats.waiting} waiting"
        reasons.append(f"pool exhausted: {stats.checked_out}/{stats.capacity} checked out{waiting}")
    elif status != "ok" and usage is not None:
        reasons.append(
            f"pool usage {usage:.0%} ({stats.checked_out}/{stats.capacity}) "
            f"at or above {_usage_level(status, thresholds):.0%}"
        )
    if stats.waiting and not pool_exhausted(stats):
        status = worst((status, "warn"))
        reasons.append(f"{stats.waiting} checkout(s) waiting for a connection")
    return status, reasons


def pressure_level(
    usage: float,
    current: Status,
    *,
    warn_at: float,
    critical_at: float,
    hysteresis: float = 0.05,
    step: float = 0.0,
) -> Status:
    """The pool-pressure level after a change of ``usage``, with hysteresis on the way down.

    Going up is immediate: ``usage >= critical_at`` is critical, ``>= warn_at``
    warn. Going down, a level is kept until usage falls below its threshold
    by more than ``max(hysteresis, step)``, where ``step`` is what one
    connection adds (``1 / capacity``): a pool that hovers at a threshold, or
    hands each returned connection straight to a waiter, does not flap (one
    event per crossing, not one per checkout).
    """
    # An idle pool is judged with the plain hysteresis: a one-connection margin on a
    # small pool would otherwise keep a level that no demand can leave.
    margin = max(hysteresis, step) if usage > 0.0 else hysteresis
    rising: Status = "critical" if usage >= critical_at else "warn" if usage >= warn_at else "ok"
    if _RANK[rising] >= _RANK[current]:
        return rising
    # Falling: keep each level until usage is clearly below its threshold.
    if current == "critical" and usage >= critical_at - margin:
        return "critical"
    if current in ("critical", "warn") and usage >= warn_at - margin:
        return "warn"
    return "ok"


def pressure_band(
    level: Status,
    capacity: int,
    *,
    warn_at: float,
    critical_at: float,
    hysteresis: float = 0.05,
) -> tuple[int, float]:
    """The demands (connections out plus waiting) at which ``level`` stays: ``low <= d < high``.

    :func:`pressure_level` on ``min(d / capacity, 1.0)`` with ``step =
    1 / capacity`` is ``level`` exactly for the integers of that range (it is
    monotonic in usage), so a monitor compares one integer per checkout and
    calls :func:`pressure_level` only when a demand falls outside. ``high``
    is ``math.inf`` when no demand raises the level.
    """
    step = 1.0 / capacity

    def stays(demand: int) -> bool:
        usage = min(demand / capacity, 1.0)
        return (
            pressure_level(
                usage,
                level,
                warn_at=warn_at,
                critical_at=critical_at,
                hysteresis=hysteresis,
                step=step,
            )
            == level
        )

    kept = [demand for demand in range(capacity + 1) if stays(demand)]
    if not kept:  # the level cannot hold at any demand: every change re-judges
        return 0, 0
    high = math.inf if kept[-1] == capacity else kept[-1] + 1
    return kept[0], high


def check_monitor_levels(warn_at: object, critical_at: object, hysteresis: object) -> None:
    """Validate :class:`~scalekit.health.PoolMonitor`'s levels, or raise ConfigurationError."""
    warn = _number("warn_at", warn_at, low=0.0, high=1.0)
    critical = _number("critical_at", critical_at, low=0.0, high=1.0)
    _pair("warn_at", warn, critical)
    _number("hysteresis", hysteresis, low=0.0, high=1.0)


def _usage_level(status: Status, thresholds: Thresholds) -> float:
    return thresholds.usage_critical if status == "critical" else thresholds.usage_warn


# -- PostgreSQL ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresSample:
    """What one round trip to a PostgreSQL server says about it (see ``_probes.POSTGRES_SQL``).

    Every field but ``in_recovery`` may be ``None`` when the server or the
    role's privileges do not tell.
    """

    in_recovery: bool
    server_version: int | None = None
    max_connections: int | None = None
    connections: int | None = None
    cache_hit_ratio: float | None = None
    cache_reads: int | None = None
    longest_query_seconds: float | None = None
    idle_in_transaction: int | None = None
    longest_idle_in_transaction_seconds: float | None = None
    xid_age: int | None = None
    database_size_bytes: int | None = None
    # replica side
    receiver_status: str | None = None
    lag_bytes: int | None = None
    seconds_since_replay: float | None = None
    replay_paused: bool | None = None
    # primary side
    streaming_replicas: int | None = None
    #: Not from the server: seconds since an earlier check saw this replica caught
    #: up (streaming, 0 bytes behind); bounds its lag in seconds.
    seconds_since_caught_up: float | None = None


def _lag(sample: PostgresSample) -> tuple[bool | None, float | None, int | None, list[str]]:
    """(streaming, lag seconds, lag bytes, reasons) by the rule of the module docstring."""
    if not sample.in_recovery:
        return None, 0.0, 0, []
    if sample.receiver_status != "streaming":
        state = sample.receiver_status or "no WAL receiver"
        return False, None, None, [f"replica not streaming ({state}): lag unknown"]
    if sample.lag_bytes is None:
        return True, None, None, ["replica lag unknown"]
    lag_bytes = max(sample.lag_bytes, 0)
    if lag_bytes == 0:
        return True, 0.0, 0, []
    seconds = sample.seconds_since_replay
    if seconds is not None and sample.seconds_since_caught_up is not None:
        # WAL not replayed yet was written after the replica was last seen caught
        # up: after a long idle spell, the last replayed transaction is far older.
        seconds = min(seconds, sample.seconds_since_caught_up)
    return True, None if seconds is None else max(seconds, 0.0), lag_bytes, []


def postgres_component(
    sample: PostgresSample,
    thresholds: Thresholds,
    *,
    latency_ms: float | None = None,
    pool: PoolStats | None = None,
    expected_role: str | None = None,
    required: bool = True,
) -> ComponentReport:
    """The report of a PostgreSQL node from its sample (and its engine's pool counters).

    ``expected_role`` (``"primary"``/``"replica"``, from a routing pool) adds a
    critical reason when the server says otherwise; the reported role always
    comes from the server (``pg_is_in_recovery()``).
    """
    role = "replica" if sample.in_recovery else "primary"
    statuses: list[Status] = ["ok"]
    reasons: list[str] = []

    def flag(status: Status, reason: str) -> None:
        if status != "ok":
            statuses.append(status)
            reasons.append(reason)

    if expected_role is not None and expected_role != role:
        flag("critical", f"expected a {expected_role}, the server is a {role}")

    streaming, lag_seconds, lag_bytes, lag_reasons = _lag(sample)
    for reason in lag_reasons:
        flag("critical" if streaming is False else "warn", reason)
    if sample.replay_paused:
        flag("warn", "WAL replay is paused")
    seconds_status = _level(
        lag_seconds, thresholds.lag_seconds_warn, thresholds.lag_seconds_critical
    )
    flag(seconds_status, f"replication lag {lag_seconds}s")
    bytes_status = _level(lag_bytes, thresholds.lag_bytes_warn, thresholds.lag_bytes_critical)
    flag(bytes_status, f"replication lag {lag_bytes} bytes")

    connection_usage = None
    if sample.connections is not None and sample.max_connections:
        connection_usage = sample.connections / sample.max_connections
        flag(
            judge_usage(connection_usage, thresholds),
            f"connections {sample.connections}/{sample.max_connections} ({connection_usage:.0%})",
        )
    if (
        thresholds.cache_hit_ratio_warn is not None
        and sample.cache_hit_ratio is not None
        and (sample.cache_reads or 0) >= thresholds.cache_hit_min_reads
        and sample.cache_hit_ratio < thresholds.cache_hit_ratio_warn
    ):
        flag("warn", f"cache hit ratio {sample.cache_hit_ratio:.1%}")
    flag(
        _level(
            sample.longest_query_seconds,
            thresholds.long_query_seconds_warn,
            thresholds.long_query_seconds_critical,
        ),
        f"a query has run for {sample.longest_query_seconds}s",
    )
    flag(
        _level(
            sample.longest_idle_in_transaction_seconds,
            thresholds.idle_in_transaction_seconds_warn,
            thresholds.idle_in_transaction_seconds_critical,
        ),
        f"a session has been idle in transaction for {sample.longest_idle_in_transaction_seconds}s",
    )
    wraparound = None if sample.xid_age is None else sample.xid_age / XID_SPACE
    flag(
        _level(wraparound, thresholds.wraparound_warn, thresholds.wraparound_critical),
        f"transaction ID wraparound: {wraparound if wraparound is None else f'{wraparound:.0%}'}"
        " of XIDs consumed",
    )
    flag(
        _level(latency_ms, thresholds.latency_ms_warn, thresholds.latency_ms_critical),
        f"slow answer: {latency_ms if latency_ms is None else round(latency_ms, 1)} ms",
    )
    pool_details = None
    if pool is not None:
        pool_status, pool_reasons = judge_pool(pool, thresholds)
        for reason in pool_reasons:
            flag(pool_status, reason)
        pool_details = pool.details()

    details = {
        "role": role,
        "server_version": sample.server_version,
        "streaming": streaming,
        "replay_paused": sample.replay_paused,
        "lag_seconds": None if lag_seconds is None else round(lag_seconds, 3),
        "lag_bytes": lag_bytes,
        "streaming_replicas": sample.streaming_replicas,
        "connections": sample.connections,
        "max_connections": sample.max_connections,
        "connection_usage": None if connection_usage is None else round(connection_usage, 4),
        "cache_hit_ratio": None
        if sample.cache_hit_ratio is None
        else round(sample.cache_hit_ratio, 4),
        "longest_query_seconds": _round(sample.longest_query_seconds),
        "idle_in_transaction": sample.idle_in_transaction,
        "longest_idle_in_transaction_seconds": _round(sample.longest_idle_in_transaction_seconds),
        "xid_age": sample.xid_age,
        "wraparound_used": None if wraparound is None else round(wraparound, 6),
        "database_size_bytes": sample.database_size_bytes,
        "pool": pool_details,
    }
    return ComponentReport(
        kind="postgres",
        status=worst(statuses),
        up=True,
        latency_ms=latency_ms,
        details=details,
        reasons=tuple(reasons),
        required=required,
    )


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseSample:
    """A database other than PostgreSQL (SQLite, MySQL...): it answered ``SELECT 1``."""

    dialect: str


def database_component(
    sample: DatabaseSample,
    thresholds: Thresholds,
    *,
    latency_ms: float | None = None,
    pool: PoolStats | None = None,
    required: bool = True,
) -> ComponentReport:
    """The report of a non-PostgreSQL database: up, latency and its engine's pool."""
    statuses: list[Status] = ["ok"]
    reasons: list[str] = []
    latency_status = _level(latency_ms, thresholds.latency_ms_warn, thresholds.latency_ms_critical)
    if latency_status != "ok":
        statuses.append(latency_status)
        reasons.append(f"slow answer: {_round(latency_ms, 1)} ms")
    if pool is not None:
        pool_status, pool_reasons = judge_pool(pool, thresholds)
        statuses.extend([pool_status] * bool(pool_reasons))
        reasons.extend(pool_reasons)
    return ComponentReport(
        kind="database",
        status=worst(statuses),
        up=True,
        latency_ms=latency_ms,
        details={"dialect": sample.dialect, "pool": None if pool is None else pool.details()},
        reasons=tuple(reasons),
        required=required,
    )


# -- Redis --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisSample:
    """What ``PING`` and ``INFO`` say about a Redis server (see ``_probes.redis_sample``)."""

    role: str | None = None
    version: str | None = None
    used_memory: int | None = None
    maxmemory: int | None = None
    connected_clients: int | None = None
    maxclients: int | None = None
    evicted_keys: int | None = None
    rejected_connections: int | None = None
    master_link_status: str | None = None
    connected_replicas: int | None = None
    # cluster mode: slots no master serves (None when not a cluster)
    uncovered_slots: int | None = None
    cluster_state: str | None = None
    masters: int | None = None


def redis_component(
    sample: RedisSample,
    thresholds: Thresholds,
    *,
    latency_ms: float | None = None,
    required: bool = True,
) -> ComponentReport:
    """The report of a Redis server (or cluster) from its sample."""
    statuses: list[Status] = ["ok"]
    reasons: list[str] = []

    def flag(status: Status, reason: str) -> None:
        if status != "ok":
            statuses.append(status)
            reasons.append(reason)

    memory_usage = None
    if sample.used_memory is not None and sample.maxmemory:
        memory_usage = sample.used_memory / sample.maxmemory
        flag(
            judge_usage(memory_usage, thresholds),
            f"memory {sample.used_memory}/{sample.maxmemory} bytes ({memory_usage:.0%})",
        )
    client_usage = None
    if sample.connected_clients is not None and sample.maxclients:
        client_usage = sample.connected_clients / sample.maxclients
        flag(
            judge_usage(client_usage, thresholds),
            f"clients {sample.connected_clients}/{sample.maxclients} ({client_usage:.0%})",
        )
    if sample.role == "slave" and sample.master_link_status not in (None, "up"):
        flag("critical", f"replica's link to its master is {sample.master_link_status}")
    if sample.uncovered_slots:
        flag("critical", f"{sample.uncovered_slots} of {CLUSTER_SLOTS} hash slots not served")
    if sample.cluster_state not in (None, "ok"):
        flag("critical", f"cluster state is {sample.cluster_state}")
    flag(
        _level(latency_ms, thresholds.latency_ms_warn, thresholds.latency_ms_critical),
        f"slow answer: {latency_ms if latency_ms is None else round(latency_ms, 1)} ms",
    )
    details = {
        "role": "replica" if sample.role == "slave" else sample.role,
        "version": sample.version,
        "used_memory": sample.used_memory,
        "maxmemory": sample.maxmemory or None,
        "memory_usage": None if memory_usage is None else round(memory_usage, 4),
        "connected_clients": sample.connected_clients,
        "maxclients": sample.maxclients,
        "evicted_keys": sample.evicted_keys,
        "rejected_connections": sample.rejected_connections,
        "master_link_status": sample.master_link_status,
        "connected_replicas": sample.connected_replicas,
        "cluster_state": sample.cluster_state,
        "masters": sample.masters,
        "uncovered_slots": sample.uncovered_slots,
    }
    return ComponentReport(
        kind="redis",
        status=worst(statuses),
        up=True,
        latency_ms=latency_ms,
        details=details,
        reasons=tuple(reasons),
        required=required,
    )


def slot_coverage(ranges: Iterable[tuple[int, int]]) -> int:
    """How many of the 16384 hash slots no range covers (ranges inclusive, as CLUSTER SLOTS)."""
    covered = bytearray(CLUSTER_SLOTS)
    for start, end in ranges:
        low, high = max(int(start), 0), min(int(end), CLUSTER_SLOTS - 1)
        if low <= high:
            covered[low : high + 1] = b"\x01" * (high - low + 1)
    return CLUSTER_SLOTS - sum(covered)


# -- breakers, limiters and caches ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackSample:
    """The state of a breaker, limiter or cache, read from its public attributes (no I/O).

    ``state`` is the breaker's state (``"closed"``, ``"open"``, ``"half_open"``,
    ``"forced_open"``, ``"disabled"``; for a cache, its breaker's), or a
    limiter's ``"normal"``/``"degraded"``. ``fallback`` is whether calls take
    the documented fallback now instead of reaching the dependency.
    ``details`` are the kind's own numbers (JSON-ready).
    """

    kind: Literal["breaker", "limiter", "cache"]
    state: str
    fallback: bool
    details: Mapping[str, Any] = field(default_factory=dict)
    #: Short findings that make the component a warning (empty when none).
    reasons: tuple[str, ...] = ()


def _iso(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fallback_component(sample: FallbackSample, *, since: float | None) -> ComponentReport:
    """The report of a breaker, limiter or cache: ``warn`` while a fallback is in force.

    These components exist to degrade gracefully, so they are never critical
    and never required: an open breaker or a limiter on its local fallback is
    worth a look, not a restart. ``up`` is ``not fallback``; ``since`` (wall
    seconds) is when the current state was first seen, shown as an ISO time
    in ``details.since``.
    """
    reasons = sample.reasons
    if sample.fallback and not reasons:
        reasons = (f"fallback in force ({sample.kind} {sample.state})",)
    details = {
        **sample.details,
        "state": sample.state,
        "fallback": sample.fallback,
        "since": None if since is None else _iso(since),
    }
    return ComponentReport(
        kind=sample.kind,
        status="warn" if sample.fallback else "ok",
        up=not sample.fallback,
        details=details,
        reasons=reasons,
        required=False,
    )


# -- routing pools -------------------------------------------------------------------------------


def routing_component(
    health: Mapping[str, Any],
    nodes: Mapping[str, ComponentReport],
    *,
    fallback_to_primary: bool,
) -> ComponentReport:
    """The routing pool as a whole, from ``pool.health()`` and its nodes' fresh reports.

    Critical when no node serves as primary, when the pool sees two primaries
    (split brain), or when no replica is up and reads may not fall back to the
    primary; a warning when some replica is down or out of rotation.
    """
    statuses: list[Status] = ["ok"]
    reasons: list[str] = []
    primaries = [name for name, node in nodes.items() if node.details.get("role") == "primary"]
    replicas = [name for name in nodes if name not in primaries]
    known = health.get("nodes", {})
    configured_replicas = [name for name, node in known.items() if node.get("role") != "primary"]
    replicas_up = [
        name
        for name in configured_replicas
        if nodes.get(name) is not None and nodes[name].up and nodes[name].status != "critical"
    ]
    if not primaries and not any(node.get("role") == "primary" for node in known.values()):
        statuses.append("critical")
        reasons.append("no primary")
    if len(primaries) > 1 or health.get("split_brain"):
        statuses.append("critical")
        reasons.append(f"more than one primary: {', '.join(sorted(primaries)) or 'split brain'}")
    if configured_replicas and not replicas_up:
        statuses.append("warn" if fallback_to_primary else "critical")
        suffix = "; reads fall back to the primary" if fallback_to_primary else ""
        reasons.append(f"no replica can serve reads{suffix}")
    elif len(replicas_up) < len(configured_replicas):
        statuses.append("warn")
        down = sorted(set(configured_replicas) - set(replicas_up))
        reasons.append(f"replica(s) unavailable: {', '.join(down)}")
    details = {
        "name": health.get("name"),
        "primary": health.get("primary"),
        "split_brain": bool(health.get("split_brain")),
        "consistency": health.get("consistency"),
        "replicas": len(configured_replicas),
        "replicas_up": len(replicas_up),
        "nodes_seen_as_primary": sorted(primaries),
        "nodes_seen_as_replica": sorted(replicas),
    }
    return ComponentReport(
        kind="routing",
        status=worst(statuses),
        up=bool(primaries) or None,
        details=details,
        reasons=tuple(reasons),
    )


# -- pool sizing --------------------------------------------------------------------------------


def pool_size_for(
    *,
    max_connections: int,
    instances: int,
    reserve: int = 3,
    overflow: int = 0,
) -> int:
    """The pool size per instance so that ``instances`` pools fit the server's connection limit.

    Each instance may open ``pool_size + overflow`` connections; the server
    keeps ``reserve`` for administrators, replication and maintenance
    (``superuser_reserved_connections`` is 3 by default)::

        pool_size = (max_connections - reserve) // instances - overflow

    >>> pool_size_for(max_connections=200, instances=10, reserve=10)
    19
    >>> pool_size_for(max_connections=500, instances=100, reserve=0, overflow=2)
    3

    Raises:
        ConfigurationError: an argument is not a non-negative int (``instances``
            at least 1), or the instances cannot get at least one connection
            each; the message carries the numbers.
    """
    checks: tuple[tuple[str, object, int], ...] = (
        ("max_connections", max_connections, 1),
        ("instances", instances, 1),
        ("reserve", reserve, 0),
        ("overflow", overflow, 0),
    )
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigurationError(
                f"{name} must be an int of at least {low}, got {value!r}", parameter=name
            )
    available = max_connections - reserve
    size = available // instances - overflow if available > 0 else 0
    if size < 1:
        raise ConfigurationError(
            f"{instances} instances cannot fit in max_connections={max_connections} "
            f"with reserve={reserve} and overflow={overflow}: each would get "
            f"{max(available, 0)} // {instances} - {overflow} = {size} connections; "
            f"they need at least {instances * (1 + overflow) + reserve} connections",
            parameter="instances",
        )
    return size


def merge_reasons(*groups: Sequence[str]) -> tuple[str, ...]:
    """Reasons from several sources, in order, without repeats."""
    seen: dict[str, None] = {}
    for group in groups:
        for reason in group:
            seen.setdefault(reason, None)
    return tuple(seen)
