"""Keyset plan: from a SELECT and an order to the seek statement of each page.

Theory of operation
-------------------

A page is "the first ``limit`` rows strictly after (or before) a position in a
total order". :class:`KeysetPlan` is built once per ``(select, order_by)``
and holds everything that does not depend on the cursor:

1. **The sort keys.** Each ``order_by`` item (a column, an ORM attribute, a
   labelled expression, ``.desc()``, ``.nulls_first()``, a label name or a
   :class:`SortKey`) becomes a key with a direction, a NULL policy and a
   python type used to check decoded cursor values.
2. **A unique order.** A keyset seek skips or repeats rows unless the order
   is total. The plan proves uniqueness from the FROM clause: every table
   must be identified either by a unique key (primary key, or a unique
   constraint/index on NOT NULL columns) whose columns are all sort keys, or
   by equalities in join conditions or the WHERE clause that tie its unique
   key to an already identified table (``orders.customer_id = customers.id``
   identifies the customer once the order is known). Tables that stay
   unidentified get their primary key appended, in the direction of the last
   key; if a table has no usable key, :class:`ConfigurationError` is raised.
3. **NULL policy.** A key that may be NULL (a nullable column, a column of
   an outer-joined table, an expression over those) must say where NULLs sort
   (``nulls_first()``/``nulls_last()``); otherwise the build fails, because
   ``a > x`` is never true for NULL and those rows would silently vanish.
4. **Hidden keys.** Sort keys that are not among the selected columns are
   added as labelled columns and stripped from the page's items.

The seek predicate for a cursor ``v`` groups consecutive non-nullable keys of
the same direction into *runs* and compares each run as a row value, guarded
so the leading run is an index range condition::

    after(R1..Rn) = R1 > v1                                     (n = 1)
                  = R1 >= v1 AND (R1 > v1 OR after(R2..Rn))     (n > 1)

A nullable key is a run of its own and is compared with explicit ``IS NULL``
branches, chosen by whether its cursor value is NULL and where NULLs sort.
The plain form ``a > x OR (a = x AND b > y)`` is never produced: PostgreSQL
cannot use it as an index bound. Dialects without row values get the same
shape with one column per run. Every value is its own bind parameter typed
as its key (never one tuple-valued parameter), which sidesteps SQLAlchemy's
tuple-bind typing issue (sqlalchemy#8992) under psycopg 3 and asyncpg: the
server sees ``(a, b) > ($1::T_a, $2::T_b)`` with casts matching the index.

Pages before a cursor run the same seek in the reversed order and flip the
rows back. Statements are cached per (direction, NULL pattern of the cursor),
with fixed bind names, so SQLAlchemy compiles each shape once and only
rebinds values. :func:`cached_plan` reuses a plan for every select of the
same structure; for the same structure and bound values it reuses the built
statements too, so a page costs no statement building and SQLAlchemy
computes each statement's cache key once, not once per page.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import math
import re
import struct
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from scalekit.errors import ConfigurationError, InvalidCursor
from scalekit.pagination._cursor import CursorCodec, CursorValue, _is_int

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Dialect, Result
    from sqlalchemy.sql import FromClause, Select
    from typing_extensions import TypeVar as _TypeVarWithDefault

    # A bare ``Page`` means ``Page[Any]``, also under mypy --strict.
    ItemT = _TypeVarWithDefault("ItemT", default=Any)
else:
    ItemT = TypeVar("ItemT")

__all__ = ["KeysetPlan", "Page", "PreparedPage", "SortKey", "TotalMode", "cached_plan"]

TotalMode = Literal["exact", "capped", "estimate"]
"""How ``paginate(total=...)`` counts: exactly, up to a cap, or from the planner's estimate."""

_ROW_VALUE_DIALECTS = frozenset({"postgresql", "sqlite", "mysql", "mariadb", "cockroachdb"})
_NULL_PRESERVING_FUNCTIONS = frozenset(
    {
        "lower",
        "upper",
        "length",
        "char_length",
        "abs",
        "trim",
        "ltrim",
        "rtrim",
        "date_trunc",
        "date",
        "round",
        "floor",
        "ceil",
        "ceiling",
        "sign",
        "extract",
        "md5",
    }
)
_PARAM_PREFIX = "scalekit_k"
_HIDDEN_PREFIX = "_scalekit_k"


@dataclass(frozen=True, slots=True)
class SortKey:
    """A sort key with its options spelled out.

    ``expression`` is a column, ORM attribute, labelled expression or the name
    of a selected column. ``nulls`` (``"first"`` or ``"last"``) is where NULLs
    sort and is required when the key may be NULL. ``nullable`` overrides the
    inference (``nullable=False`` for an expression you know is never NULL).

    The same can be written with SQLAlchemy modifiers:
    ``Order.shipped_at.desc().nulls_last()`` is
    ``SortKey(Order.shipped_at, descending=True, nulls="last")``.
    """

    expression: Any
    descending: bool = False
    nulls: Literal["first", "last"] | None = None
    nullable: bool | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[ItemT]):
    """One page of results and the cursors around it.

    ``Page`` is generic in its items: ``paginate()`` returns ``Page[Any]``
    (whether a select gives entities or rows is not visible to a type checker),
    so annotate what you know, ``page: Page[Order] = paginate(...)``, and
    ``page.items`` is a ``list[Order]``.

    ``items`` are ORM entities when the select has a single entity, otherwise
    ``Row`` objects (hidden sort keys removed). ``next_cursor`` fetches the
    page after this one (``None`` when ``has_next`` is false);
    ``prev_cursor`` the page before it (``None`` when ``has_prev`` is false).
    ``start_cursor``/``end_cursor`` point at the first and last item, whether
    or not more rows exist (for polling a growing list). ``total`` is set
    only when a total was asked for; ``total_exact`` says whether it is exact
    (``False`` for estimates and for capped counts that hit the cap).
    """

    items: list[ItemT]
    next_cursor: str | None
    prev_cursor: str | None
    has_next: bool
    has_prev: bool
    start_cursor: str | None = None
    end_cursor: str | None = None
    total: int | None = None
    total_exact: bool = False

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ItemT]:
        return iter(self.items)


