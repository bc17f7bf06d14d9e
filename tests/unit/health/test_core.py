"""The pure health core: statuses, thresholds, the lag rule, reports, pool sizing.

Hypothesis checks the promises of ``_core``'s docstring: the overall status
is the worst effective status, ``to_dict`` is JSON and stable, thresholds are
monotonic, and pool sizes always fit.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError
from scalekit.health import ComponentReport, HealthReport, Status, Thresholds, pool_size_for
from scalekit.health._core import (
    STATUSES,
    PoolStats,
    PostgresSample,
    RedisSample,
    describe_error,
    exit_code,
    judge_pool,
    judge_usage,
    pool_exhausted,
    postgres_component,
    pressure_band,
    pressure_level,
    redis_component,
    routing_component,
    slot_coverage,
    worst,
)

RANK = {status: rank for rank, status in enumerate(STATUSES)}
statuses = st.sampled_from(STATUSES)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
details = st.dictionaries(st.text(max_size=6), json_scalars | st.lists(json_scalars, max_size=3))
components = st.builds(
    ComponentReport,
    kind=st.sampled_from(["postgres", "redis", "database", "routing"]),
    status=statuses,
    up=st.none() | st.booleans(),
    latency_ms=st.none() | st.floats(min_value=0, max_value=1e6),
    details=details,
    reasons=st.lists(st.text(max_size=10), max_size=3).map(tuple),
    required=st.booleans(),
)
component_maps = st.dictionaries(st.text(min_size=1, max_size=8), components, max_size=6)


# -- overall status ----------------------------------------------------------------------------


@given(component_maps)
def test_status_is_the_worst_effective_status(parts: dict[str, ComponentReport]) -> None:
    report = HealthReport.build(parts, checked_at=0.0)
    effective = [
        "warn" if (not c.required and c.status == "critical") else c.status for c in parts.values()
    ]
    assert RANK[report.status] == max((RANK[s] for s in effective), default=0)
    assert report.exit_code == RANK[report.status]
    if all(c.required for c in parts.values()):
        assert report.status == worst(c.status for c in parts.values())


def test_a_critical_optional_component_makes_the_report_warn() -> None:
    replica = ComponentReport(kind="postgres", status="critical", up=False, required=False)
    primary = ComponentReport(kind="postgres", status="ok", up=True)
    report = HealthReport.build({"db:r1": replica, "db:p": primary}, checked_at=0.0)
    assert report.status == "warn"
    assert report.components["db:r1"].status == "critical"


def test_exit_codes() -> None:
    assert [exit_code(s) for s in STATUSES] == [0, 1, 2]


# -- to_dict ------------------------------------------------------------------------------------

COMPONENT_KEYS = {"kind", "status", "up", "required", "latency_ms", "reasons", "details"}


@given(component_maps, st.floats(min_value=0, max_value=4e9), st.floats(min_value=0, max_value=1e7))
def test_to_dict_is_json_and_stable(
    parts: dict[str, ComponentReport], checked_at: float, duration: float
) -> None:
    report = HealthReport.build(parts, checked_at=checked_at, duration_ms=duration)
    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)  # no NaN/inf leaks out
    assert json.loads(text) == data
    assert set(data) == {"schema", "status", "checked_at", "duration_ms", "components"}
    assert data["schema"] == 1
    assert data["checked_at"].endswith("Z")
    assert list(data["components"]) == sorted(data["components"])
    for component in data["components"].values():
        assert set(component) == COMPONENT_KEYS
    # Same report, same JSON: key order included.
    again = HealthReport.build(
        dict(reversed(list(parts.items()))), checked_at=checked_at, duration_ms=duration
    )
    assert json.dumps(again.to_dict()) == json.dumps(data)


# -- thresholds ---------------------------------------------------------------------------------

fractions = st.floats(min_value=0, max_value=1)


@given(fractions, fractions, fractions, fractions)
def test_usage_status_is_monotonic(a: float, b: float, warn: float, critical: float) -> None:
    warn, critical = sorted((warn, critical))
    thresholds = Thresholds(usage_warn=warn, usage_critical=critical)
    low, high = sorted((a, b))
    assert RANK[judge_usage(low, thresholds)] <= RANK[judge_usage(high, thresholds)]


@given(fractions, fractions, fractions)
def test_tighter_thresholds_never_give_a_better_status(usage: float, x: float, y: float) -> None:
    loose = Thresholds(usage_warn=max(x, y), usage_critical=max(x, y))
    tight = Thresholds(usage_warn=min(x, y), usage_critical=max(x, y))
    assert RANK[judge_usage(usage, tight)] >= RANK[judge_usage(usage, loose)]


@given(
    st.floats(min_value=0, max_value=1e6),
    st.floats(min_value=0, max_value=1e6),
    st.floats(min_value=0.1, max_value=1e3),
    st.floats(min_value=0.1, max_value=1e3),
)
def test_lag_status_is_monotonic(a: float, b: float, warn: float, span: float) -> None:
    thresholds = Thresholds(
        lag_seconds_warn=warn,
        lag_seconds_critical=warn + span,
        latency_ms_warn=None,
        latency_ms_critical=None,
    )

    def status(lag: float) -> int:
        sample = streaming_replica(lag_bytes=1, seconds_since_replay=lag)
        return RANK[postgres_component(sample, thresholds).status]

    low, high = sorted((a, b))
    assert status(low) <= status(high)


@pytest.mark.parametrize(
    "options",
    [
        {"usage_warn": 0.9, "usage_critical": 0.8},
        {"usage_warn": 1.5},
        {"usage_critical": -0.1},
        {"usage_warn": math.nan},
        {"lag_seconds_warn": 10.0, "lag_seconds_critical": 5.0},
        {"lag_seconds_warn": "5"},
        {"latency_ms_warn": math.inf},
        {"wraparound_warn": 0.9, "wraparound_critical": 0.5},
        {"cache_hit_min_reads": 1.5},
        {"usage_warn": True},
    ],
)
def test_bad_thresholds_fail_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Thresholds(**options)
    assert caught.value.parameter


def test_thresholds_take_a_routing_pools_lag_limits() -> None:
    thresholds = Thresholds().with_lag_limits(60.0, 1_000_000)
    assert thresholds.lag_seconds_warn == 60.0
    assert thresholds.lag_seconds_critical == 60.0  # raised to the warning level
    assert thresholds.lag_bytes_warn == 1_000_000
    assert Thresholds().with_lag_limits(None) == Thresholds()


# -- replication lag ----------------------------------------------------------------------------


def streaming_replica(**fields: Any) -> PostgresSample:
    base: dict[str, Any] = {"in_recovery": True, "receiver_status": "streaming", "lag_bytes": 0}
    base.update(fields)
    return PostgresSample(**base)


def test_a_primary_has_no_lag() -> None:
    report = postgres_component(PostgresSample(in_recovery=False), Thresholds())
    assert report.details["role"] == "primary"
    assert (report.details["lag_seconds"], report.details["lag_bytes"]) == (0.0, 0)
    assert report.status == "ok"


def test_a_caught_up_replica_of_an_idle_primary_reads_zero() -> None:
    # An hour since the last replayed transaction, but nothing left to replay.
    report = postgres_component(streaming_replica(seconds_since_replay=3600.0), Thresholds())
    assert report.details["lag_seconds"] == 0.0
    assert report.details["lag_bytes"] == 0
    assert report.details["streaming"] is True
    assert report.status == "ok"


def test_a_replica_behind_reads_the_age_of_its_last_replay() -> None:
    sample = streaming_replica(lag_bytes=8192, seconds_since_replay=12.5)
    report = postgres_component(sample, Thresholds())
    assert report.details["lag_seconds"] == 12.5
    assert report.details["lag_bytes"] == 8192
    assert report.status == "warn"


@pytest.mark.parametrize("receiver", [None, "stopping", "starting", "waiting"])
def test_a_replica_not_streaming_is_never_lag_zero(receiver: str | None) -> None:
    sample = PostgresSample(
        in_recovery=True, receiver_status=receiver, lag_bytes=0, seconds_since_replay=0.0
    )
    report = postgres_component(sample, Thresholds())
    assert report.details["streaming"] is False
    assert report.details["lag_seconds"] is None
    assert report.details["lag_bytes"] is None
    assert report.status == "critical"
    assert any("not streaming" in reason for reason in report.reasons)


def test_paused_replay_warns() -> None:
    report = postgres_component(streaming_replica(replay_paused=True), Thresholds())
    assert report.status == "warn"
    assert "WAL replay is paused" in report.reasons


def test_lag_seconds_are_bounded_by_the_time_since_caught_up() -> None:
    # The first write after an hour idle, not replayed yet: the last replayed
    # transaction is an hour old, but the replica was caught up 2 s ago.
    after_idle = PostgresSample(
        in_recovery=True,
        receiver_status="streaming",
        lag_bytes=512,
        seconds_since_replay=3600.0,
        seconds_since_caught_up=2.0,
    )
    report = postgres_component(after_idle, Thresholds())
    assert report.details["lag_seconds"] == 2.0 and report.details["lag_bytes"] == 512
    assert report.status == "ok"
    # Without an earlier sighting, the age of the last replayed transaction stands.
    unknown = postgres_component(replace(after_idle, seconds_since_caught_up=None), Thresholds())
    assert unknown.details["lag_seconds"] == 3600.0 and unknown.status == "critical"


def test_the_node_memo_remembers_sizes_and_when_a_replica_was_caught_up() -> None:
    from scalekit.health._plan import NodeMemo

    memo = NodeMemo(size_every=60.0)
    engine = object.__new__(type("FakeEngine", (), {}))
    caught_up = PostgresSample(
        in_recovery=True, receiver_status="streaming", lag_bytes=0, database_size_bytes=100
    )
    assert memo.size_due(engine, 1000.0)
    first = memo.learn(engine, caught_up, asked_size=True, now=1000.0, latency_ms=1.0)
    assert first.database_size_bytes == 100 and first.seconds_since_caught_up is None
    assert not memo.size_due(engine, 1059.0) and memo.size_due(engine, 1060.0)
    behind = replace(caught_up, lag_bytes=64, database_size_bytes=None)
    second = memo.learn(engine, behind, asked_size=False, now=1003.0, latency_ms=500.0)
    assert second.database_size_bytes == 100  # recalled, not asked
    assert second.seconds_since_caught_up == 3.5  # since 1000.0, plus the probe's latency
    stopped = replace(behind, receiver_status="stopped")
    memo.learn(engine, stopped, asked_size=False, now=1004.0, latency_ms=None)
    again = memo.learn(engine, behind, asked_size=False, now=1005.0, latency_ms=None)
    assert again.seconds_since_caught_up is None  # restarted streaming: nothing known


def test_the_role_comes_from_the_server() -> None:
    report = postgres_component(
        PostgresSample(in_recovery=True, receiver_status="streaming", lag_bytes=0),
        Thresholds(),
        expected_role="primary",
    )
    assert report.details["role"] == "replica"
    assert report.status == "critical"


def test_connections_wraparound_and_long_sessions() -> None:
    sample = PostgresSample(
        in_recovery=False,
        connections=190,
        max_connections=200,
        xid_age=int(0.8 * 2**31),
        longest_query_seconds=120.0,
        longest_idle_in_transaction_seconds=90.0,
        cache_hit_ratio=0.5,
        cache_reads=100_000,
    )
    report = postgres_component(sample, Thresholds())
    assert report.status == "critical"  # 95% connections, 80% of XIDs
    text = " ".join(report.reasons)
    for fragment in (
        "connections 190/200",
        "wraparound",
        "query",
        "idle in transaction",
        "cache hit ratio",
    ):
        assert fragment in text


def test_a_small_cache_sample_is_not_judged() -> None:
    sample = PostgresSample(in_recovery=False, cache_hit_ratio=0.1, cache_reads=10)
    assert postgres_component(sample, Thresholds()).status == "ok"


# -- pools --------------------------------------------------------------------------------------


def stats(checked_out: int, capacity: int = 10, waiting: int | None = None) -> PoolStats:
    return PoolStats(
        pool_class="QueuePool",
        size=5,
        checked_out=checked_out,
        overflow=checked_out - 5,
        capacity=capacity,
        waiting=waiting,
    )


def test_pool_usage_levels() -> None:
    assert judge_pool(stats(5), Thresholds()) == ("ok", [])
    status, reasons = judge_pool(stats(8), Thresholds())
    assert status == "warn" and "80%" in reasons[0]
    status, reasons = judge_pool(stats(10, waiting=3), Thresholds())
    assert status == "critical" and "exhausted" in reasons[0] and "3 waiting" in reasons[0]
    assert pool_exhausted(stats(10)) and not pool_exhausted(stats(9))
    unbounded = PoolStats(pool_class="NullPool")
    assert unbounded.usage is None and not pool_exhausted(unbounded)


@given(st.lists(fractions, max_size=50), fractions, fractions, st.floats(0, 0.2))
def test_pressure_level_rises_at_once_and_falls_with_hysteresis(
    usages: list[float], warn: float, critical: float, hysteresis: float
) -> None:
    warn, critical = sorted((warn, critical))
    level = "ok"
    for usage in usages:
        new = pressure_level(
            usage, level, warn_at=warn, critical_at=critical, hysteresis=hysteresis
        )
        if usage >= critical:
            assert new == "critical"
        elif usage >= warn:
            assert RANK[new] >= RANK["warn"]
        if RANK[new] < RANK[level]:  # fell: clearly below the level left
            threshold = critical if level == "critical" else warn
            assert usage < threshold - hysteresis
        level = new


@given(
    st.sampled_from(["ok", "warn", "critical"]),
    st.integers(1, 120),
    fractions,
    fractions,
    st.floats(0, 0.2),
)
def test_pressure_band_is_exactly_where_the_level_stays(
    level: Status, capacity: int, warn: float, critical: float, hysteresis: float
) -> None:
    warn, critical = sorted((warn, critical))
    low, high = pressure_band(
        level, capacity, warn_at=warn, critical_at=critical, hysteresis=hysteresis
    )
    for demand in range(capacity + 3):
        stays = (
            pressure_level(
                min(demand / capacity, 1.0),
                level,
                warn_at=warn,
                critical_at=critical,
                hysteresis=hysteresis,
                step=1.0 / capacity,
            )
            == level
        )
        assert stays == (low <= demand < high), (demand, low, high)


# -- redis and cluster --------------------------------------------------------------------------


def test_redis_memory_and_replication_link() -> None:
    sample = RedisSample(role="slave", used_memory=96, maxmemory=100, master_link_status="down")
    report = redis_component(sample, Thresholds())
    assert report.status == "critical"
    assert report.details["role"] == "replica"
    assert report.details["memory_usage"] == 0.96
    no_limit = redis_component(
        RedisSample(role="master", used_memory=10**9, maxmemory=0), Thresholds()
    )
    assert no_limit.status == "ok" and no_limit.details["memory_usage"] is None


@given(st.lists(st.tuples(st.integers(-5, 16400), st.integers(-5, 16400)), max_size=8))
def test_slot_coverage_counts_every_uncovered_slot(ranges: list[tuple[int, int]]) -> None:
    covered = {s for lo, hi in ranges for s in range(max(lo, 0), min(hi, 16383) + 1)}
    assert slot_coverage(ranges) == 16384 - len(covered)


# -- routing ------------------------------------------------------------------------------------


def node(role: str, status: str = "ok", up: bool = True) -> ComponentReport:
    return ComponentReport(
        kind="postgres",
        status=status,
        up=up,  # type: ignore[arg-type]
        details={"role": role},
        required=role == "primary",
    )


HEALTH = {
    "name": "main",
    "primary": "p",
    "nodes": {"p": {"role": "primary"}, "r1": {"role": "replica"}, "r2": {"role": "replica"}},
}


def test_routing_one_replica_down_warns_all_down_depends_on_fallback() -> None:
    nodes = {"p": node("primary"), "r1": node("replica"), "r2": node("replica", "critical", False)}
    assert routing_component(HEALTH, nodes, fallback_to_primary=True).status == "warn"
    nodes["r1"] = node("replica", "critical", False)
    assert routing_component(HEALTH, nodes, fallback_to_primary=True).status == "warn"
    assert routing_component(HEALTH, nodes, fallback_to_primary=False).status == "critical"


def test_routing_two_primaries_is_critical() -> None:
    nodes = {"p": node("primary"), "r1": node("primary"), "r2": node("replica")}
    report = routing_component(HEALTH, nodes, fallback_to_primary=True)
    assert report.status == "critical"


# -- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        'connection to "postgresql://app:hunter2@db:5432/x" failed',
        "could not connect: host=db password=hunter2 user=app",
        "AUTH failed: password: hunter2",
    ],
)
def test_errors_are_described_without_secrets(message: str) -> None:
    text = describe_error(RuntimeError(message))
    assert "hunter2" not in text
    assert text.startswith("RuntimeError: ")


# -- pool sizing --------------------------------------------------------------------------------


@given(st.integers(1, 10_000), st.integers(1, 1000), st.integers(0, 100), st.integers(0, 50))
def test_pool_sizes_always_fit(
    max_connections: int, instances: int, reserve: int, overflow: int
) -> None:
    fits = instances * (1 + overflow) + reserve <= max_connections
    arguments = {
        "max_connections": max_connections,
        "instances": instances,
        "reserve": reserve,
        "overflow": overflow,
    }
    if not fits:
        with pytest.raises(ConfigurationError) as caught:
            pool_size_for(**arguments)
        assert f"max_connections={max_connections}" in str(caught.value)
        assert f"{instances} instances" in str(caught.value)
        return
    size = pool_size_for(**arguments)
    assert size >= 1
    assert instances * (size + overflow) + reserve <= max_connections
    # and it is the largest size that fits
    assert instances * (size + 1 + overflow) + reserve > max_connections


def test_pool_size_for_100_instances() -> None:
    assert pool_size_for(max_connections=500, instances=100, reserve=0) == 5
    with pytest.raises(ConfigurationError, match="100 instances cannot fit"):
        pool_size_for(max_connections=100, instances=100)


@pytest.mark.parametrize(
    "bad", [{"instances": 0}, {"reserve": -1}, {"max_connections": 1.5}, {"overflow": True}]
)
def test_pool_size_for_rejects_bad_numbers(bad: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"max_connections": 100, "instances": 2, **bad}
    with pytest.raises(ConfigurationError):
        pool_size_for(**arguments)


def test_an_idle_small_pool_falls_back_to_ok() -> None:
    # Two connections, warn at one: a margin of one connection must not keep
    # the warning up once the pool is idle.
    from scalekit.health._core import pressure_band, pressure_level

    warned = pressure_level(0.5, "ok", warn_at=0.5, critical_at=0.95, step=0.5)
    assert warned == "warn"
    assert pressure_level(0.0, warned, warn_at=0.5, critical_at=0.95, step=0.5) == "ok"
    assert pressure_band("warn", 2, warn_at=0.5, critical_at=0.95)[0] == 1
