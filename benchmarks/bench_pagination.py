"""Keyset pagination on PostgreSQL: scalekit vs sqlakeyset vs raw row values vs LIMIT/OFFSET.

Creates a scratch database ``scalekit_bench_<pid>`` on the server of ``--url``
(default: the local PostgreSQL), fills a table with ``--rows`` events
(``created_at`` with duplicates, a 5-valued ``status``) indexed on
``(created_at, id)`` and ``(status, id)``, and times one page of 50 rows at
several depths for two orders. It drops the scratch database at the end.

Columns of the table printed:
  ms/page     median wall time of one page (fresh call, warm caches: each timed
              call follows an untimed one of the same case; every order, page and
              method runs once per round, interleaved; no garbage collection
              inside a timed call, as with timeit)
  vs page 1   the same method's page time divided by its page-1 time
  OFFSET/x    how many times slower LIMIT/OFFSET is at that depth
  db ms       wall time minus Python time: the server's share, which is what
              depth changes (Python time is noise on a busy machine)
  py µs       Python time per page: wall time minus the time spent inside the
              DBAPI's cursor.execute (measured with SQLAlchemy cursor events)

Run:  python benchmarks/bench_pagination.py [--url URL] [--rows 200000] [--pages 1,100,1000,3900]
For the issue's setting: --rows 1000000 --pages 1,1000,10000,19000 (setup ~1 min).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url

from scalekit.pagination import CursorCodec, KeysetPlan, paginate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import Result, print_table, time_per_call

PAGE_SIZE = 50


class DbClock:
    """Accumulates time spent inside cursor.execute (server + network + driver fetch)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.total = 0.0
        self._started = 0.0
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, *args: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, *args: Any) -> None:
        self.total += time.perf_counter() - self._started


