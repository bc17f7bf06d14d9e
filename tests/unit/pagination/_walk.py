"""Shared model for the pagination property tests (SQLite here, PostgreSQL in integration).

A table ``walk_<suffix>`` with an integer primary key and four sort columns:
``a`` INTEGER NOT NULL, ``b`` INTEGER NULL, ``c`` TEXT NOT NULL, ``d`` TEXT NULL,
filled with few distinct values so duplicates and NULLs are common. The
reference order is computed in Python, independently of the SQL we build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from hypothesis import strategies as st

from scalekit.pagination import Page

COLUMNS = ("a", "b", "c", "d")
NULLABLE = {"a": False, "b": True, "c": False, "d": True}


def make_table(metadata: sa.MetaData, suffix: str) -> sa.Table:
    return sa.Table(
        f"walk_{suffix}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("a", sa.Integer, nullable=False),
        sa.Column("b", sa.Integer, nullable=True),
        sa.Column("c", sa.String(8), nullable=False),
        sa.Column("d", sa.String(8), nullable=True),
    )


@dataclass(frozen=True)
class KeySpec:
    column: str
    descending: bool
    nulls_last: bool

    def expression(self, table: sa.Table) -> Any:
        column = table.c[self.column]
        clause = column.desc() if self.descending else column.asc()
        if NULLABLE.get(self.column, False):
            clause = clause.nulls_last() if self.nulls_last else clause.nulls_first()
        return clause


small_text = st.sampled_from(["", "a", "ab", "b", "ba", "z"])
rows_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "a": st.integers(-2, 2),
            "b": st.none() | st.integers(-2, 2),
            "c": small_text,
            "d": st.none() | small_text,
        }
    ),
    max_size=40,
).map(lambda rows: [{"id": i + 1, **row} for i, row in enumerate(rows)])


@st.composite
def order_strategy(draw: st.DrawFn) -> list[KeySpec]:
    columns = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=4, unique=True))
    specs = [KeySpec(c, draw(st.booleans()), draw(st.booleans())) for c in columns]
    if draw(st.booleans()):
        specs.append(KeySpec("id", draw(st.booleans()), False))
    return specs


def reference_order(rows: list[dict[str, Any]], specs: list[KeySpec]) -> list[int]:
    """Row ids in the order the specs (plus the appended primary key) define."""
    specs = list(specs)
    if all(s.column != "id" for s in specs):
        specs.append(KeySpec("id", specs[-1].descending, False))
    ordered = list(rows)
    for spec in reversed(specs):  # stable sorts, least significant key first
        present = [r for r in ordered if r[spec.column] is not None]
        missing = [r for r in ordered if r[spec.column] is None]
        present.sort(key=lambda r: r[spec.column], reverse=spec.descending)
        ordered = present + missing if spec.nulls_last else missing + present
    return [r["id"] for r in ordered]


def ids(page: Page) -> list[int]:
    return [item.id if hasattr(item, "id") else item[0] for item in page.items]
