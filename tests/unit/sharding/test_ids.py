"""Shard-aware IDs: the layout (hypothesis), issuing under a stepped clock, leases on SQLite."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.errors import ClockMovedBackwards, ConfigurationError, WorkerLeaseError
from scalekit.sharding import (
    DEFAULT_EPOCH_MS,
    DEFAULT_ID_LAYOUT,
    GENERATOR_ID_LAYOUT,
    AsyncIdGenerator,
    AsyncWorkerLease,
    IdGenerator,
    IdIssuer,
    IdLayout,
    IdRenew,
    IdWait,
    LeaseGrant,
    RedisWorkerLease,
    WorkerLease,
    id_function_sql,
    install_id_function,
    shard_of_id,
)
from scalekit.testing import FakeClock


@st.composite
def layouts(draw: st.DrawFn) -> IdLayout:
    time_bits = draw(st.integers(20, 45))
    shard_bits = draw(st.integers(1, 16))
    worker_bits = draw(st.integers(0, min(8, 64 - time_bits - shard_bits)))
    sequence_bits = draw(st.integers(0, min(14, 64 - time_bits - shard_bits - worker_bits)))
    return IdLayout(
        epoch_ms=draw(st.integers(0, 2_000_000_000_000)),
        time_bits=time_bits,
        shard_bits=shard_bits,
        worker_bits=worker_bits,
        sequence_bits=sequence_bits,
    )


@st.composite
def layout_and_parts(draw: st.DrawFn) -> tuple[IdLayout, int, int, int, int]:
    layout = draw(layouts())
    ms = draw(st.integers(layout.epoch_ms, layout.max_timestamp_ms))
    shard = draw(st.integers(0, layout.shard_count - 1))
    worker = draw(st.integers(0, layout.worker_count - 1))
    sequence = draw(st.integers(0, layout.sequence_count - 1))
    return layout, ms, shard, worker, sequence


@given(layout_and_parts())
def test_compose_and_decompose_round_trip(case: tuple[IdLayout, int, int, int, int]) -> None:
    layout, ms, shard, worker, sequence = case
    id_ = layout.compose(ms, shard, sequence, worker)
    assert 0 <= id_ < 2**63  # always a positive bigint
    parts = layout.decompose(id_)
    assert (parts.timestamp_ms, parts.shard, parts.worker, parts.sequence) == (
        ms,
        shard,
        worker,
        sequence,
    )
    assert layout.shard_of(id_) == shard == shard_of_id(id_, layout)


@given(layout_and_parts(), layout_and_parts())
def test_ids_order_by_time_first(
    a: tuple[IdLayout, int, int, int, int], b: tuple[IdLayout, int, int, int, int]
) -> None:
    layout = a[0]
    _, ms_b, shard_b, worker_b, seq_b = b
    ms_b = min(max(ms_b, layout.epoch_ms), layout.max_timestamp_ms)
    shard_b %= layout.shard_count
    worker_b %= layout.worker_count
    seq_b %= layout.sequence_count
    id_a = layout.compose(a[1], a[2], a[4], a[3])
    id_b = layout.compose(ms_b, shard_b, seq_b, worker_b)
    if a[1] < ms_b:
        assert id_a < id_b
        assert layout.min_id_at(ms_b) > id_a
    assert id_b >= layout.min_id_at(ms_b)


def test_the_default_layout_is_instagrams_and_the_generator_layout_shares_the_shard_field() -> None:
    layout = DEFAULT_ID_LAYOUT
    assert (layout.time_bits, layout.shard_bits, layout.sequence_bits) == (41, 13, 10)
    assert layout.epoch_ms == DEFAULT_EPOCH_MS
    # 2**40 ms after the epoch: 34.8 years of positive bigints.
    assert (layout.max_timestamp_ms - layout.epoch_ms) == 2**40 - 1
    id_ = GENERATOR_ID_LAYOUT.compose(DEFAULT_EPOCH_MS + 5, shard=4321, sequence=3, worker=9)
    assert shard_of_id(id_) == 4321  # read with the default layout
    assert GENERATOR_ID_LAYOUT.decompose(id_).created_at.year == 2025


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"time_bits": 42, "shard_bits": 13, "sequence_bits": 10}, "time_bits"),
        ({"shard_bits": 0}, "time_bits"),
        ({"sequence_bits": -1}, "sequence_bits"),
        ({"epoch_ms": 1.5}, "epoch_ms"),
        ({"worker_bits": True}, "worker_bits"),
    ],
)
def test_bad_layouts_are_refused(kwargs: dict[str, object], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        IdLayout(**kwargs)  # type: ignore[arg-type]
    assert info.value.parameter == parameter


def test_fields_out_of_range_are_refused() -> None:
    layout = DEFAULT_ID_LAYOUT
    for kwargs in (
        {"timestamp_ms": DEFAULT_EPOCH_MS - 1, "shard": 0, "sequence": 0},
        {"timestamp_ms": layout.max_timestamp_ms + 1, "shard": 0, "sequence": 0},
        {"timestamp_ms": DEFAULT_EPOCH_MS, "shard": 8192, "sequence": 0},
        {"timestamp_ms": DEFAULT_EPOCH_MS, "shard": 0, "sequence": 1024},
        {"timestamp_ms": DEFAULT_EPOCH_MS, "shard": 0, "sequence": 0, "worker": 1},
    ):
        with pytest.raises(ConfigurationError):
            layout.compose(**kwargs)
    for bad in (-1, 2**63, "12", True):
        with pytest.raises(ConfigurationError):
            shard_of_id(bad)  # type: ignore[arg-type]


# --- the issuing rule ---------------------------------------------------------------------

GRANT = LeaseGrant(worker=3, floor_ms=-1, ceiling_ms=2**62)


def _issuer(max_backwards_ms: int = 50) -> IdIssuer:
    issuer = IdIssuer(GENERATOR_ID_LAYOUT, max_backwards_ms=max_backwards_ms)
    issuer.granted(GRANT, asked_at=0.0, ttl=1e9, renew_after=1e9)
    return issuer


def _drive(issuer: IdIssuer, clock: FakeClock, shard: int) -> int:
    while True:
        decision = issuer.step(shard, int(clock.time() * 1000), clock.monotonic())
        if isinstance(decision, int):
            return decision
        assert isinstance(decision, IdWait)
        clock.sleep(decision.seconds)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 300),  # IDs to issue
            st.floats(-0.04, 0.01),  # then step the wall clock by this much
        ),
        min_size=1,
        max_size=12,
    )
)
def test_a_clock_stepped_backwards_never_duplicates(steps: list[tuple[int, float]]) -> None:
    clock = FakeClock(wall=1_800_000_000.0)
    issuer = _issuer(max_backwards_ms=1000)
    issued: list[int] = []
    for count, jump in steps:
        issued += [_drive(issuer, clock, shard=count % 7) for _ in range(count)]
        clock.set_wall(clock.time() + jump)
    assert len(set(issued)) == len(issued)
    times = [GENERATOR_ID_LAYOUT.decompose(i).timestamp_ms for i in issued]
    assert times == sorted(times)  # and the time field never goes back
    for id_ in issued[:50]:  # the issuer's inlined arithmetic is the layout's
        parts = GENERATOR_ID_LAYOUT.decompose(id_)
        assert parts.worker == 3
        assert id_ == GENERATOR_ID_LAYOUT.compose(
            parts.timestamp_ms, parts.shard, parts.sequence, parts.worker
        )


def test_a_step_back_past_the_bound_raises_and_a_small_one_waits() -> None:
    clock = FakeClock(wall=1_800_000_000.0)
    issuer = _issuer(max_backwards_ms=50)
    first = _drive(issuer, clock, 1)
    clock.set_wall(clock.time() - 0.030)
    decision = issuer.step(1, int(clock.time() * 1000), clock.monotonic())
    assert isinstance(decision, IdWait) and decision.seconds == pytest.approx(0.030)
    assert _drive(issuer, clock, 1) > first
    clock.set_wall(clock.time() - 0.5)
    with pytest.raises(ClockMovedBackwards) as info:
        issuer.step(1, int(clock.time() * 1000), clock.monotonic())
    assert info.value.behind_ms == 500


def test_a_full_millisecond_waits_for_the_next() -> None:
    clock = FakeClock(wall=1_800_000_000.0)
    issuer = _issuer()
    ids = [_drive(issuer, clock, 0) for _ in range(GENERATOR_ID_LAYOUT.sequence_count + 1)]
    assert clock.sleeps == [0.001]
    assert GENERATOR_ID_LAYOUT.decompose(ids[-1]).sequence == 0


def test_a_new_holder_starts_above_the_previous_holders_ceiling() -> None:
    clock = FakeClock(wall=1_800_000_000.0)
    now_ms = int(clock.time() * 1000)
    issuer = IdIssuer(GENERATOR_ID_LAYOUT, max_backwards_ms=100)
    issuer.granted(
        LeaseGrant(worker=2, floor_ms=now_ms + 40, ceiling_ms=now_ms + 10_000),
        asked_at=0.0,
        ttl=30.0,
        renew_after=10.0,
    )
    id_ = _drive(issuer, clock, 0)
    assert GENERATOR_ID_LAYOUT.decompose(id_).timestamp_ms == now_ms + 41
    issuer.lost()
    issuer.granted(
        LeaseGrant(worker=2, floor_ms=now_ms + 5000, ceiling_ms=now_ms + 10_000),
        asked_at=0.0,
        ttl=30.0,
        renew_after=10.0,
    )
    with pytest.raises(ClockMovedBackwards):
        _drive(issuer, clock, 0)


def test_renewal_is_asked_when_due_past_the_ceiling_and_after_expiry() -> None:
    issuer = IdIssuer(GENERATOR_ID_LAYOUT, max_backwards_ms=0)
    with pytest.raises(WorkerLeaseError):
        issuer.step(0, 1_800_000_000_000, 0.0)
    issuer.granted(
        LeaseGrant(worker=1, floor_ms=-1, ceiling_ms=1_800_000_000_100),
        asked_at=0.0,
        ttl=30.0,
        renew_after=10.0,
    )
    assert isinstance(issuer.step(0, 1_800_000_000_000, 1.0), int)
    assert issuer.step(0, 1_800_000_000_200, 1.0) == IdRenew(expired=False)
    assert issuer.step(0, 1_800_000_000_050, 10.0) == IdRenew(expired=False)
    assert issuer.step(0, 1_800_000_000_050, 30.0) == IdRenew(expired=True)
    with pytest.raises(ConfigurationError):
        issuer.step(8192, 1_800_000_000_000, 1.0)  # a shard outside the layout
    with pytest.raises(ConfigurationError):
        IdIssuer(DEFAULT_ID_LAYOUT, max_backwards_ms=0)  # no worker bits


# --- the SQL function's text ------------------------------------------------------------


def test_id_function_sql_refuses_bad_names_and_shards() -> None:
    sql = id_function_sql(shard=5)
    assert "CREATE SEQUENCE IF NOT EXISTS scalekit_next_id_seq" in sql[0]
    assert "pg_advisory_unlock" in sql[1]
    with pytest.raises(ConfigurationError):
        id_function_sql(shard=8192)
    with pytest.raises(ConfigurationError):
        id_function_sql(shard=1, function="x; DROP TABLE users")
    with pytest.raises(ConfigurationError):
        install_id_function(sa.create_engine("sqlite://"), shard=1)


# --- leases and generators on SQLite ----------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'leases.db'}"


def test_the_generator_leases_distinct_workers_and_releases_them(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    lease = WorkerLease(engine, pool="orders", workers=range(1, 3), ttl=30)
    lease.create_table()
    with IdGenerator(lease) as first, IdGenerator(lease) as second:
        assert {first.worker, second.worker} == {1, 2}
        with pytest.raises(WorkerLeaseError, match="no free worker id"):
            IdGenerator(lease).start()
        ids = [first.next_id(3) for _ in range(500)] + [second.next_id(3) for _ in range(500)]
        assert len(set(ids)) == 1000
        assert {shard_of_id(i) for i in ids} == {3}
    with IdGenerator(lease) as third:  # released: free again at once
        assert third.worker in (1, 2)
    engine.dispose()


def test_an_expired_lease_is_stolen_and_its_old_holder_stops(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    lease = WorkerLease(engine, pool="p", workers=[1], ttl=0.3, renew_after=0.1)
    lease.create_table()
    old_clock = FakeClock(wall=time.time())
    old = IdGenerator(lease, clock=old_clock)
    old.start()
    old_ids = [old.next_id(0) for _ in range(100)]
    time.sleep(0.4)  # the lease expires on the database's clock
    thief = IdGenerator(WorkerLease(engine, pool="p", workers=[1], ttl=30))
    thief.start()
    assert thief.worker == 1
    new_ids = [thief.next_id(0) for _ in range(100)]
    assert min(new_ids) > max(old_ids)  # the thief starts above the old holder's ceiling
    old_clock.advance(0.5)  # the old holder's lease is due: renewal finds it taken
    with pytest.raises(WorkerLeaseError, match="lost"):
        old.next_id(0)
    with pytest.raises(WorkerLeaseError):
        old.next_id(0)  # and it stays stopped
    thief.close()
    engine.dispose()


def test_bad_lease_configuration_is_refused() -> None:
    engine = sa.create_engine("sqlite://")
    with pytest.raises(ConfigurationError):
        WorkerLease(engine, workers=[])
    with pytest.raises(ConfigurationError):
        WorkerLease(engine, ttl=0)
    with pytest.raises(ConfigurationError):
        WorkerLease(engine, ttl=1, renew_after=2)
    with pytest.raises(ConfigurationError):
        IdGenerator(WorkerLease(engine, workers=[16]))  # 4 worker bits: 0..15


async def test_the_async_generator_issues_unique_ids(sqlite_url: str) -> None:
    engine = create_async_engine(sqlite_url.replace("sqlite://", "sqlite+aiosqlite://"))
    lease = AsyncWorkerLease(engine, pool="async", ttl=30)
    await lease.acreate_table()
    async with AsyncIdGenerator(lease) as ids:
        assert ids.worker is not None
        issued = [await ids.anext_id(7) for _ in range(2000)]
    assert len(set(issued)) == 2000 and issued == sorted(issued)
    assert {shard_of_id(i) for i in issued} == {7}
    await engine.dispose()


# --- leases in Redis (fakeredis here; the real servers in tests/integration) ---------------


def test_the_redis_lease_hands_out_distinct_workers_and_keeps_the_ceiling() -> None:
    import fakeredis

    client = fakeredis.FakeRedis(decode_responses=True)
    lease = RedisWorkerLease(client, pool="r", workers=range(1, 3), ttl=30)
    with IdGenerator(lease) as first, IdGenerator(lease) as second:
        assert {first.worker, second.worker} == {1, 2}
        with pytest.raises(WorkerLeaseError):
            IdGenerator(lease).start()
        ids = [first.next_id(1) for _ in range(300)] + [second.next_id(1) for _ in range(300)]
        assert len(set(ids)) == 600
        last = max(ids)
    with IdGenerator(lease) as third:
        assert third.next_id(1) > last  # the released ceiling is kept for the next holder
    client.flushall()
    with IdGenerator(lease) as fourth:
        client.flushall()  # the lease key is gone: renewal fails
        with pytest.raises(WorkerLeaseError, match="lost"):
            lease.renew(fourth.worker or 0, 0)
