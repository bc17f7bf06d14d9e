"""What is worth retrying: ready-made rules for PostgreSQL, Redis and HTTP errors.

A rule is a predicate on an exception (:class:`TransientRule`); rules combine
with ``|`` (with each other, with exception classes, with plain predicates)::

    retry_on = transient.database | transient.redis | MyFlakyError

The rules never import psycopg, SQLAlchemy, redis-py, httpx or requests.
They look the library up in ``sys.modules``: an exception of a library can
only exist once that library is imported, so a library that is not imported
cannot have raised the error being classified.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Final

from scalekit.errors import ConfigurationError

__all__ = [
    "RetryOn",
    "TransientRule",
    "as_rule",
    "transient",
]

RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
"""What ``retry_on`` accepts: an exception class, a tuple of them, a predicate, or a rule."""


class TransientRule:
    """A named predicate on exceptions: ``rule(exc)`` is ``True`` when ``exc`` is worth retrying.

    Combine rules with ``|``; the right-hand side may be a rule, an exception
    class, a tuple of classes, or a predicate ``(exc) -> bool``.

    >>> rule = transient.redis | TimeoutError
    >>> rule(TimeoutError())
    True
    >>> rule(ValueError())
    False
    """

    __slots__ = ("_name", "_predicate")

    def __init__(self, predicate: Callable[[BaseException], bool], name: str) -> None:
        self._predicate = predicate
        self._name = name

    def __call__(self, exc: BaseException) -> bool:
        return bool(self._predicate(exc))

    def __or__(self, other: RetryOn) -> TransientRule:
        right = as_rule(other, parameter="retry_on")
        left = self._predicate
        right_predicate = right._predicate

        def either(exc: BaseException) -> bool:
            return bool(left(exc)) or bool(right_predicate(exc))

        return TransientRule(either, f"{self._name} | {right._name}")

    def __ror__(self, other: RetryOn) -> TransientRule:
        return as_rule(other, parameter="retry_on") | self

    def __repr__(self) -> str:
        return self._name


def _type_name(types: tuple[type[BaseException], ...]) -> str:
    names = [t.__qualname__ for t in types]
    return names[0] if len(names) == 1 else f"({', '.join(names)})"


def as_rule(retry_on: object, *, parameter: str = "retry_on") -> TransientRule:
    """Turn anything ``retry_on`` accepts into a :class:`TransientRule`.

    Raises:
        ConfigurationError: ``retry_on`` is none of: a rule, an exception
            class, a non-empty tuple of exception classes, a callable.
    """
    if isinstance(retry_on, TransientRule):
        return retry_on
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        exc_type = retry_on
        return TransientRule(lambda exc: isinstance(exc, exc_type), _type_name((exc_type,)))
    if isinstance(retry_on, tuple):
        if not retry_on or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            raise ConfigurationError(
                f"{parameter} tuple must hold exception classes, got {retry_on!r}",
                parameter=parameter,
            )
        types: tuple[type[BaseException], ...] = retry_on
        return TransientRule(lambda exc: isinstance(exc, types), _type_name(types))
    if callable(retry_on):
        predicate: Callable[[BaseException], bool] = retry_on
        name = getattr(retry_on, "__qualname__", None) or repr(retry_on)
        return TransientRule(predicate, str(name))
    raise ConfigurationError(
        f"{parameter} must be an exception class, a tuple of them, a predicate or a "
        f"transient rule, got {retry_on!r}",
        parameter=parameter,
    )


# --- PostgreSQL ------------------------------------------------------------------------

#: SQLSTATEs that mean "try again": connection exceptions (class 08), serialization
#: failure, deadlock, admin/crash shutdown, cannot connect now.
DATABASE_SQLSTATES: Final = frozenset(
    {
        "08000",  # connection_exception
        "08001",  # sqlclient_unable_to_establish_sqlconnection
        "08003",  # connection_does_not_exist
        "08004",  # sqlserver_rejected_establishment_of_sqlconnection
        "08006",  # connection_failure
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
    }
)


def _sqlstate(exc: BaseException) -> str | None:
    # psycopg 3 and asyncpg: .sqlstate; psycopg 2: .pgcode.
    for attribute in ("sqlstate", "pgcode"):
        value = getattr(exc, attribute, None)
        if isinstance(value, str):
            return value
    return None


def _is_instance(exc: BaseException, module: str, *names: str) -> bool:
    """``isinstance(exc, module.name)`` for any name, without importing ``module``."""
    loaded = sys.modules.get(module)
    if loaded is None:
        return False
    for name in names:
        cls = getattr(loaded, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _database_error(exc: BaseException, sqlstates: frozenset[str]) -> bool:
    module = type(exc).__module__
    if module.startswith("sqlalchemy"):
        # A DBAPIError whose connection was invalidated (the pool saw a
        # disconnect) is always worth a new attempt on a fresh connection.
        if getattr(exc, "connection_invalidated", False) is True:
            return True
        if _is_instance(exc, "sqlalchemy.exc", "DisconnectionError"):
            return True
        orig = getattr(exc, "orig", None)
        return isinstance(orig, BaseException) and _database_error(orig, sqlstates)
    if module.startswith(("psycopg", "asyncpg")):
        state = _sqlstate(exc)
        if state is not None:
            return state in sqlstates
        # libpq reports a refused, reset or closed connection as an
        # OperationalError without a SQLSTATE (the server never answered).
        if _is_instance(exc, "psycopg", "OperationalError") or _is_instance(
            exc, "psycopg2", "OperationalError", "InterfaceError"
        ):
            return True
        return _is_instance(
            exc,
            "asyncpg.exceptions",
            "ConnectionDoesNotExistError",
            "ConnectionFailureError",
            "InterfaceError",
        )
    return False


def _sqlstate_rule(codes: Iterable[str], name: str) -> TransientRule:
    wanted = frozenset(codes)
    for code in wanted:
        checked: object = code
        if not isinstance(checked, str) or len(checked) != 5:
            raise ConfigurationError(
                f"a SQLSTATE is a 5-character string, got {code!r}", parameter="codes"
            )
    return TransientRule(lambda exc: _database_error(exc, wanted), name)


# --- Redis -----------------------------------------------------------------------------

_REDIS_TRANSIENT: Final = (
    "ConnectionError",  # includes BusyLoadingError and MaxConnectionsError
    "TimeoutError",
    "TryAgainError",
    "ClusterDownError",  # includes MasterDownError
    "ReadOnlyError",  # talking to a replica that was just demoted: failover in progress
)
_REDIS_PERMANENT: Final = ("AuthenticationError", "AuthorizationError", "ExternalAuthProviderError")


def _redis_error(exc: BaseException) -> bool:
    if not type(exc).__module__.startswith("redis"):
        return False
    if _is_instance(exc, "redis.exceptions", *_REDIS_PERMANENT):
        return False
    return _is_instance(exc, "redis.exceptions", *_REDIS_TRANSIENT)


# --- HTTP ------------------------------------------------------------------------------

HTTP_STATUSES: Final = frozenset({429, 502, 503, 504})


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _http_error(exc: BaseException, statuses: frozenset[int]) -> bool:
    module = type(exc).__module__
    if module.startswith("httpx"):
        if _is_instance(exc, "httpx", "HTTPStatusError"):
            return _status_of(exc) in statuses
        # The request never reached the server: always safe to send again.
        return _is_instance(exc, "httpx", "ConnectError", "ConnectTimeout", "PoolTimeout")
    if module.startswith("requests"):
        if _is_instance(exc, "requests.exceptions", "HTTPError"):
            return _status_of(exc) in statuses
        if _is_instance(exc, "requests.exceptions", "ConnectTimeout"):
            return True
        # A refused connection is a requests ConnectionError wrapping urllib3's
        # MaxRetryError(reason=NewConnectionError): the request was never sent.
        if _is_instance(exc, "requests.exceptions", "ConnectionError") and exc.args:
            cause = exc.args[0]
            cause = getattr(cause, "reason", cause)
            return isinstance(cause, BaseException) and _is_instance(
                cause, "urllib3.exceptions", "NewConnectionError"
            )
    return False


def _status_rule(statuses: Iterable[int], name: str) -> TransientRule:
    wanted = frozenset(statuses)
    for status in wanted:
        checked: object = status
        if isinstance(checked, bool) or not isinstance(checked, int) or not 100 <= checked <= 599:
            raise ConfigurationError(
                f"an HTTP status is an int in 100..599, got {status!r}", parameter="statuses"
            )
    return TransientRule(lambda exc: _http_error(exc, wanted), name)


class _Transient:
    """The ready-made rules, as ``transient.database``, ``transient.redis``, ``transient.http``."""

    __slots__ = ()

    #: PostgreSQL through psycopg 3, psycopg 2, asyncpg or SQLAlchemy: connection
    #: errors (refused, reset, closed: no SQLSTATE or class 08), SQLAlchemy's
    #: ``connection_invalidated``, serialization failure 40001, deadlock 40P01,
    #: admin/crash shutdown 57P01/57P02, cannot-connect-now 57P03.
    database: Final = _sqlstate_rule(DATABASE_SQLSTATES, "transient.database")

    #: redis-py: ConnectionError (not authentication errors), TimeoutError,
    #: BusyLoadingError, TryAgainError, ClusterDownError/MasterDownError,
    #: ReadOnlyError (a failover in progress). MOVED/ASK redirections are
    #: followed by the cluster client itself and are not retried here.
    redis: Final = TransientRule(_redis_error, "transient.redis")

    #: httpx and requests: an error response with status 429, 502, 503 or 504
    #: (``raise_for_status()``), or a connection that was never established
    #: (httpx ConnectError/ConnectTimeout/PoolTimeout; requests ConnectTimeout, and
    #: a ConnectionError caused by a refused connection). Errors after the request
    #: was sent (read timeouts, resets) are not retried: the server may have acted.
    http: Final = _status_rule(HTTP_STATUSES, "transient.http")

    @staticmethod
    def sqlstate(*codes: str) -> TransientRule:
        """A database rule for your own SQLSTATEs (plus connection errors without one).

        >>> rule = transient.sqlstate("40001", "55P03")  # + lock_not_available

        Raises:
            ConfigurationError: a code is not a 5-character string.
        """
        return _sqlstate_rule(codes, f"transient.sqlstate{codes!r}")

    @staticmethod
    def http_status(*statuses: int) -> TransientRule:
        """An HTTP rule for your own status codes (plus connect errors).

        >>> rule = transient.http_status(429, 503)

        Raises:
            ConfigurationError: a status is not an int in 100..599.
        """
        return _status_rule(statuses, f"transient.http_status{statuses!r}")

    def __repr__(self) -> str:
        return "transient"


transient: Final = _Transient()
"""The ready-made rules: ``transient.database``, ``transient.redis``, ``transient.http``,
``transient.sqlstate(...)``, ``transient.http_status(...)``."""
