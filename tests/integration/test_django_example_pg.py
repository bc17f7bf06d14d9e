"""``examples/django_app`` against the harness: PostgreSQL primary + replicas and Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.django.test_example_app import run_demo


def test_demo_on_postgres_and_redis(
    tmp_path: Path, pg_cluster: Any, pg_url: str, redis_client: Any
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    replicas = ",".join(
        replica.url_for(dbname).replace("postgresql+psycopg://", "postgresql://")
        for replica in pg_cluster.replicas
    )
    kwargs = redis_client.connection_pool.connection_kwargs
    out = run_demo(
        tmp_path,
        DATABASE_URL=plain,
        REPLICA_URLS=replicas,
        REDIS_URL=f"redis://{kwargs['host']}:{kwargs['port']}/0",
    )
    assert "create: 201" in out
    token = out.split("consistency token: ")[1].split()[0]
    assert not token.startswith("-@")  # an LSN: PostgreSQL's read-your-writes
    assert "import: 201 {'inserted': 50}" in out
    assert "stats (async view): {'orders': 51}" in out
    assert "health: 200 ok" in out
