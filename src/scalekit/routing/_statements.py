"""Classify SQLAlchemy statements for routing: does this statement write?

The rule looks at the statement object, never at SQL text:

* ``insert``/``update``/``delete`` (Core or ORM, bulk too), ORM flushes and
  anything run through ``session.connection()`` without a statement write;
* a ``select`` writes when it has ``with_for_update()``, embeds DML (a CTE
  with ``INSERT ... RETURNING``), or calls a function that changes state
  (``nextval``, ``setval``, advisory locks...);
* ``text()`` writes unless marked read-only with :func:`read_only` (or the
  execution option ``scalekit_route="replica"``);
* ``scalekit_route="primary"`` forces any statement to the primary.

The walk is hand-written rather than ``visitors.iterate`` because that one
costs tens of microseconds on an ORM select; this one skips tables, columns
and bound parameters, which cannot hide a write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from scalekit.routing._core import READ, Classification

if TYPE_CHECKING:
    from sqlalchemy.sql.base import Executable

__all__ = ["ROUTE_OPTION", "WRITE_FUNCTIONS", "classify", "read_only", "route_to_primary"]

ROUTE_OPTION = "scalekit_route"
"""Execution option: ``"replica"`` marks a statement read-only, ``"primary"`` forces the primary."""

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
_TEXT = Classification(writes=True, reason="text")
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
    return statement.execution_options(**{ROUTE_OPTION: "replica"})


def route_to_primary(statement: S) -> S:
    """Force ``statement`` to the primary, even though it only reads.

    >>> from sqlalchemy import select, literal
    >>> classify(route_to_primary(select(literal(1)))).reason
    'forced_primary'
    """
    return statement.execution_options(**{ROUTE_OPTION: "primary"})


def classify(statement: object) -> Classification:
    """Say whether ``statement`` writes, and by which rule.

    ``None`` (a flush, or ``session.connection()``) is a write.

    >>> from sqlalchemy import column, func, select, table
    >>> t = table("t", column("id"))
    >>> classify(select(t)).writes, classify(select(func.nextval("s"))).reason
    (False, 'function:nextval')
    >>> classify(t.delete()).reason
    'delete'
    """
    if statement is None:
        return CONNECTION
    options = getattr(statement, "_execution_options", None)
    if options:
        route = options.get(ROUTE_OPTION)
        if route == "primary":
            return _FORCED_PRIMARY
        if route == "replica":
            return _MARKED_READ
    sql = _sql if _sql is not None else _load()
    cls = type(statement)
    try:
        rule = _TOP[cls]
    except KeyError:
        rule = _top_rule(cls, statement, sql)
    if rule is not None:
        return rule
    found = _find_write(statement, sql)
    if found is not None:
        return found
    return READ


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
