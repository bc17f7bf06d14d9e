"""Sharding on the real PostgreSQL: the server computes the same logical shard as Python."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalekit.sharding import logical_shard, shard_sql
from scalekit.sharding._hash import KeyType
from tests.unit.sharding.test_hash import GOLDEN

pytestmark = pytest.mark.integration

metadata = sa.MetaData()
keys_table = sa.Table(
    "shard_keys",
    metadata,
    sa.Column("pos", sa.Integer, primary_key=True),
    sa.Column("i", sa.BigInteger),
    sa.Column("i4", sa.Integer),
    sa.Column("s", sa.Text),
    sa.Column("v", sa.String(200)),
    sa.Column("b", sa.LargeBinary),
    sa.Column("u", sa.Uuid),
)


@pytest.fixture(scope="module")
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url)
    metadata.create_all(engine)
    yield engine
    metadata.drop_all(engine)
    engine.dispose()


# PostgreSQL text cannot hold NUL characters; everything else UTF-8 can.
texts = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]))
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

COLUMNS: list[tuple[str, KeyType, Any]] = [
    ("i", "int", int64),
    ("i4", "int", st.integers(min_value=-(2**31), max_value=2**31 - 1)),
    ("s", "str", texts),
    ("v", "str", texts.filter(lambda text: len(text) <= 200)),
    ("b", "bytes", st.binary(max_size=300)),
    ("u", "uuid", st.uuids()),
]


@pytest.mark.parametrize(("column", "key_type", "strategy"), COLUMNS, ids=[c[0] for c in COLUMNS])
def test_sql_gives_the_same_logical_shard_as_python(
    engine: sa.Engine, column: str, key_type: KeyType, strategy: Any
) -> None:
    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        st.lists(strategy, min_size=1, max_size=40),
        # 2**31 - 1 is the largest count of the int keys' bigint arithmetic, 2**31 the
        # smallest of its numeric fallback.
        st.sampled_from([1, 2, 7, 16, 1000, 1024, 65536, 2**31 - 1, 2**31, 2**40]),
    )
    def check(keys: list[Any], logical_shards: int) -> None:
        with engine.begin() as conn:
            conn.execute(keys_table.delete())
            conn.execute(
                keys_table.insert(), [{"pos": n, column: key} for n, key in enumerate(keys)]
            )
            col = keys_table.c[column]
            rows = conn.execute(
                sa.select(keys_table.c.pos, shard_sql(col, logical_shards)).order_by(
                    keys_table.c.pos
                )
            ).all()
        assert [shard for _, shard in rows] == [logical_shard(key, logical_shards) for key in keys]

    check()


def test_sql_gives_the_pinned_logical_shards(engine: sa.Engine) -> None:
    """The server computes the golden values of the unit tests, for every key type."""
    columns = {int: "i", str: "s", bytes: "b", uuid.UUID: "u"}
    with engine.begin() as conn:
        conn.execute(keys_table.delete())
        conn.execute(
            keys_table.insert(),
            [
                {"pos": n, **dict.fromkeys(columns.values()), columns[type(key)]: key}
                for n, (key, _, _) in enumerate(GOLDEN)
            ],
        )
        rows = conn.execute(
            sa.select(
                sa.func.coalesce(*(shard_sql(keys_table.c[column]) for column in columns.values()))
            ).order_by(keys_table.c.pos)
        ).scalars()
        assert list(rows) == [shard for _, _, shard in GOLDEN]


def test_edge_keys_and_an_explicit_key_type(engine: sa.Engine) -> None:
    edge = [0, 1, -1, 2**63 - 1, -(2**63), 2**31, -(2**31), 2**32 - 1, 2**32, -(2**32) - 1]
    with engine.begin() as conn:
        conn.execute(keys_table.delete())
        conn.execute(
            keys_table.insert(),
            [
                {"pos": n, "i": key, "s": str(key), "u": uuid.UUID(int=abs(key))}
                for n, key in enumerate(edge)
            ],
        )
        rows = conn.execute(
            sa.select(
                shard_sql(keys_table.c.i),
                shard_sql(sa.cast(keys_table.c.s, sa.Text), key_type="str"),
                shard_sql(keys_table.c.u, 1000),
            ).order_by(keys_table.c.pos)
        ).all()
    assert [tuple(row) for row in rows] == [
        (logical_shard(key), logical_shard(str(key)), logical_shard(uuid.UUID(int=abs(key)), 1000))
        for key in edge
    ]


def test_rows_of_one_logical_shard_are_selected_by_the_expression(engine: sa.Engine) -> None:
    ids = list(range(-500, 1500))
    with engine.begin() as conn:
        conn.execute(keys_table.delete())
        conn.execute(keys_table.insert(), [{"pos": n, "i": key} for n, key in enumerate(ids)])
        selected = conn.scalars(
            sa.select(keys_table.c.i)
            .where(shard_sql(keys_table.c.i, 16) == 5)
            .order_by(keys_table.c.i)
        ).all()
    assert selected == [key for key in ids if logical_shard(key, 16) == 5]
    assert selected
