"""SQL expression helpers shared by order analysis, statements and the plan cache.

Pure: they look at SQLAlchemy expression objects and never run SQL.
SQLAlchemy is imported lazily, inside each helper.
"""

from __future__ import annotations

from typing import Any

__all__: list[str] = []


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
