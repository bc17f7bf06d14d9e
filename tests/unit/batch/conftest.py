"""Fixtures for the batch shell tests: one loader, run through the sync and the async shell."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.batch import BatchResult, abatch_insert, batch_insert

metadata = sa.MetaData()
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sku", sa.String, nullable=False),
    sa.Column("qty", sa.Integer, nullable=True),
    sa.UniqueConstraint("sku", name="items_sku_key"),
)
serial = sa.Table(
    "serial",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("code", sa.String, nullable=False, unique=True),
    sa.Column("qty", sa.Integer, nullable=False),
)


class Loader:
    """Loads through :func:`batch_insert` (``mode="sync"``) or :func:`abatch_insert`."""

    def __init__(self, mode: str, path: Path) -> None:
        self.mode = mode
        self.engine = sa.create_engine(f"sqlite:///{path}")
        self.async_engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        metadata.create_all(self.engine)

    async def load(
        self, table: Any, rows: Iterable[Any], *, target: str = "engine", **options: Any
    ) -> BatchResult:
        if self.mode == "sync":
            if target == "engine":
                return batch_insert(self.engine, table, rows, **options)
            if target == "connection":
                with self.engine.connect() as connection:
                    result = batch_insert(connection, table, rows, **options)
                    connection.commit()
                    return result
            from sqlalchemy.orm import Session

            with Session(self.engine) as session:
                result = batch_insert(session, table, rows, **options)
                session.commit()
                return result
        if target == "engine":
            return await abatch_insert(self.async_engine, table, _aiter(rows), **options)
        if target == "connection":
            async with self.async_engine.connect() as aconnection:
                result = await abatch_insert(aconnection, table, _aiter(rows), **options)
                await aconnection.commit()
                return result
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(self.async_engine) as asession:
            result = await abatch_insert(asession, table, _aiter(rows), **options)
            await asession.commit()
            return result

    def contents(self, table: Any = items) -> dict[Any, tuple[Any, ...]]:
        with self.engine.connect() as connection:
            return {row[0]: tuple(row[1:]) for row in connection.execute(sa.select(table))}

    async def close(self) -> None:
        self.engine.dispose()
        await self.async_engine.dispose()


async def _aiter(rows: Iterable[Any]) -> AsyncIterator[Any]:
    for row in rows:
        yield row


@pytest.fixture(params=["sync", "async"])
async def loader(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    instance = Loader(request.param, tmp_path / "batch.db")
    yield instance
    await instance.close()


def gen_items(count: int, start: int = 0, qty: int | None = None) -> Iterator[dict[str, Any]]:
    """Rows ``{"id", "sku", "qty"}``; a generator, so its length is unknown."""
    for i in range(start, start + count):
        yield {"id": i, "sku": f"sku-{i}", "qty": i if qty is None else qty}
