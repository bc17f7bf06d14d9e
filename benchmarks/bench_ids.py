"""Shard-aware IDs: ids/s in Python vs uuid4 and uuid7; the SQL ID function vs bigserial.

Python side (no server): ``IdGenerator.next_id`` (worker id leased from a SQLite
catalog) against ``uuid.uuid4()`` and, when the ``uuid6`` package is installed
(the ``bench`` extra), ``uuid6.uuid7()``. Two layouts: the default generator
layout caps one worker at 64 IDs per millisecond (64,000/s: the figure is the
wait, not the code), and a wide one (41 time, 10 shard, 1 worker, 12
sequence bits: 4,096/ms) that shows the cost of the code itself.

SQL side: ``scalekit_next_id()`` (the PL/pgSQL function, advisory lock and
sequence) against a ``bigserial`` column: a bulk ``INSERT ... SELECT`` of
``--rows`` rows (the function's per-row cost on the server) and single-row
inserts, one transaction each (what an application does).

    python benchmarks/bench_ids.py --python-only
    python benchmarks/bench_ids.py --server          # start a PostgreSQL with the harness
    python benchmarks/bench_ids.py --url postgresql+psycopg://app@db/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Result, print_table, time_per_call

from scalekit.sharding import (
    AsyncIdGenerator,
    AsyncWorkerLease,
    IdGenerator,
    IdLayout,
    WorkerLease,
    install_id_function,
)

WIDE = IdLayout(shard_bits=10, worker_bits=1, sequence_bits=12)


def python_side(number: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-ids-"))
    catalog = sa.create_engine(f"sqlite:///{folder / 'catalog.db'}")
    lease = WorkerLease(catalog, pool="bench", workers=[1], ttl=3600)
    lease.create_table()
    results = [Result("uuid.uuid4()", time_per_call(uuid.uuid4, number=number))]
    try:
        import uuid6
    except ImportError:
        print("uuid6 is not installed: uuid7 skipped (pip install uuid6)")
    else:
        results.append(Result("uuid6.uuid7()", time_per_call(uuid6.uuid7, number=number)))
    results.append(
        Result(
            "IdLayout.compose (the arithmetic alone)",
            time_per_call(lambda: WIDE.compose(1_800_000_000_000, 5, 7, 1), number=number),
        )
    )
    with IdGenerator(lease, layout=WIDE) as ids:
        results.append(
            Result("IdGenerator.next_id, wide (4096/ms)", time_per_call(lambda: ids.next_id(5)))
        )
    lease.release(1, 0)
    with IdGenerator(lease) as ids:
        results.append(
            Result(
                "IdGenerator.next_id, default (64/ms cap)",
                time_per_call(lambda: ids.next_id(5), number=number // 4, repeat=3),
            )
        )

    async def async_ns() -> float:
        engine = create_async_engine(f"sqlite+aiosqlite:///{folder / 'catalog.db'}")
        best = float("inf")
        async with AsyncIdGenerator(
            AsyncWorkerLease(engine, pool="bench-async", workers=[1], ttl=3600), layout=WIDE
        ) as ids:
            for _ in range(5):
                start = time.perf_counter_ns()
                for _ in range(number):
                    await ids.anext_id(5)
                best = min(best, (time.perf_counter_ns() - start) / number)
        await engine.dispose()
        return best

    results.append(Result("AsyncIdGenerator.anext_id, wide", asyncio.run(async_ns())))
    catalog.dispose()
    print_table("IDs issued in Python, one process", results, baseline="uuid.uuid4()")
    for result in results:
        print(f"  {result.name:<44} {1e9 / result.ns_per_call:>14,.0f} ids/s")


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"scalekit_bench_ids_{uuid.uuid4().hex[:6]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield str(sa.engine.make_url(url).set(database=name))
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


def sql_side(url: str, rows: int, single: int, rounds: int) -> None:
    engine = sa.create_engine(url)
    install_id_function(engine, shard=3)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE t_fn (id bigint PRIMARY KEY DEFAULT scalekit_next_id(), note text)"
        )
        connection.exec_driver_sql("CREATE TABLE t_serial (id bigserial PRIMARY KEY, note text)")

    def bulk(table: str) -> float:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"TRUNCATE {table}")
        start = time.perf_counter()
        with engine.begin() as connection:
            connection.exec_driver_sql(
                f"INSERT INTO {table} (note) SELECT 'x' FROM generate_series(1, {rows})"
            )
        return time.perf_counter() - start

    def one_by_one(table: str) -> float:
        statement = sa.text(f"INSERT INTO {table} (note) VALUES ('y') RETURNING id")
        start = time.perf_counter()
        for _ in range(single):
            with engine.begin() as connection:
                connection.execute(statement).scalar_one()
        return time.perf_counter() - start

    # Interleaved rounds, median: the two cases see the same machine noise.
    timings: dict[str, list[float]] = {k: [] for k in ("bf", "bs", "sf", "ss")}
    for _ in range(rounds):
        timings["bs"].append(bulk("t_serial"))
        timings["bf"].append(bulk("t_fn"))
        timings["ss"].append(one_by_one("t_serial"))
        timings["sf"].append(one_by_one("t_fn"))
    med = {k: statistics.median(v) for k, v in timings.items()}
    print(f"\nIDs issued by PostgreSQL (median of {rounds} interleaved rounds)")
    header = f"{'case':<52} {'rows/s':>12} {'µs/row':>9} {'vs bigserial':>13}"
    print(header)
    print("-" * len(header))
    for label, key, base, count in (
        (f"bulk INSERT..SELECT {rows:,} rows, bigserial", "bs", "bs", rows),
        (f"bulk INSERT..SELECT {rows:,} rows, scalekit_next_id()", "bf", "bs", rows),
        (f"{single:,} single-row inserts, bigserial", "ss", "ss", single),
        (f"{single:,} single-row inserts, scalekit_next_id()", "sf", "ss", single),
    ):
        print(
            f"{label:<52} {count / med[key]:>12,.0f} {med[key] / count * 1e6:>9.2f}"
            f" {med[key] / med[base]:>12.2f}x"
        )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--server", action="store_true", help="start a PostgreSQL (harness)")
    parser.add_argument("--python-only", action="store_true", help="no server part")
    parser.add_argument("--number", type=int, default=200_000, help="Python calls per run")
    parser.add_argument("--rows", type=int, default=200_000, help="bulk insert rows")
    parser.add_argument("--single", type=int, default=2_000, help="single-row inserts")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    python_side(args.number)
    if args.python_only:
        return
    if args.server:
        from scalekit.testing.servers import PgCluster, find_pg_binaries

        binaries = find_pg_binaries()
        if binaries is None:
            sys.exit("no PostgreSQL binaries found for --server")
        with tempfile.TemporaryDirectory(prefix="bench-ids-") as folder:
            root = Path(folder)
            root.chmod(0o711)
            with PgCluster.start(root / "pg", binaries, replicas=0) as cluster:
                assert cluster.primary is not None
                with scratch_database(cluster.primary.url) as url:
                    sql_side(url, args.rows, args.single, args.rounds)
        return
    with scratch_database(args.url) as url:
        sql_side(url, args.rows, args.single, args.rounds)


if __name__ == "__main__":
    main()
