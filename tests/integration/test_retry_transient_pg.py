"""transient.database on real PostgreSQL errors, raised by psycopg and by SQLAlchemy."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from scalekit.retry import Backoff, RetryPolicy, transient

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def table(pg_url: str) -> Iterator[str]:
    name = f"retry_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)"))
        conn.execute(sa.text(f"INSERT INTO {name} VALUES (1, 0), (2, 0)"))
    try:
        yield name
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        engine.dispose()


def libpq_dsn(pg_url: str) -> str:
    return (
        sa.engine.make_url(pg_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


def test_connection_refused_is_transient() -> None:
    port = closed_port()
    with pytest.raises(psycopg.OperationalError) as raw:
        psycopg.connect(f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=2")
    assert transient.database(raw.value)
    engine = sa.create_engine(f"postgresql+psycopg://x@127.0.0.1:{port}/x")
    with pytest.raises(sa_exc.OperationalError) as wrapped:
        engine.connect()
    assert transient.database(wrapped.value)


def test_serialization_failure_is_transient(pg_url: str, table: str) -> None:
    dsn = libpq_dsn(pg_url)
    with psycopg.connect(dsn) as first, psycopg.connect(dsn, autocommit=True) as second:
        first.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        first.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone()
        second.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure) as info:
            first.execute(f"UPDATE {table} SET v = v + 10 WHERE id = 1")
        assert info.value.sqlstate == "40001"
        assert transient.database(info.value)


def test_deadlock_is_transient(pg_url: str, table: str) -> None:
    dsn = libpq_dsn(pg_url)
    errors: list[BaseException] = []
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        first.execute(f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE")
        second.execute(f"SELECT * FROM {table} WHERE id = 2 FOR UPDATE")

        def lock(conn: psycopg.Connection[Any], row: int) -> None:
            try:
                conn.execute(f"SELECT * FROM {table} WHERE id = {row} FOR UPDATE")
            except psycopg.Error as exc:
                errors.append(exc)

        waiter = threading.Thread(target=lock, args=(first, 2))
        waiter.start()
        lock(second, 1)
        waiter.join(timeout=30)
        first.rollback()
        second.rollback()
    assert len(errors) == 1
    assert isinstance(errors[0], psycopg.errors.DeadlockDetected)
    assert transient.database(errors[0])


def test_terminated_backend_is_transient_for_psycopg_and_sqlalchemy(pg_url: str) -> None:
    dsn = libpq_dsn(pg_url)
    with psycopg.connect(dsn, autocommit=True) as admin:
        victim = psycopg.connect(dsn, autocommit=True)
        pid = victim.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError) as raw:
            victim.execute("SELECT 1")
        victim.close()
        assert getattr(raw.value, "sqlstate", None) in (None, "57P01")
        assert transient.database(raw.value)

        engine = sa.create_engine(pg_url, pool_size=1, max_overflow=0)
        try:
            with engine.connect() as conn:
                pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(sa_exc.DBAPIError) as wrapped, engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            assert wrapped.value.connection_invalidated
            assert transient.database(wrapped.value)
        finally:
            engine.dispose()


def test_permanent_errors_are_not_transient(pg_url: str, table: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        with pytest.raises(sa_exc.IntegrityError) as duplicate, engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO {table} VALUES (1, 0)"))
        assert not transient.database(duplicate.value)
        with pytest.raises(sa_exc.ProgrammingError) as syntax, engine.begin() as conn:
            conn.execute(sa.text("SELEC 1"))
        assert not transient.database(syntax.value)
    finally:
        engine.dispose()


def test_policy_retries_a_serialization_failure_to_success(pg_url: str, table: str) -> None:
    engine = sa.create_engine(pg_url, isolation_level="REPEATABLE READ")
    meddler = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    attempts = 0
    policy = RetryPolicy(attempts=3, backoff=Backoff.none(), retry_on=transient.database)

    @policy
    def add_ten() -> int:
        nonlocal attempts
        attempts += 1
        with engine.begin() as conn:
            conn.execute(sa.text(f"SELECT v FROM {table} WHERE id = 1")).scalar_one()
            if attempts == 1:  # someone else commits in between: the update must fail
                with meddler.connect() as other:
                    other.execute(sa.text(f"UPDATE {table} SET v = v + 1 WHERE id = 1"))
            return int(
                conn.execute(
                    sa.text(f"UPDATE {table} SET v = v + 10 WHERE id = 1 RETURNING v")
                ).scalar_one()
            )

    try:
        assert add_ten() == 11
        assert attempts == 2
    finally:
        engine.dispose()
        meddler.dispose()


def test_stopped_server_is_transient_and_retry_recovers(pg_cluster_factory: Any) -> None:
    cluster = pg_cluster_factory(replicas=0)
    node = cluster.primary
    engine = sa.create_engine(node.url, pool_pre_ping=False)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        node.stop()
        with pytest.raises(sa_exc.DBAPIError) as down, engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert transient.database(down.value)
        attempts = 0

        def restart_on_first_retry(event: object) -> None:
            if getattr(event, "kind", "") == "retry.scheduled" and not node.running:
                node.start()

        def select_one() -> int:
            nonlocal attempts
            attempts += 1
            with engine.connect() as conn:
                return int(conn.execute(sa.text("SELECT 1")).scalar_one())

        policy = RetryPolicy(
            attempts=10,
            backoff=Backoff.constant(0.2),
            retry_on=transient.database,
            deadline=120,
            hooks=[restart_on_first_retry],
        )
        assert policy.call(select_one) == 1  # first attempt: server down; then restarted
        assert attempts >= 2
    finally:
        engine.dispose()


def test_shutting_down_server_57p03_is_transient_and_retry_recovers(
    pg_cluster_factory: Any,
) -> None:
    """A smart shutdown waits for open sessions and refuses new ones with 57P03."""
    cluster = pg_cluster_factory(replicas=0)
    node = cluster.primary
    holder = node.connect()  # keeps the smart shutdown waiting
    stopper = threading.Thread(target=node.stop, args=("smart",))
    stopper.start()
    try:
        refused: psycopg.OperationalError | None = None
        deadline = time.monotonic() + 20
        while refused is None and time.monotonic() < deadline:
            try:
                node.connect(connect_timeout=2).close()
            except psycopg.OperationalError as exc:
                refused = exc
            else:
                time.sleep(0.05)  # the shutdown request has not arrived yet
        assert refused is not None, "the server never refused a connection"
        assert "shutting down" in str(refused)
        # 57P03 cannot_connect_now; libpq reports it at connect time without the code.
        assert refused.sqlstate in (None, "57P03")
        assert transient.database(refused)

        def restart(event: object) -> None:
            if getattr(event, "kind", "") == "retry.scheduled" and stopper.is_alive():
                holder.close()  # the last session ends: the smart shutdown completes
                stopper.join(timeout=60)
                node.start()

        policy = RetryPolicy(
            attempts=5,
            backoff=Backoff.constant(0.1),
            retry_on=transient.database,
            hooks=[restart],
        )
        attempts = 0

        def select_one() -> int:
            nonlocal attempts
            attempts += 1
            with node.connect(connect_timeout=5) as conn:
                row = conn.execute("SELECT 1").fetchone()
                return -1 if row is None else int(row[0])

        assert policy.call(select_one) == 1
        assert attempts == 2  # refused with 57P03, then served by the restarted server
    finally:
        holder.close()
        stopper.join(timeout=60)