@dataclass(frozen=True, slots=True)
class _Key:
    expression: Any  # ColumnElement used in predicates and ORDER BY
    descending: bool
    nulls_last: bool  # where NULLs sort in the forward order (irrelevant if not nullable)
    nullable: bool
    checker: Callable[[object], bool]  # does a decoded cursor value fit the key's type?
    name: str  # stable description, for the fingerprint and messages
    row_index: int = -1
    sql_type: Any = None  # the type cursor values are bound as (inferred for untyped SQL)
    carry: Callable[[object], object] | None = None  # row value -> what the cursor carries

    def flipped(self) -> _Key:
        return _Key(
            self.expression,
            not self.descending,
            not self.nulls_last,
            self.nullable,
            self.checker,
            self.name,
            self.row_index,
            self.sql_type,
            self.carry,
        )


@dataclass(slots=True)
class PreparedPage:
    """The statement of one page and what is needed to turn its rows into a :class:`Page`."""

    statement: Any
    params: dict[str, Any]
    backwards: bool
    anchor: tuple[CursorValue, ...] | None
    mode: Literal["first", "after", "before", "last"]
    count_statement: Any = None
    total_mode: TotalMode | None = None
    total_cap: int = 0


def _sa() -> Any:
    import sqlalchemy

    return sqlalchemy


def _clause(item: Any) -> Any:
    from sqlalchemy.sql.elements import ClauseElement

    # isinstance first: hasattr() on a Column goes through its comparator's
    # __getattr__ and an AttributeError, which is slow on the per-page path.
    if isinstance(item, ClauseElement):
        return item
    if hasattr(item, "__clause_element__"):
        return item.__clause_element__()
    return item


def _unlabel(expression: Any) -> Any:
    from sqlalchemy.sql.elements import Label

    while isinstance(expression, Label):
        expression = expression.element
    return expression


def _base_column(expression: Any) -> Any | None:
    """The plain table column behind ``expression`` (deannotated), or None."""
    from sqlalchemy.sql.elements import ColumnClause

    expression = _unlabel(_clause(expression))
    if isinstance(expression, ColumnClause) and expression.table is not None:
        return expression._deannotate()
    return None


def _leaves(from_: Any, outer: bool, out: list[tuple[Any, bool]]) -> None:
    from sqlalchemy.sql.selectable import Join

    if isinstance(from_, Join):
        _leaves(from_.left, outer or from_.full, out)
        _leaves(from_.right, outer or from_.isouter or from_.full, out)
    else:
        deannotate = getattr(from_, "_deannotate", None)
        out.append((deannotate() if deannotate is not None else from_, outer))


def _equalities(clauses: Iterable[Any]) -> list[tuple[Any, Any]]:
    """Column = column pairs found in AND-ed join and WHERE conditions."""
    from sqlalchemy.sql import operators
    from sqlalchemy.sql.elements import BinaryExpression, BooleanClauseList, Grouping

    pairs: list[tuple[Any, Any]] = []
    stack = [c for c in clauses if c is not None]
    while stack:
        clause = stack.pop()
        if isinstance(clause, Grouping):
            stack.append(clause.element)
        elif isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
            stack.extend(clause.clauses)
        elif isinstance(clause, BinaryExpression) and clause.operator is operators.eq:
            left, right = _base_column(clause.left), _base_column(clause.right)
            if left is not None and right is not None:
                pairs.append((left, right))
    return pairs


def _join_conditions(from_: Any, out: list[Any]) -> None:
    from sqlalchemy.sql.selectable import Join

    if isinstance(from_, Join):
        out.append(from_.onclause)
        _join_conditions(from_.left, out)
        _join_conditions(from_.right, out)


def _unique_keys(leaf: Any) -> list[tuple[Any, ...]]:
    """Unique, NOT NULL column sets of a FROM element (primary key first)."""
    from sqlalchemy import Table, UniqueConstraint
    from sqlalchemy.sql.selectable import Alias

    keys: list[tuple[Any, ...]] = []
    primary = tuple(getattr(leaf, "primary_key", ()) or ())
    if primary:
        keys.append(primary)
    table = leaf.element if isinstance(leaf, Alias) else leaf
    if isinstance(table, Table):
        candidates: list[Sequence[Any]] = [
            list(c.columns) for c in table.constraints if isinstance(c, UniqueConstraint)
        ]
        candidates += [list(ix.expressions) for ix in table.indexes if ix.unique]
        for columns in candidates:
            mapped = [
                leaf.corresponding_column(c) if hasattr(c, "table") else None for c in columns
            ]
            if mapped and all(c is not None and not c.nullable for c in mapped):
                keys.append(tuple(mapped))
    return keys


def _maybe_null(expression: Any, outer_tables: set[int]) -> bool:
    """Whether ``expression`` may evaluate to NULL (conservative: True when unsure)."""
    from sqlalchemy.sql import operators
    from sqlalchemy.sql.elements import (
        BinaryExpression,
        BindParameter,
        Cast,
        ColumnClause,
        Grouping,
        Label,
        TypeCoerce,
    )
    from sqlalchemy.sql.functions import FunctionElement

    expression = _clause(expression)
    if isinstance(expression, (Label, Grouping, Cast, TypeCoerce)):
        inner = expression.element if not isinstance(expression, Cast) else expression.clause
        return _maybe_null(inner, outer_tables)
    if isinstance(expression, ColumnClause):
        if expression.table is None:
            return True
        if id(expression.table) in outer_tables:
            return True
        return bool(getattr(expression, "nullable", True))
    if isinstance(expression, BindParameter):
        return expression.value is None
    if isinstance(expression, BinaryExpression) and expression.operator in (
        operators.add,
        operators.sub,
        operators.mul,
        operators.concat_op,
    ):
        return _maybe_null(expression.left, outer_tables) or _maybe_null(
            expression.right, outer_tables
        )
    if isinstance(expression, FunctionElement):
        name = getattr(expression, "name", "").lower()
        arguments = list(expression.clauses)
        if name == "count":
            return False
        if name == "coalesce":
            return all(_maybe_null(a, outer_tables) for a in arguments)
        if name in _NULL_PRESERVING_FUNCTIONS:
            return any(_maybe_null(a, outer_tables) for a in arguments)
    return True


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


