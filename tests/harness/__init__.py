"""Real PostgreSQL and Redis servers for scalekit's tests, started from local binaries.

``tests/conftest.py`` turns these into fixtures; failure tests use the node
methods (stop, kill, pause, promote) on servers the harness started itself.
"""

from tests.harness._process import (
    HarnessError,
    PgBinaries,
    RedisBinaries,
    find_pg_binaries,
    find_redis_binaries,
    free_port,
    service_user,
    wait_until,
)
from tests.harness.postgres import PgCluster, PgNode
from tests.harness.redis import RedisClusterHarness, RedisNode

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
