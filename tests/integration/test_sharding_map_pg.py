"""Shard maps on real PostgreSQL: four databases on the harness primary, one a primary+replica pool.

``db2`` is a :class:`RoutingPool` over its database on the primary and both
streaming replicas, so its reads run on replicas. Where rows landed is checked
with direct connections to each database, never through the map.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scalekit.errors import ConfigurationError, FanOutError, ShardingError, StaleShardMap
from scalekit.pagination import CursorCodec
from scalekit.routing import AsyncRoutingPool, RoutingPool
from scalekit.sharding import (
    DEFAULT_EPOCH_MS,
    DEFAULT_ID_LAYOUT,
    AsyncRedisShardCatalog,
    AsyncShardCatalog,
    AsyncShardMap,
    RedisShardCatalog,
    ShardCatalog,
    ShardMap,
    assign_balanced,
    logical_shard,
)
from scalekit.testing.servers import RedisClusterHarness, RedisNode
from tests.harness import PgCluster

pytestmark = pytest.mark.integration

NAMES = ["db0", "db1", "db2", "db3"]
POOLED = "db2"
LOGICAL = 128
SERVER_PORT = sa.select(sa.func.inet_server_port())


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "shard_orders"
    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(sa.BigInteger)
    total: Mapped[int]


@dataclass
class Databases:
    cluster: PgCluster
    names: dict[str, str]  # target name -> database name
    catalog: str

    def primary_engine(self, target: str) -> sa.Engine:
        assert self.cluster.primary is not None
        return self.cluster.primary.engine(self.names[target])

    def sync_targets(self) -> tuple[dict[str, Any], list[sa.Engine]]:
        engines = {name: self.primary_engine(name) for name in NAMES}
        replicas = [r.engine(self.names[POOLED]) for r in self.cluster.replicas]
        targets: dict[str, Any] = dict(engines)
        targets[POOLED] = RoutingPool(
            primary=engines[POOLED], replicas=replicas, sticky_timeout=5.0, max_lag_seconds=30
        )
        return targets, [*engines.values(), *replicas]

    def async_targets(self) -> tuple[dict[str, Any], list[Any]]:
        assert self.cluster.primary is not None
        engines = {
            name: create_async_engine(self.cluster.primary.url_for(self.names[name]))
            for name in NAMES
        }
        replicas = [
            create_async_engine(r.url_for(self.names[POOLED])) for r in self.cluster.replicas
        ]
        targets: dict[str, Any] = dict(engines)
        targets[POOLED] = AsyncRoutingPool(
            primary=engines[POOLED], replicas=replicas, sticky_timeout=5.0, max_lag_seconds=30
        )
        return targets, [*engines.values(), *replicas]

    def rows(self) -> dict[str, list[tuple[int, int, int]]]:
        found = {}
        for name in NAMES:
            engine = self.primary_engine(name)
            with engine.connect() as conn:
                found[name] = [
                    tuple(row)
                    for row in conn.execute(sa.select(Order.id, Order.user_id, Order.total))
                ]
            engine.dispose()
        return found  # type: ignore[return-value]

    def reset(self) -> None:
        for name in [*NAMES, "catalog"]:
            dbname = self.catalog if name == "catalog" else self.names[name]
            assert self.cluster.primary is not None
            engine = self.cluster.primary.engine(dbname)
            with engine.begin() as conn:
                conn.exec_driver_sql("DROP TABLE IF EXISTS scalekit_shard_fence")
                conn.exec_driver_sql("DROP TABLE IF EXISTS scalekit_shard_catalog")
                Base.metadata.drop_all(conn)
                if name != "catalog":
                    Base.metadata.create_all(conn)
            engine.dispose()
        self.cluster.wait_for_replicas()


@pytest.fixture(scope="module")
def databases(pg_cluster: PgCluster) -> Databases:
    assert pg_cluster.primary is not None
    suffix = uuid.uuid4().hex[:8]
    names = {name: f"shard_{name}_{suffix}" for name in NAMES}
    catalog = f"shard_catalog_{suffix}"
    for dbname in [*names.values(), catalog]:
        pg_cluster.primary.execute(f'CREATE DATABASE "{dbname}"')
    return Databases(pg_cluster, names, catalog)


@pytest.fixture
def shards(databases: Databases) -> Iterator[ShardMap]:
    databases.reset()
    targets, engines = databases.sync_targets()
    shards = ShardMap(targets, logical_shards=LOGICAL)
    yield shards
    shards.close()
    targets[POOLED].close()
    for engine in engines:
        engine.dispose()


def _fill(shards: ShardMap, count: int) -> list[tuple[int, int, int]]:
    rows = [(i, (i * 7919) % 1000, (i * 37) % 101) for i in range(1, count + 1)]
    for order_id, user_id, total in rows:
        with shards.session(user_id) as session:
            session.add(Order(id=order_id, user_id=user_id, total=total))
            session.commit()
    return rows


def test_routed_writes_land_on_the_key_target_and_reads_find_them(
    shards: ShardMap, databases: Databases
) -> None:
    rows = _fill(shards, 200)
    stored = databases.rows()
    for name, found in stored.items():
        assert found, f"{name} got no rows"
        for _, user_id, _ in found:
            assert shards.name_for(user_id) == name
            assert shards.assignment.owners[logical_shard(user_id, LOGICAL)] == name
    assert sorted(r for found in stored.values() for r in found) == rows
    databases.cluster.wait_for_replicas()
    replica_ports = {r.port for r in databases.cluster.replicas}
    read_ports = set()
    for order_id, user_id, total in rows[:40]:
        with shards.session(user_id) as session:
            got = session.get(Order, order_id)
            assert got is not None and got.total == total
            if shards.name_for(user_id) == POOLED:
                read_ports.add(session.scalar(SERVER_PORT))
    assert read_ports and read_ports <= replica_ports  # the pooled shard reads on replicas


def test_fan_out_rows_and_aggregates_equal_the_union(
    shards: ShardMap, databases: Databases
) -> None:
    _fill(shards, 300)
    databases.cluster.wait_for_replicas()
    union = [r for found in databases.rows().values() for r in found]
    got = shards.fan_out(sa.select(Order.id, Order.user_id, Order.total))
    assert sorted(tuple(row) for row in got) == sorted(union)
    (merged,) = shards.fan_out(
        sa.select(
            sa.func.count(),
            sa.func.sum(Order.total),
            sa.func.min(Order.total),
            sa.func.max(Order.id),
        )
    )
    totals = [t for _, _, t in union]
    assert tuple(merged) == (len(union), sum(totals), min(totals), max(i for i, _, _ in union))
    # Groups spanning shards merge into one row each.
    by_total = shards.fan_out(
        sa.select(Order.total, sa.func.count(), sa.func.sum(Order.id)).group_by(Order.total)
    )
    expected: dict[int, list[int]] = {}
    for order_id, _, total in union:
        expected.setdefault(total, []).append(order_id)
    assert {row[0]: (row[1], row[2]) for row in by_total} == {
        total: (len(ids), sum(ids)) for total, ids in expected.items()
    }
    distribution = shards.distribution(Order.user_id)
    assert distribution.total == len(union)
    assert distribution.misplaced == dict.fromkeys(NAMES, 0)
    python_side: dict[int, int] = {}
    for _, user_id, _ in union:
        shard = logical_shard(user_id, LOGICAL)
        python_side[shard] = python_side.get(shard, 0) + 1
    assert distribution.logical == dict(sorted(python_side.items()))


def test_a_timed_out_target_is_named(shards: ShardMap) -> None:
    slow = sa.select(
        sa.func.pg_sleep(sa.case((sa.func.current_database().like("%db1%"), 2), else_=0))
    )
    with pytest.raises(FanOutError, match="db1") as info:
        shards.fan_out(slow, timeout=0.5)
    assert list(info.value.failures) == ["db1"]
    assert isinstance(info.value.failures["db1"], TimeoutError)


@pytest.mark.parametrize("codec", [None, CursorCodec(secret="s" * 32)])
def test_pagination_visits_every_row_once_in_order_both_ways(
    shards: ShardMap, databases: Databases, codec: CursorCodec | None
) -> None:
    rows = _fill(shards, 157)
    databases.cluster.wait_for_replicas()
    statement = sa.select(Order.id, Order.total).where(Order.total != 3)
    order = [Order.total.desc(), Order.id]
    expected = [(i, t) for i, _, t in sorted(rows, key=lambda r: (-r[2], r[0])) if t != 3]
    seen: list[tuple[int, int]] = []
    page = shards.paginate(statement, order_by=order, limit=12, codec=codec)
    while True:
        assert len(page.items) <= 12
        seen.extend(tuple(row) for row in page.items)
        if not page.has_next:
            break
        page = shards.paginate(
            statement, order_by=order, limit=12, after=page.next_cursor, codec=codec
        )
    assert seen == expected
    back: list[tuple[int, int]] = []
    page = shards.paginate(statement, order_by=order, limit=12, last=True, codec=codec)
    while True:
        back = [tuple(row) for row in page.items] + back
        if not page.has_prev:
            break
        page = shards.paginate(
            statement, order_by=order, limit=12, before=page.prev_cursor, codec=codec
        )
    assert back == expected


def test_sessionmaker_routes_by_key_and_pool_roles(shards: ShardMap, databases: Databases) -> None:
    Session = shards.sessionmaker()
    key = next(k for k in range(1000) if shards.name_for(k) == POOLED)
    assert databases.cluster.primary is not None
    with Session(shard_key=key) as session:
        session.add(Order(id=1, user_id=key, total=5))
        session.commit()
    databases.cluster.wait_for_replicas()
    with Session() as session:
        port = session.scalar(SERVER_PORT.execution_options(shard_key=key))
        assert port in {r.port for r in databases.cluster.replicas}
        got = session.get(Order, 1, execution_options={"shard_key": key})
        assert got is not None and got.total == 5
        with pytest.raises(ShardingError, match="no shard key"):
            session.execute(sa.select(Order))
    assert [row[0] for row in databases.rows()[POOLED]] == [1]


def shard_aware_id(logical: int, sequence: int = 0) -> int:
    return DEFAULT_ID_LAYOUT.compose(DEFAULT_EPOCH_MS + 1_000, shard=logical, sequence=sequence)


def test_sessionmaker_routes_by_the_shard_in_the_primary_key(
    shards: ShardMap, databases: Databases
) -> None:
    Session = shards.sessionmaker(id_columns=[Order.id])
    ids = [shard_aware_id(logical, sequence) for logical in range(LOGICAL) for sequence in (0, 1)]
    with Session() as session:  # no shard key: every object goes by its ID
        session.add_all(Order(id=i, user_id=n, total=n % 50) for n, i in enumerate(ids))
        session.commit()
    owners = shards.assignment.owners
    for name, found in databases.rows().items():
        assert sorted(row[0] for row in found) == sorted(
            i for i in ids if owners[DEFAULT_ID_LAYOUT.shard_of(i)] == name
        )
    databases.cluster.wait_for_replicas()
    replica_ports = {r.port for r in databases.cluster.replicas}
    with Session() as session:
        for n, i in enumerate(ids):
            got = session.get(Order, i)
            assert got is not None and got.total == n % 50
        pooled = next(i for i in ids if owners[DEFAULT_ID_LAYOUT.shard_of(i)] == POOLED)
        port = session.scalar(sa.select(sa.func.inet_server_port()).where(Order.id == pooled))
        assert port in replica_ports  # a read by ID on a pool goes to a replica
        session.execute(sa.update(Order).where(Order.id == pooled).values(total=999))
        session.commit()
    pooled_engine = databases.primary_engine(POOLED)
    with pooled_engine.connect() as conn:
        assert conn.scalar(sa.select(Order.total).where(Order.id == pooled)) == 999
    pooled_engine.dispose()
    with Session() as session, pytest.raises(ShardingError, match="several targets"):
        session.execute(sa.select(Order).where(Order.id.in_(ids)))


@contextlib.contextmanager
def two_instances(databases: Databases) -> Iterator[tuple[ShardMap, ShardMap]]:
    """Two instances' maps from one catalog (fences installed), version 1: (stale, fresh)."""
    databases.reset()
    assert databases.cluster.primary is not None
    catalog_engine = databases.cluster.primary.engine(databases.catalog)
    catalog = ShardCatalog(catalog_engine)
    catalog.install()
    catalog.publish(assign_balanced(NAMES, LOGICAL))
    targets_a, engines_a = databases.sync_targets()
    targets_b, engines_b = databases.sync_targets()
    stale = ShardMap.from_catalog(catalog, targets_a)
    stale.install_fences()
    fresh = ShardMap.from_catalog(catalog, targets_b)
    try:
        yield stale, fresh
    finally:
        for shards, targets, engines in (
            (stale, targets_a, engines_a),
            (fresh, targets_b, engines_b),
        ):
            shards.close()
            targets[POOLED].close()
            for engine in engines:
                engine.dispose()
        catalog_engine.dispose()


