"""Sharding: the key look-up vs plain hashing and horizontal_shard's chooser; fan-out vs its parts.

Part 1, ``shard_for`` (no I/O, CPU time, best of 7 interleaved runs of
200,000 calls; each call a new key from a prepared list, so no cache helps,
except in the "repeated keys" case, where every key was looked up before):
  hash(key) % n              Python's salted hash: fast, but not stable across processes
  ShardMap.shard_for         the stable logical shard (int keys: a multiplication; str: MD5)
  ShardMap.name_for          the logical shard and its target name
  horizontal_shard chooser   a ``ShardedSession`` shard_chooser doing the same job the
                             usual way (md5 of ``str(key)``, hex digest to int, modulo),
                             called as SQLAlchemy calls it, with a mapper and an instance

Part 2, fan-out over 4 databases on one private PostgreSQL server started by
the test harness (or ``--url`` of a server you own: it creates and drops four
scratch databases). Each database holds ``--rows`` rows; the read is an
aggregate over a filtered scan, run without parallel workers (one server
process per shard read, as on four servers). Interleaved, best of ``--repeat``:
  slowest single shard       the slowest of the four databases read alone
  fan_out (threads)          ShardMap.fan_out over the four, merged
  sequential                 the four reads one after another
  afan_out (tasks)           AsyncShardMap.afan_out over the four
  4 plain threads            the four reads on a plain thread pool, no merge: the floor
                             of a threaded fan-out on this machine
  waiting: ...               a read that waits 20 ms on the server (``pg_sleep``): fan-out
                             over 4 vs one shard when the CPU is not what bounds it

Part 3, a move of one logical shard holding ``--move-rows`` rows (one key):
  raw COPY out and in        binary COPY of the rows from one database to another, the
                             plain psycopg loop (a read() and a write() per row): the baseline
  raw COPY, chunked relay    the same, relaying as move_shard does (the rows libpq holds
                             taken without a wait, written in 128 KiB chunks): a reference
  move_shard to the switch   copy (verified by count and checksum on both sides),
                             write block (catch-up, verify, publish): from then on the
                             target is authoritative (the ratio the target is set on)
  move_shard whole           the above and the cleanup: the delete from the source
  write-blocked window       from the end of the copy to the publish (no writer running)

Run:  python benchmarks/bench_sharding.py [--url URL [--server-pid PID]] [--rows 200000]
      [--repeat 15] [--move-rows 200000] [--move-repeat 3]
      python benchmarks/bench_sharding.py --before main [--rounds 7]
``--before`` (a checkout folder or git rev) times the look-ups of that scalekit and
of this checkout in two worker processes, interleaved round by round, best of
``--rounds``; new keys are keys the worker never looked up before.
On a machine with fewer cores than shards the four scans share the CPUs, so
fan-out cannot reach the slowest single shard's time; the table says how many
cores there were.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.ext.horizontal_shard import ShardedSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import (
    SERVE_FLAG,
    Result,
    before_after_table,
    compare_with_before,
    print_table,
    serve_cases,
)

from scalekit.sharding import AsyncShardMap, ShardMap

NAMES = ["db0", "db1", "db2", "db3"]
CALLS = 200_000


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "bench_orders"
    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(sa.BigInteger)
    total: Mapped[int]


def time_interleaved(
    cases: dict[str, tuple[list[Any], Callable[[Any], object]]], repeat: int = 7
) -> list[Result]:
    """CPU nanoseconds per call of each ``fn(key)`` over its keys, best of ``repeat``.

    The cases run in turn within each repeat, and CPU time (not wall time) is
    counted, so other load on the machine hits every case alike.
    """
    best = dict.fromkeys(cases, float("inf"))
    for keys, fn in cases.values():
        for key in keys[:1000]:
            fn(key)
    for _ in range(repeat):
        for name, (keys, fn) in cases.items():
            start = time.process_time_ns()
            for key in keys:
                fn(key)
            best[name] = min(best[name], (time.process_time_ns() - start) / len(keys))
    return [Result(name, ns) for name, ns in best.items()]


def _horizontal_chooser(engines: dict[str, sa.Engine], shards: ShardMap) -> tuple[Any, Any]:
    """A ``ShardedSession``'s shard_chooser doing the look-up the usual way, and the mapper."""
    n = shards.assignment.logical_shards
    names = shards.assignment.owners

    def chooser(mapper: Any, instance: Any, clause: Any = None) -> str:
        digest = hashlib.md5(str(instance.user_id).encode()).hexdigest()
        return names[int(digest, 16) % n]

    session = ShardedSession(
        shards=dict(engines),
        shard_chooser=chooser,
        identity_chooser=lambda *a, **k: list(NAMES),
        execute_chooser=lambda context: list(NAMES),
    )
    return session.shard_chooser, sa.inspect(Order)


