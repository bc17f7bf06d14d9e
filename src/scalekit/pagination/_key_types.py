"""What a cursor may carry for each SQL type of a sort key, and how it is checked.

Every decoded cursor value is checked against its key's type before it
reaches SQL, so a forged or stale cursor is an :class:`InvalidCursor`, never
a SQL error. Pure.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import struct
import uuid
from collections.abc import Callable
from typing import Any

from scalekit.errors import ConfigurationError
from scalekit.pagination._expressions import _unlabel

__all__: list[str] = []

#: Untyped functions (``func.lower(col)`` has no SQL type in SQLAlchemy) whose
#: result type is known, so their cursor values can be checked and bound.
_TEXT_FUNCTIONS = frozenset(
    {"lower", "upper", "trim", "ltrim", "rtrim", "btrim", "initcap", "md5", "replace"}
    | {"substr", "substring", "left", "right", "lpad", "rpad", "reverse", "translate"}
)
_LENGTH_FUNCTIONS = frozenset({"length", "char_length", "character_length", "octet_length"})
_ROUNDING_FUNCTIONS = frozenset({"round", "floor", "ceil", "ceiling", "trunc", "sign"})
_ARGUMENT_TYPED_FUNCTIONS = frozenset({"abs", "nullif", "greatest", "least"})
_FLOAT4 = struct.Struct(">f")
_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_MAX_FLOAT_EXPONENT = 300  # Decimals bound where a double is compared stay in its range


def _sql_type(expression: Any) -> Any:
    """The SQL type of ``expression``, inferred for known untyped functions (else NullType)."""
    from sqlalchemy import types
    from sqlalchemy.sql.functions import FunctionElement

    sql_type = expression.type
    if not isinstance(sql_type, types.NullType):
        return sql_type
    inner = _unlabel(expression)
    if not isinstance(inner, FunctionElement):
        return sql_type
    name = str(getattr(inner, "name", "")).lower()
    arguments = [_sql_type(argument) for argument in inner.clauses]
    typed = [a for a in arguments if not isinstance(a, types.NullType)]
    if name in _TEXT_FUNCTIONS:
        return types.String()
    if name in _LENGTH_FUNCTIONS:
        return types.Integer()
    if name in _ROUNDING_FUNCTIONS:
        # The result's type follows the argument's (numeric or double): a float
        # checker accepts both and never binds a value a double cannot hold.
        return types.Float()
    if name == "date":
        return types.Date()
    if name == "date_trunc":
        last = typed[-1] if typed else None
        return last if isinstance(last, (types.DateTime, types.Interval)) else types.DateTime()
    if name in _ARGUMENT_TYPED_FUNCTIONS and typed:
        return typed[0]
    return sql_type


def _cursor_type(
    expression: Any, name: str, dialect_name: str | None
) -> tuple[Any, Callable[[object], bool], Callable[[object], object] | None]:
    """(bind type, value checker, row-value converter) of a sort key.

    Every cursor value is checked against its key's type before it reaches
    SQL, so a key whose values cannot be checked, or carried in a cursor, is
    refused here, when the plan is built, and not after a first page ran.
    Raises :class:`ConfigurationError`.
    """
    from sqlalchemy import types

    sql_type = _sql_type(expression)
    if isinstance(sql_type, types.NullType):
        raise ConfigurationError(
            f"sort key {name} has no SQL type, so a cursor value for it cannot be"
            " checked before it reaches SQL; give it one, e.g."
            " func.my_function(column, type_=String) or type_coerce(expression, Integer)",
            parameter="order_by",
        )
    checker, carry = _value_checker(sql_type, dialect_name)
    if checker is None:
        raise ConfigurationError(
            f"sort key {name} is of type {sql_type!r}, which a cursor cannot carry"
            " (supported: booleans, numbers, strings, enums, bytes, dates, times,"
            " intervals and UUIDs); sort on a cast of it, e.g. cast(column, String)",
            parameter="order_by",
        )
    return sql_type, checker, carry


def _value_checker(
    sql_type: Any, dialect_name: str | None
) -> tuple[Callable[[object], bool] | None, Callable[[object], object] | None]:
    """A predicate telling whether a decoded cursor value fits a key's SQL type.

    Also a converter from a row value to what the cursor carries, for types
    whose Python values a cursor cannot hold as they are (enum members become
    their labels). ``(None, None)`` for types a cursor cannot carry.

    Integers are held to the column's width on PostgreSQL (its driver casts
    parameters to the column type, so an oversized value is a SQL error) and
    to 64 bits elsewhere (SQLite stores any INTEGER column in 64 bits).
    """
    from sqlalchemy import types
    from sqlalchemy.sql import sqltypes

    impl = getattr(sql_type, "impl_instance", None) or sql_type
    if isinstance(impl, types.Boolean):
        return (lambda v: isinstance(v, bool)), None
    if isinstance(impl, types.Integer):
        bound = 2**63
        if dialect_name != "postgresql":
            pass
        elif isinstance(impl, types.SmallInteger):
            bound = 2**15
        elif not isinstance(impl, types.BigInteger):
            bound = 2**31
        return (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and -bound <= v < bound
        ), None
    if isinstance(impl, types.Float):
        if dialect_name == "postgresql" and _is_real(impl):
            return _real_fits, None
        return _float_fits, None
    if isinstance(impl, types.Numeric):
        return _number_fits, None
    if isinstance(impl, types.DateTime):
        return (lambda v: isinstance(v, dt.datetime)), None
    if isinstance(impl, types.Date):
        return (lambda v: isinstance(v, dt.date) and not isinstance(v, dt.datetime)), None
    if isinstance(impl, types.Time):
        if getattr(impl, "timezone", False):
            return None, None  # a cursor carries no time-of-day with a zone
        return (lambda v: isinstance(v, dt.time)), None
    # PostgreSQL's INTERVAL is not an Interval subclass; both share this base.
    if isinstance(impl, getattr(sqltypes, "_AbstractInterval", types.Interval)):
        return (lambda v: isinstance(v, dt.timedelta)), None
    if isinstance(impl, types.Uuid):
        if getattr(impl, "as_uuid", True):
            return (lambda v: isinstance(v, uuid.UUID)), None
        return _uuid_text, None
    if isinstance(impl, types.Enum):
        return _enum_checker(impl)
    if isinstance(impl, types.String):
        # NUL cannot be stored in a PostgreSQL text value; a cursor holding one is forged.
        return (lambda v: isinstance(v, str) and "\x00" not in v), None
    if isinstance(impl, types.LargeBinary):
        return (lambda v: isinstance(v, bytes)), None
    return None, None


def _enum_checker(
    impl: Any,
) -> tuple[Callable[[object], bool] | None, Callable[[object], object] | None]:
    """A cursor of an enum key carries the label stored in the database."""
    labels = frozenset(label for label in impl.enums if isinstance(label, str))
    if not labels:
        return None, None  # no labels declared: nothing to check values against
    lookup: dict[Any, Any] = dict(getattr(impl, "_valid_lookup", None) or {})

    def carry(value: object) -> object:
        try:
            return lookup.get(value, value)
        except TypeError:  # unhashable: left as is, the codec refuses it clearly
            return value

    return (lambda v: isinstance(v, str) and v in labels), carry if lookup else None


def _is_real(sql_type: Any) -> bool:
    """A 4-byte float (PostgreSQL ``real``, also what ``FLOAT(p)`` with p <= 24 creates)."""
    from sqlalchemy import types

    impl = getattr(sql_type, "impl_instance", None) or sql_type
    if isinstance(impl, types.REAL):
        return True
    precision = getattr(impl, "precision", None)
    return (
        isinstance(impl, types.Float)
        and not isinstance(impl, types.Double)
        and isinstance(precision, int)
        and precision <= 24
    )


def _real_fits(value: object) -> bool:
    """A number PostgreSQL can cast to ``real`` without an overflow or underflow error."""
    if not _float_fits(value):
        return False
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or number == 0:
        return True
    try:
        (single,) = _FLOAT4.unpack(_FLOAT4.pack(number))
    except OverflowError:
        return False
    return bool(single != 0)  # a non-zero value that rounds to 0 is an underflow error


def _uuid_text(value: object) -> bool:
    # The canonical form the driver returns; uuid.UUID() also takes forms
    # PostgreSQL refuses (leading whitespace, "urn:uuid:").
    return isinstance(value, str) and _UUID_TEXT.fullmatch(value) is not None


def _float_fits(value: object) -> bool:
    """A number a double precision key can be compared with, whatever the driver sends.

    Floats (NaN and infinities included), 64-bit ints, and decimals within a
    double's range (PostgreSQL casts a numeric parameter to double to compare).
    """
    if isinstance(value, float):
        return True
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return not value.is_snan()
        return value.is_zero() or abs(value.adjusted()) <= _MAX_FLOAT_EXPONENT
    return _number_fits(value) and isinstance(value, int)


def _number_fits(value: object) -> bool:
    """A number a numeric column could hold, so binding it can never be a SQL error.

    Bounds: 64-bit ints (SQLite cannot bind more), and decimals within
    PostgreSQL's numeric range (131072 digits before the point, 16383 after);
    NaN and infinities are legitimate values of float and numeric columns.
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return True
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return not value.is_snan()
        return value.adjusted() < 131072 and value.as_tuple().exponent >= -16383  # type: ignore[operator]
    return False