def test_a_stale_instance_is_refused_after_a_version_bump(databases: Databases) -> None:
    with two_instances(databases) as (stale, fresh):
        key = next(k for k in range(1000) if stale.name_for(k) == POOLED)
        with stale.session(key) as session:  # allowed at version 1
            session.add(Order(id=1, user_id=key, total=1))
            session.commit()
        fresh.publish(fresh.assignment.with_owners({fresh.shard_for(key): "db0"}))
        with stale.session(key) as session:
            session.add(Order(id=2, user_id=key, total=2))
            with pytest.raises(StaleShardMap) as info:
                session.commit()
        assert (info.value.target, info.value.version, info.value.current) == (POOLED, 1, 2)
        assert [row[0] for row in databases.rows()[POOLED]] == [1]
        assert stale.refresh() is True
        with stale.session(key) as session:
            session.add(Order(id=2, user_id=key, total=2))
            session.commit()
        assert [row[0] for row in databases.rows()["db0"]] == [2]


def test_after_a_move_only_writes_to_the_moved_logical_shard_are_refused(
    databases: Databases,
) -> None:
    with two_instances(databases) as (stale, fresh):
        keys = range(5000)
        moved = next(k for k in keys if stale.name_for(k) == POOLED)
        moved_logical = stale.shard_for(moved)
        # Another key on the same source, and one on the destination, in unmoved logical shards.
        same_source = next(
            k for k in keys if stale.name_for(k) == POOLED and stale.shard_for(k) != moved_logical
        )
        on_destination = next(k for k in keys if stale.name_for(k) == "db0")
        fresh.publish(fresh.assignment.with_owners({moved_logical: "db0"}))
        Session = stale.sessionmaker()
        for order_id, key in ((1, same_source), (2, on_destination)):
            with stale.session(key) as session:  # the stale map routes these right: they commit
                session.add(Order(id=order_id, user_id=key, total=1))
                session.commit()
            with Session(shard_key=key) as session:
                session.add(Order(id=order_id + 10, user_id=key, total=1))
                session.commit()
        with stale.session(moved) as session:
            session.add(Order(id=3, user_id=moved, total=1))
            with pytest.raises(StaleShardMap, match=f"logical shard {moved_logical}") as info:
                session.commit()
        assert (info.value.target, info.value.version, info.value.current) == (POOLED, 1, 2)
        with Session(shard_key=moved) as session:
            session.add(Order(id=4, user_id=moved, total=1))
            with pytest.raises(StaleShardMap):
                session.commit()
        with (
            Session() as session
        ):  # a transaction writing a moved and an unmoved shard: all refused
            for order_id, key in ((5, same_source), (6, moved)):
                session.execute(
                    sa.insert(Order).values(id=order_id, user_id=key, total=1),
                    execution_options={"shard_key": key},
                )
            with pytest.raises(StaleShardMap):
                session.commit()
        by_id = stale.sessionmaker(id_columns=[Order.id])
        unmoved_id = shard_aware_id(stale.shard_for(same_source))
        moved_id = shard_aware_id(moved_logical)
        with by_id() as session:  # routed by the ID's logical shard, fenced by it
            session.add(Order(id=unmoved_id, user_id=same_source, total=1))
            session.commit()
            session.add(Order(id=moved_id, user_id=moved, total=1))
            with pytest.raises(StaleShardMap, match=f"logical shard {moved_logical}"):
                session.commit()
        stored = databases.rows()
        assert sorted(row[0] for row in stored[POOLED]) == sorted([1, 11, unmoved_id])
        assert sorted(row[0] for row in stored["db0"]) == [2, 12]
        # After a refresh the moved shard's writes go to its new owner.
        assert stale.refresh() is True
        with stale.session(moved) as session:
            session.add(Order(id=3, user_id=moved, total=1))
            session.commit()
        assert sorted(row[0] for row in databases.rows()["db0"]) == [2, 3, 12]


