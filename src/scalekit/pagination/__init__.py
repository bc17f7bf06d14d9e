"""Keyset (cursor) pagination for SQLAlchemy selects, sync and asyncio.

:func:`paginate` / :func:`apaginate` fetch one page of any ``Select`` (ORM
entities, Core tables, joins, aliases, labelled expressions) with a seek
predicate instead of OFFSET, so every page costs the same at any depth. The
order is always made unique (primary key appended when needed), nullable sort
keys must say where NULLs go, and cursors are compact, typed, optionally
signed (HMAC, with key rotation) and tied to the query they came from.

Parts: :mod:`._cursor` (the codec, pure), :mod:`._keyset` (the plan: order
analysis, predicates, statements, pages; pure), :mod:`._sync` and
:mod:`._async` (run the plan's statements).

Example::

    from scalekit.pagination import CursorCodec, paginate

    codec = CursorCodec(secret=KEY)
    page = paginate(session, select(Order), order_by=[Order.created_at.desc()],
                    limit=50, after=cursor, codec=codec)
    page.items, page.next_cursor, page.prev_cursor
"""

from __future__ import annotations

from scalekit.pagination._async import aiter_pages, aiter_rows, apaginate
from scalekit.pagination._cursor import CursorCodec, CursorValue
from scalekit.pagination._keyset import KeysetPlan, Page, SortKey, TotalMode
from scalekit.pagination._sync import iter_pages, iter_rows, paginate

__all__ = [
    "CursorCodec",
    "CursorValue",
    "KeysetPlan",
    "Page",
    "SortKey",
    "TotalMode",
    "aiter_pages",
    "aiter_rows",
    "apaginate",
    "iter_pages",
    "iter_rows",
    "paginate",
]
