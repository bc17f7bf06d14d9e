"""Benchmark: the circuit breaker's success path and the threaded case, scalekit vs pybreaker.

Run: ``python benchmarks/bench_breaker.py [--url redis://127.0.0.1:6379/0]``
(about a minute). Prints ns/call for a bare call, scalekit's breaker (closed,
success path, in several modes) and pybreaker, with each one's ratio to the
bare call and to pybreaker and its overhead; then the issue's threaded case:
8 threads x 20 calls of a 10 ms function, bare vs scalekit vs pybreaker.

The Redis-shared cases use the Redis at ``--url`` (default: the machine's
local Redis) under a scratch key prefix that is deleted at the end; they are
left out, with a note, when that Redis does not answer.

Targets (issue 4): success-path overhead <= 0.5x pybreaker's; threaded case
<= 1.1x bare. Issue 20: with ``failure_rate=`` or slow-call windows, <= 0.2x
pybreaker's overhead. These are figures to read, never assertions.

``--before SRC`` (a checkout folder or a git rev, e.g. ``main``) runs the
success-path cases of this checkout and of SRC in one run, interleaved, best
of ``--rounds``, and prints before/after with each side's overhead as a share
of pybreaker's (pybreaker is measured in both worker processes).

``--callgrind`` counts instructions per call of the same success-path cases
instead (this checkout, and SRC with ``--before``), each side once under
``valgrind --tool=callgrind``: the difference between ``--number`` and twice
as many calls, so warm-ups and event-loop start-up cancel out. The counts
repeat on a noisy machine, where wall clock does not.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pybreaker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import (
    ROOT,
    SERVE_FLAG,
    Result,
    before_after_table,
    build_callgrind_helper,
    compare_with_before,
    print_table,
    run_under_callgrind,
    serve_cases,
    source_path,
    time_per_call,
)

from scalekit.breaker import CircuitBreaker, RedisStorage


def work() -> int:
    return 1


async def awork() -> int:
    return 1


def best_interleaved(
    cases: dict[str, Callable[[], object]], number: int, rounds: int
) -> list[Result]:
    """Best ns/call of each case over ``rounds``; the cases take turns within each
    round, so a noisy neighbour on the machine slows all of them alike."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, fn in cases.items():
            best[name] = min(best[name], time_per_call(fn, number=number, repeat=1))
    return [Result(name, ns) for name, ns in best.items()]


def async_ns_per_call(factory: Callable[[], Any], number: int, rounds: int) -> float:
    """Best ns per awaited call of ``factory()`` (a coroutine), in one event loop."""

    async def run() -> float:
        for _ in range(min(number, 1000)):
            await factory()
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter_ns()
            for _ in range(number):
                await factory()
            best = min(best, (time.perf_counter_ns() - start) / number)
        return best

    return asyncio.run(run())


def threaded_seconds(func: Callable[[], Any], threads: int = 8, calls: int = 20) -> float:
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        for _ in range(calls):
            func()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    return time.perf_counter() - start


