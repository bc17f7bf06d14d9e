"""What both pagination shells share without I/O: the executor checks, the plan, errors.

:func:`build_plan` builds (or reuses) the :class:`~scalekit.pagination._keyset.KeysetPlan`
for a select on the executor's dialect and checks that the executor is one
the calling shell can run; :func:`prepared_statement_lost` turns psycopg's
lost prepared statement behind PgBouncer into one clear
:class:`~scalekit.errors.ConfigurationError`. The shells (``_async.py``, and
``_sync.py`` generated from it) only run the plan's statements.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scalekit.errors import ConfigurationError
from scalekit.pagination._plan_cache import cached_plan

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect
    from sqlalchemy.sql import Select

    from scalekit.pagination._cursor import CursorCodec
    from scalekit.pagination._keyset import KeysetPlan

__all__ = ["build_plan", "prepared_statement_lost"]


def _dialect(executor: Any) -> Dialect | None:
    dialect = getattr(executor, "dialect", None)
    if dialect is None and hasattr(executor, "get_bind"):
        try:
            dialect = executor.get_bind().dialect
        except Exception:  # an unbound session: fall back to the portable SQL shape
            dialect = None
    return dialect


@functools.cache
def _executor_types(is_async: bool) -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(accepted executors, connection types) for one shell; imported once, lazily."""
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session
    from sqlalchemy.orm import Session, scoped_session

    if is_async:
        return (AsyncSession, AsyncConnection, async_scoped_session), (AsyncConnection,)
    return (Session, Connection, scoped_session), (Connection,)


def _check_executor(executor: Any, plan: KeysetPlan, *, is_async: bool) -> None:
    allowed, connections = _executor_types(is_async)
    if not isinstance(executor, allowed):
        names = "AsyncSession or AsyncConnection" if is_async else "Session or Connection"
        raise ConfigurationError(
            f"expected a SQLAlchemy {names}, got {type(executor).__name__}",
            parameter="session_or_connection",
        )
    if plan.needs_session and isinstance(executor, connections):
        raise ConfigurationError(
            "a select of ORM entities must run on a Session, not a Connection",
            parameter="session_or_connection",
        )


def build_plan(
    executor: Any,
    select: Select[Any],
    order_by: Sequence[Any] | None,
    *,
    limit: int,
    codec: CursorCodec | None,
    bind_filters: bool,
    row_values: bool | None,
    is_async: bool,
) -> KeysetPlan:
    """Build the plan for ``select`` on ``executor``'s dialect and check the executor.

    Raises:
        ConfigurationError: what :class:`KeysetPlan` raises, or ``executor`` is
            not a Session/Connection of the caller's colour, or it is a
            Connection and the select needs a Session (ORM entities).
    """
    plan = cached_plan(
        select,
        order_by,
        limit=limit,
        codec=codec,
        dialect=_dialect(executor),
        row_values=row_values,
        bind_filters=bind_filters,
    )
    _check_executor(executor, plan, is_async=is_async)
    return plan


#: SQLSTATEs of a prepared statement the server does not hold (26000,
#: invalid_sql_statement_name) or already holds under that name (42P05,
#: duplicate_prepared_statement).
_LOST_PREPARED_STATES = frozenset({"26000", "42P05"})
#: psycopg 3 names its automatic prepared statements ``_pg3_0``, ``_pg3_1``...
_PSYCOPG_PREPARED_NAME = '"_pg3_'

PGBOUNCER_REMEDY = 'connect_args={"prepare_threshold": None}'


def prepared_statement_lost(error: BaseException) -> ConfigurationError | None:
    """The clear error for psycopg's prepared statement lost behind PgBouncer, or ``None``.

    psycopg prepares a statement on the server after it ran five times on one
    connection (``prepare_threshold=5``, what ``create_engine(url)`` uses).
    Pagination runs the same page query again and again, so it reaches that
    threshold first. Behind PgBouncer in transaction pooling mode (before
    1.21, or without ``max_prepared_statements``) the next transaction runs on
    another server connection, where the statement does not exist (SQLSTATE
    26000) or another client's has the same name (42P05). ``error`` is the
    ``sqlalchemy.exc.DBAPIError`` a page raised; anything else gives ``None``.
    """
    original = getattr(error, "orig", None)
    if getattr(original, "sqlstate", None) not in _LOST_PREPARED_STATES:
        return None
    if _PSYCOPG_PREPARED_NAME not in str(original):
        return None
    return ConfigurationError(
        "psycopg prepared the page query on one server connection and the next transaction "
        "ran on another (PgBouncer in transaction pooling mode before 1.21, or without "
        "max_prepared_statements): create the engine with "
        f"{PGBOUNCER_REMEDY} (server said: {str(original).strip()})",
        parameter="session_or_connection",
    )