# -- asyncio --------------------------------------------------------------------------------


@pytest.fixture
async def ashards(databases: Databases) -> AsyncIterator[AsyncShardMap]:
    databases.reset()
    targets, engines = databases.async_targets()
    shards = AsyncShardMap(targets, logical_shards=LOGICAL)
    yield shards
    targets[POOLED].close()
    for engine in engines:
        await engine.dispose()


async def test_async_map_routes_fans_out_and_pages(
    ashards: AsyncShardMap, databases: Databases
) -> None:
    rows = [(i, (i * 7919) % 1000, (i * 37) % 101) for i in range(1, 121)]
    for order_id, user_id, total in rows:
        async with ashards.session(user_id) as session:
            session.add(Order(id=order_id, user_id=user_id, total=total))
            await session.commit()
    for name, found in databases.rows().items():
        assert all(ashards.name_for(user_id) == name for _, user_id, _ in found)
    databases.cluster.wait_for_replicas()
    (merged,) = await ashards.afan_out(sa.select(sa.func.count(), sa.func.sum(Order.total)))
    assert tuple(merged) == (len(rows), sum(t for _, _, t in rows))
    seen = []
    page = await ashards.apaginate(sa.select(Order.id), order_by=[Order.id.desc()], limit=25)
    while True:
        seen.extend(row[0] for row in page.items)
        if not page.has_next:
            break
        page = await ashards.apaginate(
            sa.select(Order.id), order_by=[Order.id.desc()], limit=25, after=page.next_cursor
        )
    assert seen == sorted((i for i, _, _ in rows), reverse=True)
    Session = ashards.sessionmaker()
    async with Session() as session:
        got = await session.get(Order, 7, execution_options={"shard_key": rows[6][1]})
        assert got is not None and got.total == rows[6][2]


