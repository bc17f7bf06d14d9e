"""Every cursor value is checked against its key's type, or the key is refused at build.

Issue 13, item 10: untyped SQL (``func.lower(col)`` has no SQL type in
SQLAlchemy), enums, and types a cursor cannot carry. The same keys are fuzzed
against a real PostgreSQL in tests/integration/test_pagination_cursor_fuzz_pg.py.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.pool import StaticPool

from scalekit.errors import ConfigurationError, InvalidCursor
from scalekit.pagination import CursorCodec, KeysetPlan
from tests.unit.pagination._literal_selects import walk_both_ways

PG = psycopg.dialect()


class Kind(enum.Enum):
    BASIC = "basic"
    GOLD = "gold"


METADATA = sa.MetaData()
TABLE = sa.Table(
    "pgn_key_types",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(20), nullable=False),
    sa.Column("mood", sa.Enum("sad", "ok", "happy", name="mood"), nullable=False),
    sa.Column("kind", sa.Enum(Kind, name="kind"), nullable=False),
    sa.Column("ref", sa.Uuid(as_uuid=False), nullable=False),
    sa.Column("small", sa.SmallInteger, nullable=False),
    sa.Column("doc", sa.JSON, nullable=False),
)
PG_ONLY = sa.Table(
    "pgn_key_types_pg",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("addr", postgresql.INET, nullable=False),
    sa.Column("tags", postgresql.ARRAY(sa.Integer), nullable=False),
    sa.Column("unlabelled", postgresql.ENUM(name="unlabelled", create_type=False), nullable=False),
    sa.Column("at", sa.Time(timezone=True), nullable=False),
)


def forged(plan: KeysetPlan, *values: Any) -> str:
    return CursorCodec().encode(values, fingerprint=plan.fingerprint)


def rejects(plan: KeysetPlan, *values: Any) -> bool:
    try:
        plan.decode(forged(plan, *values))
    except InvalidCursor:
        return True
    return False


@pytest.mark.parametrize(
    ("order_by", "message"),
    [
        ([sa.func.my_distance(TABLE.c.name)], "has no SQL type"),
        ([sa.literal_column("name")], "has no SQL type"),
        ([sa.func.lower(sa.func.my_clean(TABLE.c.name)).op("||")("x")], "has no SQL type"),
        ([TABLE.c.doc], "which a cursor cannot carry"),
        ([PG_ONLY.c.addr], "which a cursor cannot carry"),
        ([sa.cast(TABLE.c.name, postgresql.INET)], "which a cursor cannot carry"),
        ([PG_ONLY.c.tags], "which a cursor cannot carry"),
        ([PG_ONLY.c.unlabelled], "which a cursor cannot carry"),
        ([PG_ONLY.c.at], "which a cursor cannot carry"),
    ],
    ids=[
        "unknown-function",
        "literal-column",
        "operator-on-untyped",
        "json",
        "inet",
        "cast-to-inet",
        "array",
        "enum-without-labels",
        "time-with-zone",
    ],
)
def test_keys_whose_values_cannot_be_checked_are_refused_at_build(
    order_by: list[Any], message: str
) -> None:
    table = PG_ONLY if "pgn_key_types_pg" in str(order_by[0].compile()) else TABLE
    with pytest.raises(ConfigurationError, match=message) as info:
        KeysetPlan(sa.select(table.c.id), order_by, limit=5, dialect=PG)
    assert info.value.parameter == "order_by"


def test_known_untyped_functions_get_their_result_type() -> None:
    lower = KeysetPlan(sa.select(TABLE.c.id), [sa.func.lower(TABLE.c.name)], limit=5, dialect=PG)
    assert not rejects(lower, "abc", 1)
    assert rejects(lower, "a\x00b", 1)  # NUL: PostgreSQL would raise DataError
    assert rejects(lower, 5, 1)  # text compared with an integer: ProgrammingError
    distance = KeysetPlan(
        sa.select(TABLE.c.id), [sa.func.abs(TABLE.c.small - 3)], limit=5, dialect=PG
    )
    assert not rejects(distance, 4, 1)
    assert rejects(distance, 2**15, 1)  # abs() of a smallint is a smallint
    assert rejects(distance, "4", 1)
    rounded = KeysetPlan(
        sa.select(TABLE.c.id), [sa.func.round(TABLE.c.small * 1.5)], limit=5, dialect=PG
    )
    assert not rejects(rounded, 2.0, 1) and not rejects(rounded, 7, 1)
    assert rejects(rounded, "2", 1)


def test_enum_values_outside_the_labels_are_invalid_cursors() -> None:
    plan = KeysetPlan(sa.select(TABLE.c.id), [TABLE.c.mood], limit=5, dialect=PG)
    assert not rejects(plan, "ok", 1)
    assert rejects(plan, "angry", 1)
    assert rejects(plan, "OK", 1)
    by_class = KeysetPlan(sa.select(TABLE.c.id), [TABLE.c.kind], limit=5, dialect=PG)
    assert not rejects(by_class, "GOLD", 1)  # the label stored: the member's name
    assert rejects(by_class, "gold", 1)


def test_text_uuid_values_must_be_uuids() -> None:
    plan = KeysetPlan(sa.select(TABLE.c.id), [TABLE.c.ref], limit=5, dialect=PG)
    assert not rejects(plan, str(uuid.UUID(int=5)), 1)
    assert rejects(plan, "not-a-uuid", 1)
    # uuid.UUID() takes these; PostgreSQL does not (found by the fuzz test).
    assert rejects(plan, "\t" + str(uuid.UUID(int=5))[1:], 1)
    assert rejects(plan, "urn:uuid:" + str(uuid.UUID(int=5)), 1)
    assert rejects(plan, uuid.UUID(int=5), 1)


@pytest.fixture(scope="module")
def engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    METADATA.create_all(engine)
    rows = [
        {
            "id": i,
            "name": f"N{i % 4}",
            "mood": ("sad", "ok", "happy")[i % 3],
            "kind": (Kind.BASIC, Kind.GOLD)[i % 2],
            "ref": str(uuid.UUID(int=i * 7919)),
            "small": i % 5,
            "doc": {},
        }
        for i in range(1, 21)
    ]
    with engine.begin() as connection:
        connection.execute(TABLE.insert(), rows)
    yield engine
    engine.dispose()


@pytest.mark.parametrize(
    "order_by",
    [
        [TABLE.c.kind.desc(), TABLE.c.name],
        [sa.func.lower(TABLE.c.name).desc()],
        [sa.func.abs(TABLE.c.small - 2)],
        [TABLE.c.ref],
    ],
    ids=["enum-class", "lower", "abs", "uuid-text"],
)
def test_walks_over_checked_keys_see_every_row_once(engine: sa.Engine, order_by: Any) -> None:
    with engine.connect() as connection:
        forward, backward = walk_both_ways(connection, sa.select(TABLE.c.id), order_by, 3)
    assert forward == backward
    assert sorted(row[0] for row in forward) == list(range(1, 21))


def test_enum_members_are_carried_as_their_labels(engine: sa.Engine) -> None:
    plan = KeysetPlan(sa.select(TABLE), [TABLE.c.kind], limit=5, dialect=engine.dialect)
    assert plan.decode(plan.encode((Kind.GOLD, 3))) == ("GOLD", 3)
