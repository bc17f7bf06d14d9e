"""What a probe asks a server, and how its answer becomes a sample. No I/O here either.

The SQL and the parsing are shared by the sync and async shells, which only
send :data:`POSTGRES_SQL` (or ``PING``/``INFO``) and hand the row back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from scalekit.health._core import (
    CLUSTER_SLOTS,
    DatabaseSample,
    FallbackSample,
    PoolStats,
    PostgresSample,
    RedisSample,
)

if TYPE_CHECKING:
    from sqlalchemy import TextClause
    from sqlalchemy.pool import Pool

__all__ = [
    "POSTGRES_SQL",
    "POSTGRES_SQL_NO_SIZE",
    "breaker_sample",
    "cache_sample",
    "database_queries",
    "database_sample",
    "limiter_sample",
    "pool_stats",
    "postgres_sql",
    "postgres_sample",
    "redis_cluster_sample",
    "redis_sample",
    "statement_timeout_sql",
]

# One round trip that works on a primary and on a replica. It reads only
# statistics functions: no table, no query text. Durations count other client
# sessions only (not this probe). ``pg_is_wal_replay_paused()`` raises outside
# recovery, hence the CASE. Seen from a role without pg_read_all_stats, other
# roles' sessions have no timings: those read NULL.
#
# Kept cheap for the server (it runs on every probe of every instance): the
# backend list is read once (``pg_stat_get_activity``, with FILTERed
# aggregates, rather than four scans of the ``pg_stat_activity`` view), the
# statistics functions are called directly rather than through their views
# (less to plan: the views join catalogs the probe does not need), and the
# database size, which stats every file of the database, is asked only when
# it is due (``{size}``: see ``_plan.NodeMemo``). About 3x cheaper than the
# same numbers through the views, on the harness servers.
_POSTGRES_TEMPLATE: Final = """
SELECT
  pg_is_in_recovery() AS in_recovery,
  current_setting('server_version_num')::int AS server_version,
  current_setting('max_connections')::int AS max_connections,
  a.connections,
  d.cache_hit_ratio,
  d.cache_reads,
  a.longest_query_seconds,
  a.idle_in_transaction,
  a.longest_idle_in_transaction_seconds,
  (SELECT max(age(datfrozenxid)) FROM pg_database) AS xid_age,
  {size} AS database_size_bytes,
  r.receiver_status,
  r.lag_bytes,
  extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
    AS seconds_since_replay,
  CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused,
  CASE WHEN pg_is_in_recovery() THEN NULL
       ELSE (SELECT count(*) FROM pg_stat_get_wal_senders() WHERE state = 'streaming')
  END AS streaming_replicas