async def test_async_stale_instance_is_refused(databases: Databases) -> None:
    databases.reset()
    assert databases.cluster.primary is not None
    catalog_engine = create_async_engine(databases.cluster.primary.url_for(databases.catalog))
    catalog = AsyncShardCatalog(catalog_engine)
    await catalog.ainstall()
    await catalog.apublish(assign_balanced(NAMES, LOGICAL))
    targets_a, engines_a = databases.async_targets()
    targets_b, engines_b = databases.async_targets()
    stale = await AsyncShardMap.afrom_catalog(catalog, targets_a)
    await stale.ainstall_fences()
    fresh = await AsyncShardMap.afrom_catalog(catalog, targets_b)
    key = next(k for k in range(1000) if stale.name_for(k) == "db1")
    unmoved = next(
        k
        for k in range(1000)
        if stale.name_for(k) == "db1" and k != key and stale.shard_for(k) != stale.shard_for(key)
    )
    await fresh.apublish(fresh.assignment.with_owners({fresh.shard_for(key): "db3"}))
    async with stale.session(key) as session:
        session.add(Order(id=1, user_id=key, total=1))
        with pytest.raises(StaleShardMap):
            await session.commit()
    async with stale.session(unmoved) as session:  # its logical shard did not move
        session.add(Order(id=2, user_id=unmoved, total=1))
        await session.commit()
    assert [row[0] for row in databases.rows()["db1"]] == [2]
    assert await stale.arefresh() is True
    async with stale.session(key) as session:
        session.add(Order(id=1, user_id=key, total=1))
        await session.commit()
    assert [row[0] for row in databases.rows()["db3"]] == [1]
    for targets, engines in ((targets_a, engines_a), (targets_b, engines_b)):
        targets[POOLED].close()
        for engine in engines:
            await engine.dispose()
    await catalog_engine.dispose()


