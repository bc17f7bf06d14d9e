"""Building a plan: unique order, NULL policy, hidden keys, and the SQL shape of the seek."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import asyncpg, psycopg, psycopg2
from sqlalchemy.orm import aliased

from scalekit.errors import ConfigurationError
from scalekit.pagination import CursorCodec, KeysetPlan, SortKey
from tests.unit.pagination._models import T0, Customer, Order, no_key

PG = psycopg.dialect()


def plan(select: Any, order_by: Any, **kw: Any) -> KeysetPlan:
    kw.setdefault("dialect", PG)
    return KeysetPlan(select, order_by, limit=kw.pop("limit", 10), **kw)


def sql(p: KeysetPlan, anchor: Any, *, backwards: bool = False, dialect: Any = None) -> str:
    statement, _ = p.statement(anchor, backwards=backwards)
    dialect = dialect if dialect is not None else psycopg2.dialect()
    return " ".join(str(statement.compile(dialect=dialect)).split())


def test_primary_key_is_appended_in_the_direction_of_the_last_key() -> None:
    p = plan(sa.select(Order), [Order.created_at.desc()])
    assert p.keys == ("pgn_orders.created_at DESC", "pgn_orders.id DESC")


def test_order_already_unique_is_left_alone() -> None:
    assert plan(sa.select(Order), [Order.id]).keys == ("pgn_orders.id ASC",)
    # A NOT NULL unique column identifies the row too.
    assert plan(sa.select(Customer), [Customer.email]).keys == ("pgn_customers.email ASC",)


def test_nullable_unique_column_is_not_enough() -> None:
    p = plan(sa.select(Customer), [Customer.nickname.nulls_last()])
    assert p.keys[-1] == "pgn_customers.id ASC"


def test_many_to_one_join_is_identified_through_the_join_condition() -> None:
    select = sa.select(Order, Customer).join(Order.customer)
    assert plan(select, [Order.id]).keys == ("pgn_orders.id ASC",)


def test_one_to_many_join_appends_the_many_side_key() -> None:
    select = sa.select(Customer).join(Customer.orders)
    assert plan(select, [Customer.email]).keys == ("pgn_customers.email ASC", "pgn_orders.id ASC")


def test_implicit_join_in_where_counts_as_a_join_condition() -> None:
    select = sa.select(Order.id, Customer.email).where(Order.customer_id == Customer.id)
    assert plan(select, [Order.id]).keys == ("pgn_orders.id ASC",)


def test_outer_joined_columns_need_a_null_policy_and_appended_keys_get_one() -> None:
    select = sa.select(Customer, Order.id).outerjoin(Customer.orders)
    with pytest.raises(ConfigurationError) as info:
        plan(select, [Customer.id, Order.created_at])
    assert info.value.parameter == "order_by"
    p = plan(select, [Customer.id])
    assert p.keys == ("pgn_customers.id ASC", "pgn_orders.id ASC NULLS LAST")


def test_aliases_are_tables_of_their_own() -> None:
    other = aliased(Order)
    select = sa.select(Order.id, other.id).join(other, other.customer_id == Order.customer_id)
    p = plan(select, [Order.id])
    assert len(p.keys) == 2 and p.keys[1].endswith(".id ASC")


def test_nullable_key_without_null_policy_fails_at_build_time() -> None:
    with pytest.raises(ConfigurationError, match="may be NULL") as info:
        plan(sa.select(Order), [Order.shipped_at])
    assert info.value.parameter == "order_by"
    plan(sa.select(Order), [Order.shipped_at.desc().nulls_last()])
    plan(sa.select(Order), [SortKey(Order.shipped_at, descending=True, nulls="first")])


def test_expression_nullability_is_inferred_conservatively() -> None:
    plan(sa.select(Order), [sa.func.lower(Order.status)])  # lower() of NOT NULL
    plan(sa.select(Order), [(Order.amount_cents * 2).label("double")])
    with pytest.raises(ConfigurationError):
        plan(sa.select(Order), [sa.func.nullif(Order.status, "x")])
    plan(sa.select(Order), [SortKey(sa.func.nullif(Order.status, "x"), nullable=False)])
    plan(sa.select(Order), [sa.func.coalesce(Order.shipped_at, Order.created_at)])


def test_table_without_any_key_cannot_be_made_unique() -> None:
    with pytest.raises(ConfigurationError, match="no primary key") as info:
        plan(sa.select(no_key), [no_key.c.a])
    assert info.value.parameter == "order_by"


@pytest.mark.parametrize(
    ("select", "order_by", "parameter"),
    [
        (sa.select(Order).limit(5), [Order.id], "select"),
        (sa.select(Order).offset(5), [Order.id], "select"),
        (sa.select(Order).distinct(), [Order.created_at], "select"),
        (sa.select(Order), [], "order_by"),
        (sa.select(Order), ["nope"], "order_by"),
        (sa.select(Order), [42], "order_by"),
        (sa.select(Order), [SortKey(Order.id, nulls="middle")], "order_by"),  # type: ignore[arg-type]
        (sa.select(Order), [Order.id, Order.id.desc()], "order_by"),
        ("SELECT 1", [Order.id], "select"),
    ],
)
def test_bad_arguments_raise_configuration_error(
    select: Any, order_by: Any, parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        plan(select, order_by)
    assert info.value.parameter == parameter


@pytest.mark.parametrize("limit", [0, -1, True, 2.5])
def test_bad_limit(limit: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        KeysetPlan(sa.select(Order), [Order.id], limit=limit)
    assert info.value.parameter == "limit"


def test_codec_must_be_a_codec() -> None:
    with pytest.raises(ConfigurationError) as info:
        KeysetPlan(sa.select(Order), [Order.id], limit=1, codec="secret")  # type: ignore[arg-type]
    assert info.value.parameter == "codec"


def test_select_order_by_is_used_when_order_by_is_omitted() -> None:
    p = plan(sa.select(Order).order_by(Order.status.desc()), None)
    assert p.keys == ("pgn_orders.status DESC", "pgn_orders.id DESC")


def test_label_names_and_labelled_expressions_can_be_keys() -> None:
    total = (Order.amount_cents * 2).label("double")
    select = sa.select(Order.id, total)
    assert plan(select, ["double"]).keys[0].startswith("pgn_orders.amount_cents * ")
    text = sql(plan(select, [total.desc()]), (1, 2))
    assert "ORDER BY pgn_orders.amount_cents * " in text


# -- SQL shape ------------------------------------------------------------------


def test_same_direction_keys_become_one_row_value_comparison() -> None:
    text = sql(plan(sa.select(Order), [Order.created_at, Order.id]), (T0, 5))
    assert "WHERE (pgn_orders.created_at, pgn_orders.id) > (" in text
    assert " OR " not in text
    assert "ORDER BY pgn_orders.created_at ASC, pgn_orders.id ASC" in text


def test_each_row_value_element_is_its_own_typed_parameter() -> None:
    # sqlalchemy#8992 workaround: no tuple-valued parameter; one cast per element,
    # matching the column type, so PostgreSQL keeps an index range condition.
    for dialect in (psycopg.dialect(), asyncpg.dialect()):
        text = sql(
            plan(sa.select(Order), [Order.created_at, Order.id], dialect=dialect),
            (T0, 5),
            dialect=dialect,
        )
        assert re.search(
            r"> \((%\(scalekit_k0\)s|\$1)::TIMESTAMP WITH TIME ZONE, "
            r"(%\(scalekit_k1\)s|\$2)::INTEGER\)",
            text,
        ), text


def test_custom_type_bind_expression_is_kept_inside_the_row_value() -> None:
    class Lowered(sa.types.TypeDecorator[str]):
        impl = sa.String
        cache_ok = True

        def bind_expression(self, bindvalue: Any) -> Any:
            return sa.func.lower(bindvalue)

    table = sa.Table(
        "lowered",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", Lowered(20), nullable=False),
    )
    text = sql(plan(sa.select(table), [table.c.name]), ("Ab", 1), dialect=PG)
    assert "(lowered.name, lowered.id) > (lower(%(scalekit_k0)s::VARCHAR)" in text


def test_direction_change_splits_runs_guarded_by_the_leading_run() -> None:
    text = sql(plan(sa.select(Order), [Order.status, Order.created_at.desc()]), ("paid", T0, 3))
    assert re.search(
        r"WHERE pgn_orders.status >= \S+ AND \(pgn_orders.status > \S+ OR "
        r"\(pgn_orders.created_at, pgn_orders.id\) < \(",
        text,
    ), text


def test_expanded_form_without_row_values() -> None:
    p = plan(sa.select(Order), [Order.created_at, Order.id], row_values=False)
    text = sql(p, (T0, 5))
    assert "(pgn_orders.created_at, pgn_orders.id)" not in text
    assert re.search(
        r"WHERE pgn_orders.created_at >= \S+ AND \(pgn_orders.created_at > \S+ OR "
        r"pgn_orders.id > \S+\)",
        text,
    ), text


def test_row_values_default_by_dialect() -> None:
    class Other(sqlite.dialect):  # type: ignore[misc, name-defined]
        name = "mssql-like"

    text = sql(
        plan(sa.select(Order), [Order.created_at], dialect=Other()),
        (T0, 5),
        dialect=sqlite.dialect(),
    )
    assert "(pgn_orders.created_at, pgn_orders.id)" not in text
    text = sql(
        plan(sa.select(Order), [Order.created_at], dialect=sqlite.dialect()),
        (T0, 5),
        dialect=sqlite.dialect(),
    )
    assert "(pgn_orders.created_at, pgn_orders.id) > (" in text


@pytest.mark.parametrize(
    ("order", "anchor", "expected"),
    [
        # cursor in the NULL block, NULLs last: only later NULLs (by id) follow
        (
            Order.shipped_at.nulls_last(),
            (None, 5),
            r"WHERE pgn_orders.shipped_at IS NULL AND pgn_orders.id > \S+ ORDER BY",
        ),
        # cursor in the NULL block, NULLs first: everything non-NULL follows
        (
            Order.shipped_at.nulls_first(),
            (None, 5),
            r"WHERE pgn_orders.shipped_at IS NOT NULL OR \(?pgn_orders.shipped_at IS NULL AND "
            r"pgn_orders.id > \S+\)?"
            r"|WHERE pgn_orders.shipped_at IS NOT NULL OR pgn_orders.id > \S+",
        ),
        # non-NULL cursor, NULLs last: the NULL block still follows
        (
            Order.shipped_at.nulls_last(),
            (T0, 5),
            r"\(pgn_orders.shipped_at >= \S+ OR pgn_orders.shipped_at IS NULL\) AND "
            r"\(pgn_orders.shipped_at > \S+ OR pgn_orders.shipped_at IS NULL"
            r" OR pgn_orders.id > \S+\)",
        ),
        # non-NULL cursor, NULLs first: NULLs are behind
        (
            Order.shipped_at.nulls_first(),
            (T0, 5),
            r"WHERE pgn_orders.shipped_at >= \S+ AND \(pgn_orders.shipped_at > \S+ OR "
            r"pgn_orders.id > \S+\)",
        ),
    ],
)
def test_null_branches(order: Any, anchor: Any, expected: str) -> None:
    text = sql(plan(sa.select(Order), [order]), anchor)
    assert re.search(expected, text), text
    assert "NULLS" in text.split("ORDER BY")[1]


def test_statements_are_cached_per_shape_and_only_values_change() -> None:
    p = plan(sa.select(Order), [Order.shipped_at.nulls_last()])
    first, params1 = p.statement((T0, 1))
    second, params2 = p.statement((T0, 2))
    assert first is second and params1 != params2
    third, params3 = p.statement((None, 2))
    assert third is not first and "scalekit_k0" not in params3
    back, _ = p.statement((T0, 1), backwards=True)
    assert back is not first
    compiled = str(first.compile(dialect=postgresql.dialect()))
    assert "%(scalekit_k0)s" in compiled and "%(scalekit_k1)s" in compiled


def test_fingerprint_depends_on_order_and_optionally_filters() -> None:
    base = plan(sa.select(Order), [Order.created_at]).fingerprint
    assert base == plan(sa.select(Order), [Order.created_at]).fingerprint
    assert base != plan(sa.select(Order), [Order.created_at.desc()]).fingerprint
    filtered = plan(sa.select(Order).where(Order.status == "new"), [Order.created_at])
    assert base == filtered.fingerprint
    bound = plan(
        sa.select(Order).where(Order.status == "new"), [Order.created_at], bind_filters=True
    ).fingerprint
    other = plan(
        sa.select(Order).where(Order.status == "old"), [Order.created_at], bind_filters=True
    ).fingerprint
    assert bound != other and bound != base


def test_plan_decode_checks_value_types() -> None:
    from scalekit.errors import InvalidCursor

    codec = CursorCodec()
    p = plan(sa.select(Order), [Order.created_at], codec=codec)
    good = codec.encode([T0, 3], fingerprint=p.fingerprint)
    assert p.decode(good) == (T0, 3)
    for values in ([T0, "3"], [T0, None], [None, 3], ["x", 3], [T0, 2**40], [T0, True], [T0]):
        token = codec.encode(values, fingerprint=p.fingerprint)
        with pytest.raises(InvalidCursor) as info:
            p.decode(token)
        assert info.value.reason == "malformed"
