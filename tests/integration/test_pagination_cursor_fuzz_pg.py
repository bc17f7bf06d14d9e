"""Edited cursors never reach PostgreSQL as a SQL error: enum, untyped-function, numeric,
uuid, interval and array keys (issue 13, item 10).

Every cursor value is checked against its key's type before the query runs:
a value outside an ENUM's labels, a NUL in a string compared with
``lower(col)``, a number a column cannot be compared with, are all
``InvalidCursor``. Keys whose values cannot be checked or carried (untyped SQL,
arrays, INET) are refused with ``ConfigurationError`` when the plan is built,
before any query. hypothesis forges cursors of every value type the codec
carries, and mutates real ones, and runs them against the real server: the
only exception that may come out is ``InvalidCursor``.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql as pg

from scalekit.errors import ConfigurationError, InvalidCursor
from scalekit.pagination import CursorCodec, KeysetPlan, paginate

pytestmark = pytest.mark.integration

SUFFIX = f"fz{os.getpid()}"


class Kind(enum.Enum):
    BASIC = "basic"
    PREMIUM = "premium"
    GOLD = "gold"


METADATA = sa.MetaData()
TABLE = sa.Table(
    f"pgn_cursor_fuzz_{SUFFIX}",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("mood", pg.ENUM("sad", "ok", "happy", name=f"mood_{SUFFIX}"), nullable=False),
    sa.Column("kind", sa.Enum(Kind, name=f"kind_{SUFFIX}"), nullable=False),
    sa.Column("name", sa.String(20), nullable=False),
    sa.Column("price", sa.Numeric(12, 3), nullable=False),
    sa.Column("ratio", sa.REAL, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("small", sa.SmallInteger, nullable=False),
    sa.Column("ref", sa.Uuid, nullable=False),
    sa.Column("ref_text", sa.Uuid(as_uuid=False), nullable=False),
    sa.Column("span", pg.INTERVAL, nullable=False),
    sa.Column("tags", pg.ARRAY(sa.Integer), nullable=False),
    sa.Column("addr", pg.INET, nullable=False),
)

# Sort keys whose cursor values are checked (each walked legitimately, then fuzzed).
KEYS: dict[str, Callable[[], list[Any]]] = {
    "enum": lambda: [TABLE.c.mood.desc()],
    "enum-class": lambda: [TABLE.c.kind, TABLE.c.name],
    "lower": lambda: [sa.func.lower(TABLE.c.name)],
    "abs": lambda: [sa.func.abs(TABLE.c.small - 1).desc()],
    "round": lambda: [sa.func.round(TABLE.c.score), TABLE.c.ratio],
    "numeric": lambda: [TABLE.c.price],
    "real": lambda: [TABLE.c.ratio.desc(), TABLE.c.score],
    "uuid": lambda: [TABLE.c.ref],
    "uuid-text": lambda: [TABLE.c.ref_text.desc()],
    "interval": lambda: [TABLE.c.span, TABLE.c.small],
    "date_trunc": lambda: [
        sa.func.date_trunc("hour", sa.func.now() - TABLE.c.span).desc().nulls_last()
    ],
}
# Sort keys refused when the plan is built, before any query.
REFUSED: dict[str, Callable[[], list[Any]]] = {
    "array": lambda: [TABLE.c.tags],
    "inet": lambda: [TABLE.c.addr],
    "untyped-function": lambda: [sa.func.my_distance(TABLE.c.name)],
    "untyped-sql": lambda: [sa.literal_column("name")],
    "cast-to-inet": lambda: [sa.cast(TABLE.c.name, pg.INET)],
}


def rows() -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "mood": ("sad", "ok", "happy")[i % 3],
            "kind": list(Kind)[i % 3],
            "name": f"N{i % 7}",
            "price": decimal.Decimal(i % 5) / 4,
            "ratio": (i % 4) / 3,
            "score": (i % 6) * 1.5,
            "small": i % 5 - 2,
            "ref": uuid.UUID(int=i * 7919),
            "ref_text": str(uuid.UUID(int=i * 104729)),
            "span": dt.timedelta(hours=i % 6),
            "tags": [i % 3, i],
            "addr": f"10.0.0.{i}",
        }
        for i in range(1, 41)
    ]


@pytest.fixture(scope="module")
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url)
    METADATA.create_all(engine)
    with engine.begin() as connection:
        connection.execute(TABLE.insert(), rows())
    yield engine
    METADATA.drop_all(engine)
    engine.dispose()


def walk(connection: sa.Connection, order: list[Any], limit: int) -> list[int]:
    seen: list[int] = []
    page = paginate(connection, sa.select(TABLE.c.id), order_by=order, limit=limit)
    for _ in range(100):
        seen += [row.id for row in page.items]
        if not page.has_next:
            return seen
        page = paginate(
            connection, sa.select(TABLE.c.id), order_by=order, limit=limit, after=page.next_cursor
        )
    raise AssertionError(f"the walk did not end: {seen[:60]}")


@pytest.mark.parametrize("key", sorted(KEYS))
def test_checked_keys_walk_every_row_once(engine: sa.Engine, key: str) -> None:
    order = KEYS[key]()
    with engine.connect() as connection:
        seen = walk(connection, order, limit=6)
    assert sorted(seen) == list(range(1, 41)) and len(seen) == 40


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_keys_a_cursor_cannot_check_are_refused_before_any_query(
    engine: sa.Engine, key: str
) -> None:
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    with engine.connect() as connection:
        sa.event.listen(connection, "before_cursor_execute", record)
        with pytest.raises(ConfigurationError, match="sort key") as info:
            paginate(connection, sa.select(TABLE), order_by=REFUSED[key](), limit=5)
    assert info.value.parameter == "order_by"
    assert statements == []  # refused when the plan was built, not after a query


# Values of the right Python type that PostgreSQL would refuse (DataError,
# ProgrammingError) if they reached it, one per checked key.
REFUSED_VALUES: dict[str, list[Any]] = {
    "enum": ["angry", 3],
    "enum-class": ["gold", "N1", 3],  # the label stored is the member's name, GOLD
    "lower": ["a\x00b", 1],
    "abs": [2**15, 1],  # abs() of a smallint is a smallint
    "numeric": [decimal.Decimal("1E-20000"), 1],
    "real": [1e300, 1.5, 1],  # beyond a real's range
    "round": [decimal.Decimal("1E+400"), 0.5, 1],  # beyond a double's range
    "uuid-text": ["\t0000000-0000-0000-0000-000000365552", 1],  # uuid.UUID() takes it
    "interval": [True, 1, 1],
}


@pytest.mark.parametrize("key", sorted(REFUSED_VALUES))
def test_values_the_server_would_refuse_are_invalid_cursors(engine: sa.Engine, key: str) -> None:
    order = KEYS[key]()
    plan = KeysetPlan(sa.select(TABLE.c.id), order, limit=3, dialect=engine.dialect)
    forged = CursorCodec().encode(REFUSED_VALUES[key], fingerprint=plan.fingerprint)
    with engine.connect() as connection, pytest.raises(InvalidCursor, match="wrong type"):
        paginate(connection, sa.select(TABLE.c.id), order_by=order, limit=3, after=forged)


cursor_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-(2**15) - 2, 2**15 + 2),
    st.floats(),
    st.floats(width=32),
    st.decimals(places=None),
    st.decimals(min_value=-(10**20), max_value=10**20),
    st.sampled_from(
        ["sad", "ok", "happy", "basic", "BASIC", "gold", "Sad", "", "x\x00y", "N1", "10.0.0.1"]
    ),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.datetimes(timezones=st.none() | st.just(dt.timezone.utc)),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.uuids(),
    st.uuids().map(str),
)


def must_be_invalid_or_fine(connection: sa.Connection, order: list[Any], **cursor: Any) -> None:
    try:
        paginate(connection, sa.select(TABLE.c.id), order_by=order, limit=3, **cursor)
    except InvalidCursor:
        pass
    finally:
        connection.rollback()  # a SQL error would have aborted the transaction: never hide it


FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("key", sorted(KEYS))
@FUZZ
@given(data=st.data())
def test_forged_cursors_raise_only_invalid_cursor(engine: sa.Engine, key: str, data: Any) -> None:
    order = KEYS[key]()
    plan = KeysetPlan(sa.select(TABLE.c.id), order, limit=3, dialect=engine.dialect)
    with engine.connect() as connection:
        if data.draw(st.booleans()):
            # A real position with some of its values replaced: mostly well-typed
            # neighbours (a label that is not the enum's, a number out of range).
            page = paginate(connection, sa.select(TABLE.c.id), order_by=order, limit=7)
            values = list(plan.decode(page.next_cursor))
            for position in data.draw(st.sets(st.integers(0, len(values) - 1), min_size=1)):
                values[position] = data.draw(cursor_values)
        else:
            count = len(plan.keys) + data.draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
            size = max(count, 0)
            values = data.draw(st.lists(cursor_values, min_size=size, max_size=size))
        forged = CursorCodec().encode(values, fingerprint=plan.fingerprint)
        direction = data.draw(st.sampled_from(["after", "before"]))
        must_be_invalid_or_fine(connection, order, **{direction: forged})


@pytest.mark.parametrize("key", sorted(KEYS))
@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_real_cursors_raise_only_invalid_cursor(
    engine: sa.Engine, key: str, flips: list[tuple[int, int]]
) -> None:
    order = KEYS[key]()
    with engine.connect() as connection:
        page = paginate(connection, sa.select(TABLE.c.id), order_by=order, limit=7)
        assert page.next_cursor is not None
        raw = bytearray(base64.urlsafe_b64decode(page.next_cursor + "=" * 3))
        for position, byte in flips:
            raw[position % len(raw)] = byte
        token = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
        must_be_invalid_or_fine(connection, order, after=token)
