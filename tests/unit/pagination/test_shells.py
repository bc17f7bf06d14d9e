"""One scenario table, run through the sync shell (Session) and the asyncio shell (AsyncSession).

Each scenario walks forward to the end, then backward to the start, and the
two walks must both equal the reference order computed by a plain ORDER BY.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session, aliased
from sqlalchemy.pool import StaticPool

from scalekit.errors import InvalidCursor
from scalekit.pagination import CursorCodec, KeysetPlan, Page, apaginate, paginate
from tests.unit.pagination._models import Base, Customer, Order, customers_rows, orders_rows

CODEC = CursorCodec(secret="k" * 32, ttl=600)
OTHER = aliased(Customer)


@dataclass(frozen=True)
class Scenario:
    name: str
    select: Callable[[], Any]
    order_by: Callable[[], list[Any]]
    reference: Callable[[], list[Any]]  # the full ORDER BY, unique
    limit: int


SCENARIOS = [
    Scenario(
        "entity-desc",
        lambda: sa.select(Order),
        lambda: [Order.created_at.desc()],
        lambda: [Order.created_at.desc(), Order.id.desc()],
        4,
    ),
    Scenario(
        "nulls-first-mixed",
        lambda: sa.select(Order),
        lambda: [Order.shipped_at.nulls_first(), Order.status.desc()],
        lambda: [Order.shipped_at.nulls_first(), Order.status.desc(), Order.id.desc()],
        5,
    ),
    Scenario(
        "join-hidden-key",
        lambda: sa.select(Order.id, Customer.email).join(Order.customer),
        lambda: [Customer.country, Order.amount_cents.desc()],
        lambda: [Customer.country, Order.amount_cents.desc(), Order.id.desc()],
        6,
    ),
    Scenario(
        "alias-label",
        lambda: sa.select(OTHER.id, sa.func.lower(OTHER.email).label("mail")),
        lambda: [sa.func.lower(OTHER.email).label("mail").desc()],
        lambda: [sa.func.lower(OTHER.email).desc(), OTHER.id.desc()],
        2,
    ),
]


def _items(page: Page) -> list[Any]:
    return [getattr(item, "id", None) if isinstance(item, Order) else tuple(item) for item in page]


def _reference(session: Session, scenario: Scenario) -> list[Any]:
    result = session.execute(scenario.select().order_by(*scenario.reference()))
    if scenario.name.startswith(("entity", "nulls")):
        return [order.id for order in result.scalars()]
    return [tuple(row) for row in result]


@pytest.fixture(scope="module")
def sync_engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(Customer.__table__.insert(), customers_rows())
        connection.execute(Order.__table__.insert(), orders_rows())
    yield engine
    engine.dispose()


@pytest.fixture
async def async_session() -> AsyncIterator[AsyncSession]:
    engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
        await connection.execute(Customer.__table__.insert(), customers_rows())
        await connection.execute(Order.__table__.insert(), orders_rows())
    async with AsyncSession(engine) as session:
        yield session
    await engine.dispose()


def _walks_sync(session: Session, scenario: Scenario) -> tuple[list[Any], list[Any]]:
    def fetch(**kw: Any) -> Page:
        return paginate(
            session, scenario.select(), order_by=scenario.order_by(), limit=scenario.limit,
            codec=CODEC, **kw,
        )  # fmt: skip

    forward: list[Any] = []
    page = fetch()
    while True:
        forward += _items(page)
        if not page.has_next:
            break
        page = fetch(after=page.next_cursor)
    backward: list[Any] = []
    while page.has_prev:
        page = fetch(before=page.prev_cursor)
        backward = _items(page) + backward
    return forward, backward


async def _walks_async(session: AsyncSession, scenario: Scenario) -> tuple[list[Any], list[Any]]:
    async def fetch(**kw: Any) -> Page:
        return await apaginate(
            session, scenario.select(), order_by=scenario.order_by(), limit=scenario.limit,
            codec=CODEC, **kw,
        )  # fmt: skip

    forward: list[Any] = []
    page = await fetch()
    while True:
        forward += _items(page)
        if not page.has_next:
            break
        page = await fetch(after=page.next_cursor)
    backward: list[Any] = []
    while page.has_prev:
        page = await fetch(before=page.prev_cursor)
        backward = _items(page) + backward
    return forward, backward


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_sync_shell(sync_engine: sa.Engine, scenario: Scenario) -> None:
    with Session(sync_engine) as session:
        expected = _reference(session, scenario)
        forward, backward = _walks_sync(session, scenario)
    assert len(expected) > scenario.limit
    assert forward == expected
    # the backward walk starts from the last page, whose own items were seen going forward
    assert backward == expected[: len(backward)] and len(backward) < len(expected)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_async_shell(
    sync_engine: sa.Engine, async_session: AsyncSession, scenario: Scenario
) -> None:
    with Session(sync_engine) as session:
        expected = _reference(session, scenario)
    forward, backward = await _walks_async(async_session, scenario)
    assert forward == expected
    assert backward == expected[: len(backward)] and len(backward) < len(expected)


async def test_both_shells_issue_the_same_cursors(
    sync_engine: sa.Engine, async_session: AsyncSession
) -> None:
    scenario = SCENARIOS[1]
    with Session(sync_engine) as session:
        sync_page = paginate(
            session, scenario.select(), order_by=scenario.order_by(), limit=3, codec=CODEC
        )
    async_page = await apaginate(
        async_session, scenario.select(), order_by=scenario.order_by(), limit=3, codec=CODEC
    )
    plan = KeysetPlan(scenario.select(), scenario.order_by(), limit=3, codec=CODEC)
    assert plan.decode(sync_page.next_cursor) == plan.decode(async_page.next_cursor)
    assert _items(sync_page) == _items(async_page)
    assert sync_page.has_next == async_page.has_next
    with pytest.raises(InvalidCursor) as info:
        await apaginate(
            async_session, scenario.select(), order_by=[Order.id], after=async_page.next_cursor,
            codec=CODEC,
        )  # fmt: skip
    assert info.value.reason == "wrong_query"
