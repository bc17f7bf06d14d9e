"""Rate limiting on one Redis: scalekit vs ``limits``, against raw GET and raw EVALSHA.

Every row runs against the same Redis, in one run, over the same 1,000 keys
(round robin) and the same limit (1000/minute, so every hit is allowed and
every row does the same work). For each row the table gives ns per check,
the ratio to a raw ``GET``, the ratio to a raw ``EVALSHA`` of ``return 1``,
and two counts per check: client round trips (requests sent on the socket)
and the Redis commands the server ran (from ``INFO commandstats``, which also
counts the commands run inside scripts).

Rows:

- raw GET, raw EVALSHA through ``client.evalsha`` (the issue's baseline), and
  the same EVALSHA sent on a connection borrowed from the pool, pre-encoded
  (the floor of scalekit's own call path, which skips redis-py's per-command
  machinery: see ``RedisBackend``), and on that path a script doing only
  ``TIME``, ``GET``, ``SET PX`` with a 2-element reply (the least a check on
  Redis's clock with stored state can do);
- scalekit ``hit`` for each algorithm, ``hit`` + ``headers()``,
  ``hit_all`` with two limits, and ``peek``;
- limits' fixed window, moving window and sliding window counter ``hit``,
  and ``get_window_stats`` (what limits needs for headers);
- asyncio, in a second table: raw GET and raw EVALSHA through a
  ``redis.asyncio`` client, and ``AsyncRateLimiter.hit`` for GCRA and token
  bucket (one event loop, the same keys and limit; the rows take turns round
  by round, best round of each), timed on the wall clock and as the client's
  CPU per check (``time.process_time``, which a loaded machine disturbs far
  less; the server's Lua time is not in it).

Run (defaults to the machine's Redis on 127.0.0.1:6379; keys are created
under ``scalekit-bench*`` prefixes and deleted at the end)::

    python benchmarks/bench_ratelimit.py [--url redis://127.0.0.1:6379/0] [--number 2000]

Targets (issue 6): GCRA and token bucket ``hit`` >= 0.90x raw EVALSHA
(ops/s), every algorithm faster than limits' nearest equivalent, ``hit`` +
headers at the cost of ``hit``, exactly 1 round trip per check. Issue 20: the
asyncio GCRA and token bucket ``hit`` >= 1.0x a raw async EVALSHA.
``--async-only`` times the asyncio table alone.

``--before SRC`` (a checkout folder or a git rev such as ``main``) times the
asyncio rows of this checkout and of SRC in one run, two worker processes
taking turns round by round, best of ``--repeat``, and prints both sides'
ratios to the raw async EVALSHA (wall clock and client CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import redis
import redis.asyncio
from _bench import (
    SERVE_FLAG,
    Result,
    before_after_table,
    compare_with_before,
    print_table,
    serve_cases,
    time_per_call,
)
from limits import parse as limits_parse
from limits.storage import RedisStorage
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)

from scalekit.instrumentation import set_hooks
from scalekit.ratelimit import ALGORITHMS, AsyncRateLimiter, Limit, RateLimiter

KEYS = [f"user:{n}" for n in range(1000)]
LIMIT_TEXT = "1000/minute"
PREFIX = "scalekit-bench"
TIME_GET_SET = (
    "local t = redis.call('TIME') local v = redis.call('GET', KEYS[1]) "
    "redis.call('SET', KEYS[1], t[1] .. ' ' .. t[2], 'PX', 60000) return {1, 2}"
)


class CountingConnection(redis.Connection):
    """Counts requests sent on the socket: one per round trip."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


class CountingUnixConnection(redis.UnixDomainSocketConnection):
    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


Check = Callable[[str], object]
#: A row: its name and how to build its check for a Redis URL (each row owns its clients).
Factory = Callable[[str], Check]


def connect(url: str) -> redis.Redis:
    if url.startswith("unix://"):
        pool = redis.ConnectionPool(
            path=url.removeprefix("unix://"), connection_class=CountingUnixConnection
        )
    else:
        pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    return redis.Redis(connection_pool=pool)


