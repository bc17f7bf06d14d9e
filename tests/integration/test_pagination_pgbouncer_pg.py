"""Pagination through PgBouncer (transaction pooling) with ``create_engine(url)`` defaults.

psycopg prepares a statement on the server after five runs on one connection;
pagination runs one page query again and again, so a walk of separate
requests that commit reaches that threshold, and the next transaction lands on another
server connection. A page then fails with one clear
:class:`~scalekit.errors.ConfigurationError` naming the remedy, instead of
psycopg's ``InvalidSqlStatementName``/``DuplicatePreparedStatement``. The
remedy itself (``prepare_threshold=None``) is walked in test_pgbouncer.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from scalekit.errors import ConfigurationError
from scalekit.pagination import apaginate, paginate
from tests.harness import PgCluster, wait_until
from tests.harness.pgbouncer import PgBouncer

pytestmark = pytest.mark.integration

NO_PREPARE: dict[str, Any] = {"connect_args": {"prepare_threshold": None}}
ROWS = 120
LIMIT = 7  # 18 pages: well past psycopg's prepare_threshold of 5


def _order(table: sa.Table) -> list[Any]:
    return [table.c.qty.desc(), table.c.id]


@pytest.fixture
def table(pgbouncer: PgBouncer, pg_cluster: PgCluster) -> Iterator[sa.Table]:
    metadata = sa.MetaData()
    created = sa.Table(
        f"bouncer_pages_{uuid.uuid4().hex[:8]}",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("qty", sa.Integer, nullable=False),
    )
    direct = sa.create_engine(pgbouncer.url_for("primary"), **NO_PREPARE)
    metadata.create_all(direct)
    with direct.begin() as connection:
        connection.execute(created.insert(), [{"id": i, "qty": i % 5} for i in range(ROWS)])
    # PgBouncer opens server connections lazily: wait until consecutive transactions
    # of one client run on more than one, as they do under any real load.
    wait_until(
        lambda: len(_backend_pids(direct, 6)) > 1,
        timeout=30,
        what="PgBouncer to spread transactions over its server connections",
    )
    try:
        yield created
    finally:
        metadata.drop_all(direct)
        direct.dispose()


def _backend_pids(engine: sa.Engine, transactions: int) -> set[int]:
    pids = set()
    with engine.connect() as connection:
        for _ in range(transactions):
            pids.add(int(connection.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()))
            connection.commit()
    return pids


def _check(failure: pytest.ExceptionInfo[ConfigurationError]) -> None:
    assert 'connect_args={"prepare_threshold": None}' in str(failure.value)
    assert failure.value.parameter == "session_or_connection"
    cause = failure.value.__cause__
    assert isinstance(cause, sa.exc.DBAPIError)
    assert isinstance(
        cause.orig,
        (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement),
    )


def _walk(engine: sa.Engine, table: sa.Table, pages: list[int]) -> None:
    """Walk every page, each in its own committed transaction.

    As API requests run in ``sessionmaker.begin()`` would be. (A session that
    ends in ROLLBACK makes psycopg forget its prepared statements.)
    """
    query = sa.select(table.c.id, table.c.qty)
    cursor = None
    while True:
        with Session(engine) as session, session.begin():
            page = paginate(session, query, order_by=_order(table), limit=LIMIT, after=cursor)
        pages.append(len(page.items))
        assert page.has_next, "the walk ended without psycopg preparing the page query"
        cursor = page.next_cursor


async def _awalk(engine: AsyncEngine, table: sa.Table, pages: list[int]) -> None:
    query = sa.select(table.c.id, table.c.qty)
    cursor = None
    while True:
        async with AsyncSession(engine) as session, session.begin():
            page = await apaginate(
                session, query, order_by=_order(table), limit=LIMIT, after=cursor
            )
        pages.append(len(page.items))
        assert page.has_next, "the walk ended without psycopg preparing the page query"
        cursor = page.next_cursor


def test_paginate_raises_a_clear_error_when_psycopg_prepares_behind_pgbouncer(
    pgbouncer: PgBouncer, table: sa.Table
) -> None:
    engine = sa.create_engine(pgbouncer.url_for("primary"))  # defaults: prepare_threshold=5
    pages: list[int] = []
    try:
        with pytest.raises(ConfigurationError) as failure:
            _walk(engine, table, pages)
        _check(failure)
        assert len(pages) >= 5
    finally:
        engine.dispose()


async def test_apaginate_raises_a_clear_error_when_psycopg_prepares_behind_pgbouncer(
    pgbouncer: PgBouncer, table: sa.Table
) -> None:
    engine = create_async_engine(pgbouncer.url_for("primary"))  # defaults: prepare_threshold=5
    pages: list[int] = []
    try:
        with pytest.raises(ConfigurationError) as failure:
            await _awalk(engine, table, pages)
        _check(failure)
        assert len(pages) >= 5
    finally:
        await engine.dispose()