def _describe(expression: Any) -> str:
    from sqlalchemy.sql.elements import _anonymous_label

    column = _base_column(expression)
    if column is not None:
        table = column.table
        name = str(getattr(table, "name", "") or "")
        element = getattr(table, "element", None)
        if element is not None and (not name or isinstance(table.name, _anonymous_label)):
            # Anonymous alias names change between runs; cursors must not.
            name = f"{getattr(element, 'name', '') or 'subquery'}*"
        return f"{name}.{column.name}"
    try:
        return str(_unlabel(_clause(expression)))
    except Exception:  # pragma: no cover - an uncompilable expression fails later, clearly
        return type(expression).__name__


def _check_codec(codec: object) -> None:
    if codec is not None and not isinstance(codec, CursorCodec):
        raise ConfigurationError("codec must be a CursorCodec", parameter="codec")


def _order_items(order_by: object) -> list[Any] | None:
    """``order_by`` as a list of sort keys (None: the select's own ORDER BY).

    A string or a single key is refused: iterating ``"created_at"`` would
    give one key per character.
    """
    from sqlalchemy.sql.elements import ClauseElement

    if order_by is None:
        return None
    if isinstance(order_by, (str, bytes)):
        raise ConfigurationError(
            f"order_by must be a list of sort keys, not the string {order_by!r};"
            f" write order_by=[{order_by!r}]",
            parameter="order_by",
        )
    if (
        isinstance(order_by, (SortKey, ClauseElement))
        or hasattr(order_by, "__clause_element__")
        or not hasattr(order_by, "__iter__")
    ):
        raise ConfigurationError(
            f"order_by must be a list of sort keys, not a single {type(order_by).__name__};"
            " write order_by=[key, ...]",
            parameter="order_by",
        )
    return list(order_by)


def _row_values_supported(dialect: Dialect | None) -> bool:
    return dialect is not None and dialect.name in _ROW_VALUE_DIALECTS


