"""asyncio shell: the same plan as :mod:`._sync`, run on an AsyncSession or AsyncConnection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from scalekit.pagination._keyset import KeysetPlan, Page, PreparedPage, TotalMode
from scalekit.pagination._sync import build_plan

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.sql import Select

    from scalekit.pagination._cursor import CursorCodec

__all__ = ["aiter_pages", "aiter_rows", "apaginate", "arun_plan"]


async def arun_plan(
    executor: AsyncSession | AsyncConnection, plan: KeysetPlan, prepared: PreparedPage
) -> Page[Any]:
    """Run one prepared page (and its count, if any) and build the :class:`Page`."""
    # AsyncSession/AsyncConnection.execute return buffered results, so the
    # plan can read them without awaiting.
    result = await executor.execute(prepared.statement, prepared.params)
    page = plan.finish(prepared, result)
    if prepared.count_statement is not None:
        answer = (await executor.execute(prepared.count_statement)).scalar()
        page = plan.with_total(page, prepared, answer)
    return page


async def apaginate(
    session_or_connection: AsyncSession | AsyncConnection,
    select: Select[Any],
    *,
    order_by: Sequence[Any] | None = None,
    limit: int = 50,
    after: str | None = None,
    before: str | None = None,
    last: bool = False,
    codec: CursorCodec | None = None,
    total: TotalMode | None = None,
    total_cap: int = 1000,
    bind_filters: bool = False,
    row_values: bool | None = None,
) -> Page[Any]:
    """Fetch one page on an ``AsyncSession`` or ``AsyncConnection``; see :func:`paginate`.

    Raises the same errors as :func:`paginate`.

    Example::

        async with async_session() as session:
            page = await apaginate(session, select(Order), order_by=[Order.id], limit=50)
    """
    plan = build_plan(
        session_or_connection,
        select,
        order_by,
        limit=limit,
        codec=codec,
        bind_filters=bind_filters,
        row_values=row_values,
        is_async=True,
    )
    prepared = plan.prepare(after=after, before=before, last=last, total=total, total_cap=total_cap)
    return await arun_plan(session_or_connection, plan, prepared)


async def aiter_pages(
    session_or_connection: AsyncSession | AsyncConnection,
    select: Select[Any],
    *,
    order_by: Sequence[Any] | None = None,
    limit: int = 1000,
    after: str | None = None,
    codec: CursorCodec | None = None,
    row_values: bool | None = None,
) -> AsyncIterator[Page[Any]]:
    """Yield every page from ``after`` (or the start) to the end; see :func:`iter_pages`.

    Raises what :func:`apaginate` raises.
    """
    plan = build_plan(
        session_or_connection,
        select,
        order_by,
        limit=limit,
        codec=codec,
        bind_filters=False,
        row_values=row_values,
        is_async=True,
    )
    cursor = after
    while True:
        page = await arun_plan(session_or_connection, plan, plan.prepare(after=cursor))
        if page.items:
            yield page
        if not page.has_next:
            return
        cursor = page.next_cursor


async def aiter_rows(
    session_or_connection: AsyncSession | AsyncConnection,
    select: Select[Any],
    *,
    order_by: Sequence[Any] | None = None,
    limit: int = 1000,
    after: str | None = None,
    codec: CursorCodec | None = None,
    row_values: bool | None = None,
) -> AsyncIterator[Any]:
    """Yield every item in keyset order, ``limit`` rows per query; see :func:`iter_rows`.

    Raises what :func:`apaginate` raises.
    """
    async for page in aiter_pages(
        session_or_connection,
        select,
        order_by=order_by,
        limit=limit,
        after=after,
        codec=codec,
        row_values=row_values,
    ):
        for item in page.items:
            yield item
