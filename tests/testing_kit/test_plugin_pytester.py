"""A user installs scalekit and gets its fixtures: a fresh pytest run on a user's tests.

The run is a new process in an empty folder (no conftest.py of this project):
the fixtures come from the ``pytest11`` entry point alone. The user's test of
a failure path passes against the right code and fails against the bug it
guards against.
"""

from __future__ import annotations

import pytest

from scalekit.testing.servers import find_pg_binaries

pytest_plugins = ["pytester"]

APP = '''
"""The user's code."""
import sqlalchemy as sa

from scalekit.errors import CircuitOpenError


def profile(cache, user_id, load):
    return cache.get_or_set(f"profile:{user_id}", lambda: load(user_id))


def login_allowed(limiter, user):
    return limiter.hit(f"login:{user}", "3/minute").allowed


def charge(breaker, gateway):
    """Charge through the gateway; queue the charge while the gateway's circuit is open."""
    {charge_body}


def count_notes(pool):
    with pool.connect(readonly=True) as conn:
        return conn.scalar(sa.text("SELECT count(*) FROM notes"))
'''

RIGHT = """try:
        return breaker.call(gateway)
    except CircuitOpenError:
        return "queued"
"""
BUGGY = """return breaker.call(gateway)  # the bug: an open circuit reaches the caller
"""

USER_TESTS = """
import sqlalchemy as sa

from scalekit.testing import force_breaker, mark_node_down

import app


def test_profile_is_loaded_once(cache):
    loads = []
    load = lambda user_id: loads.append(user_id) or {"id": user_id}
    assert app.profile(cache, 7, load) == {"id": 7}
    assert app.profile(cache, 7, load) == {"id": 7}
    assert loads == [7]


def test_fourth_login_in_a_minute_is_refused(limiter):
    assert [app.login_allowed(limiter, "ann") for _ in range(4)] == [True, True, True, False]


def test_charge_is_queued_while_the_circuit_is_open(breaker):
    assert app.charge(breaker, lambda: "charged") == "charged"
    force_breaker(breaker, "open")
    assert app.charge(breaker, lambda: "charged") == "queued"


def test_reads_survive_a_replica_that_is_down(routing_pool, sqlite_cluster):
    with routing_pool.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO notes VALUES (1)")
    routing_pool.reset_context()
    assert app.count_notes(routing_pool) == 1
    mark_node_down(routing_pool, "replica1")
    sqlite_cluster.clear()
    assert app.count_notes(routing_pool) == 1
    assert sqlite_cluster.nodes_used() == ["primary"]


def test_on_a_real_primary_and_replicas(pg_cluster):
    engine = sa.create_engine(pg_cluster.url)
    replica = sa.create_engine(pg_cluster.replica_urls[0])
    try:
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT pg_is_in_recovery()")) is False
        with replica.connect() as conn:
            assert conn.scalar(sa.text("SELECT pg_is_in_recovery()")) is True
        assert len(pg_cluster.replicas) == 2
    finally:
        engine.dispose()
        replica.dispose()
"""

HAS_PG = find_pg_binaries() is not None


def _run(pytester: pytest.Pytester, charge_body: str) -> pytest.RunResult:
    pytester.makepyfile(app=APP.replace("{charge_body}", charge_body))
    pytester.makepyfile(test_user=USER_TESTS)
    # A new interpreter: only what installing scalekit registers is loaded.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=300)


@pytest.mark.slow
def test_a_users_tests_get_the_fixtures_and_pass(pytester: pytest.Pytester) -> None:
    result = _run(pytester, RIGHT)
    result.assert_outcomes(passed=5 if HAS_PG else 4, skipped=0 if HAS_PG else 1)


@pytest.mark.slow
def test_the_users_failure_test_catches_the_bug(pytester: pytest.Pytester) -> None:
    result = _run(pytester, BUGGY)
    result.assert_outcomes(failed=1, passed=4 if HAS_PG else 3, skipped=0 if HAS_PG else 1)
    result.stdout.fnmatch_lines(["*test_charge_is_queued_while_the_circuit_is_open*"])
    result.stdout.fnmatch_lines(["*CircuitOpenError*"])
