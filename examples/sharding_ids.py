"""Shard-aware 64-bit IDs: issue them in Python under a leased worker id, route by ID alone.

Runs on SQLite files (four shard databases and a catalog holding the worker
leases); no server is needed. On PostgreSQL the IDs can also be issued by the
database itself: ``install_id_function(engine, shard=n)`` installs a PL/pgSQL
function to use as the ``id`` column's default (see docs/sharding_ids.md).

    python examples/sharding_ids.py
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.errors import ClockMovedBackwards
from scalekit.sharding import (
    GENERATOR_ID_LAYOUT,
    AsyncIdGenerator,
    AsyncWorkerLease,
    IdGenerator,
    ShardMap,
    WorkerLease,
    logical_shard,
    shard_of_id,
)
from scalekit.testing import FakeClock

metadata = sa.MetaData()
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
)
PHYSICAL = 4


def section(title: str) -> None:
    print(f"\n== {title}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="scalekit-ids-") as folder:
        tour(Path(folder))


def tour(folder: Path) -> None:
    shards = [sa.create_engine(f"sqlite:///{folder / f'shard{n}.db'}") for n in range(PHYSICAL)]
    for engine in shards:
        metadata.create_all(engine)

    def engine_for(logical: int) -> sa.Engine:
        return shards[logical % PHYSICAL]  # a stand-in for a ShardMap

    catalog = sa.create_engine(f"sqlite:///{folder / 'catalog.db'}")
    lease = WorkerLease(catalog, pool="orders", ttl=30)
    lease.create_table()

    section("issue IDs that carry the user's logical shard")
    with IdGenerator(lease) as ids:
        print(f"leased worker id {ids.worker} from the catalog")
        placed = []
        for user_id in range(1, 9):
            logical = logical_shard(user_id)  # 0..1023, the same in every process
            order_id = ids.next_id(logical)
            with engine_for(logical).begin() as connection:
                connection.execute(
                    orders.insert().values(id=order_id, user_id=user_id, total=10 * user_id)
                )
            placed.append(order_id)
            print(f"user {user_id}: logical shard {logical:4}, order id {order_id}")

    section("route a lookup by the ID alone")
    for order_id in placed[:3]:
        logical = shard_of_id(order_id)
        with engine_for(logical).connect() as connection:
            row = connection.execute(sa.select(orders).where(orders.c.id == order_id)).one()
        parts = GENERATOR_ID_LAYOUT.decompose(order_id)
        print(
            f"{order_id} -> shard {logical}, worker {parts.worker}, "
            f"created {parts.created_at:%Y-%m-%d %H:%M:%S.%f} UTC: user {row.user_id}"
        )

    section("a ShardMap's sessions route by the ID, with no shard key")
    # assign_balanced gives logical shard n to target n % 4: the placement used above.
    shard_map = ShardMap({f"shard{n}": engine for n, engine in enumerate(shards)})
    Session = shard_map.sessionmaker(id_columns=[orders.c.id], id_layout=GENERATOR_ID_LAYOUT)
    with Session() as session:
        for order_id in placed[:3]:
            row = session.execute(sa.select(orders).where(orders.c.id == order_id)).one()
            name = shard_map.assignment.owners[shard_of_id(order_id)]
            print(f"{order_id} -> {name}: user {row.user_id}, total {row.total}")

    section("a clock stepped backwards never yields a duplicate")
    clock = FakeClock(wall=time.time())
    with IdGenerator(lease, clock=clock, max_backwards_seconds=0.2) as ids:
        before = ids.next_id(1)
        clock.set_wall(clock.time() - 0.05)  # NTP steps the clock back 50 ms
        after = ids.next_id(1)  # waits 50 ms (on the fake clock) rather than repeat
        print(f"stepped back 50 ms: waited {clock.sleeps}, {after} > {before}: {after > before}")
        clock.set_wall(clock.time() - 5)
        try:
            ids.next_id(1)
        except ClockMovedBackwards as error:
            print(f"stepped back 5 s: refused ({error.behind_ms} ms behind)")

    section("the asyncio twin")

    async def issue_async() -> list[int]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{folder / 'catalog.db'}")
        async with AsyncIdGenerator(AsyncWorkerLease(engine, pool="orders")) as ids:
            issued = [await ids.anext_id(7) for _ in range(1000)]
        await engine.dispose()
        return issued

    issued = asyncio.run(issue_async())
    print(f"{len(set(issued))} unique IDs, all on shard {set(map(shard_of_id, issued))}")
    for engine in [*shards, catalog]:
        engine.dispose()


if __name__ == "__main__":
    main()
