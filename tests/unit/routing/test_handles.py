"""The pool's own handles on the engines it wraps (issue 20), on SQLite."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from scalekit.routing import RoutingPool

EVENTS = ("before_execute", "after_cursor_execute", "commit", "rollback")


def engines(tmp_path: Path) -> tuple[sa.Engine, sa.Engine]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    primary, replica = sa.create_engine(url), sa.create_engine(url)
    with primary.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id integer primary key)")
    return primary, replica


def test_the_given_engines_get_no_listener(tmp_path: Path) -> None:
    primary, replica = engines(tmp_path)
    pool = RoutingPool(primary=primary, replicas=[replica], check_interval=None)
    try:
        assert pool.nodes == {"primary": primary, "replica1": replica}
        for engine in (primary, replica):
            assert all(len(getattr(engine.dispatch, name)) == 0 for name in EVENTS)
        for node, engine in pool.nodes.items():
            handle = pool.router.engines[node]
            assert handle is not engine and handle.pool is engine.pool
            assert len(handle.dispatch.commit) > 0
    finally:
        pool.close()


def test_only_writes_through_the_pool_leave_a_pending_write(tmp_path: Path) -> None:
    primary, replica = engines(tmp_path)
    pool = RoutingPool(primary=primary, replicas=[replica], check_interval=None)
    try:
        with primary.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert pool.router.var.get().pending_write_at is None
        with pool.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        assert pool.router.var.get().pending_write_at is not None
    finally:
        pool.close()


def test_handles_follow_a_disposed_engine_pool(tmp_path: Path) -> None:
    # The fork recipe (engine.dispose(close=False) in the child) replaces the
    # engine's connection pool: the pool's handles use the new one.
    primary, replica = engines(tmp_path)
    pool = RoutingPool(primary=primary, replicas=[replica], check_interval=None)
    try:
        replica.dispose(close=False)
        assert pool.router.engines["replica1"].pool is replica.pool
        with pool.connect(readonly=True) as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0
    finally:
        pool.close()
