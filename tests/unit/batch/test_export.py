"""Streaming export on SQLite, through the blocking and the asyncio shell.

Content and header as PostgreSQL's CSV COPY writes them, chunks of the asked
size, progress, the connection returned to the pool when the consumer stops
early, and clear errors for bad options.
"""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from scalekit.batch import aexport, aexport_rows, export, export_rows
from scalekit.batch._export import csv_line, pg_text, text_line
from scalekit.errors import ConfigurationError

metadata = sa.MetaData()
things = sa.Table(
    "things",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String, nullable=True),
    sa.Column("qty", sa.Integer, nullable=True),
)


class Exporter:
    """Runs :func:`export` / :func:`export_rows` (``mode="sync"``) or their async twins."""

    def __init__(self, mode: str, path: Path) -> None:
        self.mode = mode
        self.engine = sa.create_engine(f"sqlite:///{path}")
        self.async_engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        metadata.create_all(self.engine)

    def fill(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as connection:
            connection.execute(things.insert(), rows)

    async def export(self, select: Any, *, target: str = "engine", **options: Any) -> list[bytes]:
        if self.mode == "sync":
            if target == "session":
                with Session(self.engine) as session:
                    return list(export(session, select, **options))
            return list(export(self.engine, select, **options))
        if target == "session":
            async with AsyncSession(self.async_engine) as asession:
                return [chunk async for chunk in aexport(asession, select, **options)]
        return [chunk async for chunk in aexport(self.async_engine, select, **options)]

    async def rows(self, select: Any, **options: Any) -> list[Any]:
        if self.mode == "sync":
            return list(export_rows(self.engine, select, **options))
        return [row async for row in aexport_rows(self.async_engine, select, **options)]

    async def first_chunks_then_close(self, count: int, **options: Any) -> list[bytes]:
        """Read ``count`` chunks, then stop (close the generator) as a client that disconnects."""
        chunks: list[bytes] = []
        if self.mode == "sync":
            stream = export(self.engine, sa.select(things).order_by(things.c.id), **options)
            for chunk in stream:
                chunks.append(chunk)
                if len(chunks) == count:
                    break
            assert self.engine.pool.checkedout() == 1  # still held: not yet closed
            stream.close()
            return chunks
        astream = aexport(self.async_engine, sa.select(things).order_by(things.c.id), **options)
        async for chunk in astream:
            chunks.append(chunk)
            if len(chunks) == count:
                break
        assert self.async_engine.pool.checkedout() == 1
        await astream.aclose()
        return chunks

    def checkedout(self) -> int:
        pool = self.engine.pool if self.mode == "sync" else self.async_engine.pool
        return pool.checkedout()  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(params=["sync", "async"])
async def exporter(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    instance = Exporter(request.param, tmp_path / "export.db")
    yield instance
    instance.engine.dispose()
    await instance.async_engine.dispose()


def sample(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"item {i}", "qty": i % 7} for i in range(n)]


async def test_csv_content_and_header(exporter: Exporter) -> None:
    exporter.fill(
        [
            {"id": 1, "name": "plain", "qty": 3},
            {"id": 2, "name": 'a "quoted", value', "qty": None},
            {"id": 3, "name": "", "qty": 0},
            {"id": 4, "name": None, "qty": -5},
            {"id": 5, "name": "two\nlines", "qty": 1},
        ]
    )
    data = b"".join(await exporter.export(sa.select(things).order_by(things.c.id)))
    assert data == (
        b'id,name,qty\n1,plain,3\n2,"a ""quoted"", value",\n3,"",0\n4,,-5\n5,"two\nlines",1\n'
    )


@pytest.mark.parametrize("target", ["engine", "session"])
async def test_targets_and_no_header(exporter: Exporter, target: str) -> None:
    exporter.fill(sample(3))
    data = await exporter.export(
        sa.select(things.c.id, things.c.name).where(things.c.id > 0), target=target, header=False
    )
    assert b"".join(data) == b"1,item 1\n2,item 2\n"


async def test_text_format(exporter: Exporter) -> None:
    exporter.fill([{"id": 1, "name": "tab\there\\", "qty": None}])
    data = await exporter.export(sa.select(things), format="text")
    assert b"".join(data) == b"1\ttab\\there\\\\\t\\N\n"


async def test_chunks_are_bounded_and_whole(exporter: Exporter) -> None:
    exporter.fill(sample(5000))
    chunks = await exporter.export(sa.select(things).order_by(things.c.id), chunk_size=4096)
    assert len(chunks) > 10
    # every chunk but the last reaches chunk_size; none holds more than a fetch's worth over it
    assert all(len(c) >= 4096 for c in chunks[:-1])
    assert all(c.endswith(b"\n") for c in chunks)
    lines = b"".join(chunks).splitlines()
    assert len(lines) == 5001
    assert lines[1] == b"0,item 0,0" and lines[-1] == b"4999,item 4999,1"


async def test_progress_reports_rows_and_bytes(exporter: Exporter) -> None:
    exporter.fill(sample(3000))
    seen: list[tuple[int, int]] = []
    chunks = await exporter.export(
        sa.select(things), chunk_size=1000, progress=lambda rows, size: seen.append((rows, size))
    )
    assert len(seen) == len(chunks)
    assert seen[-1] == (3000, sum(map(len, chunks)))
    assert seen == sorted(seen)


async def test_early_close_returns_the_connection(exporter: Exporter) -> None:
    exporter.fill(sample(20_000))
    chunks = await exporter.first_chunks_then_close(2, chunk_size=1024)
    assert len(chunks) == 2
    assert exporter.checkedout() == 0
    # and the pool's connection still works
    assert len(await exporter.rows(sa.select(things.c.id).limit(3))) == 3


async def test_export_rows_are_typed_and_complete(exporter: Exporter) -> None:
    exporter.fill(sample(2500))
    rows = await exporter.rows(sa.select(things).order_by(things.c.id), chunk_size=100)
    assert len(rows) == 2500
    assert rows[7].id == 7 and rows[7].name == "item 7" and rows[7].qty == 0
    assert exporter.checkedout() == 0


async def test_a_table_is_a_select(exporter: Exporter) -> None:
    exporter.fill(sample(2))
    assert b"".join(await exporter.export(things)) == b"id,name,qty\n0,item 0,0\n1,item 1,1\n"


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"format": "xml"}, "format"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": "64k"}, "chunk_size"),
        ({"chunk_size": True}, "chunk_size"),
        ({"progress": 3}, "progress"),
        ({"header": "yes"}, "header"),
    ],
)
def test_bad_options_are_refused_at_once(options: dict[str, Any], parameter: str) -> None:
    engine = sa.create_engine("sqlite://")
    for function in (export, aexport):
        with pytest.raises(ConfigurationError) as info:
            function(engine, sa.select(things), **options)
        assert info.value.parameter == parameter


