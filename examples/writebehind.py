"""Buffer hot updates with scalekit.batch.WriteBehind: coalescing, counters, durable mode.

Runs with no servers: SQLite in a temporary file, and fakeredis for the
durable mode. Give ``--url postgresql+psycopg://...`` and ``--redis
redis://...`` to run the same code on real servers.

1. Memory mode: 50,000 page views over 500 pages (a few pages are hot) are
   put; each page's row gets ``last_seen`` overwritten and ``views`` added,
   in a handful of flushes instead of 50,000 writes.
2. A refused row (a negative counter breaks a CHECK) goes to ``on_rejected``;
   the rest of the flush is written.
3. Durable mode: every put is in a Redis stream before it returns. One
   instance "dies" with updates unflushed; another instance's flusher writes
   them, and nothing is counted twice.
4. The asyncio twin, ``AsyncWriteBehind``, as an ``async with`` block.

    python examples/writebehind.py [--url URL] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.batch import AsyncWriteBehind, RejectedRow, WriteBehind

metadata = sa.MetaData()
pages = sa.Table(
    "page_stats",
    metadata,
    sa.Column("page_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("views", sa.BigInteger, sa.CheckConstraint("views >= 0"), nullable=False),
)


def total_views(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.coalesce(sa.func.sum(pages.c.views), 0))
            ).scalar_one()
        )


def memory_mode(engine: sa.Engine) -> None:
    print("1. memory mode")
    rejected: list[RejectedRow] = []
    hot = random.Random(1)
    with WriteBehind(
        engine,
        pages,
        key=["page_id"],
        update=["last_seen"],
        increment=["views"],
        flush_interval=0.2,  # seconds; 5.0 by default
        on_rejected=rejected.append,
    ) as writer:
        for _ in range(50_000):
            page = min(int(hot.paretovariate(1.2)), 500)
            writer.put({"page_id": page, "last_seen": time.time(), "views": 1})
        writer.flush()
        m = writer.metrics()
        print(f"   {m.puts:,} updates put, {m.flushed_rows:,} rows written in {m.flushes} flushes")
        print(f"   views in the table: {total_views(engine):,}")

        print("2. a row the database refuses")
        writer.put({"page_id": 1, "last_seen": time.time(), "views": -(10**9)})
        writer.put({"page_id": 2, "last_seen": time.time(), "views": 1})
        writer.flush()
        for item in rejected:
            print(f"   rejected page {item.row['page_id']}: {type(item.error).__name__}")
    print(f"   views in the table: {total_views(engine):,} (page 2's view written)")


def durable_mode(engine: sa.Engine, redis_url: str | None) -> None:
    print("3. durable mode")
    if redis_url is None:
        import fakeredis

        server = fakeredis.FakeServer()
        client: Any = fakeredis.FakeRedis(server=server)
        other_client: Any = fakeredis.FakeRedis(server=server)
    else:
        import redis

        client = redis.Redis.from_url(redis_url)
        other_client = redis.Redis.from_url(redis_url)
        client.delete(*client.keys("scalekit:wb:example:*") or ["-"])
    before = total_views(engine)
    options: dict[str, Any] = {
        "key": ["page_id"],
        "update": ["last_seen"],
        "increment": ["views"],
        "stream": "scalekit:wb:example",
        "partitions": 4,  # one stream per hash tag: they spread over a Redis Cluster
        "lease": 0.5,  # seconds before another flusher takes over a dead one's partitions
        "flush_on_exit": False,
    }
    doomed = WriteBehind(engine, pages, durable=client, **options)
    doomed.put_many({"page_id": p % 20, "last_seen": time.time(), "views": 1} for p in range(2_000))
    print("   instance A put 2,000 views and stopped before flushing (they are in Redis)")
    del doomed
    survivor = WriteBehind(engine, pages, durable=other_client, **options)
    time.sleep(0.6)  # A's leases expire
    written = survivor.flush()
    survivor.close()
    print(f"   instance B flushed {written} rows; views added: {total_views(engine) - before:,}")


async def async_mode(url: str) -> None:
    print("4. asyncio")
    engine = create_async_engine(url)
    async with AsyncWriteBehind(
        engine, pages, key=["page_id"], update=["last_seen"], increment=["views"]
    ) as writer:
        for page in range(100):
            await writer.put({"page_id": page, "last_seen": time.time(), "views": 1})
    print(f"   closed with {writer.metrics().flushed_rows} rows written")
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a SQLAlchemy URL (default: SQLite in a temporary file)")
    parser.add_argument("--redis", help="a Redis URL (default: fakeredis)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or f"sqlite:///{Path(folder) / 'pages.db'}"
        engine = sa.create_engine(url)
        metadata.drop_all(engine)
        metadata.create_all(engine)
        memory_mode(engine)
        durable_mode(engine, args.redis)
        async_url = url.replace("sqlite://", "sqlite+aiosqlite://")
        asyncio.run(async_mode(async_url))
        engine.dispose()


if __name__ == "__main__":
    main()
