"""apaginate / aiter_pages / aiter_rows on aiosqlite: the same plan, awaited."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import StaticPool

from scalekit.errors import ConfigurationError, InvalidCursor
from scalekit.pagination import CursorCodec, aiter_pages, aiter_rows, apaginate
from tests.unit.pagination._models import Base, Customer, Order, customers_rows, orders_rows


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
        await connection.execute(Customer.__table__.insert(), customers_rows())
        await connection.execute(Order.__table__.insert(), orders_rows())
    yield engine
    await engine.dispose()


async def test_async_session_walks_forward_and_back(engine: AsyncEngine) -> None:
    codec = CursorCodec(secret="a" * 32)
    async with AsyncSession(engine) as session:
        seen: list[int] = []
        page = await apaginate(
            session, sa.select(Order), order_by=[Order.created_at.desc()], limit=6, codec=codec
        )
        while True:
            seen += [o.id for o in page.items]
            if not page.has_next:
                break
            page = await apaginate(
                session,
                sa.select(Order),
                order_by=[Order.created_at.desc()],
                limit=6,
                after=page.next_cursor,
                codec=codec,
            )
        expected = (
            await session.scalars(
                sa.select(Order.id).order_by(Order.created_at.desc(), Order.id.desc())
            )
        ).all()
        assert seen == expected
        back = await apaginate(
            session,
            sa.select(Order),
            order_by=[Order.created_at.desc()],
            limit=6,
            before=page.prev_cursor,
            codec=codec,
        )
        assert [o.id for o in back.items] == expected[-1 - 6 - len(page) + 1 : -len(page)]
        with pytest.raises(InvalidCursor):
            await apaginate(
                session,
                sa.select(Order),
                order_by=[Order.created_at.desc()],
                after="garbage",
                codec=codec,
            )


async def test_async_connection_core_rows_and_totals(engine: AsyncEngine) -> None:
    orders = Order.__table__
    async with engine.connect() as connection:
        page = await apaginate(
            connection,
            sa.select(orders.c.id, orders.c.status),
            order_by=[orders.c.status],
            limit=5,
            total="exact",
        )
        assert page.total == 37 and page.total_exact
        assert all(row._fields == ("id", "status") for row in page.items)
        with pytest.raises(ConfigurationError):
            await apaginate(connection, sa.select(Order), order_by=[Order.id])


async def test_aiter_pages_and_rows(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        sizes = [
            len(p)
            async for p in aiter_pages(session, sa.select(Order), order_by=[Order.id], limit=10)
        ]
        assert sizes == [10, 10, 10, 7]
        ids = [
            o.id
            async for o in aiter_rows(
                session, sa.select(Order), order_by=[Order.shipped_at.nulls_first()]
            )
        ]
        assert sorted(ids) == list(range(1, 38))


async def test_sync_session_is_refused_by_the_async_shell(engine: AsyncEngine) -> None:
    from sqlalchemy.orm import Session

    with pytest.raises(ConfigurationError) as info:
        await apaginate(Session(), sa.select(Order), order_by=[Order.id])  # type: ignore[arg-type]
    assert info.value.parameter == "session_or_connection"