async def test_async_sessionmaker_routes_by_the_shard_in_the_primary_key(
    ashards: AsyncShardMap, databases: Databases
) -> None:
    Session = ashards.sessionmaker(id_columns=[Order.id])
    ids = [shard_aware_id(logical) for logical in range(0, LOGICAL, 3)]
    async with Session() as session:
        session.add_all(Order(id=i, user_id=n, total=n) for n, i in enumerate(ids))
        await session.commit()
    owners = ashards.assignment.owners
    for name, found in databases.rows().items():
        assert sorted(row[0] for row in found) == sorted(
            i for i in ids if owners[DEFAULT_ID_LAYOUT.shard_of(i)] == name
        )
    databases.cluster.wait_for_replicas()
    async with Session() as session:
        for n, i in enumerate(ids):
            got = await session.get(Order, i)
            assert got is not None and got.total == n
        assert (await session.scalars(sa.select(Order.total).where(Order.id == ids[4]))).all() == [
            4
        ]
        with pytest.raises(ShardingError, match="no shard key"):
            await session.execute(sa.select(Order))


def test_sessionmaker_writes_are_fenced_too(databases: Databases) -> None:
    with two_instances(databases) as (stale, fresh):
        pooled_key = next(k for k in range(1000) if stale.name_for(k) == POOLED)
        other_key = next(k for k in range(1000) if stale.name_for(k) == "db1")
        fresh.publish(fresh.assignment.with_owners({fresh.shard_for(pooled_key): "db0"}))
        Session = stale.sessionmaker()
        with Session() as session:  # db1 is untouched by the move: its write commits
            session.execute(
                sa.insert(Order).values(id=1, user_id=other_key, total=1),
                execution_options={"shard_key": other_key},
            )
            session.commit()
        with Session(shard_key=pooled_key) as session:
            session.add(Order(id=2, user_id=pooled_key, total=2))
            with pytest.raises(StaleShardMap) as info:
                session.commit()
        assert info.value.target == POOLED
        stored = databases.rows()
        assert [row[0] for row in stored["db1"]] == [1] and stored[POOLED] == []


async def test_async_fan_out_names_a_timed_out_target(ashards: AsyncShardMap) -> None:
    slow = sa.select(
        sa.func.pg_sleep(sa.case((sa.func.current_database().like("%db3%"), 2), else_=0))
    )
    with pytest.raises(FanOutError, match="db3") as info:
        await ashards.afan_out(slow, timeout=0.5)
    assert list(info.value.failures) == ["db3"]
    assert isinstance(info.value.failures["db3"], TimeoutError)


# -- moving a logical shard -----------------------------------------------------------------


class Interrupted(Exception):
    pass


@dataclass
class MoveSetup:
    catalog: ShardCatalog
    mover: ShardMap
    app: ShardMap
    logical: int
    source: str
    destination: str
    keys: list[int]
    closers: list[Any]

    def close(self) -> None:
        for close in self.closers:
            close()


def _move_setup(databases: Databases, rows: int = 400) -> MoveSetup:
    databases.reset()
    assert databases.cluster.primary is not None
    catalog_engine = databases.cluster.primary.engine(databases.catalog)
    catalog = ShardCatalog(catalog_engine)
    catalog.install()
    catalog.publish(assign_balanced(NAMES, LOGICAL))
    targets_a, engines_a = databases.sync_targets()
    targets_b, engines_b = databases.sync_targets()
    mover = ShardMap.from_catalog(catalog, targets_a)
    mover.install_fences()
    app = ShardMap.from_catalog(catalog, targets_b)
    keys = [k for k in range(5000) if mover.shard_for(k) == mover.shard_for(POOLED_KEY)]
    for order_id in range(1, rows + 1):
        user_id = keys[order_id % len(keys)] if order_id % 2 else order_id
        with app.session(user_id) as session:
            session.add(Order(id=order_id, user_id=user_id, total=order_id % 97))
            session.commit()
    logical = mover.shard_for(POOLED_KEY)
    closers: list[Any] = [mover.close, app.close, catalog_engine.dispose]
    for targets, engines in ((targets_a, engines_a), (targets_b, engines_b)):
        closers.append(targets[POOLED].close)
        closers.extend(engine.dispose for engine in engines)
    return MoveSetup(catalog, mover, app, logical, POOLED, "db0", keys, closers)


# A key on the pooled shard at version 1: its logical shard is the one moved.
POOLED_KEY = next(k for k in range(1000) if assign_balanced(NAMES, LOGICAL).name_for(k) == POOLED)


def _every_row(databases: Databases) -> tuple[dict[int, str], list[tuple[int, int, int]]]:
    """Where each order id is stored (asserting it is stored once) and every row."""
    where: dict[int, str] = {}
    rows = []
    for name, found in databases.rows().items():
        for row in found:
            assert row[0] not in where, f"order {row[0]} is on {where[row[0]]} and {name}"
            where[row[0]] = name
            rows.append(row)
    return where, sorted(rows)


