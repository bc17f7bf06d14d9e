"""Classify SQLAlchemy statements for routing: does this statement write?

The rule looks at the statement object, never at SQL text:

* ``insert``/``update``/``delete`` (Core or ORM, bulk too), ORM flushes and
  anything run through ``session.connection()`` without a statement write;
* a ``select`` writes when it has ``with_for_update()``, embeds DML (a CTE
  with ``INSERT ... RETURNING``), or calls a function that changes state
  (``nextval``, ``setval``, advisory locks...);
* ``text()`` is read as SQL (see ``_sqltext.py``): an unmistakable read
  (``SELECT``/``WITH ... SELECT``/``SHOW``/``EXPLAIN``/``VALUES``/``TABLE``, one
  statement, no DML, ``INTO``, row locks or state-changing functions outside
  strings and comments) is a read; anything doubtful is a write;
* the execution option ``scalekit_route`` settles any statement:
  ``"read"`` (alias ``"replica"``, or :func:`read_only`) marks it a read,
  ``"write"`` (alias ``"primary"``, or :func:`route_to_primary`) sends it to the
  primary.

The walk is hand-written rather than ``visitors.iterate`` because that one
costs tens of microseconds on an ORM select; this one skips tables, columns
and bound parameters, which cannot hide a write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from scalekit.errors import ConfigurationError
from scalekit.routing._core import READ, Classification
from scalekit.routing._sqltext import classify_sql

if TYPE_CHECKING:
    from sqlalchemy.sql.base import Executable

__all__ = [
    "ROUTE_OPTION",
    "WRITE_FUNCTIONS",
    "classify",
    "classify_text",
    "read_only",
    "route_rule",
    "route_to_primary",
]

ROUTE_OPTION = "scalekit_route"
"""Execution option: ``"read"`` (or ``"replica"``) marks a statement a read that may go
to a replica; ``"write"`` (or ``"primary"``) sends it to the primary."""

_READ_ROUTES = ("read", "replica")
_WRITE_ROUTES = ("write", "primary")

WRITE_FUNCTIONS: frozenset[str] = frozenset(
    {
        "nextval",
        "setval",
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_shared",
        "pg_advisory_unlock_all",
        "txid_current",
        "pg_current_xact_id",
        "pg_notify",
        "set_config",
        "lo_create",
        "lo_import",
        "lo_unlink",
    }
)
"""Functions whose call makes a ``select`` a write (they change state or need a primary)."""

S = TypeVar("S", bound="Executable")

FLUSH = Classification(writes=True, reason="flush")
CONNECTION = Classification(writes=True, reason="connection")
_TEXT = Classification(writes=True, reason="text")  # a marker: text is classified by content
_TEXT_READ = Classification(writes=False, reason="text_read")
_FORCED_PRIMARY = Classification(writes=True, reason="forced_primary")
_MARKED_READ = Classification(writes=False, reason="marked_read_only")
_FOR_UPDATE = Classification(writes=True, reason="for_update")

_sql: Any = None


def _load() -> Any:
    global _sql
    if _sql is None:
        from sqlalchemy.sql import dml, elements, functions, selectable

        class _Types:
            UpdateBase = dml.UpdateBase
            TextClause = elements.TextClause
            BindParameter = elements.BindParameter
            ColumnClause = elements.ColumnClause
            FunctionElement = functions.FunctionElement
            Select = selectable.Select
            TableClause = selectable.TableClause
            TextualSelect = selectable.TextualSelect
            AliasedReturnsRows = selectable.AliasedReturnsRows
            CompoundSelect = selectable.CompoundSelect
            BinaryExpression = elements.BinaryExpression

        _sql = _Types
    return _sql


def read_only(statement: S) -> S:
    """Mark ``statement`` (typically a ``text()``) as a read that may go to a replica.

    >>> from sqlalchemy import text
    >>> stmt = read_only(text("SELECT count(*) FROM orders"))
    >>> classify(stmt).writes
    False
    """
    return statement.execution_options(**{ROUTE_OPTION: "read"})


def route_to_primary(statement: S) -> S:
    """Force ``statement`` to the primary, even though it only reads.

    >>> from sqlalchemy import select, literal
    >>> classify(route_to_primary(select(literal(1)))).reason
    'forced_primary'
    """
    return statement.execution_options(**{ROUTE_OPTION: "write"})


def classify(statement: object) -> Classification:
    """Say whether ``statement`` writes, and by which rule.

    ``None`` (a flush, or ``session.connection()``) is a write. A ``text()``
    is a read only when it is unmistakably one (see :func:`classify_text`).

    >>> from sqlalchemy import column, func, select, table, text
    >>> t = table("t", column("id"))
    >>> classify(select(t)).writes, classify(select(func.nextval("s"))).reason
    (False, 'function:nextval')
    >>> classify(t.delete()).reason
    'delete'
    >>> classify(text("SELECT id FROM t -- no UPDATE here")).writes
    False

    Raises:
        ConfigurationError: (``parameter="scalekit_route"``) for an execution
            option ``scalekit_route`` other than ``"read"``, ``"write"``,
            ``"replica"`` or ``"primary"``.
    """
    if statement is None:
        return CONNECTION
    options = getattr(statement, "_execution_options", None)
    if options:
        route = options.get(ROUTE_OPTION)
        if route is not None:
            return route_rule(route)
    sql = _sql if _sql is not None else _load()
    cls = type(statement)
    try:
        rule = _TOP[cls]
    except KeyError:
        rule = _top_rule(cls, statement, sql)
    if rule is _TEXT:
        element = getattr(statement, "element", statement)  # text().columns() wraps the text
        return classify_text(getattr(element, "text", None))
    if rule is not None:
        return rule
    found = _find_write(statement, sql)
    if found is not None:
        return found
    return READ


def route_rule(route: object) -> Classification:
    """The classification an explicit ``scalekit_route`` option asks for.

    Raises:
        ConfigurationError: (``parameter="scalekit_route"``) for an unknown value.
    """
    if route in _WRITE_ROUTES:
        return _FORCED_PRIMARY
    if route in _READ_ROUTES:
        return _MARKED_READ
    raise ConfigurationError(
        f"execution option {ROUTE_OPTION} must be 'read' or 'write' "
        f"('replica' and 'primary' also work), got {route!r}",
        parameter=ROUTE_OPTION,
    )


_TEXT_CACHE: dict[str, Classification] = {}
_TEXT_CACHE_SIZE = 4096


def classify_text(sql: object) -> Classification:
    """Classify raw SQL text: a read only when unmistakably one (see ``_sqltext.py``).

    Never raises; anything doubtful, or not a string, is a write.

    >>> classify_text("SELECT * FROM t FOR UPDATE").reason
    'text:update'
    >>> classify_text("/* DELETE */ SELECT 'INSERT'").writes
    False
    """
    if not isinstance(sql, str):
        return _TEXT
    found = _TEXT_CACHE.get(sql)
    if found is not None:
        return found
    reason = classify_sql(sql, WRITE_FUNCTIONS)
    found = _TEXT_READ if reason is None else Classification(writes=True, reason=reason)
    if len(_TEXT_CACHE) >= _TEXT_CACHE_SIZE:
        _TEXT_CACHE.clear()  # a bounded memo: distinct texts are few in a real application
    _TEXT_CACHE[sql] = found
    return found


# The rule for a statement's own class, decided once per class: DML and text are
# decided by the class alone, anything else (None) needs the walk.
_TOP: dict[type, Classification | None] = {}


def _top_rule(cls: type, statement: object, sql: Any) -> Classification | None:
    rule: Classification | None = None
    if issubclass(cls, sql.UpdateBase):
        rule = Classification(writes=True, reason=_dml_reason(statement))
    elif issubclass(cls, (sql.TextClause, sql.TextualSelect)):
        rule = _TEXT
    _TOP[cls] = rule  # SQLAlchemy's __visit_name__ is a class attribute
    return rule


def _dml_reason(statement: Any) -> str:
    return str(getattr(statement, "__visit_name__", "dml"))


# What the walk does with an element, decided once per class (a dict lookup beats a
# chain of isinstance checks on the hot path).
_SKIP, _DML, _FUNCTION, _SELECT, _COMPOUND, _ALIAS, _BINARY, _CHILDREN, _COLUMN = range(9)
_KINDS: dict[type, int] = {}


def _kind(cls: type, sql: Any) -> int:
    kind = _KINDS.get(cls)
    if kind is not None:
        return kind
    if issubclass(cls, sql.ColumnClause):
        kind = _COLUMN  # its table may be a CTE or subquery that writes
    elif issubclass(cls, (sql.TableClause, sql.BindParameter, sql.TextClause)):
        # Tables, columns and bound values cannot hide a write; a text fragment inside
        # a select (a condition, a column) is taken as the caller wrote it.
        kind = _SKIP
    elif issubclass(cls, sql.UpdateBase):
        kind = _DML
    elif issubclass(cls, sql.FunctionElement):
        kind = _FUNCTION
    elif issubclass(cls, sql.Select):
        kind = _SELECT
    elif issubclass(cls, sql.CompoundSelect):
        kind = _COMPOUND
    elif issubclass(cls, sql.AliasedReturnsRows):
        kind = _ALIAS
    elif issubclass(cls, sql.BinaryExpression):
        kind = _BINARY
    else:
        kind = _CHILDREN
    _KINDS[cls] = kind
    return kind


def _find_write(root: Any, sql: Any) -> Classification | None:
    stack: list[Any] = [root]
    seen = 0
    kinds = _KINDS
    sources: set[int] = set()
    while stack:
        element = stack.pop()
        seen += 1
        if seen > 10_000:  # pathological statements: be safe rather than slow
            return Classification(writes=True, reason="too_complex")
        cls = type(element)
        kind = kinds.get(cls)
        if kind is None:
            kind = _kind(cls, sql)
        if kind == _SKIP:
            continue
        if kind == _COLUMN:
            source = element.table
            if source is not None and id(source) not in sources:
                source_kind = kinds.get(type(source))
                if source_kind is None:
                    source_kind = _kind(type(source), sql)
                if source_kind == _ALIAS:
                    stack.append(source)  # walked once: the _ALIAS branch remembers it
        elif kind == _BINARY:
            stack.append(element.left)
            stack.append(element.right)
        elif kind == _SELECT:
            if element._for_update_arg is not None:
                return _FOR_UPDATE
            # Empty parts are the common case: test before extending (cheaper than the call).
            stack += element._raw_columns
            if element._where_criteria:
                stack += element._where_criteria
            if element._having_criteria:
                stack += element._having_criteria
            if element._from_obj:
                stack += element._from_obj
            if element._order_by_clauses:
                stack += element._order_by_clauses
            if element._group_by_clauses:
                stack += element._group_by_clauses
            if element._setup_joins:
                for join in element._setup_joins:
                    stack.extend(part for part in join[:2] if part is not None)
            ctes = getattr(element, "_independent_ctes", ())
            if ctes:
                stack += ctes
        elif kind == _DML:
            return Classification(writes=True, reason=f"embedded_{_dml_reason(element)}")
        elif kind == _FUNCTION:
            name = getattr(element, "name", "")
            if isinstance(name, str) and name.lower() in WRITE_FUNCTIONS:
                return Classification(writes=True, reason=f"function:{name.lower()}")
            stack.extend(element.clauses.clauses)
        elif kind == _COMPOUND:
            stack.extend(element.selects)
        elif kind == _ALIAS:
            if id(element) not in sources:
                sources.add(id(element))
                stack.append(element.element)
        else:
            stack.extend(element.get_children())
    return None