class KeysetPlan:
    """Everything about paging one ``select`` in one order that does not depend on the cursor.

    Building the plan validates the order (raising :class:`ConfigurationError`),
    makes it unique, and prepares the base statement. The plan is pure: it
    builds statements and turns fetched rows into :class:`Page` objects, and
    the sync and async shells run the statements.
    """

    __slots__ = (
        "_base",
        "_bind_filters",
        "_codec",
        "_dialect_name",
        "_entity_scalar",
        "_fingerprint",
        "_has_entities",
        "_hidden",
        "_hidden_columns",
        "_keys",
        "_limit",
        "_order_spec",
        "_row_values",
        "_select",
        "_shapes",
        "_statements",
        "_use_having",
        "_visible",
    )

    def __init__(
        self,
        select: Select[Any],
        order_by: Sequence[Any] | None,
        *,
        limit: int,
        codec: CursorCodec | None = None,
        dialect: Dialect | None = None,
        row_values: bool | None = None,
        bind_filters: bool = False,
    ) -> None:
        from sqlalchemy.sql import Select as SelectType

        if not isinstance(select, SelectType):
            raise ConfigurationError(
                f"select must be a sqlalchemy Select, not {type(select).__name__}",
                parameter="select",
            )
        if not _is_int(limit) or limit < 1:
            raise ConfigurationError("limit must be a positive int", parameter="limit")
        if (
            getattr(select, "_limit_clause", None) is not None
            or getattr(select, "_offset_clause", None) is not None
        ):
            raise ConfigurationError(
                "the select must not have its own LIMIT or OFFSET", parameter="select"
            )
        _check_codec(codec)
        order_by = _order_items(order_by)
        self._select = select
        self._limit = limit
        self._codec = codec if codec is not None else _DEFAULT_CODEC
        self._row_values = _row_values_supported(dialect) if row_values is None else row_values
        self._dialect_name = dialect.name if dialect is not None else None
        self._bind_filters = bind_filters
        # Predicates and ORDER BY clauses per shape; shared by rebound copies.
        self._shapes: dict[tuple[bool, tuple[bool, ...] | None, bool], tuple[Any, Any]] = {}
        # Whole statements per shape; they embed this select's values, so only
        # plans of the same values share them (see cached_plan).
        self._statements: dict[tuple[bool, tuple[bool, ...] | None, bool], Any] = {}

        if order_by is None:
            order_by = list(getattr(select, "_order_by_clauses", ()))
        if not order_by:
            raise ConfigurationError(
                "order_by is required (or give the select an ORDER BY)", parameter="order_by"
            )
        froms = select.get_final_froms()
        leaves: list[tuple[Any, bool]] = []
        for from_ in froms:
            _leaves(from_, False, leaves)
        outer_tables = {id(leaf) for leaf, outer in leaves if outer}
        keys = [self._parse_key(item, outer_tables) for item in order_by]
        sources = {id(leaf) for leaf, _ in leaves}
        for key in keys:
            column = _base_column(key.expression)
            if column is not None and id(column.table) not in sources:
                # Sorting on it would add its table to FROM: a cartesian product.
                raise ConfigurationError(
                    f"sort key {key.name} belongs to a table (or alias) that is not in the"
                    " select's FROM clause; join it or sort on a selected table",
                    parameter="order_by",
                )
        group_by = list(getattr(select, "_group_by_clauses", ()))
        self._use_having = bool(group_by)
        if group_by:
            keys = self._complete_grouped(keys, group_by)
        else:
            keys = self._complete_unique(keys, leaves, froms, outer_tables)
        seen: set[int] = set()
        for key in keys:
            column = _base_column(key.expression)
            if column is not None and id(column) in seen:
                raise ConfigurationError(f"sort key {key.name} appears twice", parameter="order_by")
            seen.add(id(column))
        self._finish_build(keys, bind_filters)

    # -- building ---------------------------------------------------------------

    def _parse_key(self, item: Any, outer_tables: set[int]) -> _Key:
        from sqlalchemy.sql import operators
        from sqlalchemy.sql.elements import (
            ColumnElement,
            UnaryExpression,
            _label_reference,
            _textual_label_reference,
        )

        descending = False
        nulls: str | None = None
        nullable: bool | None = None
        if isinstance(item, SortKey):
            if item.nulls not in (None, "first", "last"):
                raise ConfigurationError(
                    f"nulls must be 'first', 'last' or None, not {item.nulls!r}",
                    parameter="order_by",
                )
            descending, nulls, nullable = bool(item.descending), item.nulls, item.nullable
            item = item.expression
        if isinstance(item, str):
            item = self._selected(item)
        expression = _clause(item)
        while True:
            if isinstance(expression, _label_reference):
                # A select's own ORDER BY wraps a label (and its .desc()) in this.
                expression = expression.element
            elif isinstance(expression, _textual_label_reference):
                # select.order_by("name"): a selected column's label.
                expression = self._selected(expression.element)
            elif isinstance(expression, UnaryExpression) and expression.modifier in (
                operators.desc_op,
                operators.asc_op,
                operators.nulls_first_op,
                operators.nulls_last_op,
            ):
                modifier = expression.modifier
                if modifier is operators.desc_op:
                    descending = True
                elif modifier is operators.nulls_first_op:
                    nulls = nulls or "first"
                elif modifier is operators.nulls_last_op:
                    nulls = nulls or "last"
                expression = _clause(expression.element)
            else:
                break
        if not isinstance(expression, ColumnElement):
            raise ConfigurationError(
                f"cannot sort on {item!r}: not a column or SQL expression", parameter="order_by"
            )
        name = _describe(expression)
        sql_type, checker, carry = _cursor_type(expression, name, self._dialect_name)
        if nullable is None:
            nullable = _maybe_null(expression, outer_tables)
        if nullable and nulls is None:
            raise ConfigurationError(
                f"sort key {name} may be NULL: say where NULLs go with .nulls_first() or"
                " .nulls_last() (or SortKey(..., nulls=...)), or rows with NULL would be lost",
                parameter="order_by",
            )
        return _Key(
            expression=expression,
            descending=descending,
            nulls_last=nulls == "last",
            nullable=bool(nullable),
            checker=checker,
            name=name,
            sql_type=sql_type,
            carry=carry,
        )

    def _selected(self, name: str) -> Any:
        """The selected column labelled ``name`` (a sort key given by name)."""
        try:
            return self._select.selected_columns[name]
        except KeyError:
            raise ConfigurationError(
                f"order_by names {name!r}, which is not a selected column",
                parameter="order_by",
            ) from None

    def _complete_unique(
        self,
        keys: list[_Key],
        leaves: list[tuple[Any, bool]],
        froms: Sequence[FromClause],
        outer_tables: set[int],
    ) -> list[_Key]:
        if getattr(self._select, "_distinct", False):
            # Appending hidden keys would change what DISTINCT removes.
            raise ConfigurationError(
                "DISTINCT selects cannot be paginated; use GROUP BY instead", parameter="select"
            )
        conditions: list[Any] = [self._select.whereclause]
        for from_ in froms:
            _join_conditions(from_, conditions)
        equalities = _equalities(conditions)
        columns = (_base_column(k.expression) for k in keys)
        sorted_columns = {id(c) for c in columns if c is not None}

        def identified() -> set[int]:
            done: set[int] = set()
            changed = True
            while changed:
                changed = False
                for leaf, _ in leaves:
                    if id(leaf) in done:
                        continue
                    for unique in _unique_keys(leaf):
                        if all(
                            self._column_known(c, sorted_columns, equalities, done) for c in unique
                        ):
                            done.add(id(leaf))
                            changed = True
                            break
            return done

        while True:
            done = identified()
            missing = [(leaf, outer) for leaf, outer in leaves if id(leaf) not in done]
            if not missing:
                return keys
            leaf, outer = missing[0]
            uniques = _unique_keys(leaf)
            if not uniques:
                raise ConfigurationError(
                    f"cannot make the order unique: {_leaf_name(leaf)} has no primary key or"
                    " NOT NULL unique key; add columns that identify its rows to order_by",
                    parameter="order_by",
                )
            last = keys[-1]
            for column in uniques[0]:
                if id(column) in sorted_columns:
                    continue
                sorted_columns.add(id(column))
                name = _describe(column)
                sql_type, checker, carry = _cursor_type(column, name, self._dialect_name)
                keys.append(
                    _Key(
                        expression=column,
                        descending=last.descending,
                        nulls_last=True,
                        nullable=outer or bool(column.nullable),
                        checker=checker,
                        name=name,
                        sql_type=sql_type,
                        carry=carry,
                    )
                )

    @staticmethod
    def _column_known(
        column: Any, sorted_columns: set[int], equalities: list[tuple[Any, Any]], done: set[int]
    ) -> bool:
        if id(column) in sorted_columns:
            return True
        for left, right in equalities:
            if left is column and (id(right) in sorted_columns or id(right.table) in done):
                return True
            if right is column and (id(left) in sorted_columns or id(left.table) in done):
                return True
        return False

    def _complete_grouped(self, keys: list[_Key], group_by: list[Any]) -> list[_Key]:
        present = [k.expression for k in keys]
        for expression in group_by:
            expression = _clause(expression)
            if any(_same(expression, p) for p in present):
                continue
            column = _base_column(expression)
            if column is None:
                raise ConfigurationError(
                    f"cannot make the order unique: GROUP BY expression {_describe(expression)}"
                    " is not in order_by",
                    parameter="order_by",
                )
            name = _describe(column)
            sql_type, checker, carry = _cursor_type(column, name, self._dialect_name)
            keys.append(
                _Key(
                    expression=expression,
                    descending=keys[-1].descending,
                    nulls_last=True,
                    nullable=bool(column.nullable),
                    checker=checker,
                    name=name,
                    sql_type=sql_type,
                    carry=carry,
                )
            )
            present.append(expression)
        return keys

    def _finish_build(self, keys: list[_Key], bind_filters: bool) -> None:
        from sqlalchemy.sql.elements import Label

        select = self._select
        descriptions = select.column_descriptions
        has_entities = any(
            d.get("entity") is not None and d.get("expr") is d.get("entity") for d in descriptions
        )
        self._has_entities = has_entities
        self._entity_scalar = has_entities and len(descriptions) == 1
        self._visible = len(descriptions)
        selected = list(select.selected_columns) if not has_entities else []
        hidden: list[Any] = []
        placed: list[_Key] = []
        for position, key in enumerate(keys):
            index = -1
            for candidate_index, candidate in enumerate(selected):
                if candidate is key.expression or _same_column(candidate, key.expression):
                    index = candidate_index
                    break
            if index < 0:
                index = self._visible + len(hidden)
                hidden.append(_unlabel(key.expression).label(f"{_HIDDEN_PREFIX}{position}"))
            expression = key.expression
            if isinstance(expression, Label):
                expression = _unlabel(expression)
            placed.append(
                _Key(
                    expression,
                    key.descending,
                    key.nulls_last,
                    key.nullable,
                    key.checker,
                    key.name,
                    index,
                    key.sql_type,
                    key.carry,
                )
            )
        self._keys = tuple(placed)
        self._hidden = len(hidden)
        self._hidden_columns = tuple(hidden)
        self._order_spec = "|".join(
            f"{k.name}:{'d' if k.descending else 'a'}:{'nl' if k.nulls_last else 'nf'}"
            for k in self._keys
        )
        self._bind(select)

    def _bind(self, select: Any, fingerprint: bytes | None = None) -> None:
        """Attach ``select`` (same structure, maybe other values) as the statement to page.

        ``fingerprint`` reuses a known one (same order, filters not bound).
        """
        self._select = select
        base = select.order_by(None) if select._order_by_clauses else select
        if self._hidden_columns:
            base = base.add_columns(*self._hidden_columns)
        self._base = base
        if fingerprint is not None:
            self._fingerprint = fingerprint
            return
        spec = self._order_spec
        if self._bind_filters:
            spec += "|where:" + _filter_description(select)
        self._fingerprint = hashlib.blake2b(spec.encode("utf-8"), digest_size=16).digest()

    def rebound(self, select: Select[Any], codec: CursorCodec | None) -> KeysetPlan:
        """A copy of this plan for ``select``, which must have the same structure.

        Used by the plan cache: the order analysis is reused, the statement
        and its bound values come from ``select``.
        """
        clone = self._with(codec)
        clone._statements = {}
        clone._bind(select, fingerprint=self._fingerprint if not self._bind_filters else None)
        return clone

    def with_codec(self, codec: CursorCodec | None) -> KeysetPlan:
        """This plan, or a copy sharing its statements, that uses ``codec``.

        Used by the plan cache for a select with the same structure and values.
        """
        if (codec if codec is not None else _DEFAULT_CODEC) is self._codec:
            return self
        return self._with(codec)

    def _with(self, codec: CursorCodec | None) -> KeysetPlan:
        """A shallow copy of this plan (statements shared) that uses ``codec``."""
        _check_codec(codec)
        clone = KeysetPlan.__new__(KeysetPlan)
        for name in KeysetPlan.__slots__:
            setattr(clone, name, getattr(self, name))
        clone._codec = codec if codec is not None else _DEFAULT_CODEC
        return clone

    # -- public surface -----------------------------------------------------------

    @property
    def keys(self) -> tuple[str, ...]:
        """The final sort keys (appended ones included), for logs and tests."""
        return tuple(
            f"{k.name} {'DESC' if k.descending else 'ASC'}"
            + ((" NULLS LAST" if k.nulls_last else " NULLS FIRST") if k.nullable else "")
            for k in self._keys
        )

    @property
    def fingerprint(self) -> bytes:
        """A digest of the order (and filters, if bound) that cursors are tied to."""
        return self._fingerprint

    @property
    def limit(self) -> int:
        """Rows per page."""
        return self._limit

    @property
    def needs_session(self) -> bool:
        """Whether the select has ORM entities (and so must run on a Session)."""
        return self._has_entities

    def decode(self, token: object) -> tuple[CursorValue, ...]:
        """Decode and check a cursor for this plan. Raises only :class:`InvalidCursor`."""
        return self.decode_position(token)[0]

    def decode_position(self, token: object) -> tuple[tuple[CursorValue, ...], bool]:
        """Decode and check a cursor; also say whether it includes the row it names."""
        values, inclusive = self._codec.decode_position(token, fingerprint=self._fingerprint)
        if len(values) != len(self._keys):
            raise InvalidCursor("cursor does not fit the sort keys", reason="malformed")
        for key, value in zip(self._keys, values, strict=True):
            if value is None:
                if not key.nullable:
                    raise InvalidCursor(
                        f"cursor has NULL for non-null key {key.name}", reason="malformed"
                    )
            elif not key.checker(value):
                raise InvalidCursor(
                    f"cursor value for {key.name} has the wrong type", reason="malformed"
                )
        return values, inclusive

    def encode(self, values: Sequence[object], *, inclusive: bool = False) -> str:
        """A cursor for the position ``values`` (one per final sort key)."""
        if len(values) == len(self._keys):
            values = [
                value if key.carry is None or value is None else key.carry(value)
                for key, value in zip(self._keys, values, strict=True)
            ]
        return self._codec.encode(values, fingerprint=self._fingerprint, inclusive=inclusive)

    def prepare(
        self,
        *,
        after: object = None,
        before: object = None,
        last: bool = False,
        total: TotalMode | None = None,
        total_cap: int = 1000,
    ) -> PreparedPage:
        """Build the statement for one page. Raises InvalidCursor or ConfigurationError."""
        chosen = sum(x is not None for x in (after, before)) + bool(last)
        if chosen > 1:
            raise ConfigurationError(
                "pass at most one of after, before and last", parameter="before"
            )
        if total not in (None, "exact", "capped", "estimate"):
            raise ConfigurationError(
                "total must be None, 'exact', 'capped' or 'estimate'", parameter="total"
            )
        if not _is_int(total_cap) or total_cap < 1:
            raise ConfigurationError("total_cap must be a positive int", parameter="total_cap")
        mode: Literal["first", "after", "before", "last"]
        anchor: tuple[CursorValue, ...] | None = None
        inclusive = False
        if after is not None:
            mode = "after"
            anchor, inclusive = self.decode_position(after)
        elif before is not None:
            mode = "before"
            anchor, inclusive = self.decode_position(before)
        else:
            mode = "last" if last else "first"
        backwards = mode in ("before", "last")
        statement, params = self.statement(anchor, backwards=backwards, inclusive=inclusive)
        prepared = PreparedPage(statement, params, backwards, anchor, mode, None, total, total_cap)
        if total == "estimate" and self._dialect_name == "postgresql":
            prepared.count_statement = self.explain_statement()
        elif total is not None:
            # Other dialects have no cheap estimate: count exactly.
            prepared.total_mode = "exact" if total == "estimate" else total
            prepared.count_statement = self.count_statement(prepared.total_mode, total_cap)
        return prepared

    def statement(
        self,
        anchor: Sequence[CursorValue] | None,
        *,
        backwards: bool = False,
        inclusive: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """The SELECT for the page after ``anchor`` (before it if ``backwards``) and its params.

        With ``inclusive`` the row at ``anchor`` itself belongs to the page.
        """
        mask = None if anchor is None else tuple(v is None for v in anchor)
        cache_key = (backwards, mask, inclusive)
        statement = self._statements.get(cache_key)
        if statement is None:
            shape = self._shapes.get(cache_key)
            if shape is None:
                shape = self._shapes[cache_key] = self._build_shape(mask, backwards, inclusive)
            predicate, order = shape
            statement = self._base
            if predicate is not None:
                statement = (
                    statement.having(predicate) if self._use_having else statement.where(predicate)
                )
            statement = statement.order_by(*order).limit(self._limit + 1)
            self._statements[cache_key] = statement
        params: dict[str, Any] = {}
        if anchor is not None:
            for position, value in enumerate(anchor):
                if value is not None:
                    params[f"{_PARAM_PREFIX}{position}"] = value
        return statement, params

    def _build_shape(
        self, mask: tuple[bool, ...] | None, backwards: bool, inclusive: bool
    ) -> tuple[Any, tuple[Any, ...]]:
        keys = [k.flipped() for k in self._keys] if backwards else list(self._keys)
        predicate = None if mask is None else self._predicate(keys, mask, inclusive)
        order = []
        for key in keys:
            clause = key.expression.desc() if key.descending else key.expression.asc()
            if key.nullable:
                clause = clause.nulls_last() if key.nulls_last else clause.nulls_first()
            order.append(clause)
        return predicate, tuple(order)

    def _predicate(self, keys: list[_Key], mask: tuple[bool, ...], inclusive: bool) -> Any:
        sa = _sa()
        runs: list[list[int]] = []
        for position, key in enumerate(keys):
            previous = keys[runs[-1][-1]] if runs else None
            if (
                self._row_values
                and previous is not None
                and not key.nullable
                and not previous.nullable
                and previous.descending == key.descending
            ):
                runs[-1].append(position)
            else:
                runs.append([position])

        def bind(position: int) -> Any:
            sql_type = keys[position].sql_type
            parameter = sa.bindparam(f"{_PARAM_PREFIX}{position}", type_=sql_type)
            if self._dialect_name == "postgresql" and _is_real(sql_type):
                # psycopg reads a real as its shortest decimal form and sends
                # floats as double precision: compared as doubles, the cursor's
                # value differs from the row's and the row comes back forever.
                return sa.cast(parameter, sql_type)
            return parameter

        def compare(run: list[int], inclusive: bool) -> Any:
            """``run`` strictly after (or at, if inclusive) the cursor, NULLs included."""
            key = keys[run[0]]
            if len(run) > 1:
                left = sa.tuple_(*(keys[p].expression for p in run))
                right = sa.tuple_(*(bind(p) for p in run))
                if key.descending:
                    return left <= right if inclusive else left < right
                return left >= right if inclusive else left > right
            column = key.expression
            position = run[0]
            if key.nullable and mask[position]:
                # The cursor sits in the NULL block.
                if key.nulls_last:
                    return column.is_(None) if inclusive else sa.false()
                return sa.true() if inclusive else column.isnot(None)
            value = bind(position)
            if key.descending:
                comparison = column <= value if inclusive else column < value
            else:
                comparison = column >= value if inclusive else column > value
            if key.nullable and key.nulls_last:
                return sa.or_(comparison, column.is_(None))
            return comparison

        def after(index: int) -> Any:
            run = runs[index]
            if index == len(runs) - 1:
                return compare(run, inclusive=inclusive)
            return sa.and_(
                compare(run, inclusive=True),
                sa.or_(compare(run, inclusive=False), after(index + 1)),
            )

        return after(0)

    def count_statement(self, mode: TotalMode, cap: int) -> Any:
        """``SELECT count(*)`` over the filtered select (at most ``cap + 1`` rows if capped)."""
        sa = _sa()
        inner = self._select.order_by(None)
        if mode == "capped":
            inner = inner.limit(cap + 1)
        return sa.select(sa.func.count()).select_from(inner.subquery())

    def explain_statement(self) -> Any:
        """``EXPLAIN (FORMAT JSON)`` of the filtered select, for the planner's row estimate."""
        return _Explain(self._select.order_by(None))

    # -- turning rows into a page --------------------------------------------------

    def finish(self, prepared: PreparedPage, result: Result[Any]) -> Page[Any]:
        """Consume ``result`` (the page's rows) and build the :class:`Page`."""
        limit = self._limit
        if self._hidden and not self._entity_scalar:
            frozen = result.freeze()
            rows = list(frozen().all())
            items = list(frozen().columns(*range(self._visible)).all())
        else:
            rows = list(result.all())
            items = [row[0] for row in rows] if self._entity_scalar else list(rows)
        more = len(rows) > limit
        if more:
            del rows[limit:]
            del items[limit:]
        if prepared.backwards:
            rows.reverse()
            items.reverse()
        start = self._cursor_of(rows[0]) if rows else None
        end = self._cursor_of(rows[-1]) if rows else None
        mode = prepared.mode
        if mode == "first":
            has_prev, has_next = False, more
        elif mode == "after":
            has_prev, has_next = True, more
        elif mode == "before":
            has_prev, has_next = more, True
        else:  # last
            has_prev, has_next = more, False
        if not rows and prepared.anchor is not None:
            # An empty page past (or before) the cursor: the way back is the cursor itself.
            # The cursor's own row (if it still exists) belongs to the page back.
            anchor_cursor = self.encode(prepared.anchor, inclusive=True)
            if mode == "after":
                return Page([], None, anchor_cursor, False, True)
            return Page([], anchor_cursor, None, True, False)
        return Page(
            items=items,
            next_cursor=end if has_next else None,
            prev_cursor=start if has_prev else None,
            has_next=has_next,
            has_prev=has_prev,
            start_cursor=start,
            end_cursor=end,
        )

    def _cursor_of(self, row: Any) -> str:
        return self.encode([row[k.row_index] for k in self._keys])

    def with_total(self, page: Page[Any], prepared: PreparedPage, answer: Any) -> Page[Any]:
        """``page`` with its total filled in from the answer of ``prepared.count_statement``."""
        if prepared.total_mode == "estimate":
            total, exact = max(estimated_rows(answer), 0), False
        elif prepared.total_mode == "capped" and int(answer) > prepared.total_cap:
            total, exact = prepared.total_cap, False
        else:
            total, exact = int(answer), True
        return Page(
            page.items,
            page.next_cursor,
            page.prev_cursor,
            page.has_next,
            page.has_prev,
            page.start_cursor,
            page.end_cursor,
            total,
            exact,
        )


def _same_column(candidate: Any, expression: Any) -> bool:
    # A selected column (possibly relabelled) carries the same value as the key.
    left = _base_column(candidate)
    return left is not None and left is _base_column(expression)


def _same(left: Any, right: Any) -> bool:
    if left is right:
        return True
    a, b = _base_column(left), _base_column(right)
    if a is not None:
        return a is b
    try:
        return bool(_unlabel(left).compare(_unlabel(right)))
    except Exception:  # pragma: no cover - defensive: compare() on exotic elements
        return False


def _leaf_name(leaf: Any) -> str:
    name = getattr(leaf, "name", None)
    element = getattr(leaf, "element", None)
    if element is not None and getattr(element, "name", None):
        return f"{element.name} (aliased)"
    return str(name) if name else type(leaf).__name__


def _filter_description(select: Any) -> str:
    where = select.whereclause
    if where is None:
        return ""
    compiled = where.compile()
    params = sorted((k, repr(v)) for k, v in compiled.params.items())
    return f"{compiled}{params}"


_DEFAULT_CODEC = CursorCodec()


def _explain_class() -> Any:
    from sqlalchemy.ext.compiler import compiles
    from sqlalchemy.sql.base import Executable
    from sqlalchemy.sql.elements import ClauseElement

    class Explain(Executable, ClauseElement):
        """``EXPLAIN (FORMAT JSON) <select>``, for row estimates on PostgreSQL."""

        inherit_cache = False

        def __init__(self, statement: Any) -> None:
            self.statement = statement

    @compiles(Explain)
    def _compile(element: Any, compiler: Any, **kw: Any) -> str:
        return "EXPLAIN (FORMAT JSON) " + str(compiler.process(element.statement, **kw))

    return Explain


_EXPLAIN_CLASS: Any = None


def _Explain(statement: Any) -> Any:
    global _EXPLAIN_CLASS
    if _EXPLAIN_CLASS is None:
        _EXPLAIN_CLASS = _explain_class()
    return _EXPLAIN_CLASS(statement)


def estimated_rows(explain_output: Any) -> int:
    """The planner's row estimate from ``EXPLAIN (FORMAT JSON)`` output."""
    import json

    if isinstance(explain_output, (str, bytes)):
        explain_output = json.loads(explain_output)
    return int(explain_output[0]["Plan"]["Plan Rows"])


# -- plan cache ---------------------------------------------------------------------------

_PLAN_CACHE_SIZE = 512
#: Plans kept per cached shape for distinct bound values (``customer_id = 7``,
#: ``= 8``, ...): each holds its built page statements, whose SQLAlchemy cache
#: keys are then computed once, not on every page.
_VALUES_PER_PLAN = 8


class _CacheEntry:
    __slots__ = ("by_values", "plan", "sources")

    def __init__(
        self,
        sources: tuple[Any, ...],
        plan: KeysetPlan,
        by_values: dict[tuple[Any, ...], KeysetPlan],
    ) -> None:
        self.sources = sources  # keeps the FROM elements whose ids are in the key alive
        self.plan = plan
        self.by_values = by_values


_PLAN_CACHE: dict[tuple[Any, ...], _CacheEntry] = {}
_PLAN_CACHE_LOCK = threading.Lock()


def _expression_key(element: Any) -> tuple[Any, ...] | None:
    """Structure plus bound values of an order-by expression, or None if not cacheable."""
    generate = getattr(element, "_generate_cache_key", None)
    if generate is None:
        return None
    cache_key = generate()
    if cache_key is None:
        return None
    values = _values_key(cache_key.bindparams)
    if values is None:
        return None
    return (cache_key.key, values)


def _sources(select: Any) -> tuple[Any, ...]:
    """Every table, alias or subquery the select draws from (cheap: no compilation).

    ``get_final_froms()`` compiles the statement; this walks only what the
    FROM list is made of: explicit FROM/JOIN elements, and the FROM objects
    of the selected columns and of the WHERE criteria.
    """
    froms: list[Any] = list(select._from_obj)
    for element in (*select._raw_columns, *select._where_criteria):
        froms.extend(element._from_objects)
    leaves: list[tuple[Any, bool]] = []
    for from_ in froms:
        _leaves(from_, False, leaves)
    return tuple(dict.fromkeys(leaf for leaf, _ in leaves))


def _values_key(bindparams: Sequence[Any]) -> tuple[Any, ...] | None:
    """The bound values of a statement, typed and hashable, or None if one is not hashable.

    The type is part of the key: ``1``, ``1.0`` and ``True`` are equal in
    Python but not necessarily to the database driver. An IN list counts as
    the tuple of its items.
    """
    values: list[Any] = []
    for bind in bindparams:
        value = bind.effective_value
        kind = value.__class__
        if kind is list:  # an IN list (expanding parameter)
            value = tuple(value)
        try:
            hash(value)
        except TypeError:
            return None
        values.append((kind, value))
    return tuple(values)


def _plan_key(
    select: Any,
    order_by: Sequence[Any] | None,
    limit: int,
    dialect_name: str | None,
    row_values: bool | None,
    bind_filters: bool,
) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...] | None] | None:
    """The cache key of a plan, the FROM elements it refers to and the select's values.

    None if the select or a sort key is uncacheable. SQLAlchemy cache keys
    describe structure only: two ``aliased(Order)`` made on two requests, or
    two tables of the same name in two MetaData, have equal keys. A plan holds
    the column objects of the select it was built for, so the key also carries
    the identity of every FROM element (kept alive by the cache entry, so an id
    cannot be reused while the entry exists), and for each sort key the identity
    of the FROM elements it refers to, so that which alias (of several alike)
    a sort key belongs to is part of the key. The third item is the select's
    own bound values (None if one is unhashable): same structure and values
    means the very same page statements can be reused.

    Every cache key here is computed once per object (SQLAlchemy memoises
    it), and the select's is the one SQLAlchemy itself needs to execute it.
    """
    parts: list[Any] = [limit, dialect_name, row_values, bind_filters, order_by is None]
    if order_by is None:
        # The plan's sort keys are the select's own ORDER BY expressions, and a
        # rebound plan keeps them: their values (``abs(v - 2)`` vs ``abs(v - 9)``)
        # must be part of the key, not only of the select's values.
        for clause in select._order_by_clauses:
            item_key = _expression_key(clause)
            if item_key is None:
                return None
            parts.append(item_key)
    else:
        for item in order_by:
            if isinstance(item, SortKey):
                parts.append(("sort_key", item.descending, item.nulls, item.nullable))
                item = item.expression
            if isinstance(item, str):
                parts.append(item)
                item = select.selected_columns[item]
            clause = _clause(item)
            item_key = _expression_key(clause)
            if item_key is None:
                return None
            parts.append(item_key)
            parts.append(tuple(id(from_) for from_ in clause._from_objects))
    cache_key = select._generate_cache_key()
    if cache_key is None:
        return None
    sources = _sources(select)
    parts += [cache_key.key, tuple(id(source) for source in sources)]
    return tuple(parts), sources, _values_key(cache_key.bindparams)


