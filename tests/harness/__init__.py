"""The suite's name for :mod:`scalekit.testing.servers` (the harness moved into the package).

``tests/conftest.py`` turns these into fixtures; failure tests use the node
methods (stop, kill, pause, promote) on servers the harness started itself.
"""

from scalekit.testing.servers._postgres import PgCluster, PgNode
from scalekit.testing.servers._process import (
    HarnessError,
    PgBinaries,
    RedisBinaries,
    find_pg_binaries,
    find_redis_binaries,
    free_port,
    service_user,
    wait_until,
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
    "find_pg_binaries",
    "find_redis_binaries",
    "free_port",
    "service_user",
    "wait_until",
]
