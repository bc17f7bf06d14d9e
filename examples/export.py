"""Export a table as CSV with scalekit.batch.export: bounded memory, progress, early stop.

Runs with no servers: a table is filled in a temporary SQLite file and
exported to a CSV file, with a tqdm-style progress bar. Give
``--url postgresql+psycopg://...`` to run the same code on PostgreSQL, where
the export is ``COPY ... TO STDOUT``.

    python examples/export.py [--url URL] [--rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from scalekit.batch import aexport, batch_insert, export

metadata = sa.MetaData()
orders = sa.Table(
    "export_orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer", sa.String(40), nullable=False),
    sa.Column("amount_cents", sa.Integer, nullable=False),
    sa.Column("note", sa.String(100)),
)


def progress_bar(total: int) -> Callable[[int, int], None]:
    """A tqdm-style ``progress(rows, bytes)`` callback drawing a bar on one line.

    With tqdm: ``bar = tqdm(total=total, unit="rows")`` and
    ``progress=lambda rows, size: bar.update(rows - bar.n)``.
    """

    def draw(rows: int, size: int) -> None:
        filled = 30 * rows // max(total, 1)
        print(f"\r[{'#' * filled:<30}] {rows:>8,} rows {size / 1e6:6.2f} MB", end="", flush=True)

    return draw


async def export_async(url: str, select: sa.Select[tuple[int, str, int, str]]) -> int:
    """The asyncio twin, as a Starlette StreamingResponse would consume it."""
    from sqlalchemy.ext.asyncio import create_async_engine

    aengine = create_async_engine(url)
    try:
        return sum([len(chunk) async for chunk in aexport(aengine, select)])
    finally:
        await aengine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        url = args.url or f"sqlite:///{Path(scratch) / 'shop.db'}"
        engine = sa.create_engine(url)
        try:
            metadata.drop_all(engine)
            metadata.create_all(engine)
            batch_insert(
                engine,
                orders,
                (
                    (
                        i,
                        f"customer {i % 977}",
                        i * 7 % 10_000,
                        'says "hi", twice' if i % 9 else None,
                    )
                    for i in range(args.rows)
                ),
            )
            select = sa.select(orders).order_by(orders.c.id)

            # 1. the whole table to a file, one 64 KiB chunk at a time
            target = Path(scratch) / "orders.csv"
            with target.open("wb") as out:
                for chunk in export(engine, select, progress=progress_bar(args.rows)):
                    out.write(chunk)
            print()
            with target.open("rb") as handle:
                head = [next(handle).decode().rstrip() for _ in range(3)]
            print(f"export: {target.stat().st_size:,} bytes of CSV; first lines: {head}")

            # 2. a client that goes away after two chunks: the connection goes back
            stream = export(engine, select, chunk_size=16 * 1024)
            first = [next(stream), next(stream)]
            stream.close()
            print(
                f"stopped after {sum(map(len, first)):,} bytes; "
                f"connections checked out: {engine.pool.checkedout()}"
            )

            # 3. the asyncio twin
            async_url = url.replace("sqlite://", "sqlite+aiosqlite://", 1)
            size = asyncio.run(export_async(async_url, select))
            print(f"aexport: {size:,} bytes")
        finally:
            if args.url:
                metadata.drop_all(engine)
            engine.dispose()


if __name__ == "__main__":
    main()
