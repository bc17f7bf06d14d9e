"""Keyset (cursor) pagination for SQLAlchemy selects, sync and asyncio.

:func:`paginate` / :func:`apaginate` fetch one page of any ``Select`` (ORM
entities, Core tables, joins, aliases, labelled expressions) with a seek
predicate instead of OFFSET, so every page costs the same at any depth. The
order is always made unique (primary key appended when needed), nullable sort
keys must say where NULLs go, and cursors are compact, typed, optionally
signed (HMAC, with key rotation) and tied to the query they came from.

Parts, all pure but the shells: :mod:`._cursor` (the codec), :mod:`._keyset`
(the plan: from a select to each page's statement and back to a page), built
from :mod:`._order` (order analysis), :mod:`._key_types` (what a cursor value
of each SQL type may be), :mod:`._statements` (seek predicates, ORDER BY),
:mod:`._explain` (row estimates), :mod:`._expressions` (expression helpers)
and :mod:`._plan_cache` (plans reused across requests); :mod:`._base` (what
the shells share), :mod:`._async` (the asyncio shell, the source) and
:mod:`._sync` (generated from it) run the plan's statements.

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