def _authoritative_rows(databases: Databases, shards: ShardMap) -> list[tuple[int, int, int]]:
    """The rows stored on the target that owns their logical shard (the catalog's latest)."""
    latest = shards.assignment
    assert shards.catalog is not None
    stored = shards.catalog.load()
    assert stored is not None
    owners = stored.owners if stored.version >= latest.version else latest.owners
    return sorted(
        row
        for name, found in databases.rows().items()
        for row in found
        if owners[logical_shard(row[1], LOGICAL)] == name
    )


def test_a_move_overwrites_and_removes_stray_rows_of_the_shard_on_the_destination(
    databases: Databases,
) -> None:
    setup = _move_setup(databases, rows=200)
    try:
        before = _authoritative_rows(databases, setup.mover)
        moving = [row for row in before if logical_shard(row[1], LOGICAL) == setup.logical]
        destination = databases.primary_engine(setup.destination)
        with destination.begin() as conn:  # written there by mistake, before the move
            conn.execute(  # the same primary key as a moving row, other values
                sa.insert(Order).values(id=moving[0][0], user_id=moving[0][1], total=-1)
            )
            conn.execute(sa.insert(Order).values(id=9001, user_id=setup.keys[0], total=-2))
        destination.dispose()
        kept = list(databases.rows()[setup.destination])
        setup.mover.move_shard(setup.logical, to=setup.destination, tables=[Order.user_id])
        stored = databases.rows()
        assert sorted(stored[setup.destination]) == sorted(
            [row for row in kept if row[0] not in (moving[0][0], 9001)] + moving
        )
        assert not any(logical_shard(r[1], LOGICAL) == setup.logical for r in stored[setup.source])
        assert _authoritative_rows(databases, setup.mover) == before
    finally:
        setup.close()


@pytest.mark.parametrize("step", ["copied", "verified", "published", "switched", "cleaned"])
def test_a_mover_killed_at_each_step_then_rerun_loses_and_duplicates_nothing(
    databases: Databases, step: str
) -> None:
    setup = _move_setup(databases)
    assert setup.mover.name_for(POOLED_KEY) == POOLED
    _, before = _every_row(databases)

    def crash(done: str) -> None:
        if done == step:
            raise Interrupted(done)

    with pytest.raises(Interrupted):
        setup.mover.move_shard(
            setup.logical, to=setup.destination, tables=[Order.user_id], _after_step=crash
        )
    # Whatever step it died after, every row is in exactly one authoritative place.
    assert _authoritative_rows(databases, setup.mover) == before
    setup.mover.move_shard(setup.logical, to=setup.destination, tables=[Order.user_id])
    where, after = _every_row(databases)
    assert after == before
    assert all(
        where[order_id] == setup.destination
        for order_id, user_id, _ in after
        if logical_shard(user_id, LOGICAL) == setup.logical
    )
    assert setup.mover.version == 2 and setup.mover.name_for(POOLED_KEY) == setup.destination
    distribution = setup.mover.distribution(Order.user_id)
    assert distribution.misplaced == dict.fromkeys(NAMES, 0)
    setup.close()


def test_a_move_under_a_concurrent_writer_loses_and_duplicates_nothing(
    databases: Databases,
) -> None:
    setup = _move_setup(databases)
    _, before = _every_row(databases)
    written: list[tuple[int, int, int]] = []
    refused: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        order_id = 10_000
        while not stop.is_set():
            order_id += 1
            user_id = setup.keys[order_id % len(setup.keys)]
            row = (order_id, user_id, order_id % 97)
            for _ in range(3):
                try:
                    with setup.app.session(user_id) as session:
                        session.add(Order(id=order_id, user_id=user_id, total=row[2]))
                        session.commit()
                except StaleShardMap:
                    refused.append(order_id)
                    setup.app.refresh()
                    continue
                written.append(row)
                break

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.3)
        setup.mover.move_shard(setup.logical, to=setup.destination, tables=[Order.user_id])
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert written and refused  # the writer ran before and after the switch
    where, after = _every_row(databases)
    assert after == sorted(before + written)
    assert all(
        where[order_id] == setup.destination
        for order_id, user_id, _ in after
        if logical_shard(user_id, LOGICAL) == setup.logical
    )
    setup.close()


MOVER_SCRIPT = """
import os, signal, sys
import sqlalchemy as sa
from scalekit.sharding import ShardCatalog, ShardMap
from tests.integration.test_sharding_map_pg import Order

urls, catalog_url, logical, destination, step = (
    sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
)
targets = {f"db{i}": sa.create_engine(url) for i, url in enumerate(urls)}
catalog = ShardCatalog(sa.create_engine(catalog_url))
shards = ShardMap.from_catalog(catalog, targets)

def kill(done):
    if done == step:
        os.kill(os.getpid(), signal.SIGKILL)

shards.move_shard(logical, to=destination, tables=[Order.user_id], _after_step=kill)
"""


