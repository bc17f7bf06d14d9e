"""Success-path cost of retry policies: scalekit vs tenacity vs stamina.

Every row wraps the same trivial function and calls it when it succeeds
first time (the common case), so the numbers are the pure overhead of the
wrapper. Run::

    python benchmarks/bench_retry.py [--calls 200000] [--repeat 5]

Prints ns/call, the overhead over a bare call, and the ratio of each
scalekit overhead to its peer's. Target: scalekit's retry overhead <= 0.1x
tenacity's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from scalekit.retry import Backoff, RetryBudget, RetryPolicy, transient


def work(x: int) -> int:
    return x + 1


async def awork(x: int) -> int:
    return x + 1


def measure(fn: Callable[[int], Any], calls: int, repeat: int) -> float:
    """Best-of-``repeat`` ns per call (the minimum is the least noisy estimate)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter_ns()
        for i in range(calls):
            fn(i)
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def measure_async(fn: Callable[[int], Awaitable[Any]], calls: int, repeat: int) -> float:
    async def loop() -> float:
        best = float("inf")
        for _ in range(repeat):
            gc.collect()
            start = time.perf_counter_ns()
            for i in range(calls):
                await fn(i)
            best = min(best, (time.perf_counter_ns() - start) / calls)
        return best

    return asyncio.run(loop())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    calls, repeat = args.calls, args.repeat
    peer_calls = max(1000, calls // 10)  # tenacity is slow: fewer calls, same precision

    rows: list[tuple[str, float | None, str]] = []
    notes: list[str] = []

    bare = measure(work, calls, repeat)
    rows.append(("bare call", bare, ""))

    ours = RetryPolicy(attempts=3, backoff=Backoff.exponential(0.1, cap=5.0))(work)
    ours_ns = measure(ours, calls, repeat)
    rows.append(("scalekit RetryPolicy", ours_ns, ""))

    full_policy = RetryPolicy(
        attempts=3,
        backoff=Backoff.exponential(0.1, cap=5.0),
        retry_on=transient.database | transient.redis,
        deadline=10.0,
        budget=RetryBudget(ratio=0.2, name="bench"),
    )
    ours_full_ns = measure(full_policy(work), calls, repeat)
    rows.append(("scalekit + deadline + budget", ours_full_ns, ""))

    tenacity_ns: float | None = None
    try:
        import tenacity

        peer = tenacity.retry(
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_exponential_jitter(0.1, max=5.0),
            reraise=True,
        )(work)
        tenacity_ns = measure(peer, peer_calls, repeat)
        rows.append(("tenacity @retry", tenacity_ns, "ratio base"))
    except ImportError:
        notes.append("tenacity not installed: its rows are skipped")

    try:
        import stamina

        stamina_fn = stamina.retry(on=Exception, attempts=3)(work)
        rows.append(("stamina @retry", measure(stamina_fn, peer_calls, repeat), ""))
    except ImportError:
        notes.append("stamina not installed: its row is skipped")

    # Retry around a breaker: every attempt goes through the breaker.
    combo_ns: float | None = None
    try:
        from scalekit.breaker import CircuitBreaker

        breaker = CircuitBreaker("bench-retry", fail_max=5)
        combo = RetryPolicy(attempts=3, backoff=Backoff.exponential(0.1, cap=5.0))(breaker(work))
        combo_ns = measure(combo, calls, repeat)
        rows.append(("scalekit retry over breaker", combo_ns, ""))
    except Exception as exc:  # the breaker is optional for this script
        notes.append(f"scalekit.breaker unavailable ({type(exc).__name__}: {exc}): row skipped")

    peer_combo_ns: float | None = None
    try:
        import pybreaker
        import tenacity

        pb = pybreaker.CircuitBreaker(fail_max=5)
        peer_combo = tenacity.retry(
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_exponential_jitter(0.1, max=5.0),
            reraise=True,
        )(pb(work))
        peer_combo_ns = measure(peer_combo, peer_calls, repeat)
        rows.append(("tenacity over pybreaker", peer_combo_ns, ""))
    except ImportError:
        notes.append("pybreaker/tenacity not installed: peer combination skipped")

    abare = measure_async(awork, calls, repeat)
    rows.append(("bare async call", abare, ""))
    aours_ns = measure_async(RetryPolicy(attempts=3)(awork), calls, repeat)
    rows.append(("scalekit RetryPolicy (async)", aours_ns, ""))
    atenacity_ns: float | None = None
    try:
        import tenacity

        apeer = tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)(awork)
        atenacity_ns = measure_async(apeer, peer_calls, repeat)
        rows.append(("tenacity @retry (async)", atenacity_ns, ""))
    except ImportError:
        pass

    print(f"python {sys.version.split()[0]}, best of {repeat}, {calls} calls ({peer_calls} peers)")
    print(f"{'case':34} {'ns/call':>10} {'overhead':>10}")
    for name, ns, note in rows:
        base = abare if "async" in name else bare
        if ns is None:
            continue
        print(f"{name:34} {ns:10.0f} {ns - base:10.0f}  {note}")

    def ratio(label: str, ours_value: float | None, peer: float | None, base: float) -> None:
        if ours_value is None or peer is None:
            print(f"{label}: n/a")
            return
        ours_overhead = max(ours_value - base, 1.0)
        peer_overhead = max(peer - base, 1.0)
        print(
            f"{label}: ours {ours_overhead:.0f} ns vs {peer_overhead:.0f} ns overhead "
            f"= {ours_overhead / peer_overhead:.3f}x"
        )

    print()
    ratio("retry overhead vs tenacity (target <= 0.1x)", ours_ns, tenacity_ns, bare)
    ratio("retry+deadline+budget vs tenacity", ours_full_ns, tenacity_ns, bare)
    ratio("retry over breaker vs tenacity over pybreaker", combo_ns, peer_combo_ns, bare)
    ratio("async retry vs async tenacity", aours_ns, atenacity_ns, abare)
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