def limits_storage(url: str, name: str) -> RedisStorage:
    """One storage per strategy (their keys would collide), counted like ours."""
    uri = "redis+unix://" + url.removeprefix("unix://") if url.startswith("unix://") else url
    storage = RedisStorage(uri, key_prefix=f"{PREFIX}-limits-{name}")
    pool = storage.storage.connection_pool
    pool.connection_class = (
        CountingUnixConnection if url.startswith("unix://") else CountingConnection
    )
    pool.reset()
    return storage


def rows() -> list[tuple[str, Factory]]:
    limit = Limit.parse(LIMIT_TEXT)
    second = Limit.parse("100000/day")
    item = limits_parse(LIMIT_TEXT)

    def raw_get(url: str) -> Check:
        client = connect(url)
        return lambda key: client.get(f"{PREFIX}:raw:{key}")

    def raw_evalsha(url: str) -> Check:
        client = connect(url)
        sha = client.script_load("return 1")
        return lambda key: client.evalsha(sha, 1, f"{PREFIX}:raw:{key}")

    def raw_evalsha_direct(source: str) -> Factory:
        # The floor of the limiter's own call path: a connection borrowed from
        # the client's pool and one pre-encoded EVALSHA (see RedisBackend).
        def make(url: str) -> Check:
            client = connect(url)
            pool = client.connection_pool
            sha = client.script_load(source).encode()

            def check(key: str) -> object:
                connection = pool.get_connection()
                try:
                    connection.send_packed_command(
                        connection.pack_command(b"EVALSHA", sha, 1, f"{PREFIX}:raw:{key}")
                    )
                    return connection.read_response()
                finally:
                    pool.release(connection)

            return check

        return make

    def ours(algorithm: str, how: str) -> Factory:
        def make(url: str) -> Check:
            limiter = RateLimiter(
                connect(url),
                algorithm=algorithm,  # type: ignore[arg-type]
                namespace=f"{PREFIX}:{algorithm}:{how.split()[0]}",
            )
            if how == "hit + headers":
                return lambda key: limiter.hit(key, limit).headers(style="both")
            if how == "hit_all (2 limits)":
                return lambda key: limiter.hit_all(key, [limit, second])
            if how == "peek":
                return lambda key: limiter.peek(key, limit)
            return lambda key: limiter.hit(key, limit)

        return make

    def theirs(strategy: type[Any], with_stats: bool) -> Factory:
        def make(url: str) -> Check:
            limiter = strategy(limits_storage(url, f"{strategy.__name__}-{with_stats}"))
            if with_stats:
                return lambda key: (limiter.hit(item, key), limiter.get_window_stats(item, key))
            return lambda key: limiter.hit(item, key)

        return make

    table: list[tuple[str, Factory]] = [
        ("raw GET", raw_get),
        ("raw EVALSHA (return 1)", raw_evalsha),
        ("raw EVALSHA (return 1), pooled conn", raw_evalsha_direct("return 1")),
        # What any check on Redis's clock with a stored state must do at least.
        ("raw EVALSHA (TIME GET SET), pooled conn", raw_evalsha_direct(TIME_GET_SET)),
    ]
    table += [(f"scalekit {algorithm} hit", ours(algorithm, "hit")) for algorithm in ALGORITHMS]
    table += [
        (f"scalekit gcra {how}", ours("gcra", how))
        for how in ("hit + headers", "hit_all (2 limits)", "peek")
    ]
    table += [
        ("limits fixed window hit", theirs(FixedWindowRateLimiter, False)),
        ("limits moving window hit", theirs(MovingWindowRateLimiter, False)),
        ("limits sliding window counter hit", theirs(SlidingWindowCounterRateLimiter, False)),
        ("limits fixed hit + get_window_stats", theirs(FixedWindowRateLimiter, True)),
        ("limits moving hit + get_window_stats", theirs(MovingWindowRateLimiter, True)),
    ]
    return table


