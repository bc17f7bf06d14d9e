"""No row value in any log record during a batch load that isolates bad rows (real PostgreSQL).

Every logger is at DEBUG (scalekit's, psycopg's, the root): a load with
``on_error="isolate"`` over rows that break a CHECK constraint, a unique key
and a column type, each bad row holding a secret-looking value, must leave
that value in no record: not in a message, its arguments or an attached
traceback. The rejected rows handed back to the caller carry the values,
as documented.

(psycopg logs the server's answer to an aborted COPY as a warning, and that
answer's DETAIL holds the refused row: "Failing row contains (...)".
SQLAlchemy's own engine logging, off by default, is the application's
choice and logs every statement's parameters: see docs/batch.md.)
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.batch import BatchResult, Upsert, abatch_insert, batch_insert

pytestmark = pytest.mark.integration

SECRETS = {
    "check": "sk_live_CHECK_4f3e2d1c",  # beside a value the CHECK constraint refuses
    "unique": "sk_live_UNIQUE_9a8b7c6d",  # a unique key given twice
    "type": "sk_live_TYPE_0e1f2a3b",  # a text value for an integer column
}
ROWS = 3_000  # one chunk large enough for the server to refuse a row mid-COPY
BAD = {3: "check", 1_500: "unique", 2_900: "type"}
METHODS = ("copy", "copy_text", "copy_staging", "unnest", "executemany")


def make_table() -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    return metadata, sa.Table(
        f"batch_logs_{uuid.uuid4().hex[:8]}",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("qty", sa.Integer, sa.CheckConstraint("qty >= 0"), nullable=False),
        sa.Column("token", sa.Text, nullable=False, unique=True),
    )


def rows() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"id": i, "qty": 1, "token": f"t{i}"} for i in range(ROWS)]
    out[3] = {"id": 3, "qty": -1, "token": SECRETS["check"]}
    out[1_000]["token"] = SECRETS["unique"]
    out[1_500] = {"id": 1_500, "qty": 1, "token": SECRETS["unique"]}
    out[2_900] = {"id": 2_900, "qty": SECRETS["type"], "token": "t2900"}
    return out


def record_text(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.args), record.exc_text or ""]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append("".join(traceback.format_exception(record.exc_info[1])))
    return "\n".join(parts)


@pytest.fixture
def all_debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every logger at DEBUG (the root, and those that set their own level)."""
    caplog.set_level(logging.DEBUG)
    for name in ("psycopg", "scalekit"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def check(result: BatchResult, caplog: pytest.LogCaptureFixture) -> None:
    assert {r.position: r.row for r in result.rejected}.keys() == BAD.keys()
    assert result.written == ROWS - len(BAD)
    # The caller gets the rejected rows, values and all.
    assert result.rejected[0].row["token"] == SECRETS["check"]
    leaks = [
        (record.name, record.levelname, secret)
        for record in caplog.records
        for secret in SECRETS.values()
        if secret in record_text(record)
    ]
    assert leaks == []
    # The load did log (the rejections), so the check above saw the records.
    assert any(record.name == "scalekit.batch" for record in caplog.records)


def options(method: str) -> dict[str, Any]:
    # COPY cannot skip a duplicate key; the statement methods upsert (so the
    # duplicate within the chunk must reach the database: dedupe off).
    conflict = None if method in ("copy", "copy_text") else Upsert(index=["id"], update=["qty"])
    return {"method": method, "on_error": "isolate", "on_conflict": conflict, "dedupe": None}


@pytest.mark.parametrize("method", METHODS)
def test_isolating_bad_rows_logs_no_row_value(
    pg_url: str, all_debug: pytest.LogCaptureFixture, method: str
) -> None:
    engine = sa.create_engine(pg_url)
    metadata, table = make_table()
    metadata.create_all(engine)
    try:
        all_debug.clear()
        result = batch_insert(engine, table, rows(), **options(method))
        check(result, all_debug)
    finally:
        metadata.drop_all(engine)
        engine.dispose()


@pytest.fixture
async def async_engine(pg_url: str) -> AsyncIterator[Any]:
    engine = create_async_engine(pg_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize("method", METHODS)
async def test_async_isolating_bad_rows_logs_no_row_value(
    pg_url: str, async_engine: Any, all_debug: pytest.LogCaptureFixture, method: str
) -> None:
    sync_engine = sa.create_engine(pg_url)
    metadata, table = make_table()
    metadata.create_all(sync_engine)
    try:
        all_debug.clear()
        result = await abatch_insert(async_engine, table, rows(), **options(method))
        check(result, all_debug)
    finally:
        metadata.drop_all(sync_engine)
        sync_engine.dispose()
