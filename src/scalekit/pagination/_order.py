"""Order analysis: from ``order_by`` to unique, typed, NULL-safe sort keys.

Steps 1 to 3 of the theory of operation in ``_keyset.py``: each ``order_by``
item becomes a :class:`_Key` (direction, NULL policy, type checker); the
order is proven unique from the FROM clause (unique keys tied by join and
WHERE equalities), or completed with primary keys (GROUP BY keys for grouped
selects); a key that may be NULL must say where NULLs sort. Pure: nothing
here runs SQL. Raises :class:`ConfigurationError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from scalekit.errors import ConfigurationError
from scalekit.pagination._expressions import _base_column, _clause, _describe, _same
from scalekit.pagination._key_types import _cursor_type

if TYPE_CHECKING:
    from sqlalchemy.sql import FromClause, Select

__all__ = ["SortKey", "analyse_order", "order_items"]

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


def order_items(order_by: object) -> list[Any] | None:
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


def analyse_order(
    select: Select[Any], order_by: list[Any] | None, dialect_name: str | None
) -> tuple[list[_Key], bool]:
    """The unique, checked sort keys of ``select`` in ``order_by`` and whether it is grouped.

    ``order_by`` comes from :func:`order_items` (None: the select's own ORDER
    BY). Steps 1 to 3 of the theory in ``_keyset.py``: parse each key, prove
    the order unique (appending primary or GROUP BY keys), require a NULL
    policy for keys that may be NULL. Raises :class:`ConfigurationError`.
    """
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
    keys = [_parse_key(select, item, outer_tables, dialect_name) for item in order_by]
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
    if group_by:
        keys = _complete_grouped(keys, group_by, dialect_name)
    else:
        keys = _complete_unique(select, keys, leaves, froms, outer_tables, dialect_name)
    seen: set[int] = set()
    for key in keys:
        column = _base_column(key.expression)
        if column is not None and id(column) in seen:
            raise ConfigurationError(f"sort key {key.name} appears twice", parameter="order_by")
        seen.add(id(column))
    return keys, bool(group_by)


def _parse_key(select: Any, item: Any, outer_tables: set[int], dialect_name: str | None) -> _Key:
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
        item = _selected(select, item)
    expression = _clause(item)
    while True:
        if isinstance(expression, _label_reference):
            # A select's own ORDER BY wraps a label (and its .desc()) in this.
            expression = expression.element
        elif isinstance(expression, _textual_label_reference):
            # select.order_by("name"): a selected column's label.
            expression = _selected(select, expression.element)
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
    sql_type, checker, carry = _cursor_type(expression, name, dialect_name)
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


def _selected(select: Any, name: str) -> Any:
    """The selected column labelled ``name`` (a sort key given by name)."""
    try:
        return select.selected_columns[name]
    except KeyError:
        raise ConfigurationError(
            f"order_by names {name!r}, which is not a selected column",
            parameter="order_by",
        ) from None


def _complete_unique(
    select: Any,
    keys: list[_Key],
    leaves: list[tuple[Any, bool]],
    froms: Sequence[FromClause],
    outer_tables: set[int],
    dialect_name: str | None,
) -> list[_Key]:
    if getattr(select, "_distinct", False):
        # Appending hidden keys would change what DISTINCT removes.
        raise ConfigurationError(
            "DISTINCT selects cannot be paginated; use GROUP BY instead", parameter="select"
        )
    conditions: list[Any] = [select.whereclause]
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
                    if all(_column_known(c, sorted_columns, equalities, done) for c in unique):
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
            sql_type, checker, carry = _cursor_type(column, name, dialect_name)
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


def _complete_grouped(
    keys: list[_Key], group_by: list[Any], dialect_name: str | None
) -> list[_Key]:
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
        sql_type, checker, carry = _cursor_type(column, name, dialect_name)
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