AsyncCheck = Callable[[str], Awaitable[object]]
AsyncFactory = Callable[[str], AsyncCheck]


def async_rows() -> list[tuple[str, AsyncFactory]]:
    """The asyncio rows: built and timed inside one event loop."""
    limit = Limit.parse(LIMIT_TEXT)

    def raw_get(url: str) -> AsyncCheck:
        client = redis.asyncio.Redis.from_url(url)
        return lambda key: client.get(f"{PREFIX}:araw:{key}")

    def raw_evalsha(url: str) -> AsyncCheck:
        client = redis.asyncio.Redis.from_url(url)
        sha = redis.Redis.from_url(url).script_load("return 1")
        return lambda key: client.evalsha(sha, 1, f"{PREFIX}:araw:{key}")

    def ours(algorithm: str) -> AsyncFactory:
        def make(url: str) -> AsyncCheck:
            limiter = AsyncRateLimiter(
                redis.asyncio.Redis.from_url(url),
                algorithm=algorithm,  # type: ignore[arg-type]
                namespace=f"{PREFIX}:async:{algorithm}",
            )
            return lambda key: limiter.hit(key, limit)

        return make

    return [
        ("async raw GET", raw_get),
        ("async raw EVALSHA (return 1)", raw_evalsha),
        ("scalekit async gcra hit", ours("gcra")),
        ("scalekit async token_bucket hit", ours("token_bucket")),
    ]


def time_async(url: str, number: int, repeat: int) -> tuple[list[Result], list[Result]]:
    """Wall-clock and client-CPU ns per check of each asyncio row: rounds interleaved,
    best of ``repeat``."""
    table = async_rows()

    async def run() -> tuple[list[float], list[float]]:
        checks = [factory(url) for _name, factory in table]
        for check in checks:  # every key once: scripts loaded, keys created
            for key in KEYS:
                await check(key)
        best = [float("inf")] * len(table)
        best_cpu = [float("inf")] * len(table)
        for _ in range(repeat):
            for index, check in enumerate(checks):
                keys = itertools.cycle(KEYS)
                start, cpu = time.perf_counter_ns(), time.process_time_ns()
                for _ in range(number):
                    await check(next(keys))
                best[index] = min(best[index], (time.perf_counter_ns() - start) / number)
                best_cpu[index] = min(best_cpu[index], (time.process_time_ns() - cpu) / number)
        return best, best_cpu

    best, best_cpu = asyncio.run(run())
    return (
        [Result(name, ns) for (name, _factory), ns in zip(table, best, strict=True)],
        [Result(name, ns) for (name, _factory), ns in zip(table, best_cpu, strict=True)],
    )


def print_async(url: str, number: int, repeat: int) -> None:
    """The asyncio table (wall clock and client CPU) and the issue-20 ratios."""
    wall, cpu = time_async(url, number, repeat)
    for what, results in (("wall clock", wall), ("client CPU", cpu)):
        print_table(
            f"asyncio: rate limiting on one Redis (ns per check, {what}; lower is better)",
            results,
            baseline="async raw GET",
            peer="async raw EVALSHA (return 1)",
        )
        by_name = {result.name: result.ns_per_call for result in results}
        evalsha = by_name["async raw EVALSHA (return 1)"]
        for name in ("scalekit async gcra hit", "scalekit async token_bucket hit"):
            print(f"  {name:<36} vs async raw EVALSHA: {evalsha / by_name[name]:.2f}x ({what})")