def test_bad_targets_and_selects_are_refused_at_once() -> None:
    engine = sa.create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="target"):
        export("sqlite://", sa.select(things))
    with pytest.raises(ConfigurationError, match="target"):
        aexport(engine, sa.select(things))  # a sync engine for the async shell
    with pytest.raises(ConfigurationError, match=r"text\(\)"):
        export(engine, "select * from things")
    with pytest.raises(ConfigurationError, match="select"):
        export(engine, 42)
    with pytest.raises(ConfigurationError, match="chunk_size"):
        export_rows(engine, things, chunk_size=-1)


async def test_binary_needs_postgresql(exporter: Exporter) -> None:
    with pytest.raises(ConfigurationError, match="binary"):
        await exporter.export(things, format="binary")
    assert exporter.checkedout() == 0


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "t"),
        (False, "f"),
        (1.5, "1.5"),
        (2.0, "2"),
        (1e100, "1e+100"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (float("nan"), "NaN"),
        (decimal.Decimal("1.50"), "1.50"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02 03:04:05"),
        (
            dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
            "2024-01-02 03:04:05.000006+00",
        ),
        (b"\x00\xff", "\\x00ff"),
    ],
)
def test_pg_text(value: Any, text: str) -> None:
    assert pg_text(value) == text


def test_csv_and_text_lines() -> None:
    assert csv_line([None, "", "\\.", "a,b", 'q"', "\r", 1]) == ',"",\\.,"a,b","q""","\r",1\n'
    assert csv_line(["\\."]) == '"\\."\n'
    assert text_line([None, "a\tb", "\r\n"]) == "\\N\ta\\tb\t\\r\\n\n"
