"""Keyset pagination against a real PostgreSQL (psycopg 3, sync and async).

Covers: the walk properties (forward, backward, zig-zag; duplicates and NULLs),
EXPLAIN showing the seek as an index range condition, every cursor value type
through real columns, custom types with bind expressions (sqlalchemy#8992),
forged cursors that would overflow a column type, totals and the async shell.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from scalekit.errors import InvalidCursor
from scalekit.pagination import CursorCodec, KeysetPlan, apaginate, paginate
from scalekit.pagination._explain import Explain as _Explain
from tests.unit.pagination._models import (
    Base,
    Customer,
    Order,
    customers_rows,
    orders_rows,
)
from tests.unit.pagination._walk import (
    KeySpec,
    ids,
    make_table,
    order_strategy,
    reference_order,
    rows_strategy,
)

pytestmark = pytest.mark.integration

SUFFIX = f"pg{os.getpid()}"
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url)
    with engine.begin() as connection:
        Base.metadata.drop_all(connection)
        Base.metadata.create_all(connection)
        connection.execute(Customer.__table__.insert(), customers_rows())
        connection.execute(Order.__table__.insert(), orders_rows())
    yield engine
    with engine.begin() as connection:
        Base.metadata.drop_all(connection)
    engine.dispose()


@pytest.fixture(scope="module")
def walk_table(engine: sa.Engine) -> Iterator[sa.Table]:
    metadata = sa.MetaData()
    table = make_table(metadata, SUFFIX)
    metadata.create_all(engine)
    yield table
    metadata.drop_all(engine)


def load(engine: sa.Engine, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        connection.execute(table.delete())
        if rows:
            connection.execute(table.insert(), rows)


# -- properties -------------------------------------------------------------------


@pytest.mark.parametrize("row_values", [True, False], ids=["row-values", "expanded"])
@SETTINGS
@given(rows=rows_strategy, specs=order_strategy(), limit=st.integers(1, 7))
def test_forward_and_backward_walks_cover_the_reference_order(
    engine: sa.Engine,
    walk_table: sa.Table,
    row_values: bool,
    rows: list[dict[str, Any]],
    specs: list[KeySpec],
    limit: int,
) -> None:
    load(engine, walk_table, rows)
    # PostgreSQL compares text by collation; keep the reference in C order.
    expected = reference_order(rows, specs)
    order = [s.expression(walk_table) for s in specs]
    select = sa.select(walk_table)
    with engine.connect() as connection:
        forward: list[int] = []
        page = paginate(connection, select, order_by=order, limit=limit, row_values=row_values)
        while True:
            forward += ids(page)
            if not page.has_next:
                break
            page = paginate(
                connection,
                select,
                order_by=order,
                limit=limit,
                after=page.next_cursor,
                row_values=row_values,
            )
        backward: list[int] = []
        page = paginate(
            connection, select, order_by=order, limit=limit, last=True, row_values=row_values
        )
        while True:
            backward = ids(page) + backward
            if not page.has_prev:
                break
            page = paginate(
                connection,
                select,
                order_by=order,
                limit=limit,
                before=page.prev_cursor,
                row_values=row_values,
            )
    assert forward == expected
    assert backward == expected


@SETTINGS
@given(
    rows=rows_strategy,
    specs=order_strategy(),
    limit=st.integers(1, 5),
    moves=st.lists(st.booleans(), max_size=10),
)
def test_changing_direction_never_skips_or_repeats(
    engine: sa.Engine,
    walk_table: sa.Table,
    rows: list[dict[str, Any]],
    specs: list[KeySpec],
    limit: int,
    moves: list[bool],
) -> None:
    load(engine, walk_table, rows)
    expected = reference_order(rows, specs)
    order = [s.expression(walk_table) for s in specs]
    select = sa.select(walk_table)
    with engine.connect() as connection:
        page = paginate(connection, select, order_by=order, limit=limit)
        low, high = 0, min(limit, len(expected))
        assert ids(page) == expected[low:high]
        for forward in moves:
            if forward and page.has_next:
                page = paginate(
                    connection, select, order_by=order, limit=limit, after=page.next_cursor
                )
                low, high = high, min(high + limit, len(expected))
            elif not forward and page.has_prev:
                page = paginate(
                    connection, select, order_by=order, limit=limit, before=page.prev_cursor
                )
                low, high = max(low - limit, 0), low
            else:
                continue
            assert ids(page) == expected[low:high]


# -- EXPLAIN: the seek is an index range condition -----------------------------------


@pytest.fixture(scope="module")
def events(engine: sa.Engine) -> Iterator[sa.Table]:
    metadata = sa.MetaData()
    table = sa.Table(
        f"pagination_events_{SUFFIX}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Index(f"ix_events_created_{SUFFIX}", "created_at", "id"),
        sa.Index(f"ix_events_status_{SUFFIX}", "status", "id"),
    )
    metadata.create_all(engine)
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                f"INSERT INTO {table.name} (id, created_at, status, payload) "
                "SELECT g, :t0 + (g / 3) * interval '1 second', "
                "(ARRAY['new','paid','shipped','done','void'])[g % 5 + 1], 'x' "
                "FROM generate_series(1, 20000) AS g"
            ),
            {"t0": t0},
        )
        connection.execute(sa.text(f"ANALYZE {table.name}"))
    yield table
    metadata.drop_all(engine)


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def explain(connection: sa.Connection, statement: Any, params: dict[str, Any]) -> list[Any]:
    raw = connection.execute(_Explain(statement), params).scalar()
    document = json.loads(raw) if isinstance(raw, str) else raw
    return list(plan_nodes(document[0]["Plan"]))


@pytest.mark.parametrize(
    ("order", "index_columns"),
    [
        (lambda t: [t.c.created_at], ("created_at", "id")),
        (lambda t: [t.c.created_at.desc()], ("created_at", "id")),
        (lambda t: [t.c.status, t.c.id], ("status", "id")),
    ],
    ids=["created_at-asc", "created_at-desc", "status-id"],
)
def test_explain_shows_the_row_value_as_an_index_condition(
    engine: sa.Engine, events: sa.Table, order: Any, index_columns: tuple[str, str]
) -> None:
    with engine.connect() as connection:
        first = paginate(connection, sa.select(events), order_by=order(events), limit=50)
        plan = KeysetPlan(sa.select(events), order(events), limit=50, dialect=engine.dialect)
        anchor = plan.decode(first.next_cursor)
        for backwards in (False, True):
            statement, params = plan.statement(anchor, backwards=backwards)
            nodes = explain(connection, statement, params)
            scans = [
                n
                for n in nodes
                if n["Node Type"] in ("Index Scan", "Index Scan Backward", "Index Only Scan")
            ]
            assert scans, nodes
            condition = scans[0].get("Index Cond", "")
            assert all(column in condition for column in index_columns), condition
            assert "ROW(" in condition or f"({index_columns[0]}, {index_columns[1]})" in condition
            assert "Filter" not in scans[0], scans[0]
            assert not any(n["Node Type"] == "Sort" for n in nodes), nodes


def test_explain_mixed_directions_bound_the_leading_run(
    engine: sa.Engine, events: sa.Table
) -> None:
    order = [events.c.status, events.c.id.desc()]
    with engine.connect() as connection:
        first = paginate(connection, sa.select(events), order_by=order, limit=50)
        plan = KeysetPlan(sa.select(events), order, limit=50, dialect=engine.dialect)
        statement, params = plan.statement(plan.decode(first.next_cursor))
        nodes = explain(connection, statement, params)
        conditions = " ".join(n.get("Index Cond", "") for n in nodes)
        assert "status" in conditions and ">=" in conditions, nodes


def test_deep_page_reads_only_one_page_of_rows(engine: sa.Engine, events: sa.Table) -> None:
    order = [events.c.created_at]
    with engine.connect() as connection:
        plan = KeysetPlan(sa.select(events), order, limit=50, dialect=engine.dialect)
        deep = connection.execute(
            sa.select(events.c.created_at, events.c.id)
            .order_by(events.c.created_at, events.c.id)
            .offset(19_000)
            .limit(1)
        ).one()
        statement, params = plan.statement(tuple(deep))
        analyzed = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + str(statement.compile(dialect=engine.dialect)),
            {**params, "param_1": 51},
        ).scalar()
        document = json.loads(analyzed) if isinstance(analyzed, str) else analyzed
        top = document[0]["Plan"]
        assert top["Actual Rows"] <= 51
        scanned = [n for n in plan_nodes(top) if "Index" in n["Node Type"]]
        assert scanned and scanned[0]["Actual Rows"] <= 51


# -- values of every type, custom types, forged cursors ----------------------------------


class Lowered(sa.types.TypeDecorator[str]):
    """A string stored lower-cased by a SQL bind expression (sqlalchemy#8992's case)."""

    impl = sa.String
    cache_ok = True

    def bind_expression(self, bindvalue: Any) -> Any:
        return sa.func.lower(bindvalue)


@pytest.fixture(scope="module")
def typed(engine: sa.Engine) -> Iterator[sa.Table]:
    metadata = sa.MetaData()
    table = sa.Table(
        f"pagination_typed_{SUFFIX}",
        metadata,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("price", sa.Numeric(12, 3), nullable=False),
        sa.Column("flag", sa.Boolean, nullable=False),
        sa.Column("name", Lowered(20), nullable=False),
        sa.Column("small", sa.SmallInteger, nullable=False),
        sa.Column("blob", sa.LargeBinary, nullable=False),
    )
    metadata.create_all(engine)
    rows = [
        {
            "id": uuid.UUID(int=i * 7919),
            "at": None
            if i % 5 == 0
            else dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=i % 7),
            "day": dt.date(2024, 1, 1) + dt.timedelta(days=i % 4),
            "price": decimal.Decimal(i % 6) / 8,
            "flag": bool(i % 2),
            "name": f"N{i % 9}",
            "small": i % 3 - 1,
            "blob": bytes([i % 4]),
        }
        for i in range(1, 61)
    ]
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
    yield table
    metadata.drop_all(engine)