@pytest.mark.parametrize("step", ["copied", "verified", "published", "switched"])
def test_a_mover_process_sigkilled_then_rerun_finishes(databases: Databases, step: str) -> None:
    setup = _move_setup(databases, rows=200)
    _, before = _every_row(databases)
    cluster = databases.cluster
    assert cluster.primary is not None
    urls = ",".join(cluster.primary.url_for(databases.names[name]) for name in NAMES)
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            MOVER_SCRIPT,
            urls,
            cluster.primary.url_for(databases.catalog),
            str(setup.logical),
            setup.destination,
            step,
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        timeout=120,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    assert _authoritative_rows(databases, setup.mover) == before
    # The killed mover's advisory lock went with its connection: the rerun is not blocked.
    setup.mover.move_shard(setup.logical, to=setup.destination, tables=[Order.user_id])
    where, after = _every_row(databases)
    assert after == before
    assert all(
        where[order_id] == setup.destination
        for order_id, user_id, _ in after
        if logical_shard(user_id, LOGICAL) == setup.logical
    )
    setup.close()


def _change_the_moving_shard(databases: Databases, setup: MoveSetup) -> None:
    """Update, delete, insert and re-key rows of the moving shard on its source."""
    moving = sorted(
        row[0]
        for row in databases.rows()[setup.source]
        if logical_shard(row[1], LOGICAL) == setup.logical
    )
    staying = next(  # a row of another logical shard of the source
        row
        for row in databases.rows()[setup.source]
        if logical_shard(row[1], LOGICAL) != setup.logical
    )
    new_key = next(k for k in range(5000, 10**6) if setup.mover.shard_for(k) == setup.logical)
    other_key = staying[1]  # stays on the source: its logical shard does not move
    source = databases.primary_engine(setup.source)
    with source.begin() as conn:
        conn.execute(
            sa.update(Order).where(Order.id.in_(moving[:3])).values(total=Order.total + 1000)
        )
        conn.execute(sa.delete(Order).where(Order.id.in_(moving[3:6])))
        conn.execute(
            sa.insert(Order), [{"id": 50_001 + i, "user_id": new_key, "total": i} for i in range(2)]
        )
        conn.execute(sa.update(Order).where(Order.id == moving[6]).values(user_id=other_key))
        conn.execute(sa.update(Order).where(Order.id == staying[0]).values(user_id=new_key))
    source.dispose()


