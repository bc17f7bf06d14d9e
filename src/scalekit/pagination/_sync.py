# This file is generated from src/scalekit/pagination/_async.py by scripts/unasync.py.
# DO NOT EDIT; edit the async file and run: python scripts/unasync.py
"""The blocking shell: run a :class:`KeysetPlan`'s statements on a Session or Connection.

The plan (order, predicates, statements, pages) is pure and lives in
``_keyset.py``; what both shells share without I/O is in ``_base.py``. This
file is generated from the asyncio shell by ``scripts/unasync.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from scalekit.pagination._base import build_plan, prepared_statement_lost
from scalekit.pagination._keyset import KeysetPlan, Page, PreparedPage, TotalMode

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session
    from sqlalchemy.sql import Select

    from scalekit.pagination._cursor import CursorCodec

__all__ = ["iter_pages", "iter_rows", "paginate", "run_plan"]


def run_plan(executor: Session | Connection, plan: KeysetPlan, prepared: PreparedPage) -> Page[Any]:
    """Run one prepared page (and its count, if any) and build the :class:`Page`.

    Raises:
        ConfigurationError: psycopg's automatic prepared statement was lost
            behind PgBouncer (see :func:`._base.prepared_statement_lost`).
    """
    try:
        # execute() returns a buffered result: the plan reads it without I/O.
        result = executor.execute(prepared.statement, prepared.params)
        page = plan.finish(prepared, result)
        if prepared.count_statement is not None:
            answer = executor.execute(prepared.count_statement).scalar()
            page = plan.with_total(page, prepared, answer)
    except Exception as error:
        clear = prepared_statement_lost(error)
        if clear is None:
            raise
        raise clear from error
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
            NULL without a NULL policy, or another argument is invalid; or,
            behind PgBouncer in transaction pooling mode, psycopg's automatic
            prepared statement was lost (create the engine with
            ``connect_args={"prepare_threshold": None}``).
        InvalidCursor: ``after``/``before`` is not a valid cursor for this
            query and codec (``.reason`` says why).

    >>> page = paginate(  # doctest: +SKIP
    ...     session, select(Order).where(Order.customer_id == 7),
    ...     order_by=[Order.created_at.desc()], limit=50, after=request.args.get("cursor"))
    >>> {"items": [o.to_dict() for o in page.items], "next": page.next_cursor}  # doctest: +SKIP
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

    >>> for page in iter_pages(  # doctest: +SKIP
    ...         session, select(Event), order_by=[Event.id], limit=5000):
    ...     export(page.items)
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

    >>> for order in iter_rows(  # doctest: +SKIP
    ...         session, select(Order), order_by=[Order.id]):
    ...     process(order)
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