@pytest.mark.parametrize(
    "order",
    [
        lambda t: [t.c.at.desc().nulls_first()],
        lambda t: [t.c.day, t.c.price.desc()],
        lambda t: [t.c.flag, t.c.name],
        lambda t: [t.c.name.desc(), t.c.small],
        lambda t: [t.c.blob, t.c.at.nulls_last()],
        lambda t: [t.c.id.desc()],
    ],
    ids=["timestamptz-nulls", "date-numeric", "bool-custom", "custom-smallint", "bytea", "uuid"],
)
def test_every_value_type_round_trips_through_signed_cursors(
    engine: sa.Engine, typed: sa.Table, order: Any
) -> None:
    codec = CursorCodec(secret="p" * 32)
    keys = order(typed)
    with engine.connect() as connection:
        seen: list[Any] = []
        page = paginate(connection, sa.select(typed.c.id), order_by=keys, limit=7, codec=codec)
        while True:
            seen += [row.id for row in page.items]
            if not page.has_next:
                break
            page = paginate(
                connection,
                sa.select(typed.c.id),
                order_by=keys,
                limit=7,
                after=page.next_cursor,
                codec=codec,
            )
        expected = (
            connection.execute(
                sa.select(typed.c.id).order_by(
                    *keys, typed.c.id.desc() if _last_desc(keys) else typed.c.id
                )
            )
            .scalars()
            .all()
        )
    assert seen == expected and len(seen) == 60


