"""Keyset pagination when PostgreSQL fails or lags: crash mid-walk, resume; lagging replica.

A cursor is a position, not a server-side state, so a walk survives the
server dying: the failing page raises the driver's error unchanged, and the
last cursor handed out resumes the walk on the restarted server (or on
another node) with no row skipped or repeated.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from scalekit.pagination import CursorCodec, iter_pages, paginate
from tests.harness.postgres import PgCluster

pytestmark = pytest.mark.integration

CODEC = CursorCodec(secret="f" * 32)
METADATA = sa.MetaData()
EVENTS = sa.Table(
    "pgn_failure_events",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("bucket", sa.Integer, nullable=False),
)
ORDER = [EVENTS.c.bucket.desc()]  # id DESC appended


def expected_ids(count: int) -> list[int]:
    rows = [(i % 7, i) for i in range(1, count + 1)]
    return [i for _, i in sorted(rows, reverse=True)]


def fill(engine: sa.Engine, first: int, last: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            EVENTS.insert(), [{"id": i, "bucket": i % 7} for i in range(first, last + 1)]
        )


@pytest.fixture
def cluster(pg_cluster_factory: Callable[..., PgCluster]) -> PgCluster:
    return pg_cluster_factory(replicas=0)


def test_walk_survives_a_primary_crash_and_resumes_from_the_last_cursor(
    cluster: PgCluster,
) -> None:
    assert cluster.primary is not None
    engine = cluster.primary.engine(pool_pre_ping=True)
    METADATA.create_all(engine)
    fill(engine, 1, 400)
    seen: list[int] = []
    last_cursor: str | None = None
    with engine.connect() as connection:
        pages = iter_pages(
            connection, sa.select(EVENTS.c.id), order_by=ORDER, limit=30, codec=CODEC
        )
        for _ in range(4):
            page = next(pages)
            seen += [row.id for row in page.items]
            last_cursor = page.next_cursor
        cluster.primary.kill()
        with pytest.raises(DBAPIError) as info:
            next(pages)
        assert info.value.connection_invalidated
    cluster.primary.start()
    with engine.connect() as connection:
        resumed = iter_pages(
            connection, sa.select(EVENTS.c.id), order_by=ORDER, limit=30, after=last_cursor,
            codec=CODEC,
        )  # fmt: skip
        for page in resumed:
            seen += [row.id for row in page.items]
    engine.dispose()
    assert seen == expected_ids(400)


def test_cursor_from_the_primary_works_on_a_lagging_replica_and_back(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    primary_engine = sa.create_engine(pg_url)
    dbname = sa.engine.make_url(pg_url).database
    replica = pg_cluster.replicas[0]
    replica_engine = sa.create_engine(replica.url_for(dbname))
    METADATA.create_all(primary_engine)
    try:
        fill(primary_engine, 1, 100)
        pg_cluster.wait_for_replicas()
        replica.pause_replay()
        try:
            fill(primary_engine, 101, 140)  # not on the replica yet
            with primary_engine.connect() as connection:
                first = paginate(
                    connection, sa.select(EVENTS.c.id), order_by=ORDER, limit=25, codec=CODEC
                )
            with replica_engine.connect() as connection:
                second = paginate(
                    connection, sa.select(EVENTS.c.id), order_by=ORDER, limit=25,
                    after=first.next_cursor, codec=CODEC,
                )  # fmt: skip
        finally:
            replica.resume_replay()
        everything = expected_ids(140)
        lagging = [row.id for row in second.items]
        assert [row.id for row in first.items] == everything[:25]
        # The replica pages on from the same position, over the rows it has (ids <= 100).
        assert lagging == [i for i in everything[25:] if i <= 100][:25]
        # Back on the primary, the replica's cursor continues right after its last row.
        with primary_engine.connect() as connection:
            third = paginate(
                connection, sa.select(EVENTS.c.id), order_by=ORDER, limit=25,
                after=second.next_cursor, codec=CODEC,
            )  # fmt: skip
        after_lagging = everything.index(lagging[-1]) + 1
        assert [row.id for row in third.items] == everything[after_lagging : after_lagging + 25]
    finally:
        METADATA.drop_all(primary_engine)
        primary_engine.dispose()
        replica_engine.dispose()
