"""Benchmark: scalekit.contrib.django vs django-ratelimit and django-redis, on one Redis.

Run: ``python benchmarks/bench_django.py [--url redis://...] [--number 3000] [--rounds 7]``.
Without ``--url`` it starts a private redis-server (the harness's, on a free
port) and stops it after. Everything goes through the same call path, a view
called with a ``RequestFactory`` request, in one process, rounds interleaved
(each round times every case once; the table shows each case's best round),
so machine noise hits all cases alike:

- rate limit per request: a bare view; scalekit's ``@ratelimit``; the same
  view behind ``RateLimitMiddleware`` (as Django's handler calls it); and
  django-ratelimit's ``@ratelimit`` (``block=True``) on django-redis, the
  package a Django user would pick. The limit is never reached. The overhead
  is ``limited - bare``; the issue's target is scalekit's overhead <= 0.5x
  django-ratelimit's. An async view under scalekit's decorator is timed too
  (django-ratelimit's decorator is sync-only);
- cache ``get`` hit: ``caches["scalekit"].get`` vs django-redis's ``get`` of
  the same small value; target: scalekit's speed (django-redis ns / scalekit
  ns) >= 1.0x.

Figures to read, never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def configure(url: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="bench-secret-key-0123456789-abcdef",
        USE_TZ=True,
        INSTALLED_APPS=["scalekit.contrib.django"],
        DATABASES={},
        CACHES={
            # django-ratelimit counts in the default cache: django-redis, as users set it up.
            "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url},
            "scalekit": {"BACKEND": "scalekit.contrib.django.ScalekitCache", "LOCATION": url},
        },
        SCALEKIT={"REDIS_URL": url, "RATELIMIT": {"DEFAULT": "1000000/second", "KEY": "ip"}},
        RATELIMIT_USE_CACHE="default",
        ALLOWED_HOSTS=["*"],
    )
    django.setup()


def best_of_rounds(
    cases: dict[str, Callable[[], object]], number: int, rounds: int
) -> dict[str, float]:
    """ns per call of each case: the best of ``rounds`` interleaved rounds of ``number`` calls."""
    best = dict.fromkeys(cases, float("inf"))
    for fn in cases.values():
        for _ in range(200):
            fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter_ns()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (time.perf_counter_ns() - start) / number)
    return best


def ratelimit_cases() -> dict[str, Callable[[], object]]:
    from django.http import HttpResponse
    from django.test import RequestFactory
    from django_ratelimit.decorators import ratelimit as peer_ratelimit

    from scalekit.contrib.django import RateLimitMiddleware, ratelimit

    request_factory = RequestFactory()

    def view(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    async def aview(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    ours = ratelimit("1000000/second", key="ip")(view)
    ours_async = ratelimit("1000000/second", key="ip")(aview)
    peer = peer_ratelimit(key="ip", rate="1000000/s", block=True)(view)
    middleware = RateLimitMiddleware(view)

    def call(fn: Callable[[Any], Any]) -> Callable[[], object]:
        return lambda: fn(request_factory.get("/"))

    loop = asyncio.new_event_loop()

    def run_async() -> object:
        return loop.run_until_complete(ours_async(request_factory.get("/")))

    return {
        "bare view": call(view),
        "scalekit @ratelimit": call(ours),
        "scalekit RateLimitMiddleware": call(middleware),
        "django-ratelimit @ratelimit": call(peer),
        "bare async view (loop)": lambda: loop.run_until_complete(aview(request_factory.get("/"))),
        "scalekit @ratelimit, async view (loop)": run_async,
    }


def cache_cases() -> dict[str, Callable[[], object]]:
    from django.core.cache import caches

    ours, peer = caches["scalekit"], caches["default"]
    value = {"id": 42, "name": "a user", "tags": ["a", "b"]}
    ours.set("bench:user", value, 300)
    peer.set("bench:user", value, 300)
    assert ours.get("bench:user") == peer.get("bench:user") == value
    return {
        "django-redis get (hit)": lambda: peer.get("bench:user"),
        "scalekit ScalekitCache get (hit)": lambda: ours.get("bench:user"),
    }


def run_case(url: str, case: str, calls: int) -> None:
    """(Under callgrind) set up, warm up, then ``calls`` calls of one case, nothing else."""
    configure(url)
    from scalekit.instrumentation import set_hooks

    set_hooks(())
    cases = {**ratelimit_cases(), **cache_cases()}
    fn = cases[case]
    for _ in range(200):
        fn()
    for _ in range(calls):
        fn()


def instructions(url: str, case: str, calls: int) -> int:
    """Instructions the whole process ran (callgrind's total), for ``calls`` calls of ``case``."""
    import os
    import subprocess

    with tempfile.TemporaryDirectory(prefix="bench-django-cg-") as folder:
        out = os.path.join(folder, "callgrind.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--url",
                url,
                "--case",
                case,
                "--calls",
                str(calls),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same work in both runs
        )
        with open(out) as handle:
            for line in handle:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    raise RuntimeError("no totals in the callgrind output")


def callgrind_table(url: str, calls: int) -> None:
    """Instructions per call of each case: (run with ``calls`` calls - run with 0) / calls."""
    names = [
        "bare view",
        "scalekit @ratelimit",
        "scalekit RateLimitMiddleware",
        "django-ratelimit @ratelimit",
        "django-redis get (hit)",
        "scalekit ScalekitCache get (hit)",
    ]
    per_call = {}
    for name in names:
        per_call[name] = (instructions(url, name, calls) - instructions(url, name, 0)) / calls
        print(f"  {name}: {per_call[name]:,.0f} instructions/call", flush=True)
    bare = per_call["bare view"]
    peer = per_call["django-ratelimit @ratelimit"] - bare
    print(f"\nRate limit per request, callgrind (client process only; {calls} calls)")
    print(f"{'case':<42} {'instr/request':>14} {'overhead':>10} {'vs django-ratelimit':>20}")
    for name in names[:4]:
        overhead = per_call[name] - bare
        ratio = "" if name == "bare view" else f"{overhead / peer:>19.2f}x"
        print(f"{name:<42} {per_call[name]:>14,.0f} {overhead:>10,.0f} {ratio:>20}")
    theirs, ours = per_call["django-redis get (hit)"], per_call["scalekit ScalekitCache get (hit)"]
    print(
        f"\nCache get hit, callgrind: django-redis {theirs:,.0f}, scalekit {ours:,.0f} "
        f"instructions; speed {theirs / ours:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=None, help="a Redis URL (default: a private server)")
    parser.add_argument("--number", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--callgrind",
        type=int,
        metavar="CALLS",
        default=0,
        help="also count instructions per call under valgrind (slow)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.url, args.case, args.calls)
        return
    node = None
    url = args.url
    if url is None:
        from tests.harness import RedisNode, find_redis_binaries

        node = RedisNode(find_redis_binaries(), Path(tempfile.mkdtemp(prefix="bench-django-")))
        node.start()
        url = node.url
    try:
        configure(url)
        from scalekit.instrumentation import set_hooks

        set_hooks(())  # instrumentation off: time the integrations, not logging
        limits = best_of_rounds(ratelimit_cases(), args.number, args.rounds)
        cache = best_of_rounds(cache_cases(), args.number, args.rounds)
        if args.callgrind:
            callgrind_table(url, args.callgrind)
    finally:
        if node is not None:
            node.close()
    bare = limits["bare view"]
    peer_overhead = limits["django-ratelimit @ratelimit"] - bare
    print(f"\nRate limit per request ({args.rounds} interleaved rounds, best; one Redis)")
    print(f"{'case':<42} {'us/request':>11} {'overhead us':>12} {'vs django-ratelimit':>20}")
    for name, ns in limits.items():
        base = limits["bare async view (loop)"] if "async" in name else bare
        overhead = ns - base
        ratio = "" if "bare" in name else f"{overhead / peer_overhead:>19.2f}x"
        print(f"{name:<42} {ns / 1000:>11.1f} {overhead / 1000:>12.1f} {ratio:>20}")
    print("target: scalekit overhead <= 0.50x django-ratelimit's")
    print("\nCache get hit (same value, same Redis)")
    peer_ns = cache["django-redis get (hit)"]
    print(f"{'case':<42} {'us/get':>11} {'speed vs django-redis':>22}")
    for name, ns in cache.items():
        print(f"{name:<42} {ns / 1000:>11.1f} {peer_ns / ns:>21.2f}x")
    print("target: scalekit >= 1.00x django-redis")


if __name__ == "__main__":
    main()
