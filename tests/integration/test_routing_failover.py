"""Failure tests of the routing pool on private PostgreSQL clusters (they kill, pause, promote).

Each test starts its own primary + 1 or 2 replicas (``pg_cluster_factory``) so the
shared cluster is never disturbed. The figures the issue asks for (failed
reads while a replica dies, failover time) are printed with ``-s`` and
asserted where the issue sets a bar (zero failed reads).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from scalekit.errors import NoHealthyNode
from scalekit.instrumentation import capture_events
from scalekit.routing import (
    AsyncRoutingPool,
    FailoverEvent,
    LagChanged,
    NodeEjected,
    NodeReadmitted,
    RouteDecision,
    RoutingPool,
)
from scalekit.testing import FakeClock, set_testing
from tests.harness import PgCluster
from tests.integration.test_routing_pg import Base, Note

pytestmark = pytest.mark.integration

SERVER_PORT = sa.select(sa.func.inet_server_port())


def _setup(cluster: PgCluster, rows: int = 10) -> None:
    assert cluster.primary is not None
    engine = cluster.primary.engine()
    try:
        with engine.begin() as conn:
            Base.metadata.create_all(conn)
            if rows:
                conn.execute(sa.insert(Note), [{"id": i, "body": f"row{i}"} for i in range(rows)])
    finally:
        engine.dispose()
    cluster.wait_for_replicas()


def _pool(cluster: PgCluster, **options: Any) -> tuple[RoutingPool, list[sa.Engine]]:
    assert cluster.primary is not None
    engines = [node.engine(connect_args={"connect_timeout": 2}) for node in cluster.nodes]
    pool = RoutingPool(primary=engines[0], replicas=engines[1:], **options)
    return pool, engines


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_kill_replica_during_reads_sync_and_async(
    pg_cluster_factory: Callable[..., PgCluster],
) -> None:
    cluster = pg_cluster_factory(replicas=2)
    _setup(cluster)
    pool, engines = _pool(cluster, blacklist_seconds=0.5, max_blacklist_seconds=2.0)
    victim = cluster.replicas[0]
    Session = pool.sessionmaker()
    failed = 0
    ports: list[int] = []
    try:
        with capture_events() as events:
            for index in range(1000):
                if index == 300:
                    victim.kill()
                try:
                    with Session() as session:
                        assert session.get(Note, index % 10) is not None
                        ports.append(session.scalar(SERVER_PORT) or 0)
                except Exception:
                    failed += 1
            assert failed == 0
            assert victim.port in ports[:300]
            assert victim.port not in ports[310:]  # out of rotation while dead
            ejected = [e for e in events if isinstance(e, NodeEjected)]
            assert [e.node for e in ejected][:1] == ["replica1"]

            victim.start()

            def rejoined() -> bool:
                with Session() as session:
                    return session.scalar(SERVER_PORT) == victim.port

            seconds = _wait(rejoined, timeout=20, what="replica1 to rejoin")
            assert any(isinstance(e, NodeReadmitted) and e.node == "replica1" for e in events)
        print(f"\nreplica killed during 1000 reads: {failed} failed reads; rejoined {seconds:.2f}s")
        # The async pool on the same cluster (replica1 is back): kill replica2 under reads.
        asyncio.run(_async_kill_replica_during_reads(cluster))
    finally:
        pool.close()
        for engine in engines:
            engine.dispose()


async def _async_kill_replica_during_reads(cluster: PgCluster) -> None:
    """The same scenario through the async pool: replica2 dies during 300 reads."""
    engines = [
        create_async_engine(node.url, connect_args={"connect_timeout": 2}) for node in cluster.nodes
    ]
    pool = AsyncRoutingPool(
        primary=engines[0], replicas=engines[1:], blacklist_seconds=0.5, max_blacklist_seconds=2.0
    )
    victim = cluster.replicas[1]
    Session = pool.sessionmaker()
    failed = 0
    ports: list[int] = []
    try:
        for index in range(300):
            if index == 100:
                victim.kill()
            try:
                async with Session() as session:
                    assert await session.get(Note, index % 10) is not None
                    ports.append(await session.scalar(SERVER_PORT) or 0)
            except Exception:
                failed += 1
        assert failed == 0
        assert victim.port in ports[:100]
        assert victim.port not in ports[110:]
        async with pool.connect(readonly=True) as conn:
            assert (await conn.execute(SERVER_PORT)).scalar() != victim.port
    finally:
        pool.close()
        for engine in engines:
            await engine.dispose()


def test_paused_replay_lag_and_read_your_writes(
    pg_cluster_factory: Callable[..., PgCluster],
) -> None:
    cluster = pg_cluster_factory(replicas=2)
    _setup(cluster)
    pool, engines = _pool(cluster, max_lag_seconds=1.0, check_interval=0.2, sticky_timeout=0.0)
    paused, healthy = cluster.replicas
    Session = pool.sessionmaker()
    try:
        with capture_events() as events:
            paused.pause_replay()
            # Write then read in the same context: never stale, although replica1 is behind.
            for index in range(100, 130):
                with Session() as session:
                    session.add(Note(id=index, body="fresh"))
                    session.commit()
                with Session() as session:
                    assert session.get(Note, index) is not None
                    assert session.scalar(SERVER_PORT) != paused.port

            # Other contexts (no token): once lag passes max_lag_seconds, replica1 is skipped.
            def ejected_for_lag() -> bool:
                with pool.use_primary(), Session() as session:
                    session.add(Note(id=int(time.monotonic() * 1000) % 10**9, body="tick"))
                    session.commit()
                pool.refresh()
                return bool(pool.health()["nodes"]["replica1"]["lagging"])

            _wait(ejected_for_lag, timeout=10, what="replica1 to leave the rotation")
            pool.reset_context()
            ports = set()
            for _ in range(20):
                with Session() as session:
                    ports.add(session.scalar(SERVER_PORT))
            assert paused.port not in ports
            assert healthy.port in ports
            assert any(isinstance(e, LagChanged) and e.lagging for e in events)

            # The same scenario through the async pool, while replica1 is still behind.
            asyncio.run(_async_lagging_replica(cluster, paused.port, healthy.port))

            paused.resume_replay()

            def back() -> bool:
                pool.refresh()
                return not pool.health()["nodes"]["replica1"]["lagging"]

            _wait(back, timeout=10, what="replica1 to rejoin after replay resumed")
            ports = set()
            for _ in range(10):
                with Session() as session:
                    ports.add(session.scalar(SERVER_PORT))
            assert paused.port in ports
    finally:
        paused.resume_replay()
        pool.close()
        for engine in engines:
            engine.dispose()


async def _async_lagging_replica(cluster: PgCluster, paused_port: int, healthy_port: int) -> None:
    engines = [create_async_engine(node.url) for node in cluster.nodes]
    pool = AsyncRoutingPool(
        primary=engines[0], replicas=engines[1:], max_lag_seconds=1.0, check_interval=0.2
    )
    Session = pool.sessionmaker()
    try:
        started = time.monotonic()
        while True:
            await pool.refresh()
            if pool.health()["nodes"]["replica1"]["lagging"]:
                break
            assert time.monotonic() - started < 10, "async pool never saw replica1 lag"
            await asyncio.sleep(0.1)
        ports = set()
        for _ in range(10):
            async with Session() as session:
                ports.add(await session.scalar(SERVER_PORT))
        assert paused_port not in ports
        assert healthy_port in ports
        for index in range(2000, 2010):  # read-your-writes through the async pool
            async with Session() as session:
                session.add(Note(id=index, body="async"))
                await session.commit()
            async with Session() as session:
                assert await session.get(Note, index) is not None
                assert await session.scalar(SERVER_PORT) != paused_port
    finally:
        pool.close()
        for engine in engines:
            await engine.dispose()


def test_token_read_goes_to_primary_after_sticky_timeout(
    pg_cluster_factory: Callable[..., PgCluster],
) -> None:
    cluster = pg_cluster_factory(replicas=1)
    _setup(cluster)
    pool, engines = _pool(cluster, sticky_timeout=0.3, max_lag_seconds=None)
    assert cluster.primary is not None
    Session = pool.sessionmaker()
    try:
        for replica in cluster.replicas:
            replica.pause_replay()
        with Session() as session:
            session.add(Note(id=1000, body="late"))
            session.commit()
        token = pool.export_token()
        pool.reset_context()
        pool.import_token(token)
        with capture_events() as events, Session() as session:
            started = time.monotonic()
            assert session.get(Note, 1000) is not None
            waited = time.monotonic() - started
            assert session.scalar(SERVER_PORT) == cluster.primary.port
        assert waited >= 0.3
        assert [e.reason for e in events if isinstance(e, RouteDecision)][:1] == ["token_ahead"]
        for replica in cluster.replicas:
            replica.resume_replay()
        cluster.wait_for_replicas()
        # Caught up: the same token now reads from a replica.
        with Session() as session:
            assert session.get(Note, 1000) is not None
            assert session.scalar(SERVER_PORT) in {r.port for r in cluster.replicas}
    finally:
        for replica in cluster.replicas:
            replica.resume_replay()
        pool.close()
        for engine in engines:
            engine.dispose()


@pytest.mark.parametrize("testing", [False, True])
def test_testing_mode_skips_the_sticky_wait(
    pg_cluster_factory: Callable[..., PgCluster], testing: bool
) -> None:
    # set_testing(True): a read whose token is ahead of every replica goes where a
    # timed-out wait goes (the primary) without sleeping; normal mode waits sticky_timeout.
    cluster = pg_cluster_factory(replicas=1)
    _setup(cluster)
    clock = FakeClock()
    pool, engines = _pool(cluster, sticky_timeout=5.0, max_lag_seconds=None, clock=clock)
    assert cluster.primary is not None
    Session = pool.sessionmaker()
    try:
        for replica in cluster.replicas:
            replica.pause_replay()
        with Session() as session:
            session.add(Note(id=1001, body="late"))
            session.commit()
        with set_testing(testing), Session() as session:
            assert session.get(Note, 1001) is not None
            assert session.scalar(SERVER_PORT) == cluster.primary.port
        if testing:
            assert clock.sleeps == []
        else:
            assert sum(clock.sleeps) >= 5.0  # each of the two reads waited sticky_timeout
    finally:
        for replica in cluster.replicas:
            replica.resume_replay()
        pool.close()
        for engine in engines:
            engine.dispose()


async def _async_writes_after_promotion(cluster: PgCluster) -> list[int]:
    """Writes through an AsyncRoutingPool whose configured primary is the stopped one."""
    engines = [create_async_engine(node.url, poolclass=NullPool) for node in cluster.nodes]
    pool = AsyncRoutingPool(
        primary=engines[0], replicas=engines[1:], role_check_interval=0.1, blacklist_seconds=0.2
    )
    Session = pool.sessionmaker()
    acked: list[int] = []
    try:
        started = time.monotonic()
        for row_id in range(200, 210):
            while True:
                try:
                    async with Session() as session:
                        session.add(Note(id=row_id, body="async"))
                        await session.commit()
                    acked.append(row_id)
                    break
                except (sa.exc.DBAPIError, NoHealthyNode):
                    assert time.monotonic() - started < 10, "async writes did not resume"
                    await asyncio.sleep(0.05)
        assert pool.primary_name == "replica1"
    finally:
        pool.close()
        for engine in engines:
            await engine.dispose()
    return acked


def test_stop_primary_promote_replica_then_split_brain(
    pg_cluster_factory: Callable[..., PgCluster],
) -> None:
    cluster = pg_cluster_factory(replicas=1)
    _setup(cluster, rows=0)
    old_primary = cluster.primary
    assert old_primary is not None
    new_primary = cluster.replicas[0]
    pool, engines = _pool(cluster, role_check_interval=0.1, blacklist_seconds=0.2)
    Session = pool.sessionmaker()
    acked: list[int] = []
    errors = 0

    def write(row_id: int) -> None:
        with Session() as session:
            session.add(Note(id=row_id, body="acked"))
            session.commit()
        acked.append(row_id)

    try:
        with capture_events() as events:
            for row_id in range(50):
                write(row_id)
            old_primary.stop()
            stopped = time.monotonic()
            promoted = False
            row_id = 50
            while True:
                try:
                    write(row_id)
                    break
                except (sa.exc.DBAPIError, NoHealthyNode):
                    errors += 1
                if not promoted:
                    new_primary.promote()
                    promoted = True
                if time.monotonic() - stopped > 30:
                    raise AssertionError("writes did not resume within 30 s")
                time.sleep(0.02)
            failover = time.monotonic() - stopped
            for row_id in range(51, 100):
                write(row_id)
            with pool.use_primary(), Session() as session:
                assert session.scalar(SERVER_PORT) == new_primary.port
            assert pool.primary_name == "replica1"
            assert any(isinstance(e, FailoverEvent) and e.new_primary == "replica1" for e in events)
        # An async pool configured before the promotion follows it too.
        acked.extend(asyncio.run(_async_writes_after_promotion(cluster)))
        present = {
            int(row_id)
            for row_id in new_primary.scalar("SELECT array_agg(id ORDER BY id) FROM routing_notes")
        }
        assert set(acked) <= present
        assert len(acked) == 110
        print(f"\nfailover: first write {failover:.2f}s after primary stop; {errors} write errors")

        # The old primary comes back as a primary: a split brain. Writes are refused
        # (reported once), reads carry on.
        old_primary.start()
        with capture_events() as events:
            for _ in range(3):
                pool.refresh()
        assert pool.health()["split_brain"] is True
        assert [e.split_brain for e in events if isinstance(e, FailoverEvent)] == [True]
        with Session() as session:
            session.add(Note(id=3000, body="refused"))
            with pytest.raises(NoHealthyNode, match="more than one"):
                session.commit()
        with Session() as session:
            assert session.get(Note, 1) is not None
    finally:
        pool.close()
        for engine in engines:
            engine.dispose()
