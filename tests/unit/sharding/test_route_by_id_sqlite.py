"""``ShardSession`` routing by the logical shard in a shard-aware ID, on four SQLite files."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from scalekit.errors import ConfigurationError, ShardingError, UnknownShard
from scalekit.sharding import DEFAULT_EPOCH_MS, DEFAULT_ID_LAYOUT, IdLayout, ShardMap
from scalekit.sharding._orm import IdRouting

NAMES = ["db0", "db1", "db2", "db3"]
LOGICAL = 64


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    total: Mapped[int]


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    order_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("orders.id"))
    order: Mapped[Order] = relationship(backref="items")


class Note(Base):  # no ID column: routed by the session's shard_key only
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


def order_id(logical: int, sequence: int = 0) -> int:
    return DEFAULT_ID_LAYOUT.compose(DEFAULT_EPOCH_MS + 5_000, shard=logical, sequence=sequence)


@pytest.fixture
def engines(sqlite_shards: Callable[[sa.MetaData], dict[str, sa.Engine]]) -> dict[str, sa.Engine]:
    return sqlite_shards(Base.metadata)


def stored(engines: dict[str, sa.Engine], entity: type[Base]) -> dict[str, list[int]]:
    found = {}
    for name, engine in engines.items():
        with Session(engine) as session:
            found[name] = sorted(session.scalars(sa.select(entity.id)))  # type: ignore[attr-defined]
    return found


def test_flush_get_select_update_and_delete_route_by_the_id(
    engines: dict[str, sa.Engine],
) -> None:
    shards = ShardMap(engines, logical_shards=LOGICAL)
    Session_ = shards.sessionmaker(id_columns=[Order.id, Item.order_id])
    ids = [order_id(logical, sequence) for logical in range(LOGICAL) for sequence in (0, 1)]
    with Session_() as session:  # no shard key at all: each object goes by its ID
        session.add_all(Order(id=i, total=i % 97) for i in ids)
        session.add_all(Item(id=n, order_id=i) for n, i in enumerate(ids))
        session.commit()
    owners = shards.assignment.owners
    for name, found in stored(engines, Order).items():
        assert found == sorted(i for i in ids if owners[DEFAULT_ID_LAYOUT.shard_of(i)] == name)
    with Session_() as session:
        for i in ids[::7]:
            got = session.get(Order, i)
            assert got is not None and got.total == i % 97
        one = ids[5]
        assert session.scalars(sa.select(Order.total).where(Order.id == one)).all() == [one % 97]
        assert session.scalars(
            sa.select(Item.id).where(Item.order_id == one, Item.id >= 0)
        ).all() == [5]
        same_target = [i for i in ids if owners[DEFAULT_ID_LAYOUT.shard_of(i)] == "db1"]
        assert sorted(
            session.scalars(sa.select(Order.id).where(Order.id.in_(same_target[:5])))
        ) == sorted(same_target[:5])
        session.execute(sa.update(Order).where(Order.id == one).values(total=1000))
        session.execute(sa.delete(Item).where(Item.order_id == one))
        session.commit()
    with Session_() as session:
        got = session.get(Order, ids[5])
        assert got is not None and got.total == 1000
        got.total = 1001  # an UPDATE flush routed by the object's ID
        session.commit()
        assert got.total == 1001  # expired at commit: reloaded by its ID
    with Session_() as session:  # a lazy load names the parent's ID: routed by it
        order = session.get(Order, ids[9])
        assert order is not None and [item.id for item in order.items] == [9]  # type: ignore[attr-defined]
        item = session.scalars(sa.select(Item).where(Item.order_id == ids[9])).one()
        assert item.order is order
    with Session(shards.target(owners[DEFAULT_ID_LAYOUT.shard_of(ids[5])])) as plain:
        assert plain.scalar(sa.select(Order.total).where(Order.id == ids[5])) == 1001
    assert 5 not in {i for found in stored(engines, Item).values() for i in found}


def test_what_names_no_id_is_refused_or_takes_the_session_key(
    engines: dict[str, sa.Engine],
) -> None:
    shards = ShardMap(engines, logical_shards=LOGICAL)
    Session_ = shards.sessionmaker(id_columns=[Order.id])
    spread = [order_id(logical) for logical in range(LOGICAL)]
    with Session_() as session:
        with pytest.raises(ShardingError, match="no shard key"):
            session.execute(sa.select(Order))
        with pytest.raises(ShardingError, match="no shard key"):  # OR is not read
            session.execute(sa.select(Order).where((Order.id == spread[0]) | (Order.total == 1)))
        with pytest.raises(ShardingError, match="several targets"):
            session.execute(sa.select(Order).where(Order.id.in_(spread)))
        with pytest.raises(UnknownShard):
            session.get(Order, order_id(LOGICAL))  # shard field beyond this map's 64
        session.add(Note(id=1))
        with pytest.raises(ShardingError, match="no shard key"):
            session.flush()
        session.rollback()
    with Session_(shard_key="tenant") as session:  # objects without an ID column use the key
        session.add(Note(id=2))
        session.add(Order(id=spread[3], total=3))
        session.commit()
    assert stored(engines, Note)[shards.name_for("tenant")] == [2]
    assert stored(engines, Order)[shards.assignment.owners[3]] == [spread[3]]
    # An explicit shard_key option wins over the ID.
    with Session_() as session:
        stmt = sa.select(Order.id).where(Order.id == spread[3])
        other = next(k for k in range(1000) if shards.name_for(k) != shards.assignment.owners[3])
        assert session.scalars(stmt.execution_options(shard_key=other)).all() == []
        assert session.scalars(stmt).all() == [spread[3]]
    # Bulk INSERT still runs (the per-object hook is set during flushes only).
    with Session_(shard_key="tenant") as session:
        session.execute(sa.insert(Note), [{"id": 10}, {"id": 11}])
        session.commit()
    assert stored(engines, Note)[shards.name_for("tenant")] == [2, 10, 11]


def test_without_id_columns_nothing_changes_and_bad_configuration_is_refused(
    engines: dict[str, sa.Engine],
) -> None:
    shards = ShardMap(engines, logical_shards=LOGICAL)
    with shards.sessionmaker()() as session, pytest.raises(ShardingError, match="no shard key"):
        session.get(Order, order_id(1))
    with pytest.raises(ConfigurationError, match="id_columns"):
        shards.sessionmaker(id_columns=["id"])
    with pytest.raises(ConfigurationError, match="id_layout"):
        shards.sessionmaker(id_columns=[Order.id], id_layout=object())  # type: ignore[arg-type]
    narrow = IdLayout(shard_bits=6, sequence_bits=12)
    routing = IdRouting([Order.__table__.c.id], narrow)
    assert routing.ids_in(sa.select(Order).where(Order.id == 5), None) == [5]
    assert routing.ids_in(sa.select(Order).where(Order.total == 5), None) is None
    assert routing.ids_in(sa.select(Order).where(Order.id == -1), None) is None  # not an ID