def measure(
    cases: dict[Any, Callable[[], Any]], clock: DbClock, repeat: int, slow: dict[Any, int]
) -> dict[Any, tuple[float, float]]:
    """Median wall ms and median Python-only µs of each case over ``repeat`` rounds.

    Rounds are interleaved (every case once per round, every order and page
    alike), so a burst of load on a shared machine hits all methods and all
    depths alike instead of one page of one method. A case named in ``slow``
    runs only in that many rounds.
    """
    walls: dict[Any, list[float]] = {name: [] for name in cases}
    pythons: dict[Any, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm up (statement caches, buffers)
    for round_ in range(repeat):
        # As timeit does: no garbage collection inside a timed call (a collection
        # triggered by one method's garbage would be charged to whichever runs next).
        gc.collect()
        gc.disable()
        try:
            for name, fn in cases.items():
                if round_ >= slow.get(name, repeat):
                    continue
                if name not in slow:
                    # Re-warm this query's buffers: a slow case just before it (a
                    # deep OFFSET, sqlakeyset's scan by status) evicts them, which
                    # would be charged to whichever case follows it in the round.
                    fn()
                clock.total = 0.0
                started = time.perf_counter()
                fn()
                wall = time.perf_counter() - started
                walls[name].append(wall)
                pythons[name].append(wall - clock.total)
        finally:
            gc.enable()
    return {
        name: (statistics.median(walls[name]) * 1e3, statistics.median(pythons[name]) * 1e6)
        for name in cases
    }


def setup(url: str, rows: int) -> tuple[str, sa.Engine]:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"scalekit_bench_{os.getpid()}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    engine = sa.create_engine(make_url(url).set(database=name))
    try:
        fill(engine, rows, name)
    except BaseException:
        teardown(url, name, engine)
        raise
    return name, engine


def fill(engine: sa.Engine, rows: int, name: str) -> None:
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE events (id integer PRIMARY KEY, created_at timestamptz NOT NULL,"
            " status text NOT NULL, payload text NOT NULL)"
        )
        connection.exec_driver_sql(
            "INSERT INTO events SELECT g, timestamptz '2024-01-01' + (g / 3) * interval '1 s',"
            " (ARRAY['new','paid','shipped','done','void'])[mod(g, 5) + 1], md5(g::text)"
            f" FROM generate_series(1, {rows}) AS g"
        )
        connection.exec_driver_sql("CREATE INDEX events_created ON events (created_at, id)")
        connection.exec_driver_sql("CREATE INDEX events_status ON events (status, id)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE events")
    print(f"setup: {rows:,} rows in {time.perf_counter() - started:.1f}s (database {name})")


def teardown(url: str, name: str, engine: sa.Engine) -> None:
    engine.dispose()
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin.dispose()


def make_cases(
    connection: sa.Connection,
    events: sa.Table,
    order: tuple[Any, Any],
    anchor: tuple[Any, ...] | None,
    cursor: str | None,
    offset: int,
    sql: tuple[str, str],
) -> dict[str, Callable[[], Any]]:
    """One page at ``offset`` fetched by each method (all must return PAGE_SIZE rows)."""
    import sqlakeyset

    lead, pk = order
    first_sql, raw_sql = sql

    def ours() -> Any:
        result = paginate(
            connection, sa.select(events), order_by=[lead, pk], limit=PAGE_SIZE, after=cursor
        )
        assert len(result.items) == PAGE_SIZE
        return result

    def keyset() -> Any:
        result = sqlakeyset.select_page(
            connection, sa.select(events).order_by(lead, pk), per_page=PAGE_SIZE, after=anchor
        )
        assert len(result) == PAGE_SIZE
        return result

    def raw() -> Any:
        if anchor is None:
            return connection.exec_driver_sql(first_sql).all()
        return connection.exec_driver_sql(raw_sql, {"a": anchor[0], "b": anchor[1]}).all()

    def offset_page() -> Any:
        return connection.execute(
            sa.select(events).order_by(lead, pk).offset(offset).limit(PAGE_SIZE)
        ).all()

    return {
        "scalekit": ours,
        "sqlakeyset": keyset,
        "raw row value": raw,
        "LIMIT/OFFSET": offset_page,
    }


#: Methods timed again on their own for the depth ratio (see ``run``).
ISOLATED = ("scalekit", "raw row value")


def run(
    engine: sa.Engine, pages: list[int], repeat: int
) -> tuple[list[tuple[Any, ...]], dict[tuple[str, str], float]]:
    """The interleaved table, and each fast method's page-deepest / page-1 ratio timed alone.

    In the full rounds a fast case runs right after slow ones (sqlakeyset by
    status, a deep OFFSET) whose server work on the shared cores slows it
    down; the isolated pass times only the fast methods, every page of an
    order in turn, which is how the depth ratio should be read.
    """
    events = sa.Table("events", sa.MetaData(), autoload_with=engine)
    clock = DbClock(engine)
    orders = {
        "(created_at, id)": (events.c.created_at, events.c.id),
        "(status, id)": (events.c.status, events.c.id),
    }
    with engine.connect() as connection:
        cases: dict[tuple[str, int, str], Callable[[], Any]] = {}
        slow: dict[tuple[str, int, str], int] = {}
        for label, (lead, pk) in orders.items():
            plan = KeysetPlan(
                sa.select(events), [lead, pk], limit=PAGE_SIZE, dialect=engine.dialect
            )
            raw_sql = (
                f"SELECT * FROM events WHERE ({lead.name}, id) > (%(a)s, %(b)s)"
                f" ORDER BY {lead.name}, id LIMIT {PAGE_SIZE}"
            )
            first_sql = f"SELECT * FROM events ORDER BY {lead.name}, id LIMIT {PAGE_SIZE}"
            for page in pages:
                offset = (page - 1) * PAGE_SIZE
                anchor = None
                if offset:
                    anchor = tuple(
                        connection.execute(
                            sa.select(lead, pk).order_by(lead, pk).offset(offset - 1).limit(1)
                        ).one()
                    )
                cursor = plan.encode(anchor) if anchor else None
                made = make_cases(
                    connection, events, (lead, pk), anchor, cursor, offset, (first_sql, raw_sql)
                )
                for method, fn in made.items():
                    cases[label, page, method] = fn
                if page > 100:
                    slow[label, page, "LIMIT/OFFSET"] = max(3, repeat // 10)
        timings = measure(cases, clock, repeat, slow)
        alone = {name: fn for name, fn in cases.items() if name[2] in ISOLATED}
        isolated = measure(alone, clock, repeat * 5, {})
    results: list[tuple[Any, ...]] = []
    base: dict[tuple[str, str], float] = {}
    for (label, page, method), (ms, py_us) in timings.items():
        base.setdefault((label, method), ms)
        results.append(
            (
                label,
                page,
                method,
                ms,
                ms / base[label, method],
                timings[label, page, "LIMIT/OFFSET"][0] / ms,
                py_us,
            )
        )
    deepest = max(pages)
    depth = {
        (label, method): isolated[label, deepest, method][0] / isolated[label, 1, method][0]
        for label, _, method in isolated
        if 1 in pages
    }
    return results, depth


def cursor_micro() -> None:
    """Cursor round trip (encode + decode), no I/O: ours vs sqlakeyset's bookmarks."""
    import datetime as dt

    import sqlakeyset

    place = (dt.datetime(2024, 1, 1, 12, 30, tzinfo=dt.timezone.utc), 123_456)
    unsigned, signed = CursorCodec(), CursorCodec(secret="b" * 32, ttl=3600)
    fingerprint = b"bench"

    def ours_unsigned() -> object:
        return unsigned.decode(
            unsigned.encode(place, fingerprint=fingerprint), fingerprint=fingerprint
        )

    def ours_signed() -> object:
        return signed.decode(signed.encode(place, fingerprint=fingerprint), fingerprint=fingerprint)

    def peer() -> object:
        return sqlakeyset.unserialize_bookmark(sqlakeyset.serialize_bookmark((place, False)))

    results = [
        Result("sqlakeyset serialize+unserialize_bookmark", time_per_call(peer, number=20_000)),
        Result("scalekit CursorCodec() encode+decode", time_per_call(ours_unsigned, number=20_000)),
        Result(
            "scalekit CursorCodec(secret, ttl) encode+decode",
            time_per_call(ours_signed, number=20_000),
        ),
    ]
    print_table(
        "cursor round trip (datetime with tz, int), no I/O",
        results,
        baseline="sqlakeyset serialize+unserialize_bookmark",
    )
    restored = sqlakeyset.unserialize_bookmark(sqlakeyset.serialize_bookmark((place, False)))
    print(
        f"  sqlakeyset restores {place[0].isoformat()} as {restored.place[0]!r}"
        f" (tz kept: {restored.place[0].tzinfo == dt.timezone.utc});"
        f" ours: {unsigned.decode(unsigned.encode(place))[0]!r}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="server to create the scratch database on (not written otherwise)",
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pages", default=None, help="comma-separated page numbers")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--micro-only", action="store_true", help="only the cursor round trip (no server)"
    )
    args = parser.parse_args()
    cursor_micro()
    if args.micro_only:
        return 0
    last_page = args.rows // PAGE_SIZE - 100
    pages = (
        [int(p) for p in args.pages.split(",")] if args.pages else [1, 100, 1000, max(last_page, 2)]
    )
    if max(pages) * PAGE_SIZE > args.rows:
        parser.error("a page is beyond the end of the table; use fewer pages or more rows")
    name, engine = setup(args.url, args.rows)
    try:
        results, depth = run(engine, pages, args.repeat)
    finally:
        teardown(args.url, name, engine)

    print(
        f"\n{PAGE_SIZE} rows/page, median of {args.repeat} runs "
        f"(LIMIT/OFFSET beyond page 100: {max(3, args.repeat // 10)} runs)\n"
    )
    header = (
        f"{'order':<17}{'page':>7}  {'method':<14}{'ms/page':>9}{'vs page 1':>11}"
        f"{'OFFSET/x':>10}{'py µs':>9}{'db ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for label, page, method, ms, vs_first, offset_ratio, py_us in results:
        print(
            f"{label:<17}{page:>7}  {method:<14}{ms:>9.3f}{vs_first:>10.2f}x"
            f"{offset_ratio:>9.1f}x{py_us:>9.0f}{ms - py_us / 1e3:>9.3f}"
        )
    print()
    for label in dict.fromkeys(r[0] for r in results):
        rows = [r for r in results if r[0] == label]
        deepest = max(r[1] for r in rows)
        ours = {r[1]: r for r in rows if r[2] == "scalekit"}
        peer = {r[1]: r for r in rows if r[2] == "sqlakeyset"}
        py_ours = statistics.median(r[6] for r in ours.values())
        py_peer = statistics.median(r[6] for r in peer.values())
        db_deep = ours[deepest][3] - ours[deepest][6] / 1e3
        db_first = ours[1][3] - ours[1][6] / 1e3 if 1 in ours else float("nan")
        print(
            f"{label}: page {deepest} / page 1 = {ours[deepest][4]:.2f}x"
            f" (server time {db_deep / db_first:.2f}x); "
            f"OFFSET is {ours[deepest][5]:.0f}x slower at page {deepest}; "
            f"time/page vs sqlakeyset at page {deepest} = "
            f"{ours[deepest][3] / peer[deepest][3]:.2f}x; "
            f"Python per page {py_ours:.0f} µs vs sqlakeyset {py_peer:.0f} µs "
            f"({py_ours / py_peer:.2f}x)"
        )
    if depth:
        print("\ndepth timed alone (only these methods, every page in turn; the target's reading):")
        for (label, method), ratio in depth.items():
            print(f"  {label} {method}: page {max(pages)} / page 1 = {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
