"""The routing pool under server settings and set-ups users really run (real PostgreSQL).

* every ``synchronous_commit`` level: read-your-writes holds with replay paused;
* lag is right from a pool's first health check, whoever wrote;
* one server reached as both primary and replica serves reads, while two
  writable servers are still a split brain.

The tests that pause replay share one private primary + replica (its walwriter
slowed down, so that an asynchronous commit stays unflushed while the test
reads); the split-brain tests start their own servers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.errors import NoHealthyNode
from scalekit.routing import AsyncRoutingPool, RoutingPool
from tests.harness import PgBinaries, PgCluster
from tests.integration.test_routing_pg import Base, Note

pytestmark = pytest.mark.integration

LEVELS = ("off", "local", "remote_write", "on", "remote_apply")
IN_RECOVERY = sa.select(sa.func.pg_is_in_recovery())
APP_NAME = sa.select(sa.func.current_setting("application_name"))


@pytest.fixture(scope="module")
def cluster(harness_root: Path, pg_binaries: PgBinaries) -> Iterator[PgCluster]:
    """A primary + 1 replica whose WAL writer flushes at most every 10 s."""
    root = harness_root / f"pg-routing-configs-{uuid.uuid4().hex[:8]}"
    cluster = PgCluster.start(root, pg_binaries, replicas=1)
    try:
        assert cluster.primary is not None
        # An asynchronous commit is then flushed (and streamed) seconds after it returned,
        # instead of within ~200 ms: a token that does not cover it is caught every time.
        cluster.primary.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        cluster.primary.execute("SELECT pg_reload_conf()")
        engine = cluster.primary.engine()
        with engine.begin() as conn:
            Base.metadata.create_all(conn)
        engine.dispose()
        cluster.wait_for_replicas()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def paused(cluster: PgCluster) -> Iterator[PgCluster]:
    """The cluster with the replica's replay paused for the test (resumed and caught up after)."""
    replica = cluster.replicas[0]
    replica.pause_replay()
    try:
        yield cluster
    finally:
        replica.resume_replay()
        cluster.wait_for_replicas()


def _sync_commit(level: str) -> dict[str, Any]:
    return {"options": f"-c synchronous_commit={level}"}


def _next_id() -> int:
    return uuid.uuid4().int % 2_000_000_000


# -- read-your-writes under every synchronous_commit -------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_read_your_writes_under_every_synchronous_commit(cluster: PgCluster, level: str) -> None:
    assert cluster.primary is not None
    primary = cluster.primary.engine(connect_args=_sync_commit(level))
    replica = cluster.replicas[0].engine()
    pool = RoutingPool(primary=primary, replicas=[replica], check_interval=None)
    try:
        pool.refresh()  # the replica's replayed position is known: it has everything so far
        cluster.replicas[0].pause_replay()
        try:
            Session = pool.sessionmaker()
            with pool.use_primary(), Session() as session:
                setting = session.scalar(sa.select(sa.func.current_setting("synchronous_commit")))
                assert setting == level
            for _ in range(3):
                note_id = _next_id()
                with Session() as session:
                    session.add(Note(id=note_id, body=level))
                    session.commit()
                with Session() as session:
                    assert session.get(Note, note_id) is not None, level
        finally:
            cluster.replicas[0].resume_replay()
            cluster.wait_for_replicas()
    finally:
        pool.close()
        primary.dispose()
        replica.dispose()


@pytest.mark.parametrize("level", LEVELS)
async def test_async_read_your_writes_under_every_synchronous_commit(
    cluster: PgCluster, level: str
) -> None:
    assert cluster.primary is not None
    primary = create_async_engine(cluster.primary.url, connect_args=_sync_commit(level))
    replica = create_async_engine(cluster.replicas[0].url)
    pool = AsyncRoutingPool(primary=primary, replicas=[replica], check_interval=None)
    try:
        await pool.refresh()
        cluster.replicas[0].pause_replay()
        try:
            Session = pool.sessionmaker()
            for _ in range(3):
                note_id = _next_id()
                async with Session() as session:
                    session.add(Note(id=note_id, body=level))
                    await session.commit()
                async with Session() as session:
                    assert await session.get(Note, note_id) is not None, level
        finally:
            cluster.replicas[0].resume_replay()
            cluster.wait_for_replicas()
    finally:
        pool.close()
        await primary.dispose()
        await replica.dispose()


# -- lag, whoever wrote -----------------------------------------------------------------------


def test_lag_is_seen_from_the_first_check_when_another_engine_writes(paused: PgCluster) -> None:
    assert paused.primary is not None
    writer = paused.primary.engine()  # no pool listens to this engine
    with writer.begin() as conn:
        conn.execute(sa.insert(Note), [{"id": _next_id(), "body": "elsewhere"}])
    writer.dispose()
    time.sleep(1.5)  # the unreplayed write is now 1.5 s old: the replica lags by that much
    primary = paused.primary.engine()
    replica = paused.replicas[0].engine()
    pool = RoutingPool(primary=primary, replicas=[replica], max_lag_seconds=1, check_interval=None)
    try:
        pool.refresh()  # the pool's very first check
        entry = pool.health()["nodes"]["replica1"]
        assert entry["lagging"] is True, entry
        assert entry["lag_seconds"] >= 1.5
        with pool.sessionmaker()() as session:
            assert session.scalar(IN_RECOVERY) is False  # the read left the lagging replica
    finally:
        pool.close()
        primary.dispose()
        replica.dispose()


