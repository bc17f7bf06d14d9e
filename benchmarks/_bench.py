"""Shared timing and reporting for the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Result", "print_table", "time_per_call"]


@dataclass(frozen=True)
class Result:
    name: str
    ns_per_call: float


def time_per_call(fn: Callable[[], object], *, number: int = 100_000, repeat: int = 5) -> float:
    """Nanoseconds per call: the best of ``repeat`` runs of ``number`` calls, after a warm-up."""
    for _ in range(min(number, 1000)):
        fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / number)
    return best


def print_table(
    title: str,
    results: Sequence[Result],
    *,
    baseline: str,
    peer: str | None = None,
    overhead_over: str | None = None,
) -> None:
    """Print ns/call, the ratio to ``baseline`` and to ``peer``, and overhead above a bare call."""
    by_name = {r.name: r.ns_per_call for r in results}
    print(f"\n{title}")
    header = f"{'case':<44} {'ns/call':>10} {'vs ' + baseline:>16}"
    if peer:
        header += f" {'vs ' + peer:>16}"
    if overhead_over:
        header += f" {'overhead ns':>12}"
    print(header)
    print("-" * len(header))
    for result in results:
        line = f"{result.name:<44} {result.ns_per_call:>10.1f} "
        line += f"{result.ns_per_call / by_name[baseline]:>15.2f}x"
        if peer:
            line += f" {result.ns_per_call / by_name[peer]:>15.2f}x"
        if overhead_over:
            line += f" {result.ns_per_call - by_name[overhead_over]:>12.1f}"
        print(line)