def redis_client(url: str) -> Any:
    """A client for ``url``, or ``None`` (with a note) when it does not answer."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(url, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        print(f"(Redis at {url} unreachable: {type(exc).__name__}; shared cases left out)")
        return None
    return client


def ratio_line(label: str, value: float, target: float) -> None:
    verdict = "met" if value <= target else "NOT met"
    print(f"{label}: {value:.2f}x (target <= {target:.2f}x: {verdict})")


def success_path_cases() -> dict[str, Callable[[int], float]]:
    """The issue-20 success-path cases, each timing ``n`` calls (for --before workers)."""
    theirs = pybreaker.CircuitBreaker(fail_max=5)
    ours = CircuitBreaker("bench", fail_max=5)
    rate = CircuitBreaker("bench-rate", failure_rate=0.5, window=100, min_calls=20)
    timed = CircuitBreaker("bench-time", failure_rate=0.5, window_seconds=10.0)
    slow = CircuitBreaker("bench-slow", slow_call_seconds=1.0, slow_call_rate=0.5, window=100)
    sync_cases: dict[str, Callable[[], object]] = {
        "bare call": work,
        "pybreaker @breaker (closed)": theirs(work),
        "pybreaker breaker.call(f)": lambda: theirs.call(work),
        "scalekit @breaker (fail_max)": ours(work),
        "scalekit @breaker (failure_rate, count window)": rate(work),
        "scalekit @breaker (failure_rate, time window)": timed(work),
        "scalekit @breaker (slow calls)": slow(work),
        "scalekit breaker.call(f) (failure_rate, count)": lambda: rate.call(work),
        "scalekit breaker.call(f) (failure_rate, time)": lambda: timed.call(work),
        "scalekit breaker.call(f) (slow calls)": lambda: slow.call(work),
    }
    cases: dict[str, Callable[[int], float]] = {
        name: (lambda n, fn=fn: time_per_call(fn, number=n, repeat=1))
        for name, fn in sync_cases.items()
    }
    async_cases: dict[str, Callable[[], Any]] = {
        "bare await": awork,
        "scalekit async @breaker (failure_rate, count)": rate(awork),
        "scalekit async @breaker (slow calls)": slow(awork),
        "scalekit acall (failure_rate, time)": lambda: timed.acall(awork),
    }
    for name, factory in async_cases.items():
        cases[name] = lambda n, factory=factory: async_ns_per_call(factory, max(n // 5, 1000), 1)
    return cases


def run_before_after(args: argparse.Namespace) -> None:
    best = compare_with_before(args.before, __file__, [], args.number, args.rounds)
    names = list(best["after"])
    before_after_table(
        f"success path, before ({args.before}) / after, best of {args.rounds} x "
        f"{args.number:,} calls (async: {max(args.number // 5, 1000):,})",
        best,
        baseline="bare call",
    )
    print("\noverhead as a share of pybreaker's @breaker overhead (issue 20 target <= 0.20x)")
    print(f"{'case':<48} {'before':>8} {'after':>8}")
    for case in names:
        if not case.startswith("scalekit"):
            continue
        bare = "bare await" if "async" in case or "acall" in case else "bare call"
        shares = []
        for side in ("before", "after"):
            ns = best[side]
            theirs = ns["pybreaker @breaker (closed)"] - ns["bare call"]
            shares.append((ns[case] - ns[bare]) / theirs)
        print(f"{case:<48} {shares[0]:>7.2f}x {shares[1]:>7.2f}x")


def is_async_case(case: str) -> bool:
    return case == "bare await" or "async" in case or "acall" in case


def calls_of(case: str, number: int) -> int:
    """How many calls ``success_path_cases()[case](number)`` makes (async: a fifth)."""
    return max(number // 5, 1000) if is_async_case(case) else number


def callgrind_worker(lib: str, number: int) -> None:
    """Under callgrind: dump the counters around ``number`` and twice as many calls of each case."""
    helper = ctypes.CDLL(lib)
    cases = success_path_cases()
    for run in cases.values():
        run(1000)
    helper.sk_start()
    for name, run in cases.items():
        for n in (number, 2 * number):
            helper.sk_zero()
            run(n)
            helper.sk_dump(f"{name}|{calls_of(name, n)}".encode())
    print("done", flush=True)


def run_callgrind(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="scalekit-callgrind-") as scratch:
        folder = Path(scratch)
        lib = build_callgrind_helper(folder)
        trees = {"after": ROOT / "src"}
        if args.before:
            (folder / "before").mkdir()
            trees = {"before": source_path(args.before, folder / "before"), **trees}
        worker = [sys.executable, __file__, "--callgrind-worker", lib, "--number", str(args.number)]
        workers = {
            side: (worker, {**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"})
            for side, src in trees.items()
        }
        per_call: dict[str, dict[str, float]] = {}
        for side, (_, labelled) in run_under_callgrind(workers, folder, "done").items():
            totals: dict[str, dict[int, int]] = {}
            for label, total in labelled.items():
                case, _, calls = label.rpartition("|")
                totals.setdefault(case, {})[int(calls)] = total
            per_call[side] = {
                case: (counts[max(counts)] - counts[min(counts)]) / (max(counts) - min(counts))
                for case, counts in totals.items()
                if len(counts) == 2
            }
    sides = list(per_call)
    order = [case for case in success_path_cases() if case in per_call["after"]]
    print(f"\ninstructions per call (callgrind, {args.number:,} calls; async: a fifth)")
    print(f"{'case':<48}" + "".join(f" {side + ' Ir':>11}" for side in sides), end="")
    print("  after/before" if len(sides) == 2 else "")
    for case in order:
        figures = [per_call[side].get(case, float("nan")) for side in sides]
        line = f"{case:<48}" + "".join(f" {figure:>11.0f}" for figure in figures)
        print(line + (f" {figures[1] / figures[0]:>12.3f}x" if len(sides) == 2 else ""))
    print("\noverhead as a share of pybreaker's @breaker overhead (issue 20 target <= 0.20x)")
    print(f"{'case':<48}" + "".join(f" {side:>8}" for side in sides))
    for case in order:
        if not case.startswith("scalekit"):
            continue
        bare = "bare await" if is_async_case(case) else "bare call"
        shares = []
        for side in sides:
            ir = per_call[side]
            theirs = ir["pybreaker @breaker (closed)"] - ir["bare call"]
            shares.append((ir[case] - ir[bare]) / theirs)
        print(f"{case:<48}" + "".join(f" {share:>7.3f}x" for share in shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0", help="Redis for shared cases")
    parser.add_argument("--number", type=int, default=30_000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=10, help="measurements per case (best)")
    parser.add_argument("--threaded-runs", type=int, default=5)
    parser.add_argument("--before", help="an older checkout folder or git rev to compare with")
    parser.add_argument(
        "--callgrind", action="store_true", help="count instructions per call (valgrind)"
    )
    parser.add_argument("--callgrind-worker", help=argparse.SUPPRESS)
    parser.add_argument(SERVE_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_cases:
        serve_cases(success_path_cases())
        return
    if args.callgrind_worker:
        callgrind_worker(args.callgrind_worker, args.number)
        return
    if args.callgrind:
        run_callgrind(args)
        return
    if args.before:
        run_before_after(args)
        return
    number, rounds = args.number, args.rounds

    ours = CircuitBreaker("bench", fail_max=5)
    ours_rate = CircuitBreaker("bench-rate", failure_rate=0.5, window=100, min_calls=20)
    ours_time = CircuitBreaker("bench-time", failure_rate=0.5, window_seconds=10.0)
    theirs = pybreaker.CircuitBreaker(fail_max=5)
    ours_work, theirs_work = ours(work), theirs(work)
    rate_work, time_work = ours_rate(work), ours_time(work)

    cases: dict[str, Callable[[], object]] = {
        "bare call": work,
        "pybreaker @breaker (closed)": theirs_work,
        "scalekit @breaker (fail_max, closed)": ours_work,
        "pybreaker breaker.call(f)": lambda: theirs.call(work),
        "scalekit breaker.call(f)": lambda: ours.call(work),
        "scalekit @breaker (failure_rate, count window)": rate_work,
        "scalekit @breaker (failure_rate, time window)": time_work,
    }

    prefix = f"scalekit-bench-{uuid.uuid4().hex[:8]}"
    client = redis_client(args.url)
    if client is not None:
        cached = CircuitBreaker(
            "shared-cached",
            fail_max=5,
            storage=RedisStorage(client, prefix=prefix, local_cache_seconds=1.0),
        )
        uncached = CircuitBreaker(
            "shared-uncached",
            fail_max=5,
            storage=RedisStorage(client, prefix=prefix, local_cache_seconds=0.0),
        )
        cases["scalekit @breaker (Redis-shared, cached closed)"] = cached(work)

    results = best_interleaved(cases, number, rounds)
    print_table(
        f"success path, best of {rounds} x {number:,} calls",
        results,
        baseline="bare call",
        peer="pybreaker @breaker (closed)",
        overhead_over="bare call",
    )
    by_name = {r.name: r.ns_per_call for r in results}
    bare = by_name["bare call"]
    theirs_overhead = by_name["pybreaker @breaker (closed)"] - bare
    print()
    ratio_line(
        "overhead scalekit / pybreaker (decorator, fail_max, closed)",
        (by_name["scalekit @breaker (fail_max, closed)"] - bare) / theirs_overhead,
        0.5,
    )
    ratio_line(
        "overhead scalekit / pybreaker (breaker.call)",
        (by_name["scalekit breaker.call(f)"] - bare)
        / (by_name["pybreaker breaker.call(f)"] - bare),
        0.5,
    )

    if client is not None:
        # Every admission asks Redis: the cost without the local "closed" cache.
        trips = max(number // 50, 200)
        round_trip = [
            Result("redis PING (one round trip)", time_per_call(client.ping, number=trips)),
            Result(
                "scalekit @breaker (Redis-shared, no cache)",
                time_per_call(uncached(work), number=trips),
            ),
        ]
        print_table(
            f"Redis-shared with local_cache_seconds=0 ({args.url}), best of 5 x {trips:,} calls",
            round_trip,
            baseline="redis PING (one round trip)",
        )

    ours_async = ours(awork)
    async_number = max(number // 5, 1000)
    async_results = [
        Result("bare await", async_ns_per_call(awork, async_number, rounds)),
        Result(
            "scalekit @breaker on async def", async_ns_per_call(ours_async, async_number, rounds)
        ),
    ]
    print_table(
        f"asyncio success path (pybreaker has no asyncio support), {async_number:,} awaits",
        async_results,
        baseline="bare await",
        overhead_over="bare await",
    )

    def sleeper() -> None:
        time.sleep(0.01)

    ours_t = CircuitBreaker("bench-threads", fail_max=5)
    theirs_t = pybreaker.CircuitBreaker(fail_max=5)
    threaded = {"bare": sleeper, "scalekit": ours_t(sleeper), "pybreaker": theirs_t(sleeper)}
    seconds: dict[str, list[float]] = {name: [] for name in threaded}
    for _ in range(args.threaded_runs):
        for name, func in threaded.items():
            seconds[name].append(threaded_seconds(func))
    print(f"\nthreaded: 8 threads x 20 calls of a 10 ms function, median of {args.threaded_runs}")
    print(f"{'case':12} {'seconds':>9} {'vs bare':>9}")
    bare_s = statistics.median(seconds["bare"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:12} {median:9.3f} {median / bare_s:8.2f}x")
    print()
    ratio_line("threaded scalekit / bare", statistics.median(seconds["scalekit"]) / bare_s, 1.1)

    if client is not None:
        stale = list(client.scan_iter(match=f"{{{prefix}:*"))
        if stale:
            client.delete(*stale)
        client.close()


if __name__ == "__main__":
    main()
