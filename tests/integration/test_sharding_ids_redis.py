"""Worker leases in real Redis: standalone and the 3-master cluster, sync and asyncio clients
built with their defaults (and ``decode_responses=True``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from scalekit.errors import WorkerLeaseError
from scalekit.sharding import (
    AsyncIdGenerator,
    AsyncRedisWorkerLease,
    IdGenerator,
    RedisWorkerLease,
    shard_of_id,
)
from scalekit.testing.servers import RedisClusterHarness, RedisNode
from tests.integration._asyncio_cluster import collect_dropped_connections

pytestmark = pytest.mark.integration

SYNC_KINDS = ["standalone", "standalone-decoded", "cluster", "cluster-decoded"]


def _client(kind: str, redis_server: RedisNode, redis_cluster: RedisClusterHarness) -> Any:
    kwargs = {"decode_responses": True} if kind.endswith("decoded") else {}
    if kind.startswith("cluster"):
        return redis_cluster.client(**kwargs)
    return redis_server.client(**kwargs)


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_leases_are_exclusive_and_an_expired_one_is_taken_over(
    kind: str, redis_server: RedisNode, redis_cluster: RedisClusterHarness
) -> None:
    client = _client(kind, redis_server, redis_cluster)
    pool = f"p-{uuid.uuid4().hex[:6]}"
    short = RedisWorkerLease(client, pool=pool, workers=[1, 2], ttl=0.4, renew_after=0.1)
    with IdGenerator(RedisWorkerLease(client, pool=pool, workers=[1, 2], ttl=30)) as keeper:
        old = IdGenerator(short)
        old.start()
        assert {keeper.worker, old.worker} == {1, 2}
        with pytest.raises(WorkerLeaseError, match="no free worker"):
            IdGenerator(RedisWorkerLease(client, pool=pool, workers=[1, 2])).start()
        old_ids = [old.next_id(9) for _ in range(300)]
        keeper_ids = [keeper.next_id(9) for _ in range(300)]
        time.sleep(0.6)  # old's lease expires on Redis's clock
        thief = IdGenerator(RedisWorkerLease(client, pool=pool, workers=[1, 2], ttl=30))
        thief.start()
        assert thief.worker == old.worker
        new_ids = [thief.next_id(9) for _ in range(300)]
        assert min(new_ids) > max(old_ids)  # above the old holder's ceiling
        with pytest.raises(WorkerLeaseError, match="lost"):
            old.next_id(9)
        thief.close()
    ids = old_ids + keeper_ids + new_ids
    assert len(set(ids)) == len(ids) and {shard_of_id(i) for i in ids} == {9}
    client.close()


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
async def test_the_async_lease_on_real_redis(
    kind: str, redis_server: RedisNode, redis_cluster: RedisClusterHarness
) -> None:
    client = redis_cluster.async_client() if kind == "cluster" else redis_server.async_client()
    pool = f"a-{uuid.uuid4().hex[:6]}"
    try:
        lease = AsyncRedisWorkerLease(client, pool=pool, workers=range(1, 5), ttl=30)
        generators = [AsyncIdGenerator(lease) for _ in range(4)]
        await asyncio.gather(*(g.astart() for g in generators))
        assert sorted(g.worker or 0 for g in generators) == [1, 2, 3, 4]

        async def issue(generator: AsyncIdGenerator) -> list[int]:
            return [await generator.anext_id(n % 1024) for n in range(2000)]

        batches = await asyncio.gather(*(issue(g) for g in generators))
        ids = [i for batch in batches for i in batch]
        assert len(set(ids)) == 8000
        await asyncio.gather(*(g.aclose() for g in generators))
        async with AsyncIdGenerator(lease) as again:
            assert again.worker in (1, 2, 3, 4)
    finally:
        await client.aclose()
        if kind == "cluster":
            collect_dropped_connections()
