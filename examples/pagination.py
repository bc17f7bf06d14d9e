"""Keyset pagination in action: pages, both directions, NULLs, signed cursors, a REST handler.

Runs with no servers (in-memory SQLite, sync and aiosqlite when installed):

    python examples/pagination.py
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from scalekit.errors import ConfigurationError, InvalidCursor
from scalekit.pagination import CursorCodec, Page, apaginate, iter_rows, paginate

KEY = "example-secret-0123456789abcdef"  # in an app: from the environment, 32+ random bytes
codec = CursorCodec(secret=KEY, ttl=3600)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    status: Mapped[str] = mapped_column(sa.String(10))
    shipped_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


def section(title: str) -> None:
    print(f"\n== {title}")


def fill(session: Session) -> None:
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    session.add_all(
        Order(
            id=i,
            created_at=t0 + dt.timedelta(minutes=i // 4),  # duplicates: 4 orders a minute
            status=("new", "paid", "shipped")[i % 3],
            shipped_at=None if i % 5 == 0 else t0 + dt.timedelta(days=i % 7),
        )
        for i in range(1, 41)
    )
    session.commit()


def list_orders(session: Session, cursor: str | None, direction: str = "next") -> dict[str, Any]:
    """What a REST endpoint returns: items plus opaque links; a bad cursor is a 400."""
    try:
        page: Page[Order] = paginate(  # Page[Order]: page.items is a list[Order]
            session,
            sa.select(Order).where(Order.status != "new"),
            order_by=[Order.created_at.desc()],  # the primary key is appended: id DESC
            limit=5,
            after=cursor if direction == "next" else None,
            before=cursor if direction == "prev" else None,
            codec=codec,
        )
    except InvalidCursor as error:
        return {"status": 400, "error": f"bad cursor ({error.reason})"}
    return {
        "status": 200,
        "items": [order.id for order in page.items],
        "next": page.next_cursor,
        "prev": page.prev_cursor,
    }


def rest_walk(session: Session) -> None:
    section("REST: walk forward, then one page back")
    response = list_orders(session, None)
    while True:
        print("  page", response["items"], "has next:", response["next"] is not None)
        if response["next"] is None:
            break
        response = list_orders(session, response["next"])
    back = list_orders(session, response["prev"], direction="prev")
    print("  back from the last page:", back["items"])
    print("  cursor length:", len(back["next"]), "chars, e.g.", back["next"][:24] + "...")


def bad_cursors(session: Session) -> None:
    section("bad cursors are a 400, never a 500")
    good = list_orders(session, None)["next"]
    for label, token in [
        ("garbage", "not a cursor"),
        ("tampered", good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]),
        ("unsigned", CursorCodec().encode([dt.datetime.now(dt.timezone.utc), 1])),
    ]:
        print(f"  {label:<9} -> {list_orders(session, token)}")
    other_query = paginate(session, sa.select(Order), order_by=[Order.id], limit=5, codec=codec)
    print("  other query ->", list_orders(session, other_query.next_cursor))


def nulls(session: Session) -> None:
    section("NULL sort keys need a policy; with one, no row is lost")
    try:
        paginate(session, sa.select(Order), order_by=[Order.shipped_at], limit=5)
    except ConfigurationError as error:
        print("  without a policy:", str(error)[:72] + "...")
    ids = [
        order.id
        for order in iter_rows(
            session, sa.select(Order), order_by=[Order.shipped_at.desc().nulls_last()], limit=7
        )
    ]
    print(f"  iter_rows visited {len(ids)} orders, {len(set(ids))} distinct; last ones {ids[-8:]}")


def last_page_and_total(session: Session) -> None:
    section("last page, totals, hidden sort keys")
    page = paginate(session, sa.select(Order), order_by=[Order.id], limit=6, last=True)
    print("  last page:", [o.id for o in page.items], "has prev:", page.has_prev)
    capped = paginate(
        session, sa.select(Order), order_by=[Order.id], limit=6, total="capped", total_cap=25
    )
    print("  total capped at 25:", capped.total, "exact:", capped.total_exact)
    rows = paginate(session, sa.select(Order.status), order_by=[Order.created_at], limit=3)
    print("  selected only status, sorted by (created_at, id):", [tuple(r) for r in rows.items])


def nearest_first(session: Session) -> None:
    section("the select's own ORDER BY, with a value in it")
    for target in (3, 38):
        # order_by=None: the select's ORDER BY is the order; each target pages its own way.
        select = sa.select(Order.id).order_by(sa.func.abs(Order.id - target), Order.id)
        print(f"  nearest to {target}:", [row.id for row in paginate(session, select, limit=4)])
    try:
        paginate(session, sa.select(Order), order_by="created_at", limit=3)
    except ConfigurationError as error:
        print("  order_by as a string:", error)


async def async_walk() -> None:
    section("asyncio: the same with apaginate on aiosqlite")
    if importlib.util.find_spec("aiosqlite") is None:
        print("  (aiosqlite not installed; skipped)")
        return
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine) as session:
        await session.run_sync(fill)
        page = await apaginate(session, sa.select(Order), order_by=[Order.id.desc()], limit=4)
        print("  first page:", [o.id for o in page.items])
        page = await apaginate(
            session, sa.select(Order), order_by=[Order.id.desc()], limit=4, after=page.next_cursor
        )
        print("  second page:", [o.id for o in page.items])
    await engine.dispose()


def main() -> None:
    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        fill(session)
        rest_walk(session)
        bad_cursors(session)
        nulls(session)
        last_page_and_total(session)
        nearest_first(session)
    engine.dispose()
    asyncio.run(async_walk())


if __name__ == "__main__":
    main()
