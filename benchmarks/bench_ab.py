"""A/B benchmark: this tree's hot paths vs an older commit's, sync and asyncio.

Run: ``python benchmarks/bench_ab.py --old REV [--start-redis] [--callgrind]``.

``REV`` is any commit of this repository (default: the commit before the
issue-14 work, i.e. the parent of the commit that added ``scripts/unasync.py``).
Its ``src/`` is exported with ``git archive`` into a temporary folder; each side
is imported in a subprocess of its own (``PYTHONPATH`` set to that side's
``src``), with the same settings and the same Redis. The cases:

- cache ``get`` hit and ``@cached`` decorator hit (``Cache`` / ``AsyncCache``
  on Redis);
- rate limiter ``hit`` (GCRA on Redis, a limit that always allows);
- the cache ``get`` hit and the ``hit`` again on the in-process memory
  backends (``Cache(None)``, ``MemoryBackend()``): no round trip, so
  scalekit's own cost is most of what is measured;
- breaker success path (``@breaker`` on a function that returns);
- retry success path (``RetryPolicy(attempts=3)`` on a function that returns);

each sync and asyncio. Two ways to measure, both in one run:

- wall clock (default): the two worker processes take turns, round by round
  (the order alternates), so machine noise hits both alike; each case's best
  round is kept, and the table shows new/old.
- ``--callgrind``: each side runs once under ``valgrind --tool=callgrind``;
  around each case's ``--number`` calls the worker zeroes and dumps the
  counters (a tiny C helper issuing callgrind's client requests, built with
  ``cc``), and the table shows instructions per call and new/old. Instruction
  counts repeat to a fraction of a percent on a noisy machine, where wall
  clock does not; they do not see time spent waiting for Redis.

``--start-redis`` starts a private ``redis-server`` on a free port (deleted at
the end) instead of using ``--url``. Figures to read, never assertions; the
target of issue 14 is new/old <= 1.03 for every case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import (
    Side,
    build_callgrind_helper,
    export_src,
    interleaved_best,
    run_under_callgrind,
    serve_cases,
)

REPO = Path(__file__).resolve().parent.parent

CASES = (
    "cache get hit",
    "cache decorator hit",
    "ratelimit hit",
    "cache get hit (mem)",
    "ratelimit hit (mem)",
    "breaker success",
    "retry success",
)
COLOURS = ("sync", "async")
VALUE = {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "roles": ["admin"]}


# --- the worker: one side, one process ---------------------------------------------------


def build_cases(url: str, prefix: str) -> tuple[dict[str, Callable[[], Any]], Any, list[Any]]:
    """Set up every case of this side; return sync callables, async ones, and closers."""
    import redis
    import redis.asyncio

    from scalekit.breaker import CircuitBreaker
    from scalekit.cache import AsyncCache, Cache
    from scalekit.ratelimit import AsyncRateLimiter, Limit, MemoryBackend, RateLimiter
    from scalekit.retry import RetryPolicy

    limit = Limit.parse("1000000/second")
    client = redis.Redis.from_url(url)
    cache = Cache(client, namespace=f"{prefix}c", default_ttl=3600)
    cache.set("x", VALUE)

    @cache.cached(ttl=3600)
    def get_user(user_id: int) -> dict[str, Any]:
        return VALUE

    get_user(1)
    limiter = RateLimiter(redis.Redis.from_url(url), algorithm="gcra", namespace=f"{prefix}r")
    memory = Cache(None, namespace=f"{prefix}m", default_ttl=3600)
    memory.set("x", VALUE)
    mem_limiter = RateLimiter(MemoryBackend(), algorithm="gcra")
    breaker = CircuitBreaker("ab-sync", fail_max=5)

    def work() -> int:
        return 1

    guarded = breaker(work)
    retried = RetryPolicy(attempts=3)(work)
    sync_cases: dict[str, Callable[[], Any]] = {
        "cache get hit": lambda: cache.get("x"),
        "cache decorator hit": lambda: get_user(1),
        "ratelimit hit": lambda: limiter.hit("k", limit),
        "cache get hit (mem)": lambda: memory.get("x"),
        "ratelimit hit (mem)": lambda: mem_limiter.hit("k", limit),
        "breaker success": guarded,
        "retry success": retried,
    }

    aclient = redis.asyncio.Redis.from_url(url)
    acache = AsyncCache(aclient, namespace=f"{prefix}a", default_ttl=3600)

    @acache.cached(ttl=3600)
    async def aget_user(user_id: int) -> dict[str, Any]:
        return VALUE

    alimiter = AsyncRateLimiter(
        redis.asyncio.Redis.from_url(url), algorithm="gcra", namespace=f"{prefix}ar"
    )
    amemory = AsyncCache(None, namespace=f"{prefix}am", default_ttl=3600)
    amem_limiter = AsyncRateLimiter(MemoryBackend(), algorithm="gcra")
    abreaker = CircuitBreaker("ab-async", fail_max=5)

    async def awork() -> int:
        return 1

    aguarded = abreaker(awork)
    aretried = RetryPolicy(attempts=3)(awork)
    async_cases: dict[str, Callable[[], Awaitable[Any]]] = {
        "cache get hit": lambda: acache.get("x"),
        "cache decorator hit": lambda: aget_user(1),
        "ratelimit hit": lambda: alimiter.hit("k", limit),
        "cache get hit (mem)": lambda: amemory.get("x"),
        "ratelimit hit (mem)": lambda: amem_limiter.hit("k", limit),
        "breaker success": aguarded,
        "retry success": aretried,
    }
    return sync_cases, (acache, amemory, async_cases), [cache, memory, client]


def worker(url: str, prefix: str, number: int, callgrind_lib: str | None) -> None:
    """Serve measurements of the cases on stdin (or, under callgrind, count once and print JSON)."""
    from scalekit.instrumentation import get_hooks, set_hooks

    # Any event while a case runs (an op timeout on a loaded machine, a breaker
    # opening, a fallback) means that round of the case did not run the hit
    # path: its figure is dropped, not kept as a best.
    events: list[str] = []
    set_hooks([*get_hooks(), lambda event: events.append(type(event).__name__)])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    sync_cases, (acache, amemory, async_cases), closers = build_cases(url, prefix)
    loop.run_until_complete(acache.set("x", VALUE))
    loop.run_until_complete(amemory.set("x", VALUE))
    loop.run_until_complete(async_cases["cache decorator hit"]())

    def run_sync(fn: Callable[[], Any], n: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        return (time.perf_counter_ns() - start) / n

    async def arun(fn: Callable[[], Awaitable[Any]], n: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(n):
            await fn()
        return (time.perf_counter_ns() - start) / n

    def one(case: str, colour: str, n: int) -> float | None:
        events.clear()
        if colour == "sync":
            figure = run_sync(sync_cases[case], n)
        else:
            figure = loop.run_until_complete(arun(async_cases[case], n))
        return None if events else figure

    for case in CASES:  # warm up (the specialising interpreter, connections, scripts)
        for colour in COLOURS:
            one(case, colour, 300)
    if callgrind_lib is not None:
        helper = ctypes.CDLL(callgrind_lib)
        helper.sk_start()
        tainted = []
        for case in CASES:
            for colour in COLOURS:
                one(case, colour, 50)
                helper.sk_zero()
                if one(case, colour, number) is None:
                    tainted.append(f"{case}|{colour}")
                helper.sk_dump(f"{case}|{colour}".encode())
        print(json.dumps({"done": True, "tainted": tainted}), flush=True)
    else:
        serve_cases(
            {
                f"{case}|{colour}": functools.partial(one, case, colour)
                for case in CASES
                for colour in COLOURS
            }
        )
    for async_cache in (acache, amemory):
        loop.run_until_complete(async_cache.aclose())
    loop.close()
    for closer in closers:
        closer.close()


# --- the driver --------------------------------------------------------------------------


def default_old() -> str:
    """The parent of the commit that added scripts/unasync.py (the first issue-14 commit)."""
    first = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "log",
            "--diff-filter=A",
            "--format=%H",
            "--",
            "scripts/unasync.py",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    return first + "^"


def export_tree(rev: str, into: Path) -> tuple[Path, str]:
    """``git archive`` the ``src`` of ``rev`` into ``into``; return it and the short hash."""
    short = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return export_src(rev, into), short


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    """A ``redis-server`` of our own on a free port, no persistence; stopped at the end."""
    import redis

    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        probe = redis.Redis.from_url(url)
        for _ in range(200):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError("the private redis-server did not start")
        probe.close()
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def worker_command(url: str, prefix: str, number: int, lib: str | None) -> list[str]:
    command = [sys.executable, __file__, "--url", url, "--number", str(number)]
    command += ["--worker", prefix]
    if lib is not None:
        command += ["--callgrind-lib", lib]
    return command


def side_env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"}


def wall_clock(
    url: str, trees: dict[str, Path], prefix: str, number: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Best ns per call of each case, rounds interleaved between the two workers."""
    sides: list[Side] = []
    try:
        for side, src in trees.items():
            command = worker_command(url, f"{prefix}{side}", number, None)
            sides.append(Side(side, src, command, {"PYTHONHASHSEED": "0"}))
        dropped: dict[str, int] = {}
        best = interleaved_best(sides, rounds, number, dropped=dropped)
        for side, count in dropped.items():
            print(f"wall clock: {count} figure(s) of {side} dropped (an event: timeout, fallback)")
    finally:
        for worker_side in sides:
            worker_side.close()
    return best


