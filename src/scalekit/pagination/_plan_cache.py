"""The global plan cache: one :class:`KeysetPlan` per select structure and order.

A page of a select already seen (same structure, same sort keys, same FROM
objects) reuses its plan's order analysis and predicates; with the same bound
values too, it reuses the built page statements, so SQLAlchemy computes each
statement's cache key once, not once per page. Bounded (oldest out), and
guarded by a lock for the writes (reads are plain dict lookups).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scalekit.pagination._cursor import _is_int
from scalekit.pagination._expressions import _clause
from scalekit.pagination._keyset import KeysetPlan
from scalekit.pagination._order import SortKey, _leaves, order_items

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect
    from sqlalchemy.sql import Select

    from scalekit.pagination._cursor import CursorCodec

__all__ = ["cached_plan"]

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
    order_by = order_items(order_by)
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
