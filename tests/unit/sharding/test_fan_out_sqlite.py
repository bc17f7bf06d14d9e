"""Fan-out, cross-shard pagination, routed sessionmaker, catalog and fences on four SQLite files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scalekit.errors import ConfigurationError, FanOutError, ShardingError, StaleShardMap
from scalekit.pagination import CursorCodec
from scalekit.sharding import ShardCatalog, ShardMap, assign_balanced

NAMES = ["db0", "db1", "db2", "db3"]


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    user_id: Mapped[int]
    total: Mapped[int]


@pytest.fixture
def engines(sqlite_shards: Callable[[sa.MetaData], dict[str, sa.Engine]]) -> dict[str, sa.Engine]:
    return sqlite_shards(Base.metadata)


def _fill(shards: ShardMap, count: int = 120) -> list[tuple[int, int, int]]:
    rows = [(i, i % 17, (i * 37) % 101) for i in range(1, count + 1)]
    for order_id, user_id, total in rows:
        with shards.session(user_id) as session:
            session.add(Order(id=order_id, user_id=user_id, total=total))
            session.commit()
    return rows


def test_fan_out_concatenates_rows_and_merges_aggregates(engines: dict[str, sa.Engine]) -> None:
    shards = ShardMap(engines, logical_shards=64)
    rows = _fill(shards)
    got = shards.fan_out(sa.select(Order.id, Order.total))
    assert sorted(tuple(row) for row in got) == sorted((i, t) for i, _, t in rows)
    (merged,) = shards.fan_out(
        sa.select(
            sa.func.count().label("n"),
            sa.func.sum(Order.total).label("s"),
            sa.func.min(Order.total),
            sa.func.max(Order.total),
        )
    )
    totals = [t for _, _, t in rows]
    assert tuple(merged) == (len(rows), sum(totals), min(totals), max(totals))
    assert merged.n == len(rows)
    grouped = shards.fan_out(
        sa.select(Order.user_id, sa.func.count(), sa.func.sum(Order.total)).group_by(Order.user_id)
    )
    expected: dict[int, tuple[int, int]] = {}
    for _, user_id, total in rows:
        count, summed = expected.get(user_id, (0, 0))
        expected[user_id] = (count + 1, summed + total)
    assert {row[0]: (row[1], row[2]) for row in grouped} == expected
    # Every group lives on one shard here; still exactly one row per group.
    assert len(grouped) == len(expected)
    with pytest.raises(ShardingError, match="avg"):
        shards.fan_out(sa.select(sa.func.avg(Order.total)))
    with pytest.raises(ShardingError, match="DISTINCT"):
        shards.fan_out(sa.select(sa.func.count(sa.distinct(Order.user_id))))
    shards.close()


def test_fan_out_over_empty_tables_gives_sql_answers(engines: dict[str, sa.Engine]) -> None:
    shards = ShardMap(engines)
    answer = shards.fan_out(sa.select(sa.func.count(), sa.func.max(Order.id)))
    assert [tuple(row) for row in answer] == [(0, None)]
    assert shards.fan_out(sa.select(Order)) == []
    shards.close()


def test_a_failed_target_is_named(engines: dict[str, sa.Engine], tmp_path: Path) -> None:
    broken = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    shards = ShardMap({**engines, "db3": broken})
    with pytest.raises(FanOutError, match="db3") as info:
        shards.fan_out(sa.select(sa.func.count()).select_from(Order))
    assert list(info.value.failures) == ["db3"]
    shards.close()


@pytest.mark.parametrize("codec", [None, CursorCodec(secret="k" * 32)])
def test_paginate_visits_every_row_once_in_order_both_ways(
    engines: dict[str, sa.Engine], codec: CursorCodec | None
) -> None:
    shards = ShardMap(engines, logical_shards=64)
    rows = _fill(shards, 97)
    statement = sa.select(Order.id, Order.total)
    order = [Order.total.desc(), Order.id]
    expected = [(i, t) for i, _, t in sorted(rows, key=lambda r: (-r[2], r[0]))]
    seen: list[tuple[int, int]] = []
    page = shards.paginate(statement, order_by=order, limit=10, codec=codec)
    pages = [page]
    while True:
        seen.extend(tuple(row) for row in page.items)
        if not page.has_next:
            break
        page = shards.paginate(
            statement, order_by=order, limit=10, after=page.next_cursor, codec=codec
        )
        pages.append(page)
    assert seen == expected
    back: list[tuple[int, int]] = []
    page = shards.paginate(statement, order_by=order, limit=10, last=True, codec=codec)
    while True:
        back = [tuple(row) for row in page.items] + back
        if not page.has_prev:
            break
        page = shards.paginate(
            statement, order_by=order, limit=10, before=page.prev_cursor, codec=codec
        )
    assert back == expected
    # ORM entities page too.
    entities = shards.paginate(sa.select(Order), order_by=[Order.id], limit=5)
    assert [o.id for o in entities.items] == [1, 2, 3, 4, 5]
    shards.close()


def test_sessionmaker_routes_by_shard_key_and_refuses_statements_without_one(
    engines: dict[str, sa.Engine],
) -> None:
    shards = ShardMap(engines, logical_shards=64)
    Session = shards.sessionmaker()
    with Session(shard_key=5) as session:
        session.add(Order(id=1, user_id=5, total=10))
        session.commit()
    with engines[shards.name_for(5)].connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Order)) == 1
    with Session() as session:
        got = session.get(Order, 1, execution_options={"shard_key": 5})
        assert got is not None and got.total == 10
        found = session.scalars(
            sa.select(Order).where(Order.user_id == 5).execution_options(shard_key=5)
        ).all()
        assert [o.id for o in found] == [1]
        with pytest.raises(ShardingError, match="fan_out"):
            session.execute(sa.select(Order))
        session.add(Order(id=2, user_id=6, total=1))
        with pytest.raises(ShardingError, match="no shard key"):
            session.flush()
        session.rollback()


def test_a_stale_instance_is_refused_after_a_published_move(
    engines: dict[str, sa.Engine], tmp_path: Path
) -> None:
    catalog_engine = sa.create_engine(f"sqlite:///{tmp_path / 'catalog'}.db")
    catalog = ShardCatalog(catalog_engine)
    catalog.install()
    with pytest.raises(ConfigurationError, match="no published version"):
        ShardMap.from_catalog(catalog, engines)
    catalog.publish(assign_balanced(NAMES, 64))
    first = ShardMap.from_catalog(catalog, engines)
    first.install_fences()
    second = ShardMap.from_catalog(catalog, engines)
    key = 11
    source = first.name_for(key)
    destination = next(name for name in NAMES if name != source)
    moved = first.assignment.with_owners({first.shard_for(key): destination})
    second.publish(moved)
    assert second.version == 2 and second.name_for(key) == destination
    with first.session(key) as session:
        session.add(Order(id=1, user_id=key, total=1))
        with pytest.raises(StaleShardMap) as info:
            session.commit()
    assert (info.value.target, info.value.version, info.value.current) == (source, 1, 2)
    with engines[source].connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Order)) == 0
    # Reads are not fenced; a refresh picks the new version up without a restart.
    assert first.refresh() is True and first.version == 2 and first.refresh() is False
    with first.session(key) as session:
        session.add(Order(id=1, user_id=key, total=1))
        session.commit()
    assert first.distribution(Order.user_id).targets[destination] == 1
    assert first.distribution(Order.user_id).misplaced == dict.fromkeys(NAMES, 0)
    with pytest.raises(ShardingError, match="next version is 3"):
        catalog.publish(assign_balanced(NAMES, 64, version=7))
    catalog_engine.dispose()