def _last_desc(keys: list[Any]) -> bool:
    return "DESC" in str(keys[-1]).upper()


def test_forged_cursor_that_would_break_the_sql_is_an_invalid_cursor(
    engine: sa.Engine, typed: sa.Table
) -> None:
    plan = KeysetPlan(sa.select(typed), [typed.c.small], limit=5)
    with engine.connect() as connection:
        for values in ([2**20, uuid.uuid4()], ["1", uuid.uuid4()], [1, "not-a-uuid"]):
            forged = CursorCodec().encode(values, fingerprint=plan.fingerprint)
            with pytest.raises(InvalidCursor):
                paginate(connection, sa.select(typed), order_by=[typed.c.small], after=forged)
        plan_price = KeysetPlan(sa.select(typed), [typed.c.price], limit=5)
        fine = (decimal.Decimal("1E+50"), decimal.Decimal("NaN"), float("inf"), 10**18)
        out_of_range = (decimal.Decimal("-1E999999999"), decimal.Decimal("1E-20000"), 10**40)
        for price in fine + out_of_range:
            forged = CursorCodec().encode([price, uuid.uuid4()], fingerprint=plan_price.fingerprint)
            if price in out_of_range:
                with pytest.raises(InvalidCursor):
                    paginate(connection, sa.select(typed), order_by=[typed.c.price], after=forged)
            else:  # odd but harmless positions: a page (maybe empty), never a SQL error
                paginate(connection, sa.select(typed), order_by=[typed.c.price], after=forged)
        plan_text = KeysetPlan(sa.select(typed), [typed.c.name], limit=5)
        forged = CursorCodec().encode(["a\x00b", uuid.uuid4()], fingerprint=plan_text.fingerprint)
        with pytest.raises(InvalidCursor):
            paginate(connection, sa.select(typed), order_by=[typed.c.name], after=forged)


