"""Issue 20 against real PostgreSQL (a primary + 1 streaming replica):

* the pool listens on its own handles (``Engine.execution_options()`` copies),
  so the engines it wraps carry no listener, and a write made directly on a
  wrapped engine, not through the pool, sets no read-your-writes token;
* a read holding a token the replica has reached takes the fast path, and one
  the replica fell behind after its position was cached still reads its write.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.routing import AsyncRoutingPool, RoutingPool
from tests.harness import PgBinaries, PgCluster
from tests.integration.test_routing_pg import Base, Note

pytestmark = pytest.mark.integration

IN_RECOVERY = sa.select(sa.func.pg_is_in_recovery())


@pytest.fixture(scope="module")
def cluster(harness_root: Path, pg_binaries: PgBinaries) -> Iterator[PgCluster]:
    root = harness_root / f"pg-routing-handles-{uuid.uuid4().hex[:8]}"
    cluster = PgCluster.start(root, pg_binaries, replicas=1)
    try:
        assert cluster.primary is not None
        engine = cluster.primary.engine()
        with engine.begin() as conn:
            Base.metadata.create_all(conn)
        engine.dispose()
        cluster.wait_for_replicas()
        yield cluster
    finally:
        cluster.close()


def _next_id() -> int:
    return uuid.uuid4().int % 2_000_000_000


def test_wrapped_engines_carry_no_listener_and_direct_writes_set_no_token(
    cluster: PgCluster,
) -> None:
    assert cluster.primary is not None
    primary = cluster.primary.engine()
    replica = cluster.replicas[0].engine()
    pool = RoutingPool(primary=primary, replicas=[replica], check_interval=None)
    try:
        assert pool.nodes == {"primary": primary, "replica1": replica}
        for engine in (primary, replica):
            for name in ("commit", "rollback", "after_cursor_execute", "before_execute"):
                assert len(getattr(engine.dispatch, name)) == 0, name
        # A write straight on the wrapped engine: the pool does not see it.
        with primary.begin() as conn:
            conn.execute(sa.insert(Note).values(id=_next_id(), body="direct"))
        assert pool.export_token() is None
        # The same write through the pool leaves a token.
        with pool.begin() as conn:
            conn.execute(sa.insert(Note).values(id=_next_id(), body="pooled"))
        token = pool.export_token()
        assert token is not None and not token.startswith("-")
        # The wrapped engines still work directly, and the pool's own reads route.
        with replica.connect() as conn:
            assert conn.execute(IN_RECOVERY).scalar() is True
        # A connection error on a direct use is not the pool's business either.
        with pool.connect(readonly=True) as conn:
            assert conn.execute(IN_RECOVERY).scalar() is True
    finally:
        pool.close()
        primary.dispose()
        replica.dispose()


async def test_async_wrapped_engines_carry_no_listener(cluster: PgCluster) -> None:
    assert cluster.primary is not None
    primary = create_async_engine(cluster.primary.url)
    replica = create_async_engine(cluster.replicas[0].url)
    pool = AsyncRoutingPool(primary=primary, replicas=[replica], check_interval=None)
    try:
        assert pool.nodes == {"primary": primary, "replica1": replica}
        assert len(primary.sync_engine.dispatch.commit) == 0
        async with primary.begin() as conn:
            await conn.execute(sa.insert(Note).values(id=_next_id(), body="direct"))
        assert await pool.export_token() is None
        async with pool.begin() as conn:
            await conn.execute(sa.insert(Note).values(id=_next_id(), body="pooled"))
        assert await pool.export_token() is not None
        async with pool.connect(readonly=True) as conn:
            assert (await conn.execute(IN_RECOVERY)).scalar() is True
    finally:
        pool.close()
        await primary.dispose()
        await replica.dispose()


def test_a_reached_token_reads_fast_and_a_replica_behind_it_is_not_read(
    cluster: PgCluster,
) -> None:
    assert cluster.primary is not None
    primary = cluster.primary.engine()
    replica = cluster.replicas[0].engine()
    # lsn_probe_interval=0: a replica whose position was read less than the default
    # 20 ms before is not probed again, and the read goes to the primary ("token_ahead"):
    # on a fast run the refresh below is that recent.
    pool = RoutingPool(
        primary=primary, replicas=[replica], check_interval=None, lsn_probe_interval=0.0
    )
    router = pool.router
    Session = pool.sessionmaker()
    try:
        pool.refresh()
        with Session() as session:
            assert session.scalar(IN_RECOVERY) is True  # a clean read builds the fast path
        note_id = _next_id()
        with Session() as session:
            session.add(Note(id=note_id, body="first"))
            session.commit()
        # Resolve the token now: resolved lazily at the next read, it would take the
        # primary's position after the wait, which other WAL (a checkpoint, the
        # running-xacts record) may have moved past what the replica replayed.
        assert router.current_token() is not None
        # The token is the insert position after the commit, which may lie past WAL
        # another backend inserted and nobody flushed yet: flush it, then wait.
        cluster.wait_for_replicas(flush=True)
        with Session() as session:  # resolves the token, probes the replica: caught up
            assert session.get(Note, note_id) is not None
            assert session.scalar(IN_RECOVERY) is True
        state = router.var.get()
        assert state.token is not None and state.pending_write_at is None
        assert router.core.fast_read(state) is not None  # the cached position covers it
        with Session() as session:
            assert session.get(Note, note_id) is not None
            assert session.scalar(IN_RECOVERY) is True

        # The replica falls behind: replay paused, then a new write.
        cluster.replicas[0].pause_replay()
        try:
            later = _next_id()
            with Session() as session:
                session.add(Note(id=later, body="second"))
                session.commit()
            with Session() as session:
                assert session.get(Note, later) is not None  # read on the primary
                assert session.scalar(IN_RECOVERY) is False
            assert router.core.fast_read(router.var.get()) is None
        finally:
            cluster.replicas[0].resume_replay()
            cluster.wait_for_replicas()
    finally:
        pool.close()
        primary.dispose()
        replica.dispose()
