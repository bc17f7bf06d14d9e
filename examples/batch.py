"""Load a CSV supplier feed with scalekit.batch: stream, upsert, dedupe, isolate bad rows.

Runs with no servers: the feed is written to a temporary CSV file and loaded
into SQLite. Give ``--url postgresql+psycopg://...`` to run the same code on
PostgreSQL, where the loads switch to COPY (``result.method`` says which).

    python examples/batch.py [--url URL] [--rows 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from scalekit.batch import BatchProgress, RejectedRow, Upsert, abatch_insert, batch_insert

metadata = sa.MetaData()
products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sku", sa.String(32), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("price_cents", sa.Integer, sa.CheckConstraint("price_cents >= 0"), nullable=False),
    sa.Column("stock", sa.Integer, nullable=False, server_default="0"),
)


def write_feed(path: Path, rows: int, seed: int = 8) -> None:
    """A supplier feed: some skus repeat (a later line corrects an earlier one), a few are bad."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "sku", "name", "price_cents", "stock"])
        for line in range(rows):
            product = rng.randrange(rows * 9 // 10)  # about 10% of the lines repeat a product
            price = rng.randrange(100, 10_000)
            if line % 2_500 == 2_499:
                price = -1  # a bad line: the CHECK constraint refuses it
            writer.writerow([product, f"SKU-{product:06d}", f"Product {product}", price, line % 7])


def read_feed(path: Path) -> Iterator[dict[str, Any]]:
    """Stream the CSV: one row at a time, never the whole file in memory."""
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            yield {
                "id": int(record["id"]),
                "sku": record["sku"],
                "name": record["name"],
                "price_cents": int(record["price_cents"]),
                "stock": int(record["stock"]),
            }


def show(label: str, result: Any) -> None:
    print(
        f"{label:<34} method={result.method:<13} rows={result.rows:>6} "
        f"inserted={result.inserted:>6} updated={result.updated:>6} skipped={result.skipped:>5} "
        f"duplicates={result.duplicates:>5} rejected={result.rejected_count:>3} "
        f"chunks={result.chunks}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        feed = Path(scratch) / "feed.csv"
        write_feed(feed, args.rows)
        url = args.url or f"sqlite:///{Path(scratch) / 'shop.db'}"
        engine = sa.create_engine(url)
        metadata.drop_all(engine)
        metadata.create_all(engine)
        try:
            run(engine, feed)
            if args.url is None:
                asyncio.run(run_async(f"sqlite+aiosqlite:///{Path(scratch) / 'shop.db'}"))
        finally:
            metadata.drop_all(engine)
            engine.dispose()


def run(engine: sa.Engine, feed: Path) -> None:
    print("1) the first import: upsert by sku, later lines win, bad lines set aside")
    progress: list[BatchProgress] = []
    result = batch_insert(
        engine,
        products,
        read_feed(feed),
        on_conflict=Upsert(index=["sku"], update=["name", "price_cents", "stock"]),
        dedupe="last",
        chunk_size=2_000,
        transaction="per_chunk",
        on_error="isolate",
        progress=progress.append,
    )
    show("   import", result)
    print(f"   progress calls: {len(progress)}, last: {progress[-1]}")
    for rejected in result.rejected[:3]:
        print(f"   rejected line {rejected.position + 2}: {rejected.message[:70]}")

    print("2) the same feed again: every row exists, nothing new")
    sink: list[RejectedRow] = []
    again = batch_insert(
        engine,
        products,
        read_feed(feed),
        on_conflict=Upsert(index=["sku"], update=["price_cents"]),
        on_error="isolate",
        on_reject=sink.append,
    )
    show("   re-import", again)
    print(f"   rejected rows handed to on_reject: {[r.position for r in sink]}")

    print("3) new products only, with their keys returned in input order")
    new_rows = [
        {"id": 1_000_000 + i, "sku": f"NEW-{i}", "name": f"New {i}", "price_cents": 500}
        for i in range(5)
    ]
    with engine.connect() as connection:
        existing = connection.execute(sa.select(products.c.id, products.c.sku).limit(1)).one()
    new_rows.insert(2, {"id": existing.id, "sku": existing.sku, "name": "x", "price_cents": 1})
    added = batch_insert(
        engine,
        products,
        new_rows,
        on_conflict=Upsert(index=["sku"], update=[]),
        returning=["id"],
    )
    show("   add new", added)
    print(f"   returned (None = skipped): {added.returned}")

    with engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(products)).scalar_one()
    print(f"   products in the table: {count}")


async def run_async(url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    print("4) the async twin, from an async generator")

    async def restock() -> AsyncIterator[tuple[int, str, str, int, int]]:
        for i in range(3_000):
            yield (2_000_000 + i, f"ASYNC-{i}", f"Async {i}", 100, 1)

    engine = create_async_engine(url)
    try:
        result = await abatch_insert(engine, products, restock(), chunk_size=1_000)
        show("   async load", result)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    main()
