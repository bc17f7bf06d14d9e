"""``Upsert(increment=[...])``: columns added to on conflict; resolved, rendered, run on SQLite."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from scalekit.batch import Upsert, batch_insert
from scalekit.batch._core import resolve_conflict, table_shape
from scalekit.batch._sql import PgStatements
from scalekit.errors import ConfigurationError

metadata = sa.MetaData()
stats = sa.Table(
    "stats",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("label", sa.String),
    sa.Column("hits", sa.Integer),
)
COLUMNS = ["id", "label", "hits"]


def test_increment_columns_are_not_overwritten_by_update_all() -> None:
    plan = resolve_conflict(Upsert(index=["id"], increment=["hits"]), table_shape(stats), COLUMNS)
    assert plan is not None
    assert (plan.action, plan.update, plan.increment) == ("update", ("label",), ("hits",))
    only = resolve_conflict(
        Upsert(index=["id"], update=[], increment=["hits"]), table_shape(stats), COLUMNS
    )
    assert only is not None and (only.action, only.update) == ("update", ())


@pytest.mark.parametrize(
    "upsert",
    [
        Upsert(index=["id"], increment=["id"]),
        Upsert(index=["id"], increment=["nope"]),
    ],
)
def test_bad_increment_columns(upsert: Upsert) -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve_conflict(upsert, table_shape(stats), COLUMNS)
    assert info.value.parameter == "increment"
    with pytest.raises(ConfigurationError):
        Upsert(increment="hits")


def test_postgresql_adds_excluded_to_the_stored_value() -> None:
    shape = table_shape(stats)
    plan = resolve_conflict(Upsert(index=["id"], increment=["hits"]), shape, COLUMNS)
    sql = PgStatements.build(shape, COLUMNS, ["int4", "text", "int4"], plan, None).from_stage
    assert (
        'DO UPDATE SET "label" = EXCLUDED."label", "hits" = "stats"."hits" + EXCLUDED."hits"' in sql
    )


def test_sqlite_counters_add_up() -> None:
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    upsert = Upsert(index=["id"], update=["label"], increment=["hits"])
    for label in ("a", "b", "c"):
        batch_insert(engine, stats, [{"id": 1, "label": label, "hits": 2}], on_conflict=upsert)
    with engine.connect() as connection:
        assert connection.execute(sa.select(stats)).all() == [(1, "c", 6)]
