"""What both shells share: which database errors become the PgBouncer ConfigurationError."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from scalekit.errors import ConfigurationError
from scalekit.pagination._base import prepared_statement_lost


class _DriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _wrapped(message: str, sqlstate: str | None) -> sa.exc.DBAPIError:
    return sa.exc.ProgrammingError("SELECT 1", {}, _DriverError(message, sqlstate))


@pytest.mark.parametrize(
    ("message", "sqlstate"),
    [
        ('prepared statement "_pg3_0" does not exist', "26000"),
        ('prepared statement "_pg3_3" already exists', "42P05"),
    ],
)
def test_psycopg_lost_prepared_statement_becomes_a_configuration_error(
    message: str, sqlstate: str
) -> None:
    clear = prepared_statement_lost(_wrapped(message, sqlstate))
    assert isinstance(clear, ConfigurationError)
    assert 'connect_args={"prepare_threshold": None}' in str(clear)
    assert message in str(clear)


@pytest.mark.parametrize(
    "error",
    [
        _wrapped('prepared statement "mine" does not exist', "26000"),  # the app's own PREPARE
        _wrapped('relation "orders" does not exist', "42P01"),
        _wrapped("no sqlstate", None),
        ValueError('prepared statement "_pg3_0" does not exist'),
    ],
)
def test_other_errors_pass_through(error: BaseException) -> None:
    assert prepared_statement_lost(error) is None
