"""What instrumentation costs a hot path: scalekit's emit() vs the stdlib and prometheus-client.

Run: python benchmarks/bench_instrumentation.py
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).parent))

from _bench import Result, print_table, time_per_call

from scalekit.instrumentation import Event, LoggingHook, PrometheusHook, emit, set_hooks


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe(Event):
    kind: ClassVar[str] = "bench.probe"
    seconds: float


def main() -> None:
    logger = logging.getLogger("bench.plain")
    logger.setLevel(logging.WARNING)  # DEBUG records are dropped, as in production
    logging.getLogger("scalekit").setLevel(logging.WARNING)
    event = Probe(name="bench", seconds=0.001)

    results = [Result("bare function call", time_per_call(lambda: None))]

    set_hooks([])
    results.append(Result("emit(), no hooks", time_per_call(lambda: emit(event))))
    set_hooks([LoggingHook()])
    results.append(
        Result("emit(), LoggingHook, level disabled", time_per_call(lambda: emit(event)))
    )
    results.append(
        Result(
            "stdlib logger.debug(), level disabled",
            time_per_call(lambda: logger.debug("%s %s", "bench.probe", "bench")),
        )
    )
    try:
        import prometheus_client
    except ImportError:
        print("prometheus-client not installed: skipping the metrics rows")
    else:
        registry = prometheus_client.CollectorRegistry()
        counter = prometheus_client.Counter(
            "raw_events", "raw", ["kind", "name"], registry=registry
        )
        results.append(
            Result(
                "prometheus Counter.labels().inc()",
                time_per_call(lambda: counter.labels("bench.probe", "bench").inc()),
            )
        )
        set_hooks([PrometheusHook(registry)])
        results.append(
            Result("emit(), PrometheusHook (count + histogram)", time_per_call(lambda: emit(event)))
        )
    set_hooks([LoggingHook()])
    print_table(
        "instrumentation cost per event",
        results,
        baseline="bare function call",
        peer="stdlib logger.debug(), level disabled",
    )


if __name__ == "__main__":
    main()