FROM
  (SELECT
     count(*) FILTER (WHERE backend_type = 'client backend') AS connections,
     extract(epoch FROM max(clock_timestamp() - query_start) FILTER (
       WHERE state = 'active' AND backend_type = 'client backend'
         AND pid <> pg_backend_pid()))::float8 AS longest_query_seconds,
     count(*) FILTER (
       WHERE state IN ('idle in transaction', 'idle in transaction (aborted)'))
       AS idle_in_transaction,
     extract(epoch FROM max(clock_timestamp() - state_change) FILTER (
       WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')))::float8
       AS longest_idle_in_transaction_seconds
   FROM pg_stat_get_activity(NULL)) AS a
  CROSS JOIN (SELECT
     pg_stat_get_db_blocks_hit(oid)::float8
       / nullif(pg_stat_get_db_blocks_fetched(oid), 0) AS cache_hit_ratio,
     pg_stat_get_db_blocks_fetched(oid) AS cache_reads
   FROM pg_database WHERE datname = current_database()) AS d
  LEFT JOIN (SELECT
     status AS receiver_status,
     pg_wal_lsn_diff(
       greatest(latest_end_lsn, flushed_lsn, pg_last_wal_receive_lsn()),
       pg_last_wal_replay_lsn())::bigint AS lag_bytes
   FROM pg_stat_get_wal_receiver() LIMIT 1) AS r ON true
"""

#: The probe's query, with the database size.
POSTGRES_SQL: Final = _POSTGRES_TEMPLATE.format(size="pg_database_size(current_database())")
#: The same without the database size (``database_size_bytes`` reads NULL).
POSTGRES_SQL_NO_SIZE: Final = _POSTGRES_TEMPLATE.format(size="NULL::bigint")


def postgres_sql(*, with_size: bool) -> str:
    """The probe's query, asking the database size only ``with_size``."""
    return POSTGRES_SQL if with_size else POSTGRES_SQL_NO_SIZE


def statement_timeout_sql(seconds: float) -> str:
    """``SET LOCAL statement_timeout`` for the probe's transaction (whole milliseconds, >= 1)."""
    return f"SET LOCAL statement_timeout = {max(int(seconds * 1000), 1)}"


def database_queries(
    dialect: str, timeout: float, *, with_size: bool
) -> tuple[str | None, TextClause]:
    """What a database probe sends: a statement to run first (or None), then its query.

    PostgreSQL gets the statement timeout (``SET LOCAL``: it ends with the
    probe's transaction, which closing the connection rolls back) and
    :data:`POSTGRES_SQL`; any other dialect ``SELECT 1``, which only shows that
    it answers.
    """
    from sqlalchemy import text

    if dialect != "postgresql":
        return None, text("SELECT 1")
    return statement_timeout_sql(timeout), text(postgres_sql(with_size=with_size))


def database_sample(dialect: str, result: Any) -> PostgresSample | DatabaseSample:
    """The sample in the ``Result`` of a database probe's query (see :func:`database_queries`).

    Only PostgreSQL's row is read; for any other dialect, that it answered is the sample.
    """
    if dialect != "postgresql":
        return DatabaseSample(dialect=dialect)
    return postgres_sample(result.mappings().one())


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def postgres_sample(row: Mapping[str, Any]) -> PostgresSample:
    """The sample in a row of :data:`POSTGRES_SQL`."""
    replay_paused = row.get("replay_paused")
    return PostgresSample(
        in_recovery=bool(row["in_recovery"]),
        server_version=_int(row.get("server_version")),
        max_connections=_int(row.get("max_connections")),
        connections=_int(row.get("connections")),
        cache_hit_ratio=_float(row.get("cache_hit_ratio")),
        cache_reads=_int(row.get("cache_reads")),
        longest_query_seconds=_float(row.get("longest_query_seconds")),
        idle_in_transaction=_int(row.get("idle_in_transaction")),
        longest_idle_in_transaction_seconds=_float(row.get("longest_idle_in_transaction_seconds")),
        xid_age=_int(row.get("xid_age")),
        database_size_bytes=_int(row.get("database_size_bytes")),
        receiver_status=None if row.get("receiver_status") is None else str(row["receiver_status"]),
        lag_bytes=_int(row.get("lag_bytes")),
        seconds_since_replay=_float(row.get("seconds_since_replay")),
        replay_paused=None if replay_paused is None else bool(replay_paused),
        streaming_replicas=_int(row.get("streaming_replicas")),
    )


def _info_int(info: Mapping[str, Any], key: str) -> int | None:
    value = info.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def redis_sample(info: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> RedisSample:
    """The sample in a Redis ``INFO`` reply (as redis-py parses it).

    ``config`` may add ``maxclients`` (from ``CONFIG GET``, when allowed); the
    ``maxmemory`` of ``INFO memory`` is used when present.
    """
    maxclients = _info_int(config or {}, "maxclients")
    if maxclients is None:
        maxclients = _info_int(info, "maxclients")
    return RedisSample(
        role=None if info.get("role") is None else str(info["role"]),
        version=None if info.get("redis_version") is None else str(info["redis_version"]),
        used_memory=_info_int(info, "used_memory"),
        maxmemory=_info_int(info, "maxmemory"),
        connected_clients=_info_int(info, "connected_clients"),
        maxclients=maxclients,
        evicted_keys=_info_int(info, "evicted_keys"),
        rejected_connections=_info_int(info, "rejected_connections"),
        master_link_status=None
        if info.get("master_link_status") is None
        else str(info["master_link_status"]),
        connected_replicas=_info_int(info, "connected_slaves"),
    )


def redis_cluster_sample(cluster_info: Mapping[str, Any], info: Mapping[str, Any]) -> RedisSample:
    """The sample of a Redis Cluster: ``CLUSTER INFO`` (state, slots served) and one node's
    ``INFO``. Slots not ``ok`` (unassigned, or whose master failed) count as uncovered."""
    base = redis_sample(info)
    slots_ok = _info_int(cluster_info, "cluster_slots_ok")
    uncovered = None if slots_ok is None else max(CLUSTER_SLOTS - slots_ok, 0)
    state = cluster_info.get("cluster_state")
    return replace(
        base,
        role="cluster",
        cluster_state=None if state is None else str(state),
        uncovered_slots=uncovered,
        masters=_info_int(cluster_info, "cluster_size"),
    )


def pool_stats(pool: Pool, monitor: Any = None) -> PoolStats:
    """The counters of a SQLAlchemy pool, read without I/O and without taking a connection.

    ``QueuePool`` (and its asyncio twin) report size, checked out and
    overflow; ``capacity`` needs the pool's ``max_overflow``, which SQLAlchemy
    keeps in ``_max_overflow`` (``-1``: unbounded). Other pools report what
    they can. ``monitor`` (a :class:`~scalekit.health.PoolMonitor`) adds
    waiters and wait times.
    """

    def call(name: str) -> Any:
        method = getattr(pool, name, None)
        if method is None:
            return None
        try:
            value = method()
        except Exception:
            return None
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    size = call("size")
    checked_out = call("checkedout")
    overflow = call("overflow")
    timeout = call("timeout")
    max_overflow = getattr(pool, "_max_overflow", None)
    capacity = None
    if isinstance(size, int) and isinstance(max_overflow, int) and max_overflow >= 0:
        capacity = size + max_overflow
    waiting = wait_last = wait_max = None
    if monitor is not None:
        waiting = monitor.waiting
        wait_last = monitor.wait_ms_last
        wait_max = monitor.wait_ms_max
    return PoolStats(
        pool_class=type(pool).__name__,
        size=size if isinstance(size, int) else None,
        checked_out=checked_out if isinstance(checked_out, int) else None,
        overflow=overflow if isinstance(overflow, int) else None,
        capacity=capacity,
        timeout=None if timeout is None else float(timeout),
        waiting=waiting,
        wait_ms_last=wait_last,
        wait_ms_max=wait_max,
    )


# -- breakers, limiters and caches: public attributes only, no I/O ------------------------------

#: Breaker states in which calls are rejected (the caller's fallback runs instead).
_REJECTING = frozenset({"open", "half_open", "forced_open"})


def breaker_sample(breaker: Any) -> FallbackSample:
    """A :class:`~scalekit.breaker.CircuitBreaker`'s state from ``metrics()`` (no I/O: a
    Redis-shared breaker's state is the one last seen)."""
    metrics = breaker.metrics()
    state = str(metrics.state)
    reasons: list[str] = []
    if state in _REJECTING:
        reasons.append(f"circuit {state}: calls are rejected")
    if metrics.degraded:
        reasons.append("shared state unreachable: the local breaker decides")
    return FallbackSample(
        kind="breaker",
        state=state,
        fallback=bool(reasons),
        reasons=tuple(reasons),
        details={
            "retry_after": None if metrics.retry_after is None else round(metrics.retry_after, 3),
            "failure_rate": metrics.failure_rate,
            "consecutive_failures": metrics.consecutive_failures,
            "rejected": metrics.rejected,
            "shared": metrics.shared,
            "shared_state_unreachable": metrics.degraded,
            "fallback_incidents": metrics.fallback_incidents,
        },
    )


def limiter_sample(limiter: Any) -> FallbackSample:
    """A :class:`~scalekit.ratelimit.RateLimiter`'s (or ``AsyncRateLimiter``'s) store state
    from its ``degraded`` flag."""
    degraded = bool(limiter.degraded)
    return FallbackSample(
        kind="limiter",
        state="degraded" if degraded else "normal",
        fallback=degraded,
        reasons=("store unreachable: checks follow the limiter's fallback",) if degraded else (),
        details={"algorithm": str(limiter.algorithm)},
    )


def cache_sample(cache: Any) -> FallbackSample:
    """A :class:`~scalekit.cache.Cache`'s (or ``AsyncCache``'s) state, from the breaker that
    guards its Redis calls: not closed means its calls take ``on_redis_down``."""
    state = str(cache.breaker.state)
    fallback = state in _REJECTING
    reason = f"Redis calls skipped (breaker {state}): on_redis_down={cache.on_redis_down!r}"
    return FallbackSample(
        kind="cache",
        state=state,
        fallback=fallback,
        reasons=(reason,) if fallback else (),
        details={
            "on_redis_down": str(cache.on_redis_down),
            "fallbacks": cache.stats().fallbacks,
            "invalidation_mode": str(cache.invalidation_mode),
        },
    )
