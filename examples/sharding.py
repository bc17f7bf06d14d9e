"""Sharding: four databases, a shared versioned map, routed sessions, fan-out and paging.

Runs on four SQLite files and a fifth for the catalog; no server is needed:

    python examples/sharding.py

On PostgreSQL the same code runs with one engine (or one RoutingPool, a
primary and its replicas) per shard.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scalekit.errors import ShardingError, StaleShardMap
from scalekit.pagination import CursorCodec
from scalekit.sharding import (
    AsyncShardMap,
    ShardCatalog,
    ShardMap,
    assign_balanced,
)

NAMES = ["db0", "db1", "db2", "db3"]


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "example_orders"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    user_id: Mapped[int]
    total: Mapped[int]


def section(title: str) -> None:
    print(f"\n== {title}")


def main(folder: Path) -> None:
    engines = {name: sa.create_engine(f"sqlite:///{folder / name}.db") for name in NAMES}
    for engine in engines.values():
        Base.metadata.create_all(engine)

    section("a shared map: publish version 1 in the catalog, every instance loads it")
    catalog = ShardCatalog(sa.create_engine(f"sqlite:///{folder / 'catalog'}.db"))
    catalog.install()
    catalog.publish(assign_balanced(NAMES, 64))
    shards = ShardMap.from_catalog(catalog, engines)
    shards.install_fences()
    print(shards)

    section("routed writes: one session per shard key")
    for order_id in range(1, 41):
        user_id = order_id % 9
        with shards.session(user_id) as session:
            session.add(Order(id=order_id, user_id=user_id, total=order_id * 3 % 50))
            session.commit()
    for name, engine in engines.items():
        with engine.connect() as conn:
            count = conn.scalar(sa.select(sa.func.count()).select_from(Order))
        print(f"{name}: {count} rows")

    section("a sessionmaker routing by the shard_key execution option")
    Session = shards.sessionmaker()
    with Session() as session:
        order = session.get(Order, 10, execution_options={"shard_key": 10 % 9})
        print("order 10:", order.total if order else None)
        try:
            session.execute(sa.select(Order))
        except ShardingError as error:
            print("refused:", error)

    section("fan-out: every shard at once, aggregates merged")
    (row,) = shards.fan_out(
        sa.select(sa.func.count(), sa.func.sum(Order.total), sa.func.max(Order.total))
    )
    print("count, sum, max:", tuple(row))
    per_user = shards.fan_out(
        sa.select(Order.user_id, sa.func.count()).group_by(Order.user_id).order_by(Order.user_id)
    )
    print("orders per user:", sorted(tuple(r) for r in per_user))

    section("keyset pages across shards (signed cursors)")
    codec = CursorCodec(secret="an example secret of 32 bytes..")
    page = shards.paginate(
        sa.select(Order.id, Order.total),
        order_by=[Order.total.desc(), Order.id],
        limit=8,
        codec=codec,
    )
    print("page 1:", [tuple(r) for r in page.items])
    page = shards.paginate(
        sa.select(Order.id, Order.total),
        order_by=[Order.total.desc(), Order.id],
        limit=8,
        after=page.next_cursor,
        codec=codec,
    )
    print("page 2:", [tuple(r) for r in page.items])
    print("distribution:", shards.distribution(Order.user_id).targets)

    section("another instance moves a logical shard; this one is refused until it reloads")
    other = ShardMap.from_catalog(catalog, engines)
    user_id = 4
    source = other.name_for(user_id)
    destination = next(name for name in NAMES if name != source)
    # Only the map changes here: a real move copies the logical shard's rows first
    # (user 4's earlier orders stay on the old target in this example).
    other.publish(other.assignment.with_owners({other.shard_for(user_id): destination}))
    with shards.session(user_id) as session:
        session.add(Order(id=100, user_id=user_id, total=1))
        try:
            session.commit()
        except StaleShardMap as error:
            print(f"refused on {error.target}: map v{error.version}, fence v{error.current}")
    shards.refresh()
    with shards.session(user_id) as session:
        session.add(Order(id=100, user_id=user_id, total=1))
        session.commit()
    print(f"after refresh (v{shards.version}) the order went to {shards.name_for(user_id)}")

    shards.close()
    other.close()
    for engine in engines.values():
        engine.dispose()
    catalog.engine.dispose()


async def amain(folder: Path) -> None:
    section("asyncio: AsyncShardMap over aiosqlite engines")
    engines = {
        name: create_async_engine(f"sqlite+aiosqlite:///{folder / name}.db") for name in NAMES
    }
    # The catalog published above now holds version 2; this map uses the default layout.
    shards = AsyncShardMap(engines, assignment=assign_balanced(NAMES, 64))
    (row,) = await shards.afan_out(sa.select(sa.func.count()).select_from(Order))
    print("rows on every shard:", row[0])
    async with shards.session(7) as session:
        print(
            "user 7's orders:",
            len((await session.scalars(sa.select(Order).where(Order.user_id == 7))).all()),
        )
    for engine in engines.values():
        await engine.dispose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
        asyncio.run(amain(Path(tmp)))
