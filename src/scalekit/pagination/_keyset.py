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
rebinds values. ``cached_plan`` (``_plan_cache.py``) reuses a plan for
every select of the same structure; for the same structure and bound values
it reuses the built statements too, so a page costs no statement building and SQLAlchemy
computes each statement's cache key once, not once per page.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from scalekit.errors import ConfigurationError, InvalidCursor
from scalekit.pagination._cursor import CursorCodec, CursorValue, _is_int
from scalekit.pagination._explain import Explain, estimated_rows
from scalekit.pagination._expressions import _sa, _same_column, _unlabel
from scalekit.pagination._order import (
    SortKey,
    _filter_description,
    _Key,
    analyse_order,
    order_items,
)
from scalekit.pagination._statements import PARAM_PREFIX, build_shape, row_values_supported

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Dialect, Result
    from sqlalchemy.sql import Select
    from typing_extensions import TypeVar as _TypeVarWithDefault

    # A bare ``Page`` means ``Page[Any]``, also under mypy --strict.
    ItemT = _TypeVarWithDefault("ItemT", default=Any)
else:
    ItemT = TypeVar("ItemT")

__all__ = ["KeysetPlan", "Page", "PreparedPage", "SortKey", "TotalMode"]

TotalMode = Literal["exact", "capped", "estimate"]
"""How ``paginate(total=...)`` counts: exactly, up to a cap, or from the planner's estimate."""

_HIDDEN_PREFIX = "_scalekit_k"


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


class _Descending:
    """Wraps a sort value so that it compares in reverse."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.value < self.value)

    def __gt__(self, other: _Descending) -> bool:
        return bool(other.value > self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


def _check_codec(codec: object) -> None:
    if codec is not None and not isinstance(codec, CursorCodec):
        raise ConfigurationError("codec must be a CursorCodec", parameter="codec")


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
        order_by = order_items(order_by)
        self._select = select
        self._limit = limit
        self._codec = codec if codec is not None else _DEFAULT_CODEC
        self._row_values = row_values_supported(dialect) if row_values is None else row_values
        self._dialect_name = dialect.name if dialect is not None else None
        self._bind_filters = bind_filters
        # Predicates and ORDER BY clauses per shape; shared by rebound copies.
        self._shapes: dict[tuple[bool, tuple[bool, ...] | None, bool], tuple[Any, Any]] = {}
        # Whole statements per shape; they embed this select's values, so only
        # plans of the same values share them (see cached_plan).
        self._statements: dict[tuple[bool, tuple[bool, ...] | None, bool], Any] = {}

        keys, self._use_having = analyse_order(select, order_by, self._dialect_name)
        self._finish_build(keys, bind_filters)

    # -- building ---------------------------------------------------------------

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
                shape = self._shapes[cache_key] = build_shape(
                    self._keys,
                    mask,
                    backwards=backwards,
                    inclusive=inclusive,
                    row_values=self._row_values,
                    dialect_name=self._dialect_name,
                )
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
                    params[f"{PARAM_PREFIX}{position}"] = value
        return statement, params

    def count_statement(self, mode: TotalMode, cap: int) -> Any:
        """``SELECT count(*)`` over the filtered select (at most ``cap + 1`` rows if capped)."""
        sa = _sa()
        inner = self._select.order_by(None)
        if mode == "capped":
            inner = inner.limit(cap + 1)
        return sa.select(sa.func.count()).select_from(inner.subquery())

    def explain_statement(self) -> Any:
        """``EXPLAIN (FORMAT JSON)`` of the filtered select, for the planner's row estimate."""
        return Explain(self._select.order_by(None))

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

    def row_sort_key(self) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
        """A key function that orders raw rows of this plan's statements like its ORDER BY.

        A raw row is one of the page statement's rows, hidden sort keys
        included (``result.freeze().data``). Sorting by the key gives the
        forward order; ``reverse=True`` the backward one (the order is total).
        Used to merge pages fetched from several databases (sharding). Values
        compare as Python compares them: text by code point, which is the
        database's order only under a ``"C"`` collation.
        """
        specs = tuple((k.row_index, k.descending, k.nulls_last) for k in self._keys)

        def key(row: Sequence[Any]) -> tuple[Any, ...]:
            parts: list[tuple[Any, ...]] = []
            for index, descending, nulls_last in specs:
                value = row[index]
                if value is None:
                    parts.append((1,) if nulls_last else (-1,))
                else:
                    parts.append((0, _Descending(value) if descending else value))
            return tuple(parts)

        return key

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


_DEFAULT_CODEC = CursorCodec()