def cached_plan(
    select: Select[Any],
    order_by: Sequence[Any] | None,
    *,
    limit: int,
    codec: CursorCodec | None = None,
    dialect: Dialect | None = None,
    row_values: bool | None = None,
    bind_filters: bool = False,
) -> KeysetPlan:
    """A :class:`KeysetPlan` for ``select``, reusing the analysis of a same-shaped select.

    Statements that differ only in bound values (``WHERE customer_id = 7`` and
    ``= 8``) share the order analysis and the predicates; the page statement
    is still built from ``select`` so its own values are used. Raises what
    :class:`KeysetPlan` raises.
    """
    dialect_name = dialect.name if dialect is not None else None
    order_by = _order_items(order_by)
    found = None
    if _is_int(limit):
        try:
            found = _plan_key(select, order_by, limit, dialect_name, row_values, bind_filters)
        except Exception:  # uncacheable or invalid input: let the plan report it
            found = None
    if found is not None:
        key, sources, values = found
        entry = _PLAN_CACHE.get(key)
        if entry is not None:
            same = entry.by_values.get(values) if values is not None else None
            if same is not None:
                return same.with_codec(codec)
            plan = entry.plan.rebound(select, codec)
            if values is not None:
                with _PLAN_CACHE_LOCK:
                    if len(entry.by_values) >= _VALUES_PER_PLAN:
                        entry.by_values.pop(next(iter(entry.by_values)), None)
                    entry.by_values[values] = plan
            return plan
    plan = KeysetPlan(
        select,
        order_by,
        limit=limit,
        codec=codec,
        dialect=dialect,
        row_values=row_values,
        bind_filters=bind_filters,
    )
    if found is not None:
        with _PLAN_CACHE_LOCK:
            if len(_PLAN_CACHE) >= _PLAN_CACHE_SIZE:
                _PLAN_CACHE.pop(next(iter(_PLAN_CACHE)), None)
            _PLAN_CACHE[key] = _CacheEntry(
                sources, plan, {values: plan} if values is not None else {}
            )
    return plan
