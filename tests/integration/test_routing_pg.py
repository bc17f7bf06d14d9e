"""The routing pool against a real PostgreSQL primary + 2 streaming replicas (sync and async).

Where a statement ran is asserted from inside the query (``pg_is_in_recovery()``,
``inet_server_port()``), never from the router's own bookkeeping. Tests that
only read and write use the shared cluster (``pg_url``); tests that pause
replay, kill, stop or promote servers use a private cluster.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scalekit.errors import ReadOnlyViolation
from scalekit.instrumentation import capture_events
from scalekit.routing import (
    AsyncRoutingPool,
    FailoverEvent,
    RoutingPool,
    read_only,
)
from tests.harness import PgCluster

pytestmark = pytest.mark.integration

IN_RECOVERY = sa.select(sa.func.pg_is_in_recovery())
SERVER_PORT = sa.select(sa.func.inet_server_port())


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "routing_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


def _dbname(url: str) -> str:
    name = make_url(url).database
    assert name is not None
    return name


def _engines(cluster: PgCluster, dbname: str, **kw: Any) -> tuple[sa.Engine, list[sa.Engine]]:
    assert cluster.primary is not None
    primary = cluster.primary.engine(dbname, **kw)
    replicas = [replica.engine(dbname, **kw) for replica in cluster.replicas]
    return primary, replicas


def _async_engines(
    cluster: PgCluster, dbname: str, **kw: Any
) -> tuple[AsyncEngine, list[AsyncEngine]]:
    assert cluster.primary is not None
    primary = create_async_engine(cluster.primary.url_for(dbname), **kw)
    replicas = [create_async_engine(r.url_for(dbname), **kw) for r in cluster.replicas]
    return primary, replicas


def _create_table(engine: sa.Engine, cluster: PgCluster) -> None:
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        Base.metadata.create_all(conn)
    cluster.wait_for_replicas()


@pytest.fixture
def shared(pg_cluster: PgCluster, pg_url: str) -> Iterator[RoutingPool]:
    primary, replicas = _engines(pg_cluster, _dbname(pg_url))
    _create_table(primary, pg_cluster)
    # Other modules' tests write to the shared cluster: a generous lag limit keeps both
    # replicas in the rotation on a busy machine.
    pool = RoutingPool(primary=primary, replicas=replicas, sticky_timeout=2.0, max_lag_seconds=30)
    try:
        yield pool
    finally:
        pool.close()
        for engine in (primary, *replicas):
            engine.dispose()


@pytest.fixture
async def ashared(pg_cluster: PgCluster, pg_url: str) -> AsyncIterator[AsyncRoutingPool]:
    sync_primary = pg_cluster.primary.engine(_dbname(pg_url))  # type: ignore[union-attr]
    _create_table(sync_primary, pg_cluster)
    sync_primary.dispose()
    primary, replicas = _async_engines(pg_cluster, _dbname(pg_url))
    pool = AsyncRoutingPool(
        primary=primary, replicas=replicas, sticky_timeout=2.0, max_lag_seconds=30
    )
    try:
        yield pool
    finally:
        pool.close()
        for engine in (primary, *replicas):
            await engine.dispose()


# -- where statements run ---------------------------------------------------------------------


def test_reads_on_replicas_writes_on_primary(shared: RoutingPool, pg_cluster: PgCluster) -> None:
    Session = shared.sessionmaker()
    replica_ports = {r.port for r in pg_cluster.replicas}
    assert pg_cluster.primary is not None
    seen_ports = set()
    for _ in range(6):
        with Session() as session:
            assert session.scalar(IN_RECOVERY) is True
            seen_ports.add(session.scalar(SERVER_PORT))
    assert seen_ports == replica_ports  # round robin over both replicas

    with Session() as session:
        port = session.execute(
            sa.insert(Note).values(id=1, body="a").returning(sa.func.inet_server_port())
        ).scalar_one()
        assert port == pg_cluster.primary.port
        # Inside a transaction that wrote, reads stay on the primary.
        assert session.scalar(IN_RECOVERY) is False
        session.commit()

    with Session() as session:
        # FOR UPDATE, nextval and doubtful text() are primary statements.
        assert session.scalar(IN_RECOVERY.with_for_update()) is False
    with Session() as session:
        assert session.scalar(sa.text("SELECT pg_is_in_recovery() FOR SHARE")) is False
    with Session() as session:
        assert session.scalar(sa.text("SELECT pg_is_in_recovery()")) is True  # a text read
    with Session() as session:
        assert session.scalar(read_only(sa.text("SELECT pg_is_in_recovery() AS share"))) is True
    with shared.use_primary(), Session() as session:
        assert session.scalar(IN_RECOVERY) is False
    with shared.connect(readonly=True) as conn:
        assert conn.execute(IN_RECOVERY).scalar() is True
        with pytest.raises(ReadOnlyViolation):
            conn.execute(sa.delete(Note))
    with shared.begin() as conn:
        assert conn.execute(IN_RECOVERY).scalar() is False


def test_orm_flush_and_bulk_go_to_primary(shared: RoutingPool) -> None:
    Session = shared.sessionmaker()
    with Session() as session:
        session.add(Note(id=10, body="flushed"))
        session.commit()
    with Session() as session:
        session.execute(sa.update(Note).where(Note.id == 10).values(body="bulk"))
        session.commit()
    with Session() as session:
        # Read-your-writes: the next read sees the update even if replicas lag.
        assert session.get(Note, 10).body == "bulk"  # type: ignore[union-attr]
    with shared.use_replica(), Session() as session:
        session.add(Note(id=11, body="no"))
        with pytest.raises(ReadOnlyViolation):
            session.flush()


def test_read_your_writes_and_token_export(shared: RoutingPool, pg_cluster: PgCluster) -> None:
    Session = shared.sessionmaker()
    for index in range(20):
        with Session() as session:
            session.add(Note(id=100 + index, body=f"n{index}"))
            session.commit()
        with Session() as session:
            assert session.get(Note, 100 + index) is not None
    token = shared.export_token()
    assert token is not None and "@" in token

    # Another "request" (a fresh context in another thread) imports the token.
    def follow_up() -> tuple[bool, int]:
        shared.import_token(token)
        with Session() as session:
            return session.get(Note, 119) is not None, session.scalar(SERVER_PORT) or 0

    result: list[tuple[bool, int]] = []
    thread = threading.Thread(target=lambda: result.append(contextvars.Context().run(follow_up)))
    thread.start()
    thread.join()
    assert result[0][0] is True


def test_health_reports_every_node_masked(pg_cluster: PgCluster, pg_url: str) -> None:
    primary, replicas = _engines(pg_cluster, _dbname(pg_url))
    secret = primary.url.set(password="s3cret-pw")
    primary.dispose()
    primary = sa.create_engine(secret)
    pool = RoutingPool(primary=primary, replicas=replicas)
    try:
        # trust auth ignores the password: the connection works, and it must never show.
        pool.refresh()
        report = pool.health()
        assert "s3cret-pw" not in repr(report)
        assert report["primary"] == "primary"
        assert set(report["nodes"]) == {"primary", "replica1", "replica2"}
        for node in ("replica1", "replica2"):
            entry = report["nodes"][node]
            assert entry["role"] == "replica"
            assert entry["up"] is True
            assert entry["lag_bytes"] is not None
            assert entry["lag_seconds"] is not None
            assert entry["pool"]["size"] == 5
    finally:
        pool.close()
        for engine in (primary, *replicas):
            engine.dispose()


# -- async ------------------------------------------------------------------------------------


async def test_async_routing_and_read_your_writes(
    ashared: AsyncRoutingPool, pg_cluster: PgCluster
) -> None:
    Session = ashared.sessionmaker()
    assert pg_cluster.primary is not None
    ports = set()
    for _ in range(4):
        async with Session() as session:
            assert await session.scalar(IN_RECOVERY) is True
            ports.add(await session.scalar(SERVER_PORT))
    assert ports == {r.port for r in pg_cluster.replicas}
    for index in range(10):
        async with Session() as session:
            session.add(Note(id=500 + index, body="async"))
            await session.commit()
        async with Session() as session:
            assert await session.get(Note, 500 + index) is not None
    async with ashared.connect(readonly=True) as conn:
        assert (await conn.execute(IN_RECOVERY)).scalar() is True
        with pytest.raises(ReadOnlyViolation):
            await conn.execute(sa.delete(Note))
    async with ashared.begin() as conn:
        assert (await conn.execute(IN_RECOVERY)).scalar() is False
    with ashared.use_primary():
        async with Session() as session:
            assert await session.scalar(IN_RECOVERY) is False
    token = await ashared.export_token()
    assert token is not None


def test_demoted_primary_sqlstate_25006_triggers_a_role_check(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    # The first candidate "primary" is really a replica: its first write fails with
    # SQLSTATE 25006, the pool re-checks roles and the next write lands on the real one.
    primary, replicas = _engines(pg_cluster, _dbname(pg_url))
    _create_table(primary, pg_cluster)
    pool = RoutingPool(
        primary=[replicas[0], primary], replicas=[replicas[1]], role_check_interval=0.0
    )
    Session = pool.sessionmaker()
    try:
        with capture_events() as events:
            with Session() as session:
                session.add(Note(id=900, body="refused"))
                with pytest.raises(sa.exc.DBAPIError) as info:
                    session.commit()
            assert getattr(info.value.orig, "sqlstate", None) == "25006"
            with Session() as session:
                session.add(Note(id=901, body="accepted"))
                session.commit()
        assert pool.primary_name == "primary2"
        assert [(e.old_primary, e.new_primary) for e in events if isinstance(e, FailoverEvent)] == [
            ("primary1", "primary2")
        ]
        with pool.use_primary(), Session() as session:
            assert session.get(Note, 901) is not None
            assert session.scalar(IN_RECOVERY) is False
    finally:
        pool.close()
        for engine in (primary, *replicas):
            engine.dispose()
