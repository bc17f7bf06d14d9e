"""Random selects with literal and bound values in ORDER BY, WHERE and the select list.

Shared by the plan-cache property tests (SQLite in unit, PostgreSQL in
integration). A :class:`LiteralQuery` is a shape (which expressions, which
filters, which order) that is filled with values; the tests fill one shape
with several value sets, so selects that differ only in their values meet in
the one process-wide plan cache, and check every walk, both ways, against the
plain query (the same select with its ORDER BY and no LIMIT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from hypothesis import strategies as st

from scalekit.pagination import paginate

VALUES_PER_QUERY = 16


def make_table(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("v", sa.Integer, nullable=False),
        sa.Column("w", sa.Integer, nullable=True),
    )


def table_rows() -> list[dict[str, Any]]:
    """30 rows with few distinct values, so ties and NULLs are common."""
    return [
        {"id": i, "v": (i * 7) % 9 - 4, "w": None if i % 4 == 0 else (i * 5) % 7 - 3}
        for i in range(1, 31)
    ]


Values = Iterator[int]
# Each kind builds an expression from the table, its position and a supply of values.
KEYS: dict[str, Callable[[sa.Table, int, Values], Any]] = {
    "abs": lambda t, i, n: sa.func.abs(t.c.v - next(n)),
    "mul": lambda t, i, n: t.c.v * next(n),
    "bound": lambda t, i, n: sa.func.abs(t.c.v - sa.bindparam(f"target{i}", next(n))),
    "case": lambda t, i, n: sa.case((t.c.v < next(n), next(n)), else_=t.c.v),
    "nullable": lambda t, i, n: sa.func.coalesce(t.c.w, next(n)) + t.c.v,
    "column": lambda t, i, n: t.c.v,
}
COLUMNS: dict[str, Callable[[sa.Table, int, Values], Any]] = {
    "plus": lambda t, i, n: (t.c.v + next(n)).label(f"plus{i}"),
    "literal": lambda t, i, n: sa.literal(next(n)).label(f"literal{i}"),
    "w": lambda t, i, n: t.c.w,
}
FILTERS: dict[str, Callable[[sa.Table, int, Values], Any]] = {
    "above": lambda t, i, n: t.c.v > next(n),
    "in": lambda t, i, n: t.c.v.in_([next(n), next(n), next(n)]),
    "not_id": lambda t, i, n: t.c.id != next(n) + 5,
    "bound": lambda t, i, n: t.c.v <= sa.bindparam(f"upper{i}", next(n)),
}


@dataclass(frozen=True)
class LiteralQuery:
    """A select's shape; :meth:`build` fills it with values."""

    columns: tuple[str, ...]
    filters: tuple[str, ...]
    keys: tuple[tuple[str, bool, bool], ...]  # kind, descending, also selected (labelled)
    id_descending: bool
    own_order: bool  # the select's ORDER BY (order_by=None), or order_by=[...]
    limit: int

    def build(self, table: sa.Table, values: Sequence[int]) -> tuple[Any, Any, Any]:
        """(select to paginate, order_by argument, the plain ordered select)."""
        supply = iter(values)
        columns = [table.c.id] + [COLUMNS[c](table, i, supply) for i, c in enumerate(self.columns)]
        order = []
        for i, (kind, descending, selected) in enumerate(self.keys):
            expression = KEYS[kind](table, i, supply)
            if selected:
                expression = expression.label(f"key{i}")
                columns.append(expression)
            clause = expression.desc() if descending else expression.asc()
            if kind in ("case", "nullable"):  # scalekit cannot prove these are never NULL
                clause = clause.nulls_last()
            order.append(clause)
        order.append(table.c.id.desc() if self.id_descending else table.c.id.asc())
        filters = [FILTERS[f](table, i, supply) for i, f in enumerate(self.filters)]
        select = sa.select(*columns).where(*filters)
        plain = select.order_by(*order)
        if self.own_order:
            return plain, None, plain
        return select, order, plain


literal_queries = st.builds(
    LiteralQuery,
    columns=st.lists(st.sampled_from(sorted(COLUMNS)), max_size=2, unique=True).map(tuple),
    filters=st.lists(st.sampled_from(sorted(FILTERS)), max_size=2, unique=True).map(tuple),
    keys=st.lists(
        st.tuples(st.sampled_from(sorted(KEYS)), st.booleans(), st.booleans()),
        min_size=1,
        max_size=3,
        unique_by=lambda key: key[0],
    ).map(tuple),
    id_descending=st.booleans(),
    own_order=st.booleans(),
    limit=st.integers(1, 7),
)
value_sets = st.lists(
    st.lists(st.integers(-4, 4), min_size=VALUES_PER_QUERY, max_size=VALUES_PER_QUERY),
    min_size=2,
    max_size=3,
)


def walk_both_ways(
    connection: Any, select: Any, order_by: Any, limit: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every row of ``select`` walked forwards (after=) and backwards (last, before=)."""
    forward: list[tuple[Any, ...]] = []
    page = paginate(connection, select, order_by=order_by, limit=limit)
    for _ in range(100):
        forward += [tuple(row) for row in page.items]
        if not page.has_next:
            break
        page = paginate(connection, select, order_by=order_by, limit=limit, after=page.next_cursor)
    backward: list[tuple[Any, ...]] = []
    page = paginate(connection, select, order_by=order_by, limit=limit, last=True)
    for _ in range(100):
        backward = [tuple(row) for row in page.items] + backward
        if not page.has_prev:
            break
        page = paginate(connection, select, order_by=order_by, limit=limit, before=page.prev_cursor)
    return forward, backward


def check_walks(
    connection: Any, table: sa.Table, query: LiteralQuery, value_sets: list[list[int]]
) -> None:
    """Each filling of ``query`` pages exactly as its plain query orders it, both ways."""
    for values in value_sets:
        select, order_by, plain = query.build(table, values)
        expected = [tuple(row) for row in connection.execute(plain)]
        forward, backward = walk_both_ways(connection, select, order_by, query.limit)
        assert forward == expected, (values, "forward")
        assert backward == expected, (values, "backward")
