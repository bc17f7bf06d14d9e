"""Streaming export from PostgreSQL: scalekit's export vs raw COPY and fetch + csv.writer.

Creates a scratch database ``scalekit_bench_export_<pid>`` on the server of
``--url`` (default: the local PostgreSQL, user postgres), fills a table
(bigint key, text, int, numeric, timestamptz) with ``--rows`` rows (500,000
by default) and exports it as CSV with each method, consuming the bytes
(counting them) as a web response would. Every case runs ``--repeat``
times, round robin, and the best run is kept; rows/s (wall time), the
client CPU time per row, and the peak of Python allocations during one run
(tracemalloc, a separate untimed run) are printed. The scratch database is
dropped at the end.

Cases:
  psycopg COPY TO STDOUT      raw: cursor.copy("COPY (...) TO STDOUT (FORMAT csv, HEADER)")
  SA fetch + csv.writer       conn.execute(select(t)) with yield_per, csv.writer into a buffer
                              flushed every 64 KiB (the usual hand-written streaming view)
  scalekit export             export(engine, select(t))

Targets from issue 19: export >= 0.9x raw COPY; export >= 3x fetch + csv.writer.

Run:  python benchmarks/bench_export.py [--url URL] [--rows 500000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scalekit.batch import batch_insert, export

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
CHUNK = 64 * 1024

metadata = sa.MetaData()
table = sa.Table(
    "bench_export",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("qty", sa.Integer),
    sa.Column("price", sa.Numeric(10, 2)),
    sa.Column("created", sa.DateTime(timezone=True)),
)


def raw_copy(engine: sa.Engine) -> Iterator[bytes]:
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert driver is not None
        sql = f"COPY (SELECT * FROM {table.name}) TO STDOUT WITH (FORMAT csv, HEADER)"
        with driver.cursor().copy(sql) as copy:  # type: ignore[attr-defined]
            yield from copy


def fetch_csv_writer(engine: sa.Engine) -> Iterator[bytes]:
    with engine.connect() as connection:
        result = connection.execute(sa.select(table), execution_options={"yield_per": 1000})
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(result.keys())
        for row in result:
            writer.writerow(row)
            if buffer.tell() >= CHUNK:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue().encode()


def scalekit_export(engine: sa.Engine) -> Iterator[bytes]:
    return export(engine, sa.select(table), chunk_size=CHUNK)


CASES: dict[str, Callable[[sa.Engine], Iterator[bytes]]] = {
    "psycopg COPY TO STDOUT": raw_copy,
    "SA fetch + csv.writer": fetch_csv_writer,
    "scalekit export": scalekit_export,
}


def consume(stream: Iterator[bytes]) -> int:
    return sum(len(chunk) for chunk in stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    admin_url = make_url(args.url)
    scratch = f"scalekit_bench_export_{os.getpid()}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{scratch}"')
    engine = sa.create_engine(admin_url.set(database=scratch))
    try:
        run_all(engine, args)
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{scratch}"')
        admin.dispose()


def run_all(engine: sa.Engine, args: argparse.Namespace) -> None:
    metadata.create_all(engine)
    rows = (
        (i, f"sku-{i:08d}", i % 1000, f"{i % 10000}.{i % 100:02d}", BASE + dt.timedelta(seconds=i))
        for i in range(args.rows)
    )
    batch_insert(engine, table, rows, columns=["id", "sku", "qty", "price", "created"])

    sizes = {name: consume(case(engine)) for name, case in CASES.items()}  # warm-up
    wall = dict.fromkeys(CASES, float("inf"))
    cpu = dict.fromkeys(CASES, float("inf"))
    for _ in range(args.repeat):
        for name, case in CASES.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            consume(case(engine))
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    peaks = {}
    for name, case in CASES.items():
        tracemalloc.start()
        consume(case(engine))
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    n = args.rows
    print(f"\nCSV export of {n:,} rows (best of {args.repeat}), PostgreSQL via psycopg")
    header = (
        f"{'case':<26} {'rows/s':>12} {'CPU us/row':>11} {'vs COPY':>8} "
        f"{'vs csv.writer':>14} {'peak KiB':>9} {'MB out':>7}"
    )
    print(header)
    print("-" * len(header))
    for name in CASES:
        print(
            f"{name:<26} {n / wall[name]:>12,.0f} {cpu[name] / n * 1e6:>11.2f} "
            f"{wall['psycopg COPY TO STDOUT'] / wall[name]:>7.2f}x "
            f"{wall['SA fetch + csv.writer'] / wall[name]:>13.2f}x "
            f"{peaks[name] / 1024:>9,.0f} {sizes[name] / 1e6:>7.1f}"
        )
    print("targets: scalekit export >= 0.9x COPY, >= 3x fetch + csv.writer")


if __name__ == "__main__":
    main()