def lookup_figures() -> None:
    engines = {name: sa.create_engine("sqlite://") for name in NAMES}
    shards = ShardMap(engines)
    n = shards.assignment.logical_shards
    chooser_of_session, mapper = _horizontal_chooser(engines, shards)
    for kind, keys in (
        ("int", list(range(10**12, 10**12 + CALLS))),
        ("str", [f"user-{uuid.UUID(int=i).hex}" for i in range(CALLS)]),
    ):
        # 200,000 distinct keys in turn never hit the look-up cache (it holds at most
        # 65,536 keys and empties when full); the repeated case cycles over 1,000 keys.
        repeated = keys[:1000] * (len(keys) // 1000)
        cases: dict[str, tuple[list[Any], Callable[[Any], object]]] = {
            f"hash(key) % n ({kind})": (keys, lambda k: hash(k) % n),
            f"ShardMap.shard_for ({kind})": (keys, shards.shard_for),
            f"ShardMap.name_for ({kind})": (keys, shards.name_for),
            f"shard_for, 1,000 repeated keys ({kind})": (repeated, shards.shard_for),
        }
        if kind == "int":
            orders = [Order(id=1, user_id=key) for key in keys]
            cases["horizontal_shard chooser (int)"] = (
                orders,
                lambda o: chooser_of_session(mapper, o),
            )
        results = time_interleaved(cases)
        print_table(
            f"shard look-up, {kind} keys, {CALLS:,} new keys per run",
            results,
            baseline=f"hash(key) % n ({kind})",
            peer=f"ShardMap.shard_for ({kind})",
        )
        by_name = {r.name: r.ns_per_call for r in results}
        speed = by_name[f"hash(key) % n ({kind})"] / by_name[f"ShardMap.shard_for ({kind})"]
        print(f"shard_for throughput vs hash(key) % n: {speed:.2f}x (target >= 0.3x)")


def lookup_cases() -> dict[str, Callable[[int], float]]:
    """The look-up cases for ``--before`` workers: CPU ns per call of ``n`` calls.

    A "new keys" measurement takes keys never looked up before in that worker
    (a counter moves past them), so the map's bounded cache never helps it.
    """
    engines = {name: sa.create_engine("sqlite://") for name in NAMES}
    shards = ShardMap(engines)
    count = shards.assignment.logical_shards
    fresh = iter(range(10**12, 2**62))

    def timed(keys: list[Any], fn: Callable[[Any], object]) -> float:
        start = time.process_time_ns()
        for key in keys:
            fn(key)
        return (time.process_time_ns() - start) / len(keys)

    def new_ints(n: int) -> list[Any]:
        return [next(fresh) for _ in range(n)]

    def new_strs(n: int) -> list[Any]:
        return [f"user-{uuid.UUID(int=next(fresh)).hex}" for _ in range(n)]

    repeated_ints = list(range(1000))
    repeated_strs = [f"user-{uuid.UUID(int=i).hex}" for i in range(1000)]
    for key in repeated_ints + repeated_strs:
        shards.shard_for(key)
    chooser, mapper = _horizontal_chooser(engines, shards)
    cases: dict[str, Callable[[int], float]] = {
        "horizontal_shard chooser (int)": lambda n: timed(
            [Order(id=1, user_id=key) for key in new_ints(n)], lambda o: chooser(mapper, o)
        )
    }
    for kind, new, repeated in (
        ("int", new_ints, repeated_ints),
        ("str", new_strs, repeated_strs),
    ):
        cases[f"hash(key) % n ({kind})"] = lambda n, new=new: timed(
            new(n), lambda k: hash(k) % count
        )
        cases[f"shard_for, new keys ({kind})"] = lambda n, new=new: timed(new(n), shards.shard_for)
        cases[f"name_for, new keys ({kind})"] = lambda n, new=new: timed(new(n), shards.name_for)
        cases[f"shard_for, 1,000 repeated keys ({kind})"] = lambda n, repeated=repeated: timed(
            repeated * (n // 1000), shards.shard_for
        )
    return cases


def run_before_after(before: str, rounds: int) -> None:
    best = compare_with_before(before, __file__, [], CALLS, rounds)
    before_after_table(
        f"shard look-up, before ({before}) / after, CPU ns per call, best of {rounds} "
        f"interleaved rounds of {CALLS:,} calls",
        best,
    )
    title = "shard_for throughput vs hash(key) % n (target >= 0.3x)"
    print(f"\n{title:<58} {'before':>8} {'after':>8}")
    b, a = best["before"], best["after"]
    for kind in ("int", "str"):
        base = f"hash(key) % n ({kind})"
        rows = [f"shard_for, new keys ({kind})", f"shard_for, 1,000 repeated keys ({kind})"]
        rows.append(f"name_for, new keys ({kind})")
        if kind == "int":
            rows.append("horizontal_shard chooser (int)")
        for case in rows:
            if case in b and case in a:
                print(f"{case:<58} {b[base] / b[case]:>7.2f}x {a[base] / a[case]:>7.2f}x")


@contextmanager
def databases(url: str | None) -> Iterator[list[str]]:
    if url is None:
        from tests.harness import PgCluster, find_pg_binaries

        binaries = find_pg_binaries()
        if binaries is None:
            print("no PostgreSQL binaries: skipping the fan-out figures (pass --url)")
            yield []
            return
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)  # the server may run as another user
            cluster = PgCluster.start(Path(tmp) / "pg", binaries, replicas=0)
            try:
                assert cluster.primary is not None
                urls = []
                for name in NAMES:
                    cluster.primary.execute(f'CREATE DATABASE "bench_{name}"')
                    urls.append(cluster.primary.url_for(f"bench_{name}"))
                yield urls
            finally:
                cluster.close()
        return
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    created = [f"scalekit_bench_shard_{os.getpid()}_{name}" for name in NAMES]
    with admin.connect() as conn:
        for name in created:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield [make_url(url).set(database=name).render_as_string(False) for name in created]
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# Each shard read runs on one server process, as it would on a shard of its own: a
# parallel plan would let the "single shard" baseline use every core of this machine,
# which four real shards on four servers do not share.
ONE_CORE = {"options": "-c max_parallel_workers_per_gather=0"}


def fan_out_figures(urls: list[str], rows: int, repeat: int) -> None:
    engines = {
        name: sa.create_engine(url, connect_args=ONE_CORE)
        for name, url in zip(NAMES, urls, strict=True)
    }
    for position, engine in enumerate(engines.values()):
        with engine.begin() as conn:
            Base.metadata.create_all(conn)
            conn.exec_driver_sql(
                "INSERT INTO bench_orders SELECT g, mod(g, 1000), mod(g * 37, 101) "
                f"FROM generate_series({position * rows + 1}, {(position + 1) * rows}) g"
            )
            conn.exec_driver_sql("ANALYZE bench_orders")
    statement = sa.select(sa.func.count(), sa.func.sum(Order.total)).where(Order.total % 7 == 3)
    # A read whose time is the shard's latency, not this machine's CPU: 20 ms of wait.
    waiting = sa.select(sa.func.count()).select_from(sa.func.pg_sleep(0.02).table_valued())
    shards = ShardMap(engines, fan_out_timeout=60)
    async_engines = {
        name: create_async_engine(url, connect_args=ONE_CORE)
        for name, url in zip(NAMES, urls, strict=True)
    }
    ashards = AsyncShardMap(async_engines)
    loop = asyncio.new_event_loop()

    def single(name: str, statement: Any = statement) -> None:
        with engines[name].connect() as conn:
            conn.execute(statement).all()

    # The same four reads on four threads of a plain pool, no merge: the floor of a
    # threaded fan-out on this machine.
    plain_pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(NAMES))

    cases: dict[str, Callable[[], object]] = {
        **{f"single {name}": (lambda name=name: single(name)) for name in NAMES},  # type: ignore[misc]
        "fan_out (threads)": lambda: shards.fan_out(statement),
        "sequential": lambda: [single(name) for name in NAMES],
        "4 plain threads": lambda: list(plain_pool.map(single, NAMES)),
        "afan_out (tasks)": lambda: loop.run_until_complete(ashards.afan_out(statement)),
        "waiting: single shard": lambda: single(NAMES[0], waiting),
        "waiting: fan_out (threads)": lambda: shards.fan_out(waiting),
        "waiting: afan_out (tasks)": lambda: loop.run_until_complete(ashards.afan_out(waiting)),
    }
    best = dict.fromkeys(cases, float("inf"))
    for fn in cases.values():
        fn()  # warm: connections, plans
    for _ in range(repeat):
        for name, fn in cases.items():  # interleaved, so load changes hit every case alike
            start = time.perf_counter_ns()
            fn()
            best[name] = min(best[name], time.perf_counter_ns() - start)
    slowest = max(best[f"single {name}"] for name in NAMES)
    results = [
        Result("slowest single shard", slowest),
        Result("fan_out (threads)", best["fan_out (threads)"]),
        Result("afan_out (tasks)", best["afan_out (tasks)"]),
        Result("sequential", best["sequential"]),
        Result("4 plain threads", best["4 plain threads"]),
    ]
    print_table(
        f"fan-out over 4 shards, {rows:,} rows each, {os.cpu_count()} cores (ns per read)",
        results,
        baseline="slowest single shard",
        peer="sequential",
    )
    cores = os.cpu_count() or 1
    floor = len(NAMES) / min(cores, len(NAMES))
    print(f"fan_out / slowest shard: {best['fan_out (threads)'] / slowest:.2f}x (target <= 1.3x)")
    print(
        f"  floor on this machine: {floor:.2f}x ({len(NAMES)} one-core scans on {cores} cores); "
        f"fan_out / 4 plain threads: {best['fan_out (threads)'] / best['4 plain threads']:.2f}x"
    )
    waited = best["waiting: single shard"]
    print(
        "latency-bound read (pg_sleep(0.02) per shard): "
        f"fan_out {best['waiting: fan_out (threads)'] / waited:.2f}x, "
        f"afan_out {best['waiting: afan_out (tasks)'] / waited:.2f}x "
        "the single shard (target <= 1.3x)"
    )
    plain_pool.shutdown()
    shards.close()
    for engine in engines.values():
        engine.dispose()
    for aengine in async_engines.values():
        loop.run_until_complete(aengine.dispose())
    loop.close()


