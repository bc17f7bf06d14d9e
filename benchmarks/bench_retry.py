"""Retry policies: scalekit vs tenacity vs stamina, on the success path and on one retry.

Every row wraps the same trivial function, so the numbers are the wrapper's
own cost. Four tables, in one run:

1. success path (sync): the call succeeds first time, the common case;
2. success path (async);
3. a failing-then-succeeding call: the first attempt raises, the second
   returns (waits set to zero everywhere, so only the machinery is timed);
4. retry around a breaker (success path): scalekit's policy over scalekit's
   breaker vs tenacity over pybreaker.

Instrumentation is off on both sides (scalekit's hooks and stamina's
on-retry hooks), so no row pays for logging. No servers are needed.

Run::

    python benchmarks/bench_retry.py [--number 100000] [--repeat 5]

Targets (issue 4): scalekit's success-path overhead <= 0.1x tenacity's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import pybreaker
import stamina
import stamina.instrumentation
import tenacity
from _bench import Result, print_table, time_per_call

from scalekit.breaker import CircuitBreaker
from scalekit.instrumentation import set_hooks
from scalekit.retry import Backoff, RetryBudget, RetryPolicy, transient


class Flaky(Exception):
    pass


def work() -> int:
    return 1


async def awork() -> int:
    return 1


def fails_every_other_call() -> Callable[[], int]:
    """A function whose odd calls raise and even calls return: one retry per wrapped call."""
    failing = False

    def flaky() -> int:
        nonlocal failing
        failing = not failing
        if failing:
            raise Flaky
        return 1

    return flaky


def async_time_per_call(fn: Callable[[], Awaitable[object]], *, number: int, repeat: int) -> float:
    """ns per awaited call, best of ``repeat``, all inside one event loop."""

    async def run() -> float:
        for _ in range(min(number, 1000)):
            await fn()
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter_ns()
            for _ in range(number):
                await fn()
            best = min(best, (time.perf_counter_ns() - start) / number)
        return best

    return asyncio.run(run())


def tenacity_policy(**extra: Any) -> Any:
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=5.0),  # full jitter, as ours
        reraise=True,
        **extra,
    )


def overhead_ratio(results: list[Result], ours: str, peer: str, bare: str) -> str:
    by_name = {r.name: r.ns_per_call for r in results}
    ours_ns = max(by_name[ours] - by_name[bare], 1.0)
    peer_ns = max(by_name[peer] - by_name[bare], 1.0)
    return f"{ours_ns:8.0f} ns vs {peer_ns:8.0f} ns = {ours_ns / peer_ns:6.3f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs (the best is kept)")
    args = parser.parse_args()
    number, repeat = args.number, args.repeat
    peer_number = max(1000, number // 10)  # the peers are slower: fewer calls, same precision

    set_hooks([])
    stamina.instrumentation.set_on_retry_hooks([])

    def ours(fn: Callable[[], Any]) -> float:
        return time_per_call(fn, number=number, repeat=repeat)

    def peer(fn: Callable[[], Any]) -> float:
        return time_per_call(fn, number=peer_number, repeat=repeat)

    # 1. success path, sync --------------------------------------------------------------
    sync = [Result("bare call", ours(work))]
    sync.append(
        Result(
            "scalekit RetryPolicy",
            ours(RetryPolicy(attempts=3, backoff=Backoff.exponential(0.1, cap=5.0))(work)),
        )
    )
    full = RetryPolicy(
        attempts=3,
        backoff=Backoff.exponential(0.1, cap=5.0),
        retry_on=transient.database | transient.redis,
        deadline=10.0,
        budget=RetryBudget(ratio=0.2, name="bench-retry"),
    )
    sync.append(Result("scalekit + deadline + budget", ours(full(work))))
    sync.append(Result("tenacity @retry", peer(tenacity_policy()(work))))
    sync.append(Result("stamina @retry", peer(stamina.retry(on=Exception, attempts=3)(work))))
    print_table(
        "1. success path, sync (ns per call)", sync, baseline="bare call", overhead_over="bare call"
    )

    # 2. success path, async -------------------------------------------------------------
    def aours(fn: Callable[[], Awaitable[object]]) -> float:
        return async_time_per_call(fn, number=number, repeat=repeat)

    def apeer(fn: Callable[[], Awaitable[object]]) -> float:
        return async_time_per_call(fn, number=peer_number, repeat=repeat)

    asynchronous = [Result("bare async call", aours(awork))]
    asynchronous.append(
        Result("scalekit RetryPolicy (async)", aours(RetryPolicy(attempts=3)(awork)))
    )
    asynchronous.append(Result("tenacity @retry (async)", apeer(tenacity_policy()(awork))))
    asynchronous.append(
        Result("stamina @retry (async)", apeer(stamina.retry(on=Exception, attempts=3)(awork)))
    )
    print_table(
        "2. success path, async (ns per call)",
        asynchronous,
        baseline="bare async call",
        overhead_over="bare async call",
    )

    # 3. one failure, then success (no waits) ----------------------------------------------
    retried = [Result("bare call (for reference)", ours(work))]
    retried.append(
        Result(
            "scalekit RetryPolicy",
            peer(RetryPolicy(attempts=3, backoff=Backoff.none())(fails_every_other_call())),
        )
    )
    retried.append(
        Result(
            "tenacity @retry",
            peer(
                tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)(
                    fails_every_other_call()
                )
            ),
        )
    )
    retried.append(
        Result(
            "stamina @retry",
            peer(
                stamina.retry(
                    on=Flaky, attempts=3, wait_initial=0.0, wait_max=0.0, wait_jitter=0.0
                )(fails_every_other_call())
            ),
        )
    )
    print_table(
        "3. failing-then-succeeding call (ns per call, no waits)",
        retried,
        baseline="scalekit RetryPolicy",
    )

    # 4. retry around a breaker, success path -------------------------------------------
    combo = [Result("bare call", ours(work))]
    breaker = CircuitBreaker("bench-retry", fail_max=5)
    combo.append(
        Result("scalekit retry over scalekit breaker", ours(RetryPolicy(attempts=3)(breaker(work))))
    )
    combo.append(
        Result(
            "tenacity over pybreaker",
            peer(tenacity_policy()(pybreaker.CircuitBreaker(fail_max=5)(work))),
        )
    )
    print_table(
        "4. retry around a breaker, success path (ns per call)",
        combo,
        baseline="bare call",
        overhead_over="bare call",
    )

    print("\nratios of overhead above a bare call (lower is better; target <= 0.1x tenacity)")
    a_ours, a_tenacity, a_stamina = (r.name for r in asynchronous[1:])
    comparisons = [
        ("sync retry vs tenacity", sync, sync[1].name, "tenacity @retry", "bare call"),
        ("sync retry vs stamina", sync, sync[1].name, "stamina @retry", "bare call"),
        ("retry+deadline+budget vs tenacity", sync, sync[2].name, "tenacity @retry", "bare call"),
        ("async retry vs tenacity", asynchronous, a_ours, a_tenacity, "bare async call"),
        ("async retry vs stamina", asynchronous, a_ours, a_stamina, "bare async call"),
        ("retry/breaker vs tenacity/pybreaker", combo, combo[1].name, combo[2].name, "bare call"),
    ]
    for label, table, ours_name, peer_name, bare_name in comparisons:
        print(f"  {label:36} {overhead_ratio(table, ours_name, peer_name, bare_name)}")
    by_name = {r.name: r.ns_per_call for r in retried}
    ours_retry = by_name["scalekit RetryPolicy"]
    print(
        f"  one retry: tenacity / scalekit = {by_name['tenacity @retry'] / ours_retry:.1f}x, "
        f"stamina / scalekit = {by_name['stamina @retry'] / ours_retry:.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
