"""paginate() on SQLite: ORM entities, Core tables, joins, aliases, labels, totals, cursors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased
from sqlalchemy.pool import StaticPool

from scalekit.errors import ConfigurationError, InvalidCursor
from scalekit.pagination import CursorCodec, Page, iter_pages, iter_rows, paginate
from tests.unit.pagination._models import (
    T0,
    Base,
    Customer,
    Order,
    customers_rows,
    orders_rows,
)

SECRET = "s" * 32


@pytest.fixture(scope="module")
def engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(Customer.__table__.insert(), customers_rows())
        connection.execute(Order.__table__.insert(), orders_rows())
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: sa.Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


def walk(executor: Any, select: Any, **kw: Any) -> list[Any]:
    items: list[Any] = []
    page = paginate(executor, select, **kw)
    while True:
        items += page.items
        if not page.has_next:
            return items
        page = paginate(executor, select, after=page.next_cursor, **kw)


def reference(session: Session, select: Any, *order: Any) -> list[Any]:
    return list(session.execute(select.order_by(*order)))


def test_orm_entities_come_back_as_entities(session: Session) -> None:
    page = paginate(session, sa.select(Order), order_by=[Order.created_at.desc()], limit=5)
    assert len(page) == 5 and all(isinstance(o, Order) for o in page.items)
    expected = session.scalars(
        sa.select(Order).order_by(Order.created_at.desc(), Order.id.desc())
    ).all()
    assert walk(session, sa.select(Order), order_by=[Order.created_at.desc()], limit=4) == expected


def test_core_rows_keep_their_columns_and_hide_the_added_keys(engine: sa.Engine) -> None:
    orders = Order.__table__
    with engine.connect() as connection:
        page = paginate(
            connection, sa.select(orders.c.status), order_by=[orders.c.created_at], limit=3
        )
        assert all(tuple(row._fields) == ("status",) for row in page.items)
        rows = walk(connection, sa.select(orders.c.status), order_by=[orders.c.created_at], limit=3)
        expected = connection.execute(
            sa.select(orders.c.status).order_by(orders.c.created_at, orders.c.id)
        ).all()
    assert rows == expected


def test_filters_joins_and_labelled_expressions(session: Session) -> None:
    doubled = (Order.amount_cents * 2).label("doubled")
    select = (
        sa.select(Order.id, Customer.email, doubled)
        .join(Order.customer)
        .where(Customer.country == "FR")
    )
    got = walk(session, select, order_by=[doubled.desc(), Customer.email], limit=4)
    expected = reference(session, select, doubled.desc(), Customer.email, Order.id)
    assert got == expected and len(got) > 10
    assert all(row._fields == ("id", "email", "doubled") for row in got)


def test_one_to_many_join_pages_every_pair(session: Session) -> None:
    select = sa.select(Customer.id, Order.id.label("order_id")).join(Customer.orders)
    got = walk(session, select, order_by=[Customer.country], limit=5)
    assert len(got) == 37 and len(set(got)) == 37


def test_outer_join_with_nulls(session: Session) -> None:
    session.add(Customer(id=99, email="lonely@x.io", country="FR"))
    session.flush()
    select = sa.select(Customer.id, Order.id.label("oid")).outerjoin(Customer.orders)
    got = walk(session, select, order_by=[Customer.id.desc()], limit=4)
    assert (99, None) in got and len(got) == 38 and len(set(got)) == 38
    session.rollback()


def test_aliased_entities(session: Session) -> None:
    other = aliased(Order)
    select = sa.select(other).where(other.status != "void")
    got = walk(session, select, order_by=[other.status, other.created_at.desc()], limit=6)
    expected = session.scalars(
        select.order_by(other.status, other.created_at.desc(), other.id.desc())
    ).all()
    assert got == expected


def test_nullable_key_with_policy_keeps_null_rows(session: Session) -> None:
    for policy in ("first", "last"):
        key = Order.shipped_at.desc()
        key = key.nulls_first() if policy == "first" else key.nulls_last()
        got = walk(session, sa.select(Order), order_by=[key], limit=5)
        assert len(got) == 37
        nulls = [o for o in got if o.shipped_at is None]
        assert len(nulls) == 9
        assert (got[: len(nulls)] if policy == "first" else got[-len(nulls) :]) == nulls


def test_first_and_last_pages_and_flags(session: Session) -> None:
    first = paginate(session, sa.select(Order), order_by=[Order.id], limit=10)
    assert (first.has_prev, first.has_next, first.prev_cursor) == (False, True, None)
    assert [o.id for o in first.items] == list(range(1, 11))
    last = paginate(session, sa.select(Order), order_by=[Order.id], limit=10, last=True)
    assert [o.id for o in last.items] == list(range(28, 38))
    assert (last.has_prev, last.has_next, last.next_cursor) == (True, False, None)
    assert last.end_cursor is not None  # for polling the tail
    before = paginate(
        session, sa.select(Order), order_by=[Order.id], limit=10, before=last.prev_cursor
    )
    assert [o.id for o in before.items] == list(range(18, 28))
    whole = paginate(session, sa.select(Order), order_by=[Order.id], limit=100)
    assert (whole.has_prev, whole.has_next, len(whole)) == (False, False, 37)


def test_page_past_the_end_offers_the_way_back(session: Session) -> None:
    last = paginate(session, sa.select(Order), order_by=[Order.id], limit=10, last=True)
    empty = paginate(
        session, sa.select(Order), order_by=[Order.id], limit=10, after=last.end_cursor
    )
    assert empty.items == [] and not empty.has_next and empty.has_prev
    back = paginate(
        session, sa.select(Order), order_by=[Order.id], limit=10, before=empty.prev_cursor
    )
    assert [o.id for o in back.items] == list(range(28, 38))


def test_empty_result(session: Session) -> None:
    page = paginate(session, sa.select(Order).where(Order.id < 0), order_by=[Order.id])
    assert page == Page([], None, None, False, False)


@pytest.mark.parametrize(
    ("mode", "cap", "total", "exact"),
    [
        ("exact", 1000, 8, True),
        ("capped", 5, 5, False),
        ("capped", 8, 8, True),
        ("estimate", 1000, 8, True),
    ],
)
def test_totals(session: Session, mode: Any, cap: int, total: int, exact: bool) -> None:
    select = sa.select(Order).where(Order.status == "paid")
    page = paginate(session, select, order_by=[Order.id], limit=3, total=mode, total_cap=cap)
    assert (page.total, page.total_exact) == (total, exact)
    assert paginate(session, select, order_by=[Order.id], limit=3).total is None


def test_signed_cursors_reject_tampering_and_other_queries(session: Session) -> None:
    codec = CursorCodec(secret=SECRET)
    page = paginate(session, sa.select(Order), order_by=[Order.created_at], limit=5, codec=codec)
    assert page.next_cursor is not None
    forged = CursorCodec().encode([None, 1])
    for bad in (forged, page.next_cursor[:-2] + "AA", "", "x" * 5000, "not a cursor!"):
        with pytest.raises(InvalidCursor):
            paginate(session, sa.select(Order), order_by=[Order.created_at], after=bad, codec=codec)
    with pytest.raises(InvalidCursor) as info:
        paginate(
            session, sa.select(Order), order_by=[Order.status], after=page.next_cursor, codec=codec
        )
    assert info.value.reason == "wrong_query"


def test_bind_filters_ties_cursors_to_the_where_clause(session: Session) -> None:
    paid = sa.select(Order).where(Order.status == "paid")
    page = paginate(session, paid, order_by=[Order.id], limit=2, bind_filters=True)
    paginate(session, paid, order_by=[Order.id], limit=2, bind_filters=True, after=page.next_cursor)
    with pytest.raises(InvalidCursor) as info:
        paginate(
            session,
            sa.select(Order).where(Order.status == "new"),
            order_by=[Order.id],
            bind_filters=True,
            after=page.next_cursor,
        )
    assert info.value.reason == "wrong_query"


def test_unsigned_forged_cursor_with_wrong_types_is_invalid_not_a_sql_error(
    session: Session,
) -> None:
    page = paginate(session, sa.select(Order), order_by=[Order.created_at], limit=2)
    from scalekit.pagination import KeysetPlan

    plan = KeysetPlan(sa.select(Order), [Order.created_at], limit=2)
    forged = CursorCodec().encode(["yesterday", "1"], fingerprint=plan.fingerprint)
    with pytest.raises(InvalidCursor) as info:
        paginate(session, sa.select(Order), order_by=[Order.created_at], after=forged)
    assert info.value.reason == "malformed"
    assert page.next_cursor


def test_after_and_before_together_is_a_configuration_error(session: Session) -> None:
    page = paginate(session, sa.select(Order), order_by=[Order.id], limit=2)
    with pytest.raises(ConfigurationError) as info:
        paginate(
            session,
            sa.select(Order),
            order_by=[Order.id],
            after=page.next_cursor,
            before=page.next_cursor,
        )
    assert info.value.parameter == "before"
    with pytest.raises(ConfigurationError):
        paginate(session, sa.select(Order), order_by=[Order.id], total="all")  # type: ignore[arg-type]


def test_orm_select_on_a_connection_or_an_engine_is_refused(engine: sa.Engine) -> None:
    with engine.connect() as connection, pytest.raises(ConfigurationError) as info:
        paginate(connection, sa.select(Order), order_by=[Order.id])
    assert info.value.parameter == "session_or_connection"
    with pytest.raises(ConfigurationError):
        paginate(engine, sa.select(Order), order_by=[Order.id])  # type: ignore[arg-type]


def test_group_by_pages_groups(session: Session) -> None:
    count = sa.func.count().label("n")
    select = sa.select(Order.status, count).group_by(Order.status)
    got = walk(session, select, order_by=[count.desc()], limit=2)
    expected = reference(session, select, count.desc(), Order.status.desc())
    assert got == expected and len(got) == 5


def test_iter_pages_and_iter_rows_cover_everything(session: Session) -> None:
    pages = list(iter_pages(session, sa.select(Order), order_by=[Order.status], limit=8))
    assert [len(p) for p in pages] == [8, 8, 8, 8, 5]
    ids = [o.id for o in iter_rows(session, sa.select(Order), order_by=[Order.status], limit=8)]
    assert sorted(ids) == list(range(1, 38)) and len(ids) == 37
    assert list(iter_rows(session, sa.select(Order).where(Order.id < 0), order_by=[Order.id])) == []


def test_fresh_aliases_on_every_call_reuse_nothing_stale(session: Session) -> None:
    # Same structure, new alias objects per call (as in a request handler): the plan
    # cache must not hand back sort keys bound to an earlier alias (a cartesian product).
    def page_of(after: str | None) -> Page:
        order = aliased(Order)
        return paginate(
            session, sa.select(order), order_by=[order.created_at], limit=5, after=after
        )

    seen: list[int] = []
    page = page_of(None)
    while True:
        seen += [o.id for o in page.items]
        if not page.has_next:
            break
        page = page_of(page.next_cursor)
    expected = session.scalars(sa.select(Order.id).order_by(Order.created_at, Order.id)).all()
    assert seen == expected


def test_self_join_sort_keys_on_either_alias_are_not_confused(session: Session) -> None:
    first, second = aliased(Order), aliased(Order)
    select = sa.select(first.id, second.id.label("other")).join(
        second, second.customer_id == first.customer_id
    )
    by_first = walk(session, select, order_by=[first.amount_cents, second.id], limit=25)
    by_second = walk(session, select, order_by=[second.amount_cents, first.id], limit=25)
    assert by_first == reference(session, select, first.amount_cents, second.id, first.id)
    assert by_second == reference(session, select, second.amount_cents, first.id, second.id)
    assert by_first != by_second


def test_same_named_tables_of_two_metadata_are_kept_apart(engine: sa.Engine) -> None:
    tables = [
        sa.Table(
            "pgn_twins",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column(name, sa.Integer, nullable=False),
        )
        for name in ("a", "b")
    ]
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE pgn_twins (id INTEGER PRIMARY KEY, a INT, b INT)")
        connection.exec_driver_sql("INSERT INTO pgn_twins VALUES (1, 3, 1), (2, 2, 2), (3, 1, 3)")
    try:
        with engine.connect() as connection:
            by_a = paginate(connection, sa.select(tables[0].c.id), order_by=[tables[0].c.a])
            by_b = paginate(connection, sa.select(tables[1].c.id), order_by=[tables[1].c.b])
        assert [row.id for row in by_a.items] == [3, 2, 1]
        assert [row.id for row in by_b.items] == [1, 2, 3]
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE pgn_twins")


def test_sort_key_outside_the_from_clause_is_a_configuration_error(session: Session) -> None:
    with pytest.raises(ConfigurationError, match="not in the select's FROM") as info:
        paginate(session, sa.select(Order), order_by=[Customer.email])
    assert info.value.parameter == "order_by"


def test_sqlite_integer_keys_beyond_32_bits_round_trip(engine: sa.Engine) -> None:
    # SQLite keeps every INTEGER in 64 bits: a cursor at 2**40 is legitimate there.
    table = sa.Table(
        "pgn_wide",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    )
    table.create(engine)
    try:
        with engine.begin() as connection:
            connection.execute(table.insert(), [{"id": 2**40 + i} for i in range(5)])
            got = walk(connection, sa.select(table), order_by=[table.c.id], limit=2)
        assert [row.id for row in got] == [2**40 + i for i in range(5)]
    finally:
        table.drop(engine)


def test_each_statement_shape_is_compiled_once_and_only_values_change(engine: sa.Engine) -> None:
    orders = Order.__table__
    cache: dict[Any, Any] = {}
    with engine.connect() as plain:
        connection = plain.execution_options(compiled_cache=cache)
        pages = 0
        page = paginate(connection, sa.select(orders), order_by=[orders.c.status], limit=4)
        while page.has_next:
            # a new select object on every request, as in a web handler
            page = paginate(
                connection,
                sa.select(orders),
                order_by=[orders.c.status],
                limit=4,
                after=page.next_cursor,
            )
            pages += 1
        assert pages >= 8
        # one compiled form for the first page, one for every page after a cursor
        assert len(cache) == 2
        paginate(connection, sa.select(orders), order_by=[orders.c.status], limit=4, last=True)
        assert len(cache) == 3


def test_relay_edge_cursors_from_the_plan_resume_after_that_edge(session: Session) -> None:
    # docs/pagination.md, "Relay connections": one cursor per edge.
    from scalekit.pagination import KeysetPlan

    codec = CursorCodec(secret=SECRET)
    order = [Order.created_at.desc()]
    plan = KeysetPlan(sa.select(Order), order, limit=4, codec=codec)
    page = paginate(session, sa.select(Order), order_by=order, limit=4, codec=codec)
    edges = [plan.encode((o.created_at, o.id)) for o in page.items]
    assert edges[-1] == page.end_cursor and edges[0] == page.start_cursor
    after_second = paginate(
        session, sa.select(Order), order_by=order, limit=4, after=edges[1], codec=codec
    )
    assert [o.id for o in after_second.items][:2] == [o.id for o in page.items][2:]


def test_same_structure_and_values_reuse_the_built_page_statement(engine: sa.Engine) -> None:
    # The plan cache keeps the built statements for a select's bound values, so a
    # page costs no statement building (and SQLAlchemy keys each statement once).
    from scalekit.pagination._plan_cache import cached_plan

    orders = Order.__table__

    def plan_for(select: Any, codec: CursorCodec | None = None) -> Any:
        return cached_plan(
            select, [orders.c.created_at], limit=3, dialect=engine.dialect, codec=codec
        )

    def statement(select: Any, codec: CursorCodec | None = None) -> Any:
        return plan_for(select, codec).statement((T0, 1))[0]

    seven = statement(sa.select(orders).where(orders.c.customer_id == 7))
    assert statement(sa.select(orders).where(orders.c.customer_id == 7)) is seven
    eight = statement(sa.select(orders).where(orders.c.customer_id == 8))
    assert eight is not seven
    assert statement(sa.select(orders).where(orders.c.customer_id == 8)) is eight
    # 7 and 7.0 and True are equal in Python, not to every driver: never shared.
    assert statement(sa.select(orders).where(orders.c.customer_id == 7.0)) is not seven
    # IN lists are values too; unhashable values fall back to a fresh statement.
    listed = statement(sa.select(orders).where(orders.c.customer_id.in_([7, 8])))
    assert statement(sa.select(orders).where(orders.c.customer_id.in_([7, 8]))) is listed
    assert statement(sa.select(orders).where(orders.c.customer_id.in_([7, 9]))) is not listed
    # Another codec shares the statements, and encodes with its own key.
    signed = CursorCodec(secret=SECRET)
    select = sa.select(orders).where(orders.c.customer_id == 7)
    assert statement(select, signed) is seven
    assert plan_for(select, signed).encode((T0, 1)) != plan_for(select).encode((T0, 1))
    with pytest.raises(ConfigurationError, match="CursorCodec"):
        plan_for(select, "not a codec")  # type: ignore[arg-type]


@pytest.mark.parametrize("customer", [7, 8, 9])
def test_pages_of_many_filter_values_match_the_reference(session: Session, customer: int) -> None:
    # Every customer's pages come from its own values, whatever the cache holds.
    for _ in range(2):
        for other in (customer, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, customer):
            select = sa.select(Order).where(Order.customer_id == other)
            got = walk(session, select, order_by=[Order.created_at], limit=2)
            assert got == [row[0] for row in reference(session, select, Order.created_at, Order.id)]