@pytest.mark.parametrize("select", ["keys", "hash"])
def test_rows_changed_during_the_copy_are_caught_up_at_the_switch(
    databases: Databases, select: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if select == "hash":  # more keys than listed: the copy selects by the shard hash
        monkeypatch.setattr("scalekit.sharding._sync._MAX_KEYS", 0)
    setup = _move_setup(databases)
    expected: list[list[tuple[int, int, int]]] = []

    def change(done: str) -> None:
        if done == "copied":
            _change_the_moving_shard(databases, setup)
            expected.append(_authoritative_rows(databases, setup.mover))

    try:
        setup.mover.move_shard(
            setup.logical, to=setup.destination, tables=[Order.user_id], _after_step=change
        )
        where, after = _every_row(databases)
        assert after == expected[0]
        assert setup.mover.name_for(POOLED_KEY) == setup.destination
        assert all(
            where[order_id] == setup.mover.name_for(user_id) for order_id, user_id, _ in after
        )
        assert setup.mover.distribution(Order.user_id).misplaced == dict.fromkeys(NAMES, 0)
    finally:
        setup.close()


def test_a_move_of_many_rows_streams_them_all_in_chunks(databases: Databases) -> None:
    setup = _move_setup(databases, rows=50)
    try:
        source = databases.primary_engine(setup.source)
        with source.begin() as conn:  # about 1 MiB of COPY data: several chunks
            conn.execute(
                sa.insert(Order),
                [
                    {"id": 100_000 + i, "user_id": setup.keys[i % len(setup.keys)], "total": i}
                    for i in range(30_000)
                ],
            )
        source.dispose()
        _, before = _every_row(databases)
        setup.mover.move_shard(setup.logical, to=setup.destination, tables=[Order.user_id])
        where, after = _every_row(databases)
        assert after == before
        assert sum(where[order_id] == setup.destination for order_id, _, _ in after) > 30_000
    finally:
        setup.close()


def test_a_move_without_cleanup_switches_and_a_rerun_cleans(databases: Databases) -> None:
    setup = _move_setup(databases, rows=200)
    try:
        _, before = _every_row(databases)
        steps: list[str] = []
        setup.mover.move_shard(
            setup.logical,
            to=setup.destination,
            tables=[Order.user_id],
            cleanup=False,
            _after_step=steps.append,
        )
        assert steps == ["copied", "verified", "published", "switched"]
        assert setup.mover.version == 2 and setup.mover.name_for(POOLED_KEY) == setup.destination
        # The source keeps its copy, no longer authoritative; a stale writer is refused there.
        assert any(
            logical_shard(row[1], LOGICAL) == setup.logical
            for row in databases.rows()[setup.source]
        )
        assert _authoritative_rows(databases, setup.mover) == before
        with setup.app.session(POOLED_KEY) as session:
            session.add(Order(id=60_000, user_id=POOLED_KEY, total=1))
            with pytest.raises(StaleShardMap):
                session.commit()
        setup.mover.move_shard(
            setup.logical, to=setup.destination, tables=[Order.user_id], _after_step=steps.append
        )
        assert steps[-1] == "cleaned"
        _, after = _every_row(databases)
        assert after == before
    finally:
        setup.close()


async def test_async_move_shard(databases: Databases) -> None:
    setup = _move_setup(databases, rows=100)
    assert databases.cluster.primary is not None
    catalog_engine = create_async_engine(databases.cluster.primary.url_for(databases.catalog))
    targets, engines = databases.async_targets()
    shards = await AsyncShardMap.afrom_catalog(AsyncShardCatalog(catalog_engine), targets)
    expected: list[list[tuple[int, int, int]]] = []

    def change(done: str) -> None:  # runs between the copy and the switch
        if done == "copied":
            _change_the_moving_shard(databases, setup)
            expected.append(_authoritative_rows(databases, setup.mover))

    await shards.amove_shard(setup.logical, to="db3", tables=[Order.user_id], _after_step=change)
    where, after = _every_row(databases)
    assert after == expected[0]
    assert all(
        where[order_id] == "db3"
        for order_id, user_id, _ in after
        if logical_shard(user_id, LOGICAL) == setup.logical
    )
    assert shards.version == 2
    targets[POOLED].close()
    for engine in engines:
        await engine.dispose()
    await catalog_engine.dispose()
    setup.close()


# -- the Redis catalog ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_a_redis_catalog_publishes_and_fences_like_the_table(
    kind: str, databases: Databases, redis_server: RedisNode, redis_cluster: RedisClusterHarness
) -> None:
    databases.reset()
    client = redis_cluster.client() if kind == "cluster" else redis_server.client()
    catalog = RedisShardCatalog(client, name=f"m{uuid.uuid4().hex[:8]}")
    catalog.install()
    assert catalog.load() is None
    first = assign_balanced(NAMES, LOGICAL)
    catalog.publish(first)
    catalog.publish(first)  # the same map again: a no-op
    assert catalog.load() == first
    with pytest.raises(ShardingError, match="next version is 2"):
        catalog.publish(first.with_owners({0: "db3"}).with_owners({1: "db3"}))
    targets_a, engines_a = databases.sync_targets()
    targets_b, engines_b = databases.sync_targets()
    stale = ShardMap.from_catalog(catalog, targets_a)
    stale.install_fences()
    fresh = ShardMap.from_catalog(catalog, targets_b)
    key = next(k for k in range(1000) if stale.name_for(k) == "db1")
    unmoved = next(
        k
        for k in range(1000)
        if stale.name_for(k) == "db1" and stale.shard_for(k) != stale.shard_for(key)
    )
    fresh.publish(fresh.assignment.with_owners({fresh.shard_for(key): "db3"}))
    # Another instance that read version 1 before fresh published plans its own version 2:
    # the compare-and-set script refuses it.
    late = RedisShardCatalog(client, name=catalog.name)
    late.load = lambda: first  # type: ignore[method-assign]
    with pytest.raises(ShardingError, match="published by another instance"):
        late.publish(first.with_owners({0: "db2"}))
    assert catalog.load() == fresh.assignment
    with stale.session(key) as session:
        session.add(Order(id=1, user_id=key, total=1))
        with pytest.raises(StaleShardMap):
            session.commit()
    with stale.session(unmoved) as session:
        session.add(Order(id=2, user_id=unmoved, total=1))
        session.commit()
    assert stale.refresh() is True and stale.version == 2
    with pytest.raises(ConfigurationError, match="records its steps in a table"):
        stale.move_shard(0, to="db1", tables=[Order.user_id])
    for shards, targets, engines in ((stale, targets_a, engines_a), (fresh, targets_b, engines_b)):
        shards.close()
        targets[POOLED].close()
        for engine in engines:
            engine.dispose()
    client.delete(catalog.key)
    client.close()


async def test_an_async_redis_catalog(databases: Databases, redis_server: RedisNode) -> None:
    databases.reset()
    client = redis_server.async_client(decode_responses=True)
    catalog = AsyncRedisShardCatalog(client, name=f"a{uuid.uuid4().hex[:8]}")
    try:
        await catalog.ainstall()
        await catalog.apublish(assign_balanced(NAMES, LOGICAL))
        targets, engines = databases.async_targets()
        shards = await AsyncShardMap.afrom_catalog(catalog, targets)
        await shards.ainstall_fences()
        key = next(k for k in range(1000) if shards.name_for(k) == "db0")
        await shards.apublish(shards.assignment.with_owners({shards.shard_for(key): "db1"}))
        assert (await catalog.aload()) == shards.assignment and shards.version == 2
        async with shards.session(key) as session:
            session.add(Order(id=1, user_id=key, total=1))
            await session.commit()
        assert [row[0] for row in databases.rows()["db1"]] == [1]
        targets[POOLED].close()
        for engine in engines:
            await engine.dispose()
    finally:
        await client.delete(catalog.key)
        await client.aclose()
