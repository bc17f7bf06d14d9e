"""The ``scalekit`` command as a subprocess against the harness's real PostgreSQL and Redis.

Every database URL carries a password (trust authentication ignores it) so
the tests can check it is never echoed: not in the table, the JSON, an error
line, or a traceback (there must be none). Times are hang guards only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import PgCluster, PgNode, RedisNode

pytestmark = pytest.mark.integration

SECRET = "Sup3r-Secret-pw"
HANG_GUARD = 60.0  # seconds; each command takes a fraction of that
SRC = Path(__file__).resolve().parents[2] / "src"


def url(node: PgNode, port: int | None = None) -> str:
    return f"postgresql+psycopg://{node.user}:{SECRET}@{node.host}:{port or node.port}/postgres"


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def scalekit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REPLICA_URLS", "REDIS_URL")
    }
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    environment.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "scalekit", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=HANG_GUARD,
        check=False,
    )
    output = result.stdout + result.stderr
    assert SECRET not in output
    assert "Traceback" not in output
    return result


def test_health_json_over_primary_replicas_and_redis(
    pg_cluster: PgCluster, redis_server: RedisNode
) -> None:
    assert pg_cluster.primary is not None
    args = ["health", "--json", "--primary", url(pg_cluster.primary)]
    for replica in pg_cluster.replicas:
        args += ["--replica", url(replica)]
    result = scalekit(*args, "--redis", redis_server.url)
    report = json.loads(result.stdout)
    assert result.returncode == {"ok": 0, "warn": 1, "critical": 2}[report["status"]]
    components = report["components"]
    roles = sorted(c["details"]["role"] for c in components.values() if c["kind"] == "postgres")
    assert roles == ["primary"] + ["replica"] * len(pg_cluster.replicas)
    assert all(c["up"] for c in components.values() if c["kind"] in ("postgres", "redis"))
    assert components["redis:default"]["status"] == "ok"
    assert report["status"] in ("ok", "warn")  # a shared replica may lag for a moment


def test_health_from_environment_variables_and_table(
    pg_cluster: PgCluster, redis_server: RedisNode
) -> None:
    assert pg_cluster.primary is not None
    env = {"DATABASE_URL": url(pg_cluster.primary), "REDIS_URL": redis_server.url}
    result = scalekit("health", env=env)
    assert result.returncode in (0, 1), result.stderr
    assert "db:primary" in result.stdout
    assert "redis:default" in result.stdout
    assert "\x1b[" not in result.stdout  # no colour when not on a terminal


def test_an_unreachable_replica_warns_and_an_unreachable_primary_is_critical(
    pg_cluster: PgCluster,
) -> None:
    assert pg_cluster.primary is not None
    primary = url(pg_cluster.primary)
    dead = url(pg_cluster.primary, port=dead_port())

    result = scalekit("health", "--json", "--timeout", "2", "--primary", primary, "--replica", dead)
    report = json.loads(result.stdout)
    assert (report["status"], result.returncode) == ("warn", 1)
    down = [c for c in report["components"].values() if c["up"] is False]
    assert len(down) == 1 and down[0]["required"] is False
    assert len(result.stderr.strip().splitlines()) == 1

    result = scalekit("health", "--timeout", "2", "--primary", dead)
    assert result.returncode == 2
    assert result.stderr.startswith("scalekit: db:primary is down: unreachable")
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_redis_is_critical_without_its_password() -> None:
    result = scalekit("health", "--json", "--redis", f"redis://:{SECRET}@127.0.0.1:{dead_port()}/0")
    assert result.returncode == 2
    assert json.loads(result.stdout)["components"]["redis:default"]["up"] is False


@pytest.mark.parametrize(
    ("option", "bad_url"),
    [
        ("--primary", f"not a url {SECRET}"),
        ("--primary", f"nosuchdialect://user:{SECRET}@host/db"),
        ("--redis", f"http://user:{SECRET}@host/0"),
    ],
)
def test_a_bad_url_is_one_line_and_a_non_zero_exit(option: str, bad_url: str) -> None:
    result = scalekit("health", option, bad_url)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"scalekit: {option}")


def test_nothing_to_check_is_a_usage_error() -> None:
    result = scalekit("health")
    assert result.returncode == 2
    assert result.stderr.startswith("scalekit: nothing to check")


def test_pool_size_and_cursor_decode_run_as_commands() -> None:
    result = scalekit(
        "pool-size", "--max-connections", "500", "--instances", "100", "--reserve", "10"
    )
    assert result.returncode == 0
    assert result.stdout.startswith("pool_size=4 ")
    result = scalekit("pool-size", "--max-connections", "100", "--instances", "200")
    assert result.returncode == 1
    assert "cannot fit" in result.stderr
    result = scalekit("cursor", "decode", "AQDd2cQHZ_kDAwIABQF4", "--json")
    assert result.returncode == 0
    assert [v["value"] for v in json.loads(result.stdout)["values"]] == [1, None, "78"]


def test_a_redis_cluster_url_checks_every_master_and_the_slots(redis_cluster: Any) -> None:
    hosts = ",".join(f"{host}:{port}" for host, port in redis_cluster.startup_nodes[:2])
    result = scalekit("health", "--json", "--redis", f"redis+cluster://{hosts}")
    assert result.returncode == 0, result.stderr
    component = json.loads(result.stdout)["components"]["redis:default"]
    assert component["details"]["cluster_state"] == "ok"
    assert component["details"]["masters"] == 3
    assert component["details"]["uncovered_slots"] == 0

    # The same from REDIS_URL, next to a standalone URL: the host list stays one URL.
    standalone = redis_cluster.startup_nodes[2]
    env = {"REDIS_URL": f"redis+cluster://{hosts},redis://{standalone[0]}:{standalone[1]}/0"}
    result = scalekit("health", "--json", env=env)
    components = json.loads(result.stdout)["components"]
    assert components["redis:redis1"]["details"]["masters"] == 3
    assert components["redis:redis2"]["up"] is True


def test_an_unreachable_cluster_or_sentinel_is_one_line_without_its_password() -> None:
    dead = f"127.0.0.1:{dead_port()}"
    result = scalekit("health", "--timeout", "1", "--redis", f"redis+cluster://:{SECRET}@{dead}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("scalekit: --redis: Redis Cluster unreachable (")
    assert result.stderr.count("\n") == 1

    sentinel = f"redis+sentinel://:{SECRET}@{dead}/mymaster"
    result = scalekit("health", "--json", "--timeout", "1", "--redis", sentinel)
    assert result.returncode == 2
    component = json.loads(result.stdout)["components"]["redis:default"]
    # No master found (or not within the timeout, as redis-py retries): down, critical.
    assert component["up"] is False and component["status"] == "critical"