def async_cases(url: str) -> dict[str, Callable[[int], float]]:
    """The asyncio rows as worker cases (``--before``): each returns wall ns per check;
    its ``: client CPU`` twin returns the client CPU of the run just timed."""
    loop = asyncio.new_event_loop()
    table = async_rows()
    checks = {name: factory(url) for name, factory in table}

    async def warm() -> None:
        for check in checks.values():  # every key once: scripts loaded, keys created
            for key in KEYS:
                await check(key)

    loop.run_until_complete(warm())
    cpu: dict[str, float] = {}

    def case(name: str) -> Callable[[int], float]:
        check = checks[name]

        async def run(number: int) -> float:
            keys = itertools.cycle(KEYS)
            start, started_cpu = time.perf_counter_ns(), time.process_time_ns()
            for _ in range(number):
                await check(next(keys))
            cpu[name] = (time.process_time_ns() - started_cpu) / number
            return (time.perf_counter_ns() - start) / number

        return lambda number: loop.run_until_complete(run(number))

    cases: dict[str, Callable[[int], float]] = {}
    for name in checks:
        cases[name] = case(name)
        cases[f"{name}: client CPU"] = lambda _number, name=name: cpu[name]
    return cases


def run_before_after(args: argparse.Namespace) -> None:
    """The asyncio rows, this checkout against ``--before``, interleaved (issue 20)."""
    argv = ["--url", args.url]
    best = compare_with_before(args.before, __file__, argv, args.number, args.repeat)
    evalsha = "async raw EVALSHA (return 1)"
    before_after_table(
        f"asyncio rate limiting, before ({args.before}) / after, ns per check, "
        f"best of {args.repeat} interleaved rounds of {args.number}",
        best,
        baseline=evalsha,
    )
    print(f"\n{'vs async raw EVALSHA (ops/s ratio, target >= 1.0)':<60} {'before':>8} {'after':>8}")
    for name in ("scalekit async gcra hit", "scalekit async token_bucket hit"):
        for suffix in ("", ": client CPU"):
            b, a = best["before"], best["after"]
            peer, ours = evalsha + suffix, name + suffix
            label = f"{name}{suffix or ' (wall clock)'}"
            print(f"  {label:<58} {b[peer] / b[ours]:>7.2f}x {a[peer] / a[ours]:>7.2f}x")


def cycle(check: Check) -> Callable[[], object]:
    keys = itertools.cycle(KEYS)
    return lambda: check(next(keys))


def count(factory: Factory, url: str, stats: redis.Redis) -> tuple[float, float | None]:
    """Round trips per check (client side), and Redis commands per check (server side).

    Server commands come from ``INFO commandstats`` (which counts the commands
    run inside scripts too); ``stats`` must be a server nobody else uses.
    """
    call = cycle(factory(url))
    for _ in range(len(KEYS)):  # every key once: scripts loaded, keys created
        call()
    stats.config_resetstat()
    sent = CountingConnection.sent
    for _ in range(100):
        call()
    trips = (CountingConnection.sent - sent) / 100
    commandstats = stats.info("commandstats")
    calls = sum(int(value["calls"]) for value in commandstats.values()) - 1  # our CONFIG
    return trips, calls / 100


