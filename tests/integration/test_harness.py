"""The harness itself: replication, promotion, failure controls and the cluster work."""

from __future__ import annotations

import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.harness import PgCluster, RedisClusterHarness, RedisNode, wait_until

pytestmark = pytest.mark.integration

# redis-py retries failed commands (10 times, with back-off, in 8.x): off here, so a
# stopped or paused server shows at once.
NO_RETRY = Retry(NoBackoff(), 0)
# The socket timeout of calls that must succeed: a guard against a hang only, far above
# what a loaded machine can take to answer (a paused server is what a short one is for).
ANSWERS = 10.0


def test_row_written_on_primary_is_read_from_each_replica(pg_cluster: PgCluster) -> None:
    assert pg_cluster.primary is not None
    table = f"harness_{uuid.uuid4().hex[:8]}"
    pg_cluster.primary.execute(f"CREATE TABLE {table} (id int primary key, note text)")
    pg_cluster.primary.execute(f"INSERT INTO {table} VALUES (1, 'hello')")
    pg_cluster.wait_for_replicas()
    assert len(pg_cluster.replicas) == 2
    for replica in pg_cluster.replicas:
        assert replica.is_in_recovery()
        assert replica.scalar(f"SELECT note FROM {table} WHERE id = 1") == "hello"
    pg_cluster.primary.execute(f"DROP TABLE {table}")


def test_replicas_refuse_writes(pg_cluster: PgCluster) -> None:
    import psycopg

    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        pg_cluster.replicas[0].execute("CREATE TABLE harness_never (id int)")


def test_paused_replay_creates_lag_then_catches_up(pg_cluster: PgCluster) -> None:
    assert pg_cluster.primary is not None
    replica = pg_cluster.replicas[0]
    table = f"harness_lag_{uuid.uuid4().hex[:8]}"
    pg_cluster.primary.execute(f"CREATE TABLE {table} (id int)")
    pg_cluster.wait_for_replicas()
    replica.pause_replay()
    try:
        pg_cluster.primary.execute(f"INSERT INTO {table} SELECT generate_series(1, 1000)")
        target = pg_cluster.primary.current_lsn()
        # The WAL arrives but is not applied: the row count stays at 0 and lag is positive.
        wait_until(
            lambda: replica.scalar("SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", (target,)),
            timeout=10,
            what="WAL to arrive",
        )
        assert replica.lag_bytes(target) > 0
        assert replica.scalar(f"SELECT count(*) FROM {table}") == 0
    finally:
        replica.resume_replay()
    pg_cluster.wait_for_replicas()
    assert replica.scalar(f"SELECT count(*) FROM {table}") == 1000
    assert replica.lag_bytes(pg_cluster.primary.current_lsn()) <= 0
    pg_cluster.primary.execute(f"DROP TABLE {table}")


@pytest.mark.slow
def test_replica_promoted_after_primary_stops_accepts_writes(
    pg_cluster_factory: type[PgCluster],
) -> None:
    cluster = pg_cluster_factory(replicas=1)  # type: ignore[call-arg]
    assert cluster.primary is not None
    cluster.primary.execute("CREATE TABLE failover (id int primary key)")
    cluster.primary.execute("INSERT INTO failover VALUES (1)")
    cluster.wait_for_replicas()
    cluster.primary.kill()
    assert not cluster.primary.running
    replica = cluster.replicas[0]
    replica.promote()
    replica.execute("INSERT INTO failover VALUES (2)")
    assert replica.scalar("SELECT array_agg(id ORDER BY id) FROM failover") == [1, 2]
    assert not replica.is_in_recovery()


@pytest.mark.slow
def test_stopped_node_restarts_with_its_data(pg_cluster_factory: type[PgCluster]) -> None:
    import psycopg

    cluster = pg_cluster_factory(replicas=1)  # type: ignore[call-arg]
    assert cluster.primary is not None
    cluster.primary.execute("CREATE TABLE survives (id int)")
    cluster.primary.execute("INSERT INTO survives VALUES (7)")
    cluster.primary.stop()
    with pytest.raises(psycopg.OperationalError):
        cluster.primary.scalar("SELECT 1")
    cluster.primary.start()
    assert cluster.primary.scalar("SELECT id FROM survives") == 7
    # A crash (SIGKILL of the whole server) recovers too, and the replica reconnects.
    cluster.primary.kill()
    cluster.primary.start()
    cluster.primary.execute("INSERT INTO survives VALUES (8)")
    cluster.wait_for_replicas()
    assert cluster.replicas[0].scalar("SELECT count(*) FROM survives") == 2


def test_redis_standalone_stop_and_restart(redis_server_factory: type[RedisNode]) -> None:
    node = redis_server_factory()  # type: ignore[call-arg]
    client = node.client(socket_timeout=ANSWERS, retry=NO_RETRY)  # a stopped node refuses at once
    client.set("k", "v")
    assert client.get("k") == b"v"
    node.stop()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    node.start()
    assert client.get("k") is None  # nothing is persisted
    client.set("k", "again")
    assert client.get("k") == b"again"
    client.close()


def test_redis_pause_makes_calls_time_out(redis_server_factory: type[RedisNode]) -> None:
    node = redis_server_factory()  # type: ignore[call-arg]
    answering = node.client(socket_timeout=ANSWERS)
    assert answering.ping()
    answering.close()
    # A short timeout only where the call must time out: a busy machine can take longer
    # than 0.2 s to answer a first call, never to not answer at all.
    client = node.client(socket_timeout=0.2, retry=NO_RETRY)
    node.pause()
    try:
        with pytest.raises(redis.TimeoutError):
            client.ping()  # the kernel accepts the connection; the server never answers
    finally:
        node.resume()
    client.close()
    fresh = node.client(socket_timeout=ANSWERS)
    assert fresh.ping()
    fresh.close()


def test_cluster_key_is_read_back_from_the_node_owning_its_slot(
    redis_cluster: RedisClusterHarness,
) -> None:
    cluster_client = redis_cluster.client()
    try:
        owners = set()
        for i in range(30):
            key = f"harness:{i}"
            cluster_client.set(key, str(i))
            owner = redis_cluster.node_for_key(key)
            owners.add(owner.port)
            direct = owner.client()
            try:
                assert direct.get(key) == str(i).encode()
                assert direct.execute_command("CLUSTER", "KEYSLOT", key) == cluster_client.keyslot(
                    key
                )
            finally:
                direct.close()
        assert len(owners) == 3  # 30 keys spread over all three masters
        assert len(redis_cluster.nodes) == 3
    finally:
        cluster_client.close()


def test_fixtures_share_one_standalone_node(redis_client: redis.Redis, redis_server: RedisNode):
    redis_client.set("shared", "1")
    direct = redis_server.client()
    assert direct.get("shared") == b"1"
    direct.close()
