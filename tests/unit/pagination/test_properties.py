"""Property: keyset pages cover the reference order exactly, forwards, backwards and zig-zag."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.pool import StaticPool

from scalekit.pagination import paginate
from tests.unit.pagination._walk import (
    KeySpec,
    ids,
    make_table,
    order_strategy,
    reference_order,
    rows_strategy,
)

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def db() -> Iterator[tuple[sa.Engine, sa.Table]]:
    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    metadata = sa.MetaData()
    table = make_table(metadata, "prop")
    metadata.create_all(engine)
    yield engine, table
    engine.dispose()


def load(engine: sa.Engine, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        connection.execute(table.delete())
        if rows:
            connection.execute(table.insert(), rows)


@pytest.mark.parametrize("row_values", [True, False], ids=["row-values", "expanded"])
@SETTINGS
@given(rows=rows_strategy, specs=order_strategy(), limit=st.integers(1, 7))
def test_forward_walk_visits_every_row_once_in_order(
    db: tuple[sa.Engine, sa.Table],
    row_values: bool,
    rows: list[dict[str, Any]],
    specs: list[KeySpec],
    limit: int,
) -> None:
    engine, table = db
    load(engine, table, rows)
    expected = reference_order(rows, specs)
    order = [s.expression(table) for s in specs]
    seen: list[int] = []
    cursor = None
    with engine.connect() as connection:
        for _ in range(len(rows) + 2):
            page = paginate(
                connection,
                sa.select(table),
                order_by=order,
                limit=limit,
                after=cursor,
                row_values=row_values,
            )
            seen += ids(page)
            assert len(page.items) <= limit
            if not page.has_next:
                break
            assert page.next_cursor is not None
            cursor = page.next_cursor
    assert seen == expected


@pytest.mark.parametrize("row_values", [True, False], ids=["row-values", "expanded"])
@SETTINGS
@given(rows=rows_strategy, specs=order_strategy(), limit=st.integers(1, 7))
def test_backward_walk_from_last_page_visits_every_row_once(
    db: tuple[sa.Engine, sa.Table],
    row_values: bool,
    rows: list[dict[str, Any]],
    specs: list[KeySpec],
    limit: int,
) -> None:
    engine, table = db
    load(engine, table, rows)
    expected = reference_order(rows, specs)
    order = [s.expression(table) for s in specs]
    seen: list[int] = []
    with engine.connect() as connection:
        page = paginate(
            connection,
            sa.select(table),
            order_by=order,
            limit=limit,
            last=True,
            row_values=row_values,
        )
        for _ in range(len(rows) + 2):
            seen = ids(page) + seen
            assert not page.has_next or page.items
            if not page.has_prev:
                break
            page = paginate(
                connection,
                sa.select(table),
                order_by=order,
                limit=limit,
                before=page.prev_cursor,
                row_values=row_values,
            )
    assert seen == expected


@SETTINGS
@given(
    rows=rows_strategy,
    specs=order_strategy(),
    limit=st.integers(1, 5),
    moves=st.lists(st.booleans(), max_size=12),
)
def test_changing_direction_never_skips_or_repeats(
    db: tuple[sa.Engine, sa.Table],
    rows: list[dict[str, Any]],
    specs: list[KeySpec],
    limit: int,
    moves: list[bool],
) -> None:
    engine, table = db
    load(engine, table, rows)
    expected = reference_order(rows, specs)
    order = [s.expression(table) for s in specs]
    with engine.connect() as connection:
        page = paginate(connection, sa.select(table), order_by=order, limit=limit)
        low, high = 0, min(limit, len(expected))  # the window [low, high) of expected
        assert ids(page) == expected[low:high]
        for forward in moves:
            if forward and page.has_next:
                page = paginate(
                    connection,
                    sa.select(table),
                    order_by=order,
                    limit=limit,
                    after=page.next_cursor,
                )
                low, high = high, min(high + limit, len(expected))
            elif not forward and page.has_prev:
                page = paginate(
                    connection,
                    sa.select(table),
                    order_by=order,
                    limit=limit,
                    before=page.prev_cursor,
                )
                low, high = max(low - limit, 0), low
            else:
                continue
            assert ids(page) == expected[low:high]
            if forward:
                assert page.has_next == (high < len(expected))
                assert page.has_prev  # we came from the page before
            else:
                assert page.has_prev == (low > 0)
                assert page.has_next  # we came from the page after


@SETTINGS
@given(
    rows=rows_strategy,
    specs=order_strategy(),
    limit=st.integers(1, 5),
    churn=st.lists(st.tuples(st.lists(st.integers(1, 40), max_size=4), rows_strategy), max_size=12),
)
def test_rows_that_stay_are_seen_once_in_order_while_others_come_and_go(
    db: tuple[sa.Engine, sa.Table],
    rows: list[dict[str, Any]],
    specs: list[KeySpec],
    limit: int,
    churn: list[tuple[list[int], list[dict[str, Any]]]],
) -> None:
    engine, table = db
    load(engine, table, rows)
    order = [s.expression(table) for s in specs]
    ever = {row["id"]: row for row in rows}
    deleted: set[int] = set()
    next_id = 1000
    seen: list[int] = []
    with engine.connect() as connection:
        page = paginate(connection, sa.select(table), order_by=order, limit=limit)
        step = 0
        while True:
            seen += ids(page)
            if not page.has_next:
                break
            if step < len(churn):  # between two requests, other writers delete and insert
                gone, fresh = churn[step]
                connection.execute(table.delete().where(table.c.id.in_(gone)))
                deleted.update(gone)
                added = [{**row, "id": next_id + i} for i, row in enumerate(fresh)]
                next_id += len(added)
                if added:
                    connection.execute(table.insert(), added)
                ever.update({row["id"]: row for row in added})
                connection.commit()
            step += 1
            page = paginate(
                connection, sa.select(table), order_by=order, limit=limit, after=page.next_cursor
            )
    position = {row_id: i for i, row_id in enumerate(reference_order(list(ever.values()), specs))}
    assert len(seen) == len(set(seen)), "a row was repeated"
    assert seen == sorted(seen, key=position.__getitem__), "rows out of order"
    survivors = {row["id"] for row in rows} - deleted
    assert survivors <= set(seen), "a row that stayed was skipped"