def server_cpu(pid: int | None) -> float:
    """CPU seconds of PostgreSQL postmaster ``pid``'s processes (live and exited), 0 without.

    Linux ``/proc``: the children's user and system time plus what the
    postmaster collected from children that exited.
    """
    if pid is None:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")

    def fields(stat_path: Path) -> list[str]:
        text = stat_path.read_text()
        return text[text.rindex(")") + 2 :].split()

    own = fields(Path(f"/proc/{pid}/stat"))
    total = int(own[13]) + int(own[14])  # cutime, cstime (fields 16, 17)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = fields(entry / "stat")
        except (OSError, ValueError):
            continue
        if stat[1] == str(pid):  # ppid (field 4)
            total += int(stat[11]) + int(stat[12])  # utime, stime (fields 14, 15)
    return total / ticks


def move_figures(
    urls: list[str], catalog_url: str, rows: int, repeat: int, server_pid: int | None = None
) -> None:
    """A move of ``rows`` rows (one logical shard) vs a raw binary COPY out and in.

    With ``server_pid`` (the postmaster of the server behind ``urls``), CPU
    seconds of the server and this process are given beside the wall time.
    """

    def cpu() -> float:
        return time.process_time() + server_cpu(server_pid)

    from scalekit.sharding import ShardCatalog, assign_balanced, logical_shard

    engines = {name: sa.create_engine(url) for name, url in zip(NAMES, urls, strict=True)}
    for engine in engines.values():
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS bench_orders")
            Base.metadata.create_all(conn)
    catalog_engine = sa.create_engine(catalog_url)
    catalog = ShardCatalog(catalog_engine)
    catalog.install()
    catalog.publish(assign_balanced(NAMES, 1024))
    shards = ShardMap.from_catalog(catalog, engines)
    shards.install_fences()
    key = 42
    logical = logical_shard(key, 1024)
    owner = shards.name_for(key)
    with engines[owner].begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO bench_orders SELECT g, {key}, mod(g * 37, 101) "
            f"FROM generate_series(1, {rows}) g"
        )
    others = [name for name in NAMES if name != owner]

    def raw_copy(source: str, destination: str, chunked: bool = False) -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), cpu()
        with engines[source].connect() as out_conn, engines[destination].begin() as in_conn:
            out_raw = out_conn.connection.driver_connection
            in_raw = in_conn.connection.driver_connection
            assert out_raw is not None and in_raw is not None
            with (
                out_raw.cursor() as out_cursor,
                in_raw.cursor() as in_cursor,
                out_cursor.copy(
                    f"COPY (SELECT * FROM bench_orders WHERE user_id = {key}) "
                    "TO STDOUT (FORMAT BINARY)"
                ) as copy_out,
                in_cursor.copy("COPY bench_orders FROM STDIN (FORMAT BINARY)") as copy_in,
            ):
                if not chunked:
                    for data in copy_out:
                        copy_in.write(data)
                else:
                    take, chunk = out_raw.pgconn.get_copy_data, bytearray()
                    while True:
                        size, data = take(1)
                        if size == 0 and not (data := copy_out.read()):
                            break
                        chunk += data
                        if data == b"\xff\xff":  # the trailer
                            copy_out.read()
                            break
                        if len(chunk) >= 1 << 17:
                            copy_in.write(chunk)
                            chunk = bytearray()
                    copy_in.write(chunk)
        elapsed, used = time.perf_counter() - start, cpu() - start_cpu
        with engines[destination].begin() as conn:
            conn.exec_driver_sql("DELETE FROM bench_orders")
        return elapsed, used

    def vacuum() -> None:
        # Both timed copies start from vacuumed tables: a COPY into a table holding the
        # dead rows of the last round's delete checks every key against them.
        for engine in engines.values():
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM bench_orders")

    raw_best = move_best = switch_best = float("inf")
    block_best = raw_cpu = switch_cpu = move_cpu = float("inf")
    chunked_best = chunked_cpu = float("inf")
    source = owner
    for round_ in range(repeat):  # owner -> another -> owner -> ...
        destination = others[round_ % len(others)] if source == owner else owner
        vacuum()
        raw_time, raw_used = raw_copy(source, destination)
        raw_best, raw_cpu = min(raw_best, raw_time), min(raw_cpu, raw_used)
        vacuum()
        raw_time, raw_used = raw_copy(source, destination, chunked=True)
        chunked_best, chunked_cpu = min(chunked_best, raw_time), min(chunked_cpu, raw_used)
        vacuum()
        marks: dict[str, float] = {}
        cpu_at: dict[str, float] = {}

        def mark(
            step: str, marks: dict[str, float] = marks, cpu_at: dict[str, float] = cpu_at
        ) -> None:
            marks[step] = time.perf_counter()
            if step == "switched":
                cpu_at[step] = cpu()

        start, start_cpu = time.perf_counter(), cpu()
        shards.move_shard(logical, to=destination, tables=[Order.user_id], _after_step=mark)
        move_best = min(move_best, time.perf_counter() - start)
        move_cpu = min(move_cpu, cpu() - start_cpu)
        switch_best = min(switch_best, marks["switched"] - start)
        switch_cpu = min(switch_cpu, cpu_at["switched"] - start_cpu)
        block_best = min(block_best, marks["published"] - marks["copied"])
        phases = ", ".join(
            f"{step} +{marks[step] - before:.3f}"
            for before, step in zip([start, *marks.values()], marks, strict=False)
        )
        print(f"  round {round_ + 1}: raw COPY {raw_best:.3f} s (best so far); move: {phases} s")
        source = destination
    print(f"\nmove of one logical shard, {rows:,} rows, best of {repeat}")
    print(f"raw COPY out and in        {raw_best:8.3f} s  {rows / raw_best:12,.0f} rows/s  1.00x")
    print(
        f"raw COPY, chunked relay    {chunked_best:8.3f} s  {rows / chunked_best:12,.0f} rows/s  "
        f"{raw_best / chunked_best:.2f}x"
    )
    print(
        f"move_shard to the switch   {switch_best:8.3f} s  {rows / switch_best:12,.0f} rows/s  "
        f"{raw_best / switch_best:.2f}x (target >= 0.7x)"
    )
    print(
        f"move_shard whole (+delete) {move_best:8.3f} s  {rows / move_best:12,.0f} rows/s  "
        f"{raw_best / move_best:.2f}x"
    )
    print(
        f"move to the switch vs the chunked raw COPY: {chunked_best / switch_best:.2f}x, "
        f"whole move: {chunked_best / move_best:.2f}x"
    )
    print(f"write-blocked window       {block_best * 1000:8.1f} ms (no concurrent writer)")
    if server_pid is not None:
        print(f"CPU seconds (server + client), best of {repeat}:")
        print(f"  raw COPY out and in      {raw_cpu:8.3f} s  1.00x")
        print(f"  raw COPY, chunked relay  {chunked_cpu:8.3f} s  {raw_cpu / chunked_cpu:.2f}x")
        print(f"  move_shard to the switch {switch_cpu:8.3f} s  {raw_cpu / switch_cpu:.2f}x")
        print(f"  move_shard whole         {move_cpu:8.3f} s  {raw_cpu / move_cpu:.2f}x")
    shards.close()
    for engine in engines.values():
        engine.dispose()
    catalog_engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a PostgreSQL server URL you own (default: a private one)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--skip-fan-out", action="store_true")
    parser.add_argument("--skip-lookups", action="store_true")
    parser.add_argument("--move-rows", type=int, default=200_000, help="0 skips the move")
    parser.add_argument("--move-repeat", type=int, default=3, help="moves (best of)")
    parser.add_argument("--only-move", action="store_true", help="skip the fan-out figures")
    parser.add_argument(
        "--server-pid", type=int, help="the postmaster pid behind --url: CPU seconds of a move"
    )
    parser.add_argument(
        "--before", help="an older checkout folder or git rev: compare the look-ups with it"
    )
    parser.add_argument("--rounds", type=int, default=7, help="--before: rounds (best of)")
    parser.add_argument(SERVE_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_cases:
        serve_cases(lookup_cases())
        return
    if args.before:
        run_before_after(args.before, args.rounds)
        return
    if not args.skip_lookups:
        lookup_figures()
    if not args.skip_fan_out:
        with databases(args.url) as urls:
            if urls:
                if not args.only_move:
                    fan_out_figures(urls, args.rows, args.repeat)
                if args.move_rows:
                    catalog_url = str(make_url(urls[0]).set(database="bench_catalog"))
                    admin = sa.create_engine(urls[0], isolation_level="AUTOCOMMIT")
                    with admin.connect() as conn:
                        conn.exec_driver_sql("DROP DATABASE IF EXISTS bench_catalog")
                        conn.exec_driver_sql("CREATE DATABASE bench_catalog")
                    admin.dispose()
                    move_figures(
                        urls, catalog_url, args.move_rows, args.move_repeat, args.server_pid
                    )


if __name__ == "__main__":
    main()
