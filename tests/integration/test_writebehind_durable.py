"""Durable write-behind on real PostgreSQL and Redis (standalone and cluster).

Updates go to Redis streams before ``put`` returns; flushers in a consumer
group upsert them and commit the stream offset in the same transaction. A
flusher process SIGKILLed mid-flush (inside its transaction, or after the
commit and before its ``XACK``) loses no acknowledged update, and a
successor's takeover applies no counter twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.batch import AsyncWriteBehind, RejectedRow, WriteBehind
from scalekit.testing.servers import RedisNode

pytestmark = pytest.mark.integration

MODES = pytest.mark.parametrize("mode", ["sync", "async"])


class Db:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url)
        self.async_engine = create_async_engine(url)
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            f"wb_durable_{uuid.uuid4().hex[:8]}",
            self.metadata,
            sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("price", sa.Numeric(12, 2), nullable=False),
            sa.Column("hits", sa.BigInteger, sa.CheckConstraint("hits >= 0"), nullable=False),
        )
        self.metadata.create_all(self.engine)
        self.prefix = f"wbtest:{self.table.name}"

    def rows(self) -> dict[int, tuple[float, int]]:
        reader = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        with reader.connect() as connection:
            return {
                r.id: (float(r.price), r.hits) for r in connection.execute(sa.select(self.table))
            }

    def options(self, **extra: Any) -> dict[str, Any]:
        extra.setdefault("update", ["price"])
        extra.setdefault("increment", ["hits"])
        extra.setdefault("stream", self.prefix)
        extra.setdefault("flush_on_exit", False)
        extra.setdefault("flush_interval", 3600)
        return extra


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Db]:
    instance = Db(pg_url)
    yield instance
    instance.engine.dispose()
    await instance.async_engine.dispose()


async def run_two_instances(db: Db, mode: str, clients: list[Any], partitions: int) -> None:
    """Two instances put interleaved updates; each flushes what it holds the lease of."""
    if mode == "sync":
        writers: list[Any] = [
            WriteBehind(db.engine, db.table, durable=c, partitions=partitions, **db.options())
            for c in clients
        ]
        for i in range(4000):
            writers[i % 2].put({"id": i % 50, "price": i / 4, "hits": 1})
        writers[0].put_many([{"id": k, "price": 1, "hits": 3} for k in range(50)])
        assert writers[1].flush() + writers[0].flush() > 0
        for w in writers:
            w.close()
    else:
        awriters = [
            AsyncWriteBehind(
                db.async_engine, db.table, durable=c, partitions=partitions, **db.options()
            )
            for c in clients
        ]
        for i in range(4000):
            await awriters[i % 2].put({"id": i % 50, "price": i / 4, "hits": 1})
        await awriters[0].put_many([{"id": k, "price": 1, "hits": 3} for k in range(50)])
        assert await awriters[1].flush() + await awriters[0].flush() > 0
        for a in awriters:
            await a.aclose()
    assert db.rows() == dict.fromkeys(range(50), (1.0, 83))


@MODES
@pytest.mark.parametrize("decode", [False, True])
async def test_two_instances_on_standalone_redis(
    db: Db, redis_server: RedisNode, mode: str, decode: bool
) -> None:
    make = redis_server.client if mode == "sync" else redis_server.async_client
    clients = [make(decode_responses=decode) for _ in range(2)]
    try:
        await run_two_instances(db, mode, clients, partitions=3)
    finally:
        for c in clients:
            if mode == "sync":
                c.close()
            else:
                await c.aclose()


@MODES
async def test_partitions_spread_over_a_redis_cluster(
    db: Db, redis_cluster: Any, mode: str
) -> None:
    make = redis_cluster.client if mode == "sync" else redis_cluster.async_client
    clients = [make() for _ in range(2)]
    try:
        await run_two_instances(db, mode, clients, partitions=6)
    finally:
        for c in clients:
            if mode == "sync":
                c.close()
            else:
                await c.aclose()
    masters = {redis_cluster.node_for_key(f"{db.prefix}:{{{p}}}").port for p in range(6)}
    assert len(masters) >= 2


def test_rejected_rows_go_to_the_dead_letter_stream(db: Db, redis_client: Any) -> None:
    rejected: list[RejectedRow] = []
    writer = WriteBehind(
        db.engine, db.table, durable=redis_client, on_rejected=rejected.append, **db.options()
    )
    writer.put_many([{"id": 1, "price": 1, "hits": 1}, {"id": 2, "price": 1, "hits": -1}])
    assert writer.flush() == 1
    writer.close()
    assert [r.row["id"] for r in rejected] == [2]
    (entry,) = redis_client.xrange(f"{db.prefix}:dead")
    fields = entry[1]
    assert fields[b"error"] == b"CheckViolation" and b'"id":2' in fields[b"r"]
    assert db.rows() == {1: (1.0, 1)}
    assert redis_client.xpending(f"{db.prefix}:{{0}}", "scalekit-wb")["pending"] == 0


FLUSHER = """
import sys, time
import redis, sqlalchemy as sa
from scalekit.batch import WriteBehind
from scalekit.batch import _writebehind_sync as module

