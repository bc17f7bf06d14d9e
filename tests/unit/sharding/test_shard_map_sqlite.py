"""``ShardMap`` over four SQLite files: routed writes and reads, and its configuration errors."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from scalekit.errors import ConfigurationError, UnknownShard
from scalekit.sharding import ShardMap, assign_balanced, logical_shard, rebalance

NAMES = ["db0", "db1", "db2", "db3"]


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str]


@pytest.fixture
def engines(sqlite_shards: Callable[[sa.MetaData], dict[str, sa.Engine]]) -> dict[str, sa.Engine]:
    return sqlite_shards(Base.metadata)


def test_routed_writes_land_on_their_shard_and_reads_find_them(
    engines: dict[str, sa.Engine],
) -> None:
    shards = ShardMap(engines)
    user_ids = range(1, 201)
    for user_id in user_ids:
        with shards.session(user_id) as session:
            session.add(User(id=user_id, name=f"user-{user_id}"))
            session.commit()
    for user_id in user_ids:
        with shards.session(user_id) as session:
            assert session.get(User, user_id) is not None
    stored = {}
    for name, engine in engines.items():
        with Session(engine) as session:
            stored[name] = set(session.scalars(sa.select(User.id)))
    assert set().union(*stored.values()) == set(user_ids)
    assert sum(len(ids) for ids in stored.values()) == len(user_ids)
    for name, ids in stored.items():
        assert ids, f"{name} got no rows"
        assert all(shards.name_for(user_id) == name for user_id in ids)
        assert all(NAMES[logical_shard(user_id) % 4] == name for user_id in ids)


def test_lookups_agree_with_the_assignment(engines: dict[str, sa.Engine]) -> None:
    shards = ShardMap(engines)
    assert shards.version == 1
    assert shards.assignment == assign_balanced(NAMES)
    for key in (7, "tenant-acme", b"\x01", uuid.UUID(int=5)):
        logical = shards.shard_for(key)
        assert logical == logical_shard(key)
        assert shards.name_for(key) == shards.assignment.owner_of(logical)
        assert shards.target_for(key) is engines[shards.name_for(key)]
        with shards.session(key, expire_on_commit=False) as session:
            assert session.get_bind() is shards.target_for(key)
    assert shards.target("db2") is engines["db2"]
    assert shards.targets == engines
    assert "version=1 logical_shards=1024 db0=256" in repr(shards)


def test_a_given_assignment_is_used(engines: dict[str, sa.Engine]) -> None:
    grown = rebalance(assign_balanced(NAMES[:3], 64), NAMES)
    shards = ShardMap(engines, assignment=grown)
    assert shards.version == 2
    assert shards.assignment.counts() == {"db0": 16, "db1": 16, "db2": 16, "db3": 16}
    assert all(shards.name_for(key) == grown.name_for(key) for key in range(500))
    assert ShardMap(engines, logical_shards=16).assignment.logical_shards == 16


def test_bad_configuration_is_refused_with_the_names(engines: dict[str, sa.Engine]) -> None:
    with pytest.raises(ConfigurationError, match="at least one target"):
        ShardMap({})
    with pytest.raises(ConfigurationError, match="no engine for 'db3'; 'extra' not in") as info:
        ShardMap(
            {**{name: engines[name] for name in NAMES[:3]}, "extra": engines["db3"]},
            assignment=assign_balanced(NAMES),
        )
    assert info.value.parameter == "targets"
    with pytest.raises(ConfigurationError, match="must be Engines or RoutingPools; not for 'db1'"):
        ShardMap({"db0": engines["db0"], "db1": "sqlite://"})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match=r"logical_shards=16 but .* has 1024"):
        ShardMap(engines, assignment=assign_balanced(NAMES), logical_shards=16)
    with pytest.raises(UnknownShard, match="'db9'") as unknown:
        ShardMap(engines).target("db9")
    assert unknown.value.shard == "db9"
    with pytest.raises(ConfigurationError, match="int, str, bytes or UUID"):
        ShardMap(engines).session(1.5)  # type: ignore[arg-type]
