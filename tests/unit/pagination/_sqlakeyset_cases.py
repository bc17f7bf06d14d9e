"""sqlakeyset's ordering cases, walked by sqlakeyset and by scalekit (differential tests).

sqlakeyset is the keyset paginator many users come from. Its own tests walk
a books table in orderings that mix ASC and DESC over several columns; it has
no NULLS FIRST/LAST and recommends ``coalesce()`` for nullable columns, and it
needs the order to be unique already (it appends nothing). An unlabelled
expression key is left out: sqlakeyset 2.0 repeats pages over
``(a * 10 - id).desc(), id`` forever (scalekit pages it right; the plan-cache
property tests cover expression keys against the plain query). Both libraries
walk the same table in the same orderings, forwards from the first page and
backwards from the last, through their serialised bookmarks/cursors, and must
give the same rows in the same order. Used on SQLite (unit) and PostgreSQL
(integration).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlakeyset
import sqlalchemy as sa

from tests.unit.pagination._literal_selects import walk_both_ways


def make_table(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(20), nullable=False),
        sa.Column("a", sa.Integer, nullable=False),
        sa.Column("b", sa.Integer, nullable=True),
        sa.Column("published", sa.Date, nullable=False),
        sa.Column("price", sa.Numeric(8, 2), nullable=False),
        sa.Column("flag", sa.Boolean, nullable=False),
    )


def rows() -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "name": f"book {i % 6}",
            "a": i % 4,
            "b": None if i % 5 == 0 else i % 3,
            "published": dt.date(2020, 1, 1) + dt.timedelta(days=i % 7),
            "price": (i % 9) * 1.25,
            "flag": i % 2 == 0,
        }
        for i in range(1, 48)
    ]


Ordering = Callable[[sa.Table], list[Any]]
ORDERINGS: dict[str, Ordering] = {
    "id": lambda t: [t.c.id],
    "id-desc": lambda t: [t.c.id.desc()],
    "a-id": lambda t: [t.c.a, t.c.id],
    "a-desc-id": lambda t: [t.c.a.desc(), t.c.id],
    "a-name-desc-id": lambda t: [t.c.a, t.c.name.desc(), t.c.id],
    "name-desc-a-id-desc": lambda t: [t.c.name.desc(), t.c.a, t.c.id.desc()],
    "published-desc-price-id": lambda t: [t.c.published.desc(), t.c.price, t.c.id],
    "flag-price-desc-id-desc": lambda t: [t.c.flag, t.c.price.desc(), t.c.id.desc()],
    "nullable-coalesced-id": lambda t: [sa.func.coalesce(t.c.b, -1), t.c.id],
    "nullable-coalesced-desc-a-id": lambda t: [
        sa.func.coalesce(t.c.b, 99).desc(),
        t.c.a,
        t.c.id.desc(),
    ],
}


def sqlakeyset_walks(
    connection: Any, select: Any, per_page: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """sqlakeyset: forwards through bookmark_next, backwards from the last page."""
    forward: list[tuple[Any, ...]] = []
    page = sqlakeyset.select_page(connection, select, per_page=per_page)
    for _ in range(100):
        forward += [tuple(row) for row in page]
        if not page.paging.has_next:
            break
        page = sqlakeyset.select_page(
            connection, select, per_page=per_page, page=page.paging.bookmark_next
        )
    backward: list[tuple[Any, ...]] = []
    page = sqlakeyset.select_page(connection, select, per_page=per_page, page=(None, True))
    for _ in range(100):
        backward = [tuple(row) for row in page] + backward
        if not page.paging.has_previous:
            break
        page = sqlakeyset.select_page(
            connection, select, per_page=per_page, page=page.paging.bookmark_previous
        )
    return forward, backward


def check_same_walks(connection: Any, table: sa.Table, ordering: Ordering, per_page: int) -> None:
    select = sa.select(table.c.id, table.c.name, table.c.a)
    theirs = sqlakeyset_walks(connection, select.order_by(*ordering(table)), per_page)
    ours = walk_both_ways(connection, select, ordering(table), per_page)
    # The select's own ORDER BY, as sqlakeyset takes it, gives the same too.
    ours_own = walk_both_ways(connection, select.order_by(*ordering(table)), None, per_page)
    expected = [tuple(row) for row in connection.execute(select.order_by(*ordering(table)))]
    assert theirs == (expected, expected)
    assert ours == theirs
    assert ours_own == theirs
