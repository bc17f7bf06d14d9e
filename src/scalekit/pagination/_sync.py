"""Blocking shell: run a :class:`KeysetPlan`'s statements on a Session or Connection."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from scalekit.errors import ConfigurationError
from scalekit.pagination._keyset import KeysetPlan, Page, PreparedPage, TotalMode, cached_plan

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Dialect
    from sqlalchemy.orm import Session
    from sqlalchemy.sql import Select

    from scalekit.pagination._cursor import CursorCodec

__all__ = ["iter_pages", "iter_rows", "paginate", "run_plan"]


def _dialect(executor: Any) -> Dialect | None:
    dialect = getattr(executor, "dialect", None)
    if dialect is None and hasattr(executor, "get_bind"):
        try:
            dialect = executor.get_bind().dialect
        except Exception:  # an unbound session: fall back to the portable SQL shape
            dialect = None
    return dialect


@functools.cache
def _executor_types(is_async: bool) -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(accepted executors, connection types) for one shell; imported once, lazily."""
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session
    from sqlalchemy.orm import Session, scoped_session

    if is_async:
        return (AsyncSession, AsyncConnection, async_scoped_session), (AsyncConnection,)
    return (Session, Connection, scoped_session), (Connection,)


def _check_executor(executor: Any, plan: KeysetPlan, *, is_async: bool) -> None:
    allowed, connections = _executor_types(is_async)
    if not isinstance(executor, allowed):
        names = "AsyncSession or AsyncConnection" if is_async else "Session or Connection"
        raise ConfigurationError(
            f"expected a SQLAlchemy {names}, got {type(executor).__name__}",
            parameter="session_or_connection",
        )
    if plan.needs_session and isinstance(executor, connections):
        raise ConfigurationError(
            "a select of ORM entities must run on a Session, not a Connection",
            parameter="session_or_connection",
        )


def build_plan(
    executor: Any,
    select: Select[Any],
    order_by: Sequence[Any] | None,
    *,
    limit: int,
    codec: CursorCodec | None,
    bind_filters: bool,
    row_values: bool | None,
    is_async: bool,
) -> KeysetPlan:
    """Build the plan for ``select`` on ``executor``'s dialect (shared by both shells)."""
    plan = cached_plan(
        select,
        order_by,
        limit=limit,
        codec=codec,
        dialect=_dialect(executor),
        row_values=row_values,
        bind_filters=bind_filters,
    )
    _check_executor(executor, plan, is_async=is_async)
    return plan


def run_plan(executor: Session | Connection, plan: KeysetPlan, prepared: PreparedPage) -> Page[Any]:
    """Run one prepared page (and its count, if any) and build the :class:`Page`."""
    result = executor.execute(prepared.statement, prepared.params)
    page = plan.finish(prepared, result)
    if prepared.count_statement is not None:
        answer = executor.execute(prepared.count_statement).scalar()
        page = plan.with_total(page, prepared, answer)
    return page


def paginate(
    session_or_connection: Session | Connection,
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
    """Fetch one page of ``select`` in keyset order.

    ``order_by`` lists the sort keys (columns, ORM attributes, labelled
    expressions, ``.desc()``, ``.nulls_first()``/``.nulls_last()``, label
    names or :class:`SortKey`); without it the select's own ORDER BY is used.
    The primary key is appended when the order is not provably unique. Pass
    ``after=page.next_cursor`` for the next page, ``before=page.prev_cursor``
    for the previous one, ``last=True`` for the last page. ``total`` adds a
    count: ``"exact"``, ``"capped"`` (at most ``total_cap``) or
    ``"estimate"`` (the planner's estimate on PostgreSQL, exact elsewhere).
    ``bind_filters=True`` ties cursors to the WHERE clause too, so a cursor
    cannot be replayed against other filters. ``row_values`` forces (or
    forbids) row-value comparisons; by default they are used on PostgreSQL,
    SQLite and MySQL.

    Raises:
        ConfigurationError: the order cannot be made unique, a sort key may be
            NULL without a NULL policy, or another argument is invalid.
        InvalidCursor: ``after``/``before`` is not a valid cursor for this
            query and codec (``.reason`` says why).

    Example::

        page = paginate(session, select(Order).where(Order.customer_id == 7),
                        order_by=[Order.created_at.desc()], limit=50,
                        after=request.args.get("cursor"))
        return {"items": [o.to_dict() for o in page.items], "next": page.next_cursor}
    """
    plan = build_plan(
        session_or_connection,
        select,
        order_by,
        limit=limit,
        codec=codec,
        bind_filters=bind_filters,
        row_values=row_values,
        is_async=False,
    )
    prepared = plan.prepare(after=after, before=before, last=last, total=total, total_cap=total_cap)
    return run_plan(session_or_connection, plan, prepared)


def iter_pages(
    session_or_connection: Session | Connection,
    select: Select[Any],
    *,
    order_by: Sequence[Any] | None = None,
    limit: int = 1000,
    after: str | None = None,
    codec: CursorCodec | None = None,
    row_values: bool | None = None,
) -> Iterator[Page[Any]]:
    """Yield every page of ``select`` from ``after`` (or the start) to the end.

    Memory stays bounded by one page, and each page is a fresh seek, so it
    suits backfills and exports over tables of any size. Rows inserted behind
    the current position are not revisited; rows inserted ahead are seen.
    Raises what :func:`paginate` raises; a database error ends the iteration,
    and the last page's ``next_cursor`` resumes it (``after=``).

    Example::

        for page in iter_pages(session, select(Event), order_by=[Event.id], limit=5000):
            export(page.items)
    """
    plan = build_plan(
        session_or_connection,
        select,
        order_by,
        limit=limit,
        codec=codec,
        bind_filters=False,
        row_values=row_values,
        is_async=False,
    )
    cursor = after
    while True:
        page = run_plan(session_or_connection, plan, plan.prepare(after=cursor))
        if page.items:
            yield page
        if not page.has_next:
            return
        cursor = page.next_cursor


def iter_rows(
    session_or_connection: Session | Connection,
    select: Select[Any],
    *,
    order_by: Sequence[Any] | None = None,
    limit: int = 1000,
    after: str | None = None,
    codec: CursorCodec | None = None,
    row_values: bool | None = None,
) -> Iterator[Any]:
    """Yield every item of ``select`` in keyset order, fetching ``limit`` rows at a time.

    Raises what :func:`paginate` raises.

    Example::

        for order in iter_rows(session, select(Order), order_by=[Order.id]):
            process(order)
    """
    for page in iter_pages(
        session_or_connection,
        select,
        order_by=order_by,
        limit=limit,
        after=after,
        codec=codec,
        row_values=row_values,
    ):
        yield from page.items