async def test_async_lag_is_seen_from_the_first_check(paused: PgCluster) -> None:
    assert paused.primary is not None
    paused.primary.execute(f"INSERT INTO routing_notes VALUES ({_next_id()}, 'elsewhere')")
    await asyncio.sleep(1.5)
    primary = create_async_engine(paused.primary.url)
    replica = create_async_engine(paused.replicas[0].url)
    pool = AsyncRoutingPool(
        primary=primary, replicas=[replica], max_lag_seconds=1, check_interval=None
    )
    try:
        await pool.refresh()
        entry = pool.health()["nodes"]["replica1"]
        assert entry["lagging"] is True, entry
        async with pool.sessionmaker()() as session:
            assert await session.scalar(IN_RECOVERY) is False
    finally:
        pool.close()
        await primary.dispose()
        await replica.dispose()


def test_an_idle_primary_means_no_lag_however_old_the_last_commit(cluster: PgCluster) -> None:
    assert cluster.primary is not None
    cluster.wait_for_replicas()
    time.sleep(1.2)  # the last commit is older than max_lag_seconds
    primary = cluster.primary.engine()
    replica = cluster.replicas[0].engine()
    try:
        # A fresh pool each time: its first check. (Background WAL, such as a standby
        # snapshot record, could land between the two queries of one check; three in a
        # row cannot all be unlucky, while "now - last replayed commit" fails every one.)
        entries = []
        for _ in range(3):
            pool = RoutingPool(
                primary=primary, replicas=[replica], max_lag_seconds=1, check_interval=None
            )
            pool.refresh()
            entries.append(pool.health()["nodes"]["replica1"])
            with pool.sessionmaker()() as session:
                on_replica = session.scalar(IN_RECOVERY)
            pool.close()
            if not entries[-1]["lagging"]:
                break
        assert entries[-1]["lagging"] is False, entries
        assert entries[-1]["lag_seconds"] == 0.0
        assert on_replica is True
    finally:
        primary.dispose()
        replica.dispose()


# -- one server as primary and replica; two writable servers ------------------------------------


def test_one_server_as_primary_and_replica_serves_reads(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    primary = sa.create_engine(pg_url, connect_args={"application_name": "as-primary"})
    replica = sa.create_engine(pg_url, connect_args={"application_name": "as-replica"})
    with primary.begin() as conn:
        Base.metadata.create_all(conn)
    pool = RoutingPool(primary=primary, replicas=[replica], check_interval=0.0)
    Session = pool.sessionmaker()
    try:
        with caplog.at_level(logging.INFO, logger="scalekit.routing"):
            for _ in range(3):
                pool.refresh()
        report = pool.health()
        assert report["split_brain"] is False
        assert report["primary"] == "primary"
        assert report["nodes"]["replica1"]["same_server_as"] == "primary"
        same = [r for r in caplog.records if "same server" in r.getMessage()]
        assert len(same) == 1 and same[0].levelno == logging.INFO
        with Session() as session:
            assert session.scalar(APP_NAME) == "as-replica"  # a plain read: the replica engine
        note_id = _next_id()
        with Session() as session:
            session.add(Note(id=note_id, body="same server"))
            session.commit()  # writes are not refused
        with Session() as session:
            assert session.get(Note, note_id) is not None
            assert session.scalar(APP_NAME) == "as-replica"  # never behind: still a replica read
    finally:
        pool.close()
        primary.dispose()
        replica.dispose()


def _assert_split_brain(pool: RoutingPool) -> None:
    pool.refresh()
    assert pool.health()["split_brain"] is True
    with pool.sessionmaker()() as session, pytest.raises(NoHealthyNode):
        session.execute(sa.text("CREATE TABLE refused (id int)"))


def test_two_independent_writable_servers_are_a_split_brain(pg_cluster_factory: Any) -> None:
    first = pg_cluster_factory(replicas=0).primary
    second = pg_cluster_factory(replicas=0).primary
    primary, other = first.engine(), second.engine()
    pool = RoutingPool(primary=primary, replicas=[other], check_interval=0.0)
    try:
        _assert_split_brain(pool)
    finally:
        pool.close()
        primary.dispose()
        other.dispose()


def test_a_promoted_replica_beside_its_old_primary_is_a_split_brain(
    pg_cluster_factory: Any,
) -> None:
    # The same system identifier (a physical copy), two running servers: still refused.
    cluster = pg_cluster_factory(replicas=1)
    cluster.replicas[0].promote()
    primary, promoted = cluster.primary.engine(), cluster.replicas[0].engine()
    pool = RoutingPool(primary=primary, replicas=[promoted], check_interval=0.0)
    try:
        _assert_split_brain(pool)
    finally:
        pool.close()
        primary.dispose()
        promoted.dispose()


# -- raw SQL ----------------------------------------------------------------------------------


def test_text_reads_go_to_replicas_and_doubtful_text_to_the_primary(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    dbname = sa.engine.make_url(pg_url).database
    primary = sa.create_engine(pg_url)
    replicas = [r.engine(dbname) for r in pg_cluster.replicas]
    pool = RoutingPool(primary=primary, replicas=replicas, max_lag_seconds=30)
    Session = pool.sessionmaker()
    try:
        with Session() as session:
            assert session.scalar(sa.text("SELECT pg_is_in_recovery() -- UPDATE")) is True
        with pool.use_replica(), Session() as session:  # no ReadOnlyViolation any more
            assert session.scalar(sa.text("WITH x AS (SELECT 1) SELECT pg_is_in_recovery()"))
        with Session() as session:
            assert session.scalar(sa.text("SELECT pg_is_in_recovery() FOR SHARE")) is False
            forced = sa.text("SELECT pg_is_in_recovery()").execution_options(scalekit_route="write")
        with Session() as session:
            assert session.scalar(forced) is False
        with pool.connect(readonly=True) as conn:
            assert conn.execute(sa.text("SHOW transaction_read_only")).scalar() == "on"
    finally:
        pool.close()
        for engine in (primary, *replicas):
            engine.dispose()