url, host, port, name, prefix, where = sys.argv[1:]
metadata = sa.MetaData()
table = sa.Table(name, metadata, sa.Column("id", sa.BigInteger, primary_key=True),
                 sa.Column("price", sa.Numeric(12, 2)), sa.Column("hits", sa.BigInteger))
client = redis.Redis(host, int(port))
calls = 0

def stop_here():
    print("stopping", flush=True)
    time.sleep(120)

if where == "after_commit":
    real_xack = client.xack
    def xack(*args):
        global calls
        calls += 1
        if calls == 3:
            stop_here()  # committed, not acknowledged
        return real_xack(*args)
    client.xack = xack
else:
    real_insert = module.batch_insert
    def batch_insert(*args, **kwargs):
        global calls
        result = real_insert(*args, **kwargs)
        calls += 1
        if calls == 3:
            stop_here()  # written, inside the transaction
        return result
    module.batch_insert = batch_insert

writer = WriteBehind(sa.create_engine(url), table, update=["price"], increment=["hits"],
                     durable=client, stream=prefix, read_count=500, lease=2.0,
                     flush_on_exit=False, flush_interval=3600)
writer.flush()
print("finished without stopping", flush=True)
"""


@pytest.mark.parametrize("where", ["after_commit", "during_write"])
def test_a_flusher_killed_mid_flush_loses_nothing_and_applies_nothing_twice(
    db: Db, redis_server: RedisNode, redis_client: Any, where: str
) -> None:
    producer = WriteBehind(db.engine, db.table, durable=redis_client, **db.options())
    total = 5000
    for start in range(0, total, 500):  # every put is acknowledged once put_many returns
        producer.put_many({"id": i % 100, "price": i, "hits": 1} for i in range(start, start + 500))
    flusher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(FLUSHER),
            db.url,
            redis_server.host,
            str(redis_server.port),
            db.table.name,
            db.prefix,
            where,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert flusher.stdout is not None
        line = flusher.stdout.readline()
        assert line.strip() == "stopping", flusher.stderr.read() if flusher.stderr else line
        os.kill(flusher.pid, signal.SIGKILL)
        flusher.wait(timeout=30)
    finally:
        if flusher.poll() is None:
            flusher.kill()
            flusher.wait()
        for pipe in (flusher.stdout, flusher.stderr):
            if pipe is not None:
                pipe.close()
    stream = f"{db.prefix}:{{0}}"
    pending = redis_client.xpending(stream, "scalekit-wb")["pending"]
    assert pending > 0  # the dead flusher left entries unacknowledged
    before = db.rows()
    if where == "after_commit":
        assert sum(h for _, h in before.values()) == 1500  # three batches of 500 committed
    else:
        assert sum(h for _, h in before.values()) == 1000
    successor = WriteBehind(db.engine, db.table, durable=redis_client, **db.options())
    assert successor.flush() == 0  # the dead flusher's lease has not expired yet
    time.sleep(2.2)
    successor.flush()
    successor.close()
    producer.close()
    last = {i % 100: i for i in range(total)}
    assert db.rows() == {k: (float(v), total // 100) for k, v in last.items()}
    assert redis_client.xpending(stream, "scalekit-wb")["pending"] == 0
