"""The pure core of batch inserts: chunking, dedupe, row shaping, conflict plans, method choice."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scalekit.batch import Upsert, chunked, dedupe
from scalekit.batch._core import (
    COPY_CHUNK_ROWS,
    RowProblem,
    RowShaper,
    choose_method,
    default_chunk_size,
    resolve_conflict,
    table_shape,
)
from scalekit.batch._flow import LoadOptions
from scalekit.errors import ConfigurationError

metadata = sa.MetaData()
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sku", sa.String, nullable=False, unique=True),
    sa.Column("qty", sa.Integer, nullable=True),
    sa.Column("note", sa.String, server_default="x", nullable=False),
)
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("body", sa.String),
)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_ref: Mapped[str] = mapped_column("customer", unique=True)
    amount: Mapped[int]


# -- chunked -----------------------------------------------------------------------------


@given(st.lists(st.integers(), max_size=60), st.integers(min_value=1, max_value=15))
def test_chunked_keeps_order_and_bounds_size(items_: list[int], size: int) -> None:
    chunks = list(chunked(iter(items_), size))
    assert [x for chunk in chunks for x in chunk] == items_
    assert all(1 <= len(chunk) <= size for chunk in chunks)
    assert all(len(chunk) == size for chunk in chunks[:-1])


def test_chunked_reads_lazily() -> None:
    consumed: list[int] = []

    def gen() -> Any:
        for i in range(100):
            consumed.append(i)
            yield i

    first = next(chunked(gen(), 10))
    assert first == list(range(10))
    assert len(consumed) == 10


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "3"])
def test_chunked_rejects_bad_sizes(size: Any) -> None:
    with pytest.raises(ConfigurationError):
        list(chunked([1], size))


# -- dedupe ------------------------------------------------------------------------------


rows_strategy = st.lists(
    st.tuples(st.integers(0, 6) | st.none(), st.integers(0, 1000)), max_size=40
)


@given(rows_strategy, st.sampled_from(["first", "last"]))
def test_dedupe_keeps_one_row_per_key(rows: list[tuple[Any, int]], policy: str) -> None:
    positions = list(range(100, 100 + len(rows)))
    kept, kept_positions, dropped = dedupe(rows, positions, [0], policy)  # type: ignore[arg-type]
    keys = [row[0] for row in kept if row[0] is not None]
    assert len(keys) == len(set(keys))
    assert dropped == len(rows) - len(kept)
    assert kept_positions == sorted(kept_positions)
    expected: dict[Any, tuple[int, tuple[Any, int]]] = {}
    for position, row in zip(positions, rows, strict=True):
        if row[0] is None:
            continue
        if policy == "last" or row[0] not in expected:
            expected[row[0]] = (position, row)
    assert {
        row[0]: (p, row) for p, row in zip(kept_positions, kept, strict=True) if row[0] is not None
    } == expected
    # NULL keys never conflict: every such row stays
    assert sum(1 for row in kept if row[0] is None) == sum(1 for row in rows if row[0] is None)


def test_dedupe_merge_callable_folds_in_order() -> None:
    rows = [(1, 5), (2, 1), (1, 7), (1, 1)]
    kept, positions, dropped = dedupe(
        rows,
        [0, 1, 2, 3],
        [0],
        lambda old, new: {"id": old["id"], "qty": old["qty"] + new["qty"]},
        as_dict=lambda row: {"id": row[0], "qty": row[1]},
        from_value=lambda value: (value["id"], value["qty"]),
    )
    assert kept == [(2, 1), (1, 13)]
    assert positions == [1, 3]
    assert dropped == 2


def test_dedupe_composite_key_and_none_policy() -> None:
    rows = [(1, "a", 0), (1, "b", 1), (1, "a", 2)]
    kept, positions, dropped = dedupe(rows, [0, 1, 2], [0, 1], "first")
    assert kept == [(1, "a", 0), (1, "b", 1)] and positions == [0, 1] and dropped == 1
    assert dedupe(rows, [0, 1, 2], [0, 1], None) == (rows, [0, 1, 2], 0)


def test_dedupe_of_distinct_keys_passes_the_rows_and_positions_through() -> None:
    rows = [(3, "a"), (1, "b"), (None, "c"), (2, "d")]
    kept, positions, dropped = dedupe(rows, range(10, 14), [0], "last")
    assert kept == rows and kept is not rows and dropped == 0
    assert positions == range(10, 14)  # no list of positions built
    kept, positions, dropped = dedupe([*rows, (None, "e")], range(5), [0], "last")
    assert dropped == 0 and list(positions) == [0, 1, 2, 3, 4]  # NULL keys never conflict
    with pytest.raises(TypeError):  # an unhashable key fails as the row-by-row path does
        dedupe([({"a": 1}, 1)], [0], [0], "last")


# -- table shape and rows ----------------------------------------------------------------


def test_table_shape_reads_keys_and_required_columns() -> None:
    shape = table_shape(items)
    assert shape.primary_key == ("id",)
    assert ("sku",) in shape.unique_keys
    required = {c.name for c in shape.columns if c.required}
    assert required == {"id", "sku"}  # qty nullable, note has a server default


def test_table_shape_of_orm_class_accepts_attribute_keys() -> None:
    shape = table_shape(Order)
    column = shape.column("customer_ref")
    assert column is not None and column.name == "customer"
    shaper = RowShaper(shape, {"id": 1, "customer_ref": "c", "amount": 3})
    assert shaper.names == ("id", "customer", "amount")
    assert shaper.shape_rows([{"id": 1, "customer_ref": "c", "amount": 3}], 0) == [(1, "c", 3)]


def test_table_shape_rejects_non_tables() -> None:
    with pytest.raises(ConfigurationError, match="Table or a mapped ORM class"):
        table_shape(object())


def test_row_shaper_orders_dict_values_and_passes_tuples() -> None:
    shape = table_shape(items)
    shaper = RowShaper(shape, {"sku": "a", "id": 1})
    assert shaper.names == ("sku", "id")
    assert shaper.shape_rows([{"sku": "a", "id": 1}, {"id": 2, "sku": "b"}], 0) == [
        ("a", 1),
        ("b", 2),
    ]
    tuples = RowShaper(shape, (1, "a", 2, "n"))
    assert tuples.shape_rows([(1, "a", 2, "n"), [2, "b", 3, "m"]], 0) == [
        (1, "a", 2, "n"),
        (2, "b", 3, "m"),
    ]


@pytest.mark.parametrize(
    ("row", "message", "column"),
    [
        ({"id": 1}, "row 7 has no column 'sku'", "sku"),
        (
            {"id": 1, "sku": "a", "bogus": 1},
            "row 7 has column 'bogus', which does not exist",
            "bogus",
        ),
        ({"id": 1, "sku": "a", "qty": 1}, "'qty', which is not loaded", "qty"),
        ((1, "a"), "row 7 is a tuple, expected a mapping", None),
    ],
)
def test_row_shaper_names_the_bad_row_and_column(row: Any, message: str, column: Any) -> None:
    shaper = RowShaper(table_shape(items), {"id": 0, "sku": "z"})
    with pytest.raises(RowProblem, match=message) as info:
        shaper.shape_rows([{"id": 0, "sku": "z"}] * 2 + [row], 5)
    assert info.value.position == 7
    assert info.value.column == column


def test_row_shaper_wrong_tuple_length() -> None:
    shaper = RowShaper(table_shape(items), (1, "a", 2, "n"))
    with pytest.raises(RowProblem, match=r"row 1 has 2 values, expected 4 \(id, sku, qty, note\)"):
        shaper.shape_rows([(1, "a", 2, "n"), (2, "b")], 0)
    with pytest.raises(RowProblem, match="row 0 is a str"):
        shaper.shape_rows(["abcd"], 0)


def test_row_shaper_configuration_errors() -> None:
    shape = table_shape(items)
    with pytest.raises(ConfigurationError, match="required column 'sku'"):
        RowShaper(shape, {"id": 1})
    with pytest.raises(ConfigurationError, match="has no column 'nope'"):
        RowShaper(shape, (1,), columns=["nope"])
    with pytest.raises(ConfigurationError, match="named twice"):
        RowShaper(shape, (1, "a", 1), columns=["id", "sku", "id"])
    with pytest.raises(RowProblem, match="row 0 has column 'nope'"):
        RowShaper(shape, {"id": 1, "sku": "a", "nope": 2})


# -- conflicts ---------------------------------------------------------------------------


def test_conflict_target_is_inferred_when_obvious() -> None:
    shape = table_shape(events)
    plan = resolve_conflict(Upsert(), shape, ["id", "body"])
    assert plan is not None
    assert plan.key == ("id",) and plan.update == ("body",) and plan.key_indices == (0,)
    nothing = resolve_conflict("nothing", shape, ["id", "body"])
    assert nothing is not None and nothing.action == "nothing"


def test_conflict_target_ambiguous_or_missing() -> None:
    shape = table_shape(items)
    with pytest.raises(ConfigurationError, match="more than one unique key"):
        resolve_conflict(Upsert(), shape, ["id", "sku", "qty"])
    plan = resolve_conflict(Upsert(index=["sku"], update=["qty"]), shape, ["id", "sku", "qty"])
    assert plan is not None and plan.key == ("sku",) and plan.key_indices == (1,)
    with pytest.raises(ConfigurationError, match="not among the loaded columns"):
        resolve_conflict(Upsert(index=["sku"]), shape, ["id", "qty"])
    with pytest.raises(ConfigurationError, match="update column 'note'"):
        resolve_conflict(Upsert(index=["id"], update=["note"]), shape, ["id", "sku"])
    with pytest.raises(ConfigurationError, match="no unique constraint named"):
        resolve_conflict(Upsert(constraint="nope"), shape, ["id", "sku"])
    with pytest.raises(ConfigurationError, match="on_conflict must be"):
        resolve_conflict("update", shape, ["id"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"index": []},
        {"index": "id"},
        {"index": ["id"], "constraint": "pk"},
        {"constraint": 3},
        {"update": [1]},
        {"where": 5},
    ],
)
def test_upsert_validates(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Upsert(**kwargs)


# -- method and chunk size ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "copy", "needs", "array", "small", "expected"),
    [
        ("sqlite", False, False, False, False, "executemany"),
        ("sqlite", False, True, False, True, "executemany"),
        ("postgresql", True, False, False, False, "copy"),
        ("postgresql", True, False, False, True, "copy"),
        ("postgresql", True, True, False, True, "unnest"),
        ("postgresql", True, True, False, False, "copy_staging"),
        ("postgresql", True, True, True, True, "copy_staging"),
        ("postgresql", False, True, False, False, "executemany"),
        ("postgresql", False, False, False, False, "executemany"),
        ("postgresql", False, True, True, False, "executemany"),
    ],
)
def test_auto_method_choice(
    dialect: str, copy: bool, needs: bool, array: bool, small: bool, expected: str
) -> None:
    got = choose_method(
        "auto",
        dialect=dialect,
        copy_capable=copy,
        needs_statement=needs,
        has_array_column=array,
        small_chunks=small,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("method", "dialect", "copy", "needs", "array", "match"),
    [
        ("copy", "sqlite", False, False, False, "needs PostgreSQL"),
        ("copy", "postgresql", False, False, False, "psycopg"),
        ("copy", "postgresql", True, True, False, "cannot handle conflicts"),
        ("unnest", "postgresql", True, True, True, "array columns"),
        ("unnest", "postgresql", False, True, False, "psycopg"),
        ("bulk", "postgresql", True, False, False, "method must be one of"),
    ],
)
def test_impossible_methods_are_configuration_errors(
    method: Any, dialect: str, copy: bool, needs: bool, array: bool, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        choose_method(
            method,
            dialect=dialect,
            copy_capable=copy,
            needs_statement=needs,
            has_array_column=array,
            small_chunks=False,
        )


@given(st.integers(1, 5000), st.sampled_from(["sqlite", "postgresql", "mssql", "other"]))
@settings(max_examples=100)
def test_executemany_chunk_fits_the_bind_limit(columns: int, dialect: str) -> None:
    limit = {"sqlite": 32_766, "postgresql": 65_535, "mssql": 2_100}.get(dialect, 999)
    size = default_chunk_size("executemany", columns, dialect)
    assert size >= 1
    assert size * columns <= max(limit, columns)
    assert default_chunk_size("copy", columns, dialect) == COPY_CHUNK_ROWS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk_size": 0},
        {"chunk_size": True},
        {"transaction": "sometimes"},
        {"on_error": "ignore"},
        {"dedupe": "middle"},
        {"on_reject": 3},
        {"progress": "bar"},
        {"returning": []},
        {"retry": 3},
        {"resume": -1},
        {"method": "fast"},
    ],
)
def test_load_options_validate(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        LoadOptions(**kwargs)
