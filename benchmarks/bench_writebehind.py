"""Write-behind: puts per second, durable puts vs raw pipelined XADD, database writes saved.

Cases:
  memory put            WriteBehind.put (memory mode, no flush during the run) vs the
                        hand-written peer: ``with lock: buffer[key] = row`` (what
                        ``writeBuffer`` + ``setInterval(flush)`` code does), both over
                        Zipf-distributed keys. Target (issue 19): >= 200,000 puts/s.
  durable put_many      WriteBehind(durable=redis).put_many in batches of 1,000 vs raw
                        ``pipeline.xadd`` of the same JSON payloads in batches of 1,000.
                        Target: >= 0.8x raw pipelined XADD.
  writes saved          200,000 counter updates over 100,000 Zipf(1.1) keys, a flush every
                        10,000 puts (an interval's worth): rows written vs updates put.

Runs are interleaved round robin, best of ``--repeat`` kept. Durable mode needs a Redis:
``--redis-url``, else a private ``redis-server`` from PATH on a free port (stopped at the
end). The database is SQLite in a temporary file (the flushes are not timed).

Run:  python benchmarks/bench_writebehind.py [--redis-url URL] [--puts 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from scalekit.batch import WriteBehind

metadata = sa.MetaData()
table = sa.Table(
    "wb_bench",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("price", sa.Float, nullable=False),
    sa.Column("hits", sa.BigInteger, nullable=False),
)


def zipf_keys(count: int, keys: int, s: float = 1.1, seed: int = 7) -> list[int]:
    weights = [1.0 / (k**s) for k in range(1, keys + 1)]
    return random.Random(seed).choices(range(keys), weights=weights, k=count)


def rows_for(keys: list[int]) -> list[dict[str, Any]]:
    return [{"id": k, "price": i / 4, "hits": 1} for i, k in enumerate(keys)]


def best_of(cases: dict[str, Callable[[], float]], repeat: int) -> dict[str, float]:
    best = {name: float("inf") for name in cases}
    for _ in range(repeat):
        for name, run in cases.items():
            best[name] = min(best[name], run())
    return best


def report(title: str, results: dict[str, float], count: int, peer: str) -> None:
    print(f"\n{title}")
    print(f"{'case':<34} {'seconds':>9} {'per second':>12} {'vs ' + peer:>14}")
    for name, seconds in results.items():
        ratio = results[peer] / seconds
        print(f"{name:<34} {seconds:>9.4f} {count / seconds:>12,.0f} {ratio:>13.2f}x")


def memory_puts(engine: sa.Engine, rows: list[dict[str, Any]], repeat: int) -> None:
    def scalekit_put() -> float:
        writer = WriteBehind(
            engine,
            table,
            update=["price"],
            increment=["hits"],
            max_pending=len(rows),
            flush_interval=3600,
            flush_on_exit=False,
        )
        put = writer.put
        start = time.perf_counter()
        for row in rows:
            put(row)
        elapsed = time.perf_counter() - start
        writer.close()
        return elapsed

    def hand_written() -> float:
        lock = threading.Lock()
        buffer: dict[Any, dict[str, Any]] = {}
        start = time.perf_counter()
        for row in rows:
            with lock:
                old = buffer.get(row["id"])
                if old is not None:
                    row = {**row, "hits": old["hits"] + row["hits"]}
                buffer[row["id"]] = row
        return time.perf_counter() - start

    results = best_of(
        {"hand-written dict + lock": hand_written, "WriteBehind.put": scalekit_put}, repeat
    )
    report(f"memory mode: {len(rows):,} puts", results, len(rows), "hand-written dict + lock")


def durable_puts(engine: sa.Engine, client: Any, rows: list[dict[str, Any]], repeat: int) -> None:
    batch = 1000

    def scalekit_durable() -> float:
        client.flushall()
        writer = WriteBehind(
            engine,
            table,
            update=["price"],
            increment=["hits"],
            durable=client,
            flush_interval=3600,
            flush_on_exit=False,
        )
        writer.put_many(rows[:batch])  # the consumer group exists before timing
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            writer.put_many(rows[i : i + batch])
        return time.perf_counter() - start

    def raw_xadd() -> float:
        client.flushall()
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            pipe = client.pipeline(transaction=False)
            for row in rows[i : i + batch]:
                pipe.xadd("raw:{0}", {"r": json.dumps(row, separators=(",", ":"))})
            pipe.execute()
        return time.perf_counter() - start

    results = best_of(
        {"raw pipelined XADD": raw_xadd, "WriteBehind durable put_many": scalekit_durable}, repeat
    )
    report(
        f"durable mode: {len(rows):,} puts, batches of {batch}",
        results,
        len(rows),
        "raw pipelined XADD",
    )


def writes_saved(engine: sa.Engine) -> None:
    updates, keys, every = 200_000, 100_000, 10_000
    rows = rows_for(zipf_keys(updates, keys))
    writer = WriteBehind(
        engine,
        table,
        update=["price"],
        increment=["hits"],
        max_pending=every,
        flush_interval=3600,
        flush_on_exit=False,
    )
    for i in range(0, updates, every):
        writer.put_many(rows[i : i + every])
        writer.flush()
    writer.close()
    m = writer.metrics()
    print(
        f"\nwrites saved: {updates:,} updates over {keys:,} Zipf(1.1) keys, a flush every {every:,}"
    )
    print(
        f"rows written {m.flushed_rows:,} in {m.flushes} flushes; updates coalesced {m.coalesced:,}"
    )
    print(f"database writes: {updates / m.flushed_rows:.2f}x fewer than one write per update")


@contextmanager
def private_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("no redis-server on PATH: pass --redis-url")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--puts", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import redis

    with tempfile.TemporaryDirectory() as folder:
        engine = sa.create_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        metadata.create_all(engine)
        rows = rows_for(zipf_keys(args.puts, 10_000))
        memory_puts(engine, rows, args.repeat)
        with private_redis() if args.redis_url is None else _given(args.redis_url) as url:
            client = redis.Redis.from_url(url)
            durable_puts(engine, client, rows[: min(len(rows), 100_000)], args.repeat)
            client.flushall()
            client.close()
        writes_saved(engine)
        engine.dispose()


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
