"""A health report for a database, its replicas and Redis: the table, the JSON, the exit code.

Runs with no servers: an SQLite database and fakeredis (an in-process Redis).
Point it at your own servers with environment variables and nothing else
changes::

    python examples/health.py
    DATABASE_URL=postgresql+psycopg://app:secret@db1/app \\
    REPLICA_URLS=postgresql+psycopg://app:secret@db2/app,postgresql+psycopg://app:secret@db3/app \\
    REDIS_URL=redis://cache:6379/0 python examples/health.py

With replicas, the engines go into a ``RoutingPool`` so that a stopped
replica makes the report ``warn`` (reads fall back), not ``critical``. The
script also shows an exhausted pool reported at once, without waiting for a
connection, and the per-instance pool size for 100 instances.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from scalekit.errors import ConfigurationError
from scalekit.health import HealthReport, PoolMonitor, check_health, pool_size_for


def section(title: str) -> None:
    print(f"\n== {title}")


def print_table(report: HealthReport) -> None:
    print(f"status: {report.status} (exit code {report.exit_code}), {report.duration_ms:.1f} ms")
    for name, component in report.components.items():
        latency = "-" if component.latency_ms is None else f"{component.latency_ms:.1f} ms"
        up = {True: "up", False: "down", None: "?"}[component.up]
        print(f"  {name:<20} {component.status:<9} {up:<5} {latency:>9}")
        for reason in component.reasons:
            print(f"  {'':<20} - {reason}")


def redis_client() -> Any:
    url = os.environ.get("REDIS_URL")
    if url:
        import redis

        return redis.Redis.from_url(url)
    import fakeredis

    return fakeredis.FakeRedis()


def main() -> None:
    database_url = os.environ.get("DATABASE_URL")
    replica_urls = [url for url in os.environ.get("REPLICA_URLS", "").split(",") if url.strip()]
    with tempfile.TemporaryDirectory() as scratch:
        if database_url is None:
            database_url = f"sqlite:///{Path(scratch) / 'app.db'}"
        primary = sa.create_engine(database_url, pool_size=2, max_overflow=0)
        replicas = [sa.create_engine(url.strip()) for url in replica_urls]
        client = redis_client()
        monitor = PoolMonitor(primary, name="primary")
        routing = None
        try:
            if replicas:
                from scalekit.routing import RoutingPool

                routing = RoutingPool(primary=primary, replicas=replicas)
                targets: dict[str, Any] = {"pool": routing}
            else:
                targets = {"engines": {"primary": primary}}

            section("a health check (probes run concurrently, each with a 2 s timeout)")
            report = check_health(**targets, redis=client, timeout=2.0)
            print_table(report)

            section("the same report as JSON (docs/health.md has the schema)")
            print(json.dumps(report.to_dict(), indent=2))

            section("an exhausted pool is reported at once, without waiting for a connection")
            held = [primary.connect(), primary.connect()]
            try:
                report = check_health(engines={"primary": primary}, timeout=2.0)
                print_table(report)
                print(f"  monitor: usage {monitor.usage}, level {monitor.level}")
            finally:
                for connection in held:
                    connection.close()

            section("pool size per instance for 100 instances on max_connections=500")
            size = pool_size_for(max_connections=500, instances=100, reserve=10)
            print(f"  (500 - 10) // 100 = {size}")
            try:
                pool_size_for(max_connections=100, instances=200)
            except ConfigurationError as error:
                print(f"  200 instances on 100 connections: {error}")
        finally:
            monitor.close()
            if routing is not None:
                routing.close()
            for engine in (primary, *replicas):
                engine.dispose()


if __name__ == "__main__":
    main()
