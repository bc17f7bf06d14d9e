"""Batch loads under the server settings users run: ``fsync`` and ``synchronous_commit``.

The harness's servers run with ``fsync = off`` and ``synchronous_commit = on``
(``test_batch_pg.py`` covers that). Here a private server is switched with
``ALTER SYSTEM`` and a reload to ``fsync = on`` (with ``full_page_writes``) and
``synchronous_commit`` ``off`` and ``on``, and to ``fsync = off`` with
``synchronous_commit = off``: every method loads exactly its input, counts
are right, sync and async. With ``synchronous_commit = on`` a load that
returned survives a crash of the server (SIGKILL, then crash recovery): every
acknowledged chunk is there. (With ``synchronous_commit = off`` PostgreSQL may
lose the last commits in a crash, by design: docs/batch.md says so.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.batch import Upsert, abatch_insert, batch_insert
from tests.harness import PgBinaries, PgCluster, PgNode

pytestmark = pytest.mark.integration

# (fsync, synchronous_commit)
CONFIGS = [("on", "off"), ("on", "on"), ("off", "off")]


@pytest.fixture(scope="module")
def server(harness_root: Path, pg_binaries: PgBinaries) -> Iterator[PgNode]:
    """A private PostgreSQL (no replica) whose settings these tests change."""
    cluster = PgCluster.start(
        harness_root / f"pg-configs-{uuid.uuid4().hex[:8]}", pg_binaries, replicas=0
    )
    try:
        assert cluster.primary is not None
        yield cluster.primary
    finally:
        cluster.close()


@pytest.fixture(params=CONFIGS, ids=lambda c: f"fsync={c[0]}-synchronous_commit={c[1]}")
def configured(server: PgNode, request: pytest.FixtureRequest) -> str:
    """The server set to one configuration; the URL of a fresh database on it."""
    fsync, synchronous_commit = request.param
    if not server.running:
        server.start()
    server.execute(f"ALTER SYSTEM SET fsync = {fsync}")
    server.execute(f"ALTER SYSTEM SET full_page_writes = {fsync}")
    server.execute(f"ALTER SYSTEM SET synchronous_commit = {synchronous_commit}")
    server.execute("SELECT pg_reload_conf()")
    dbname = f"configs_{uuid.uuid4().hex[:8]}"
    server.execute(f'CREATE DATABASE "{dbname}"')
    url = server.url_for(dbname)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            shown = [connection.exec_driver_sql(f"SHOW {name}").scalar() for name in _NAMES]
        assert shown == [fsync, fsync, synchronous_commit]
    finally:
        engine.dispose()
    return url


_NAMES = ("fsync", "full_page_writes", "synchronous_commit")


def _table() -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    return metadata, sa.Table(
        f"configs_{uuid.uuid4().hex[:8]}",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
    )


def _rows(start: int, stop: int, version: int) -> Iterator[dict[str, Any]]:
    for i in range(start, stop):
        yield {"id": i, "body": f"v{version}", "qty": i}


def _read(url: str, table: sa.Table) -> dict[int, str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.execute(sa.select(table.c.id, table.c.body))
            return {int(i): str(body) for i, body in found}
    finally:
        engine.dispose()


def test_batch_insert_and_upserts(configured: str) -> None:
    engine = sa.create_engine(configured)
    metadata, table = _table()
    metadata.create_all(engine)
    upsert = Upsert(index=["id"], update=["body"])
    try:
        plain = batch_insert(
            engine, table, _rows(0, 20_000, 1), chunk_size=5_000, transaction="per_chunk"
        )
        assert (plain.method, plain.inserted, plain.committed) == ("copy", 20_000, 20_000)
        # Half of each upsert's rows exist already.
        staged = batch_insert(engine, table, _rows(10_000, 30_000, 2), on_conflict=upsert)
        assert (staged.method, staged.inserted, staged.updated) == ("copy_staging", 10_000, 10_000)
        unnest = batch_insert(engine, table, _rows(29_000, 31_000, 3), on_conflict=upsert)
        assert (unnest.method, unnest.inserted, unnest.updated) == ("unnest", 1_000, 1_000)
        expected = dict.fromkeys(range(10000), "v1")
        expected.update(dict.fromkeys(range(10000, 29000), "v2"))
        expected.update(dict.fromkeys(range(29000, 31000), "v3"))
        assert _read(configured, table) == expected
    finally:
        engine.dispose()


async def test_async_batch_upsert(configured: str) -> None:
    sync_engine = sa.create_engine(configured)
    metadata, table = _table()
    metadata.create_all(sync_engine)
    sync_engine.dispose()
    engine = create_async_engine(configured)
    upsert = Upsert(index=["id"], update=["body"])
    try:
        first = await abatch_insert(
            engine, table, _rows(0, 6_000, 1), chunk_size=2_000, transaction="per_chunk"
        )
        again = await abatch_insert(
            engine, table, _rows(3_000, 9_000, 2), on_conflict=upsert, transaction="savepoint"
        )
        assert (first.inserted, again.inserted, again.updated) == (6_000, 3_000, 3_000)
    finally:
        await engine.dispose()
    assert _read(configured, table) == {i: "v1" if i < 3_000 else "v2" for i in range(9_000)}


@pytest.mark.parametrize("fsync", ["on", "off"])
def test_committed_chunks_survive_a_crash_under_synchronous_commit_on(
    server: PgNode, fsync: str
) -> None:
    if not server.running:
        server.start()
    server.execute(f"ALTER SYSTEM SET fsync = {fsync}")
    server.execute("ALTER SYSTEM SET synchronous_commit = on")
    server.execute("SELECT pg_reload_conf()")
    dbname = f"crash_{uuid.uuid4().hex[:8]}"
    server.execute(f'CREATE DATABASE "{dbname}"')
    url = server.url_for(dbname)
    engine = sa.create_engine(url)
    metadata, table = _table()
    metadata.create_all(engine)
    try:
        result = batch_insert(
            engine,
            table,
            _rows(0, 12_000, 1),
            chunk_size=1_000,
            transaction="per_chunk",
            on_conflict=Upsert(index=["id"], update=["body"]),
        )
        assert result.committed == 12_000
    finally:
        engine.dispose()
    server.kill()  # SIGKILL: no shutdown checkpoint; recovery replays the WAL
    server.start()
    assert _read(url, table) == dict.fromkeys(range(12000), "v1")
