"""The ready-made transient rules, on the libraries' own exception classes."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

from scalekit.errors import ConfigurationError
from scalekit.retry import TransientRule, transient


def test_importing_the_rules_imports_no_driver() -> None:
    code = textwrap.dedent(
        """
        import sys
        from scalekit.retry import RetryPolicy, transient
        RetryPolicy(retry_on=transient.database | transient.redis | transient.http)
        assert transient.database(ValueError()) is False
        assert transient.http(OSError()) is False
        loaded = [m for m in ("psycopg", "psycopg2", "asyncpg", "sqlalchemy", "redis", "httpx",
                              "requests", "tenacity") if m in sys.modules]
        print(",".join(loaded))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


# --- PostgreSQL ------------------------------------------------------------------------------


def test_psycopg_errors() -> None:
    psycopg = importlib.import_module("psycopg")
    errors = psycopg.errors
    assert transient.database(errors.SerializationFailure())  # 40001
    assert transient.database(errors.DeadlockDetected())  # 40P01
    assert transient.database(errors.AdminShutdown())  # 57P01
    assert transient.database(errors.CannotConnectNow())  # 57P03
    assert transient.database(psycopg.OperationalError("connection refused"))  # no SQLSTATE
    assert not transient.database(errors.UniqueViolation())
    assert not transient.database(errors.SyntaxError())
    assert not transient.database(errors.QueryCanceled())  # statement_timeout: not by default
    assert not transient.database(psycopg.ProgrammingError("bad"))


def test_sqlalchemy_wrapped_errors() -> None:
    psycopg = importlib.import_module("psycopg")
    sa_exc = importlib.import_module("sqlalchemy.exc")
    serialization = sa_exc.OperationalError("SELECT 1", {}, psycopg.errors.SerializationFailure())
    assert transient.database(serialization)
    unique = sa_exc.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation())
    assert not transient.database(unique)
    invalidated = sa_exc.DBAPIError(
        "SELECT 1", {}, psycopg.errors.UniqueViolation(), connection_invalidated=True
    )
    assert transient.database(invalidated)
    assert transient.database(sa_exc.DisconnectionError("gone"))
    assert not transient.database(sa_exc.NoResultFound())


def test_custom_sqlstates() -> None:
    psycopg = importlib.import_module("psycopg")
    rule = transient.sqlstate("55P03")  # lock_not_available
    assert rule(psycopg.errors.LockNotAvailable())
    assert not rule(psycopg.errors.SerializationFailure())
    assert rule(psycopg.OperationalError("connection reset"))
    with pytest.raises(ConfigurationError) as info:
        transient.sqlstate("4001")
    assert info.value.parameter == "codes"


# --- Redis -----------------------------------------------------------------------------------


def test_redis_errors() -> None:
    exceptions = importlib.import_module("redis.exceptions")
    for retryable in (
        exceptions.ConnectionError("reset"),
        exceptions.TimeoutError("slow"),
        exceptions.BusyLoadingError("loading"),
        exceptions.TryAgainError("TRYAGAIN"),
        exceptions.ClusterDownError("CLUSTERDOWN"),
        exceptions.MasterDownError("MASTERDOWN"),
        exceptions.ReadOnlyError("READONLY"),
    ):
        assert transient.redis(retryable), retryable
    for permanent in (
        exceptions.AuthenticationError("bad password"),
        exceptions.ResponseError("WRONGTYPE"),
        exceptions.DataError("bad"),
        exceptions.MovedError("3999 127.0.0.1:6381"),
        ConnectionError("builtin: not redis's"),
    ):
        assert not transient.redis(permanent), permanent


# --- HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(429, True), (502, True), (503, True), (504, True), (500, False), (404, False)],
)
def test_httpx_status_errors(status: int, retryable: bool) -> None:
    httpx = importlib.import_module("httpx")
    request = httpx.Request("GET", "https://example.test/")
    response = httpx.Response(status, request=request, headers={"Retry-After": "2"})
    error = httpx.HTTPStatusError("status", request=request, response=response)
    assert transient.http(error) is retryable


def test_httpx_connect_errors() -> None:
    httpx = importlib.import_module("httpx")
    assert transient.http(httpx.ConnectError("refused"))
    assert transient.http(httpx.ConnectTimeout("slow"))
    assert not transient.http(httpx.ReadTimeout("maybe processed"))


def test_requests_status_errors() -> None:
    requests = importlib.import_module("requests")
    response = requests.Response()
    response.status_code = 503
    assert transient.http(requests.HTTPError(response=response))
    response.status_code = 400
    assert not transient.http(requests.HTTPError(response=response))
    assert transient.http(requests.exceptions.ConnectTimeout())


def test_requests_refused_connection_is_transient_but_a_reset_is_not() -> None:
    requests = importlib.import_module("requests")
    urllib3_exceptions = importlib.import_module("urllib3.exceptions")
    refused = urllib3_exceptions.NewConnectionError(None, "Connection refused")
    wrapped = urllib3_exceptions.MaxRetryError(None, "/", reason=refused)
    assert transient.http(requests.ConnectionError(wrapped))
    assert transient.http(requests.ConnectionError(refused))
    reset = urllib3_exceptions.ProtocolError("Connection aborted.", ConnectionResetError())
    assert not transient.http(requests.ConnectionError(reset))
    assert not transient.http(requests.ConnectionError())
    assert not transient.http(requests.ReadTimeout())


def test_custom_statuses() -> None:
    httpx = importlib.import_module("httpx")
    request = httpx.Request("GET", "https://example.test/")
    error = httpx.HTTPStatusError(
        "status", request=request, response=httpx.Response(500, request=request)
    )
    assert transient.http_status(500)(error)
    with pytest.raises(ConfigurationError) as info:
        transient.http_status(99)
    assert info.value.parameter == "statuses"


# --- combining -------------------------------------------------------------------------------


def test_rules_combine_with_classes_tuples_and_predicates() -> None:
    rule = transient.redis | TimeoutError | (KeyError, IndexError) | (lambda e: "flaky" in str(e))
    assert isinstance(rule, TransientRule)
    assert rule(TimeoutError()) and rule(KeyError()) and rule(ValueError("flaky"))
    assert not rule(ValueError("solid"))
    left = OSError | transient.http  # a class on the left works too
    assert isinstance(left, TransientRule) and left(OSError())
    assert "transient.redis" in repr(rule)


def test_combining_with_junk_is_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        transient.redis | "ConnectionError"  # type: ignore[operator]
    assert info.value.parameter == "retry_on"