# -- ORM, totals, async ----------------------------------------------------------------


def test_orm_join_and_totals(engine: sa.Engine) -> None:
    with Session(engine) as session:
        select = sa.select(Order).join(Order.customer).where(Customer.country == "FR")
        page = paginate(
            session, select, order_by=[Order.shipped_at.desc().nulls_last()], limit=5, total="exact"
        )
        expected_total = session.scalar(
            sa.select(sa.func.count())
            .select_from(Order)
            .join(Order.customer)
            .where(Customer.country == "FR")
        )
        assert page.total == expected_total and page.total_exact
        estimate = paginate(session, select, order_by=[Order.id], limit=5, total="estimate")
        assert estimate.total is not None and estimate.total >= 0 and not estimate.total_exact
        capped = paginate(
            session, select, order_by=[Order.id], limit=5, total="capped", total_cap=3
        )
        assert (capped.total, capped.total_exact) == (3, False)


@pytest.fixture
async def async_engine(pg_url: str, engine: sa.Engine) -> AsyncIterator[Any]:
    async_engine = create_async_engine(pg_url)
    yield async_engine
    await async_engine.dispose()


async def test_async_session_walk_matches_sync(async_engine: Any, engine: sa.Engine) -> None:
    order = [Order.created_at.desc(), Order.status]
    with Session(engine) as session:
        expected = session.scalars(sa.select(Order.id).order_by(*order, Order.id)).all()
    async with AsyncSession(async_engine) as session:
        seen: list[int] = []
        page = await apaginate(session, sa.select(Order), order_by=order, limit=4)
        while True:
            seen += [o.id for o in page.items]
            if not page.has_next:
                break
            page = await apaginate(
                session, sa.select(Order), order_by=order, limit=4, after=page.next_cursor
            )
        back = await apaginate(
            session, sa.select(Order), order_by=order, limit=4, before=page.prev_cursor
        )
    assert seen == list(expected)
    tail = len(page.items)
    assert [o.id for o in back.items] == list(expected)[-tail - 4 : -tail]