def instruction_counts(
    url: str, trees: dict[str, Path], prefix: str, number: int, folder: Path
) -> dict[str, dict[str, float]]:
    """Instructions per call of each case, each side once under callgrind (both at once)."""
    lib = build_callgrind_helper(folder)
    workers = {
        side: (worker_command(url, f"{prefix}{side}", number, lib), side_env(src))
        for side, src in trees.items()
    }
    counts: dict[str, dict[str, float]] = {}
    for side, (stdout, totals) in run_under_callgrind(workers, folder, '"done"').items():
        for key in json.loads(stdout.splitlines()[-1])["tainted"]:
            print(f"callgrind: {side} {key} emitted events (a timeout or a fallback)")
        counts[side] = {label: total / number for label, total in totals.items() if "|" in label}
    return counts


def print_table(title: str, unit: str, old: dict[str, float], new: dict[str, float]) -> None:
    print(f"\n{title}")
    header = f"{'case':<22} {'colour':<6} {'old ' + unit:>14} {'new ' + unit:>14} {'new/old':>8}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for case in CASES:
        for colour in COLOURS:
            key = f"{case}|{colour}"
            if key not in old or key not in new:
                print(f"{case:<22} {colour:<6} (no round ran the hit path without an event)")
                continue
            ratio = new[key] / old[key]
            worst = max(worst, ratio)
            flag = "  > 1.03" if ratio > 1.03 else ""
            print(f"{case:<22} {colour:<6} {old[key]:>14.1f} {new[key]:>14.1f} {ratio:>8.3f}{flag}")
    print(f"worst new/old: {worst:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--old", metavar="REV", help="the commit to compare with")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--start-redis", action="store_true", help="a private redis-server")
    parser.add_argument("--rounds", type=int, default=30, help="wall-clock rounds (best of)")
    parser.add_argument("--number", type=int, default=2000, help="calls per case per round")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions")
    parser.add_argument(
        "--callgrind-number", type=int, default=1000, help="calls per case under callgrind"
    )
    parser.add_argument("--no-wall-clock", action="store_true", help="only --callgrind")
    parser.add_argument("--worker", metavar="PREFIX", help=argparse.SUPPRESS)
    parser.add_argument("--callgrind-lib", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.url, args.worker, args.number, args.callgrind_lib)
        return
    if args.callgrind and shutil.which("valgrind") is None:
        parser.error("--callgrind needs valgrind")
    rev = args.old or default_old()
    with tempfile.TemporaryDirectory(prefix="skab") as tmp:
        folder = Path(tmp)
        old_src, short = export_tree(rev, folder)
        trees = {"old": old_src, "new": REPO / "src"}
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(private_redis(folder)) if args.start_redis else args.url
            prefix = f"skab{uuid.uuid4().hex[:8]}"
            print(f"old = {rev} ({short}), new = {REPO / 'src'}; Redis at {url}")
            try:
                if not args.no_wall_clock:
                    best = wall_clock(url, trees, prefix, args.number, args.rounds)
                    print_table(
                        f"wall clock, best of {args.rounds} interleaved rounds "
                        f"of {args.number} calls",
                        "ns/call",
                        best["old"],
                        best["new"],
                    )
                if args.callgrind:
                    counts = instruction_counts(
                        url, trees, prefix + "cg", args.callgrind_number, folder
                    )
                    print_table(
                        f"callgrind, instructions per call ({args.callgrind_number} calls "
                        "per case)",
                        "Ir/call",
                        counts["old"],
                        counts["new"],
                    )
            finally:
                if not args.start_redis:
                    import redis

                    probe = redis.Redis.from_url(url)
                    for key in probe.scan_iter(f"{prefix}*"):
                        probe.delete(key)
                    probe.close()


if __name__ == "__main__":
    main()