def private_server() -> tuple[subprocess.Popen[bytes], str, Path] | None:
    """A throwaway redis-server on a unix socket, for exact command counts (None if absent)."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    directory = Path(tempfile.mkdtemp(prefix="scalekit-bench-"))
    socket = directory / "redis.sock"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(socket), "--save", "", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        if socket.exists():
            return process, f"unix://{socket}", directory
        time.sleep(0.05)
    process.kill()
    return None


def cleanup(client: redis.Redis) -> int:
    deleted = 0
    for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
        deleted += client.delete(key)
    return deleted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--async-only", action="store_true", help="the asyncio table only")
    parser.add_argument("--before", help="an older checkout folder or git rev to compare with")
    parser.add_argument(SERVE_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_hooks(())  # instrumentation off: time the limiters, not logging
    if args.serve_cases:
        serve_cases(async_cases(args.url))
        return
    if args.before:
        admin = connect(args.url)
        admin.ping()
        run_before_after(args)
        print(f"\ndeleted {cleanup(admin)} benchmark keys")
        admin.close()
        return
    if args.async_only:
        admin = connect(args.url)
        admin.ping()
        print_async(args.url, args.number, args.repeat)
        print(f"\ndeleted {cleanup(admin)} benchmark keys")
        admin.close()
        return

    admin = connect(args.url)
    admin.ping()
    cleanup(admin)
    table = rows()
    print(f"Redis {admin.info('server')['redis_version']} at {args.url}; limit {LIMIT_TEXT}")

    # Counts on a private server (a shared one counts other clients' commands too).
    counts: dict[str, tuple[float, float | None]] = {}
    private = private_server()
    try:
        if private is not None:
            _process, private_url, _directory = private
            with contextlib.closing(connect(private_url)) as stats:
                for name, factory in table:
                    counts[name] = count(factory, private_url, stats)
        else:
            for name, factory in table:
                counts[name] = (count(factory, args.url, admin)[0], None)
    finally:
        if private is not None:
            private[0].kill()
            private[0].wait()
            shutil.rmtree(private[2], ignore_errors=True)

    # Timing on --url. Rows take turns, so load spikes hit them all alike.
    calls = []
    for _name, factory in table:
        call = cycle(factory(args.url))
        for _ in range(len(KEYS)):
            call()
        calls.append(call)
    best = [float("inf")] * len(table)
    for round_number in range(args.repeat):
        for index, call in enumerate(calls):
            best[index] = min(best[index], time_per_call(call, number=args.number, repeat=1))
        print(f"  round {round_number + 1}/{args.repeat}", flush=True)
    results = [Result(name, ns) for (name, _factory), ns in zip(table, best, strict=True)]

    print_table(
        "Rate limiting on one Redis (ns per check; lower is better)",
        results,
        baseline="raw GET",
        peer="raw EVALSHA (return 1)",
    )
    by_name = {result.name: result.ns_per_call for result in results}
    get_ns = by_name["raw GET"]
    print(f"\n{'case':<40} {'ops/s':>8} {'x GET':>7} {'round trips':>12} {'commands':>9}")
    for result in results:
        trips, commands = counts[result.name]
        shown = "n/a" if commands is None else f"{commands:.2f}"
        print(
            f"{result.name:<40} {1e9 / result.ns_per_call:>8.0f} "
            f"{get_ns / result.ns_per_call:>6.2f}x {trips:>12.2f} {shown:>9}"
        )
    print("\nscalekit vs limits' nearest equivalent (ops/s ratio; > 1: scalekit is faster):")
    for ours, theirs in (
        ("scalekit fixed_window hit", "limits fixed window hit"),
        ("scalekit sliding_window_log hit", "limits moving window hit"),
        ("scalekit sliding_window_counter hit", "limits sliding window counter hit"),
        ("scalekit gcra hit + headers", "limits fixed hit + get_window_stats"),
        ("scalekit sliding_window_log hit", "limits moving hit + get_window_stats"),
    ):
        print(f"  {ours:<36} vs {theirs:<37} {by_name[theirs] / by_name[ours]:.2f}x")
    evalsha = by_name["raw EVALSHA (return 1)"]
    direct = by_name["raw EVALSHA (return 1), pooled conn"]
    floor = by_name["raw EVALSHA (TIME GET SET), pooled conn"]
    for name in ("scalekit gcra hit", "scalekit token_bucket hit"):
        print(
            f"  {name:<36} vs raw EVALSHA: {evalsha / by_name[name]:.2f}x ops/s (target >= 0.90);"
            f" vs the same EVALSHA on a pooled connection: {direct / by_name[name]:.2f}x;"
            f" vs TIME GET SET on a pooled connection: {floor / by_name[name]:.2f}x"
        )
    hit, headers = by_name["scalekit gcra hit"], by_name["scalekit gcra hit + headers"]
    print(f"  scalekit gcra hit + headers costs {headers / hit:.2f}x a hit")

    print_async(args.url, args.number, args.repeat)
    print(f"\ndeleted {cleanup(admin)} benchmark keys")
    admin.close()


if __name__ == "__main__":
    main()
