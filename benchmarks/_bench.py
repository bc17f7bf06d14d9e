"""Shared timing and reporting for the benchmark scripts."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Result", "interleaved_best", "print_table", "time_per_call"]


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


def interleaved_best(
    workers: Mapping[str, subprocess.Popen[str]],
    rounds: int,
    dropped: dict[str, int] | None = None,
) -> dict[str, dict[str, float]]:
    """Best figure per case of each worker, over ``rounds`` rounds taken in turn.

    Each worker times one round per line it reads on stdin and answers with a
    JSON object of case -> figure (null: that round of the case does not
    count); the order alternates every round, so that machine noise hits
    every side alike. A case no round counted is left out; ``dropped``, if
    given, counts the rounds left out per side.
    """
    best: dict[str, dict[str, float]] = {side: {} for side in workers}
    for index in range(rounds):
        order = list(workers) if index % 2 == 0 else list(reversed(list(workers)))
        for side in order:
            proc = workers[side]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("round\n")
            proc.stdin.flush()
            for case, figure in json.loads(proc.stdout.readline()).items():
                if figure is not None:
                    best[side][case] = min(best[side].get(case, float("inf")), figure)
                elif dropped is not None:
                    dropped[side] = dropped.get(side, 0) + 1
    return best
