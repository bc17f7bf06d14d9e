"""``RedisShardCatalog`` on fakeredis: versions, the compare-and-set, a corrupt hash."""

from __future__ import annotations

from collections.abc import Callable

import fakeredis
import pytest
import sqlalchemy as sa

from scalekit.errors import ConfigurationError, ShardingError
from scalekit.sharding import RedisShardCatalog, ShardMap, assign_balanced

NAMES = ["db0", "db1", "db2", "db3"]


@pytest.mark.parametrize("decode", [False, True])
def test_versions_follow_one_another_and_a_map_is_built_from_it(
    decode: bool, sqlite_shards: Callable[[sa.MetaData], dict[str, sa.Engine]]
) -> None:
    client = fakeredis.FakeRedis(decode_responses=decode)
    catalog = RedisShardCatalog(client, name="orders")
    assert catalog.key == "scalekit:shard-catalog:{orders}"
    assert catalog.load() is None
    first = assign_balanced(NAMES, 64)
    with pytest.raises(ShardingError, match="next version is 1"):
        catalog.publish(first.with_owners({0: "db1"}))
    catalog.publish(first)
    catalog.publish(first)
    shards = ShardMap.from_catalog(catalog, sqlite_shards(sa.MetaData()))
    assert shards.assignment == first and shards.catalog is catalog
    second = first.with_owners({0: "db1"})
    catalog.publish(second)
    assert shards.refresh() is True and shards.assignment == second
    with pytest.raises(ConfigurationError, match="logical shard count"):
        catalog.publish(assign_balanced(NAMES, 32))
    with pytest.raises(ConfigurationError, match="records its steps in a table"):
        shards.move_shard(0, to="db2", tables=[sa.column("user_id")])
    client.hset(catalog.key, "owners", "not json")
    with pytest.raises(ConfigurationError, match="corrupt"):
        catalog.load()
    client.hdel(catalog.key, "targets")
    with pytest.raises(ConfigurationError, match="corrupt"):
        catalog.load()
