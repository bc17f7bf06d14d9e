"""The pure core of batch inserts: options, table shape, rows, chunks, dedupe, method choice.

Nothing here does I/O. The table description (:class:`TableShape`) is read
from a SQLAlchemy ``Table`` (imported lazily, only when a shape is built);
everything else works on plain tuples:

* :func:`chunked` cuts any iterable into lists of at most ``size`` items,
  preserving order, holding one chunk in memory at a time;
* :class:`RowShaper` turns dicts or tuples into tuples in column order and
  reports a row that does not fit (unknown or missing column, wrong length)
  with its input position;
* :func:`dedupe` keeps one row per conflict key inside a chunk (``"last"``,
  ``"first"`` or a merge callable), because PostgreSQL refuses to update the
  same row twice in one statement (``CardinalityViolation``);
* :func:`choose_method` and :func:`default_chunk_size` pick the fastest
  method the dialect and driver allow, and a chunk size that fits the
  dialect's bind-parameter limit.

The load itself is driven by :mod:`scalekit.batch._flow`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy import Table

__all__ = [
    "BIND_LIMITS",
    "COPY_CHUNK_ROWS",
    "UNNEST_MAX_ROWS",
    "BatchProgress",
    "BatchResult",
    "ColumnShape",
    "ConflictPlan",
    "Dedupe",
    "Method",
    "OnError",
    "RejectedRow",
    "RowProblem",
    "RowShaper",
    "TableShape",
    "TransactionPolicy",
    "Upsert",
    "choose_method",
    "chunked",
    "dedupe",
    "default_chunk_size",
    "resolve_conflict",
    "table_shape",
]

Method: TypeAlias = Literal["auto", "copy", "copy_text", "copy_staging", "unnest", "executemany"]
"""How rows are written; ``"auto"`` picks the fastest that fits (see :func:`choose_method`)."""

TransactionPolicy: TypeAlias = Literal["all_or_nothing", "per_chunk", "savepoint"]
OnError: TypeAlias = Literal["raise", "isolate"]
Dedupe: TypeAlias = (
    Literal["last", "first"] | Callable[[dict[str, Any], dict[str, Any]], Any] | None
)

#: Rows per chunk for the COPY methods (memory: one chunk of tuples at a time).
#: Each COPY ends with a wait for the server to catch up, so larger chunks
#: pipeline better: 20,000 rows loaded ~20% slower than one COPY of 200,000.
COPY_CHUNK_ROWS = 50_000
#: Up to this many rows, returned keys and upserts on PostgreSQL use ``unnest``
#: arrays rather than a COPY into a staging table (whose setup costs more).
UNNEST_MAX_ROWS = 2_000
#: Rows per chunk for ``executemany`` never exceed this, whatever the bind limit.
EXECUTEMANY_MAX_ROWS = 10_000

#: Bind parameters one statement may carry, per dialect name.
BIND_LIMITS: Mapping[str, int] = {
    "sqlite": 32_766,  # SQLITE_MAX_VARIABLE_NUMBER since SQLite 3.32
    "postgresql": 65_535,
    "mysql": 65_535,
    "mariadb": 65_535,
    "mssql": 2_100,
    "oracle": 65_535,
}
_DEFAULT_BIND_LIMIT = 999  # the most conservative (old SQLite)

_METHODS = ("auto", "copy", "copy_text", "copy_staging", "unnest", "executemany")
_PG_ONLY = ("copy", "copy_text", "copy_staging", "unnest")


# -- results -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row that ``on_error="isolate"`` set aside.

    ``position`` is its zero-based input position, ``row`` the row as given,
    ``error`` the exception the database (or the row check) raised for it
    alone, ``message`` that error as text.
    """

    position: int
    row: Any
    error: BaseException
    message: str


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """What a progress callback receives after each chunk.

    ``rows`` input rows handled so far, ``bytes`` COPY payload bytes sent so
    far (0 for methods that send statements), ``chunks`` chunks done,
    ``elapsed`` seconds since the load started.
    """

    rows: int
    bytes: int
    chunks: int
    elapsed: float


@dataclass(slots=True)
class BatchResult:
    """What a batch insert did.

    Attributes:
        method: the method used (never ``"auto"``).
        rows: input rows read (rejected and deduplicated rows included).
        inserted: rows inserted.
        updated: existing rows updated by an upsert.
        skipped: rows that changed nothing (``DO NOTHING``, or an upsert's
            ``where`` was false).
        duplicates: rows dropped by ``dedupe`` (another row of their chunk
            had the same conflict key).
        rejected: rows set aside by ``on_error="isolate"`` (empty when an
            ``on_reject`` callable received them).
        rejected_count: how many rows were rejected (also when a callable took them).
        returned: with ``returning=``, one entry per input row, in input
            order: the returned values as a tuple, or ``None`` for a row that
            was skipped, deduplicated away or rejected.
        chunks: chunks written.
        bytes: COPY payload bytes sent.
        elapsed: seconds the load took.
        committed: rows durably committed by the load itself (``per_chunk``
            commits as it goes; ``all_or_nothing`` and ``savepoint`` on an
            Engine commit at the end; on a caller's Connection or Session
            those leave the commit to the caller, so this stays 0).
        resume_position: the input position a rerun can start from
            (``resume=result``): every row before it is committed.
    """

    method: str
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    duplicates: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    rejected_count: int = 0
    returned: list[tuple[Any, ...] | None] | None = None
    chunks: int = 0
    bytes: int = 0
    elapsed: float = 0.0
    committed: int = 0
    resume_position: int = 0

    @property
    def written(self) -> int:
        """Rows inserted or updated."""
        return self.inserted + self.updated


# -- table shape -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnShape:
    """One column of the target table, as far as a batch insert cares."""

    name: str
    key: str
    required: bool
    is_array: bool = False
    json: Literal["json", "jsonb", None] = None


@dataclass(frozen=True, slots=True)
class TableShape:
    """The target table: name, columns, unique keys. Built by :func:`table_shape`."""

    name: str
    schema: str | None
    columns: tuple[ColumnShape, ...]
    primary_key: tuple[str, ...]
    unique_keys: tuple[tuple[str, ...], ...]
    constraints: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    table: Any = field(default=None, compare=False, repr=False)

    @property
    def qualified_name(self) -> str:
        """``schema.name`` quoted for PostgreSQL."""
        name = quote_ident(self.name)
        return f"{quote_ident(self.schema)}.{name}" if self.schema else name

    def column(self, name: str) -> ColumnShape | None:
        """The column named ``name`` (column name or ORM attribute key), or ``None``."""
        for column in self.columns:
            if column.name == name or column.key == name:
                return column
        return None


def quote_ident(name: str) -> str:
    """Quote an SQL identifier the standard way (double quotes, doubled inside)."""
    return '"' + name.replace('"', '""') + '"'


def _table_of(table: object) -> Table:
    from sqlalchemy import Table, inspect
    from sqlalchemy.exc import NoInspectionAvailable

    if isinstance(table, Table):
        return table
    try:
        mapper = inspect(table)
    except NoInspectionAvailable:
        mapper = None
    local = getattr(mapper, "local_table", None)
    if isinstance(local, Table):
        return local
    raise ConfigurationError(
        f"table must be a SQLAlchemy Table or a mapped ORM class, got {table!r}",
        parameter="table",
    )


def table_shape(table: object) -> TableShape:
    """Describe a Core ``Table`` or a mapped ORM class.

    For an ORM class, dict keys may be attribute names (``key``) as well as
    column names.

    Raises:
        ConfigurationError: ``table`` is neither.
    """
    from sqlalchemy import ARRAY, JSON, UniqueConstraint
    from sqlalchemy.dialects import postgresql

    core = _table_of(table)
    keys: dict[str, str] = {}
    if not isinstance(table, type(core)):
        from sqlalchemy import inspect

        for prop in inspect(table).column_attrs:
            for col in prop.columns:
                if getattr(col, "table", None) is core:
                    keys[col.name] = prop.key
    columns = []
    for col in core.columns:
        generated = col.computed is not None or (
            col.identity is not None and (getattr(col.identity, "always", False))
        )
        if generated:
            continue
        autoincrement = col.primary_key and col is core.autoincrement_column
        required = not (
            col.nullable
            or col.default is not None
            or col.server_default is not None
            or autoincrement
            or col.identity is not None
        )
        json: Literal["json", "jsonb", None] = None
        if isinstance(col.type, postgresql.JSONB):
            json = "jsonb"
        elif isinstance(col.type, JSON):
            json = "json"
        columns.append(
            ColumnShape(
                name=col.name,
                key=keys.get(col.name, col.name),
                required=required,
                is_array=isinstance(col.type, ARRAY),
                json=json,
            )
        )
    primary_key = tuple(c.name for c in core.primary_key.columns)
    uniques: list[tuple[str, ...]] = []
    constraints: dict[str, tuple[str, ...]] = {}
    if primary_key:
        uniques.append(primary_key)
        if core.primary_key.name:
            constraints[str(core.primary_key.name)] = primary_key
    for constraint in core.constraints:
        if isinstance(constraint, UniqueConstraint):
            cols = tuple(c.name for c in constraint.columns)
            if cols and cols not in uniques:
                uniques.append(cols)
            if constraint.name:
                constraints[str(constraint.name)] = cols
    for col in core.columns:
        if col.unique and (col.name,) not in uniques:
            uniques.append((col.name,))
    for index in core.indexes:
        if index.unique and all(hasattr(e, "name") for e in index.expressions):
            cols = tuple(str(getattr(e, "name")) for e in index.expressions)  # noqa: B009
            if cols and cols not in uniques:
                uniques.append(cols)
            if index.name:
                constraints[str(index.name)] = cols
    return TableShape(
        name=core.name,
        schema=core.schema,
        columns=tuple(columns),
        primary_key=primary_key,
        unique_keys=tuple(uniques),
        constraints=constraints,
        table=core,
    )


# -- conflict handling -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upsert:
    """Insert, or update the existing row when a unique key conflicts.

    Parameters:
        index: the columns of the unique key that conflicts (``ON CONFLICT
            (...)``). Default: inferred when the table has exactly one unique
            key among the loaded columns (its primary key, say).
        constraint: a unique constraint's name instead of ``index``
            (PostgreSQL only).
        update: the columns to overwrite from the new row, or ``"all"``
            (every loaded column not in the key). An empty list means
            "DO NOTHING".
        where: an SQL condition that must hold to update (it may refer to the
            table by name and to ``excluded``), e.g.
            ``"excluded.version > orders.version"``; rows where it is false
            are counted as skipped.
        increment: columns added to rather than overwritten on conflict
            (``count = count + excluded.count``): counters. They are updated
            even when ``update`` leaves them out, and ``update="all"`` does not
            overwrite them.

    >>> Upsert(index=["id"], update=["amount"])
    Upsert(index=('id',), constraint=None, update=('amount',), where=None, increment=())

    Raises:
        ConfigurationError: both ``index`` and ``constraint``, an empty
            ``index``, names that are not strings.
    """

    index: Sequence[str] | None = None
    constraint: str | None = None
    update: Sequence[str] | Literal["all"] = "all"
    where: str | None = None
    increment: Sequence[str] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "increment", _names(self.increment, "increment"))
        if self.index is not None:
            index = _names(self.index, "index")
            if not index:
                raise ConfigurationError("index must name at least one column", parameter="index")
            object.__setattr__(self, "index", index)
        if self.index is not None and self.constraint is not None:
            raise ConfigurationError(
                "give either index or constraint, not both", parameter="constraint"
            )
        if self.constraint is not None and not isinstance(self.constraint, str):
            raise ConfigurationError(
                f"constraint must be a name, got {self.constraint!r}", parameter="constraint"
            )
        if self.update != "all":
            object.__setattr__(self, "update", _names(self.update, "update"))
        if self.where is not None and not isinstance(self.where, str):
            raise ConfigurationError(
                f"where must be an SQL condition string, got {self.where!r}", parameter="where"
            )


def _names(value: object, parameter: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"{parameter} must be a list of column names, got {value!r}", parameter=parameter
        )
    names = tuple(value)
    for name in names:
        if not isinstance(name, str):
            raise ConfigurationError(
                f"{parameter} must hold column names, got {name!r}", parameter=parameter
            )
    return names


@dataclass(frozen=True, slots=True)
class ConflictPlan:
    """``on_conflict`` resolved against the table and the loaded columns.

    ``key`` is empty for a DO NOTHING without a conflict target (the loaded
    columns hold several unique keys, and any of them conflicting skips the row).
    """

    action: Literal["nothing", "update"]
    key: tuple[str, ...]
    constraint: str | None
    update: tuple[str, ...]
    where: str | None
    key_indices: tuple[int, ...]
    increment: tuple[str, ...] = ()


def resolve_conflict(
    on_conflict: Upsert | Literal["nothing"] | None,
    shape: TableShape,
    columns: Sequence[str],
) -> ConflictPlan | None:
    """Resolve ``on_conflict`` into the key columns, the update list and the action.

    Raises:
        ConfigurationError: an unknown column in ``index`` or ``update``, a key
            column not loaded, an unknown constraint, or no unique key to infer
            when none was named.
    """
    if on_conflict is None:
        return None
    if on_conflict == "nothing":
        upsert = Upsert(update=())
    elif isinstance(on_conflict, Upsert):
        upsert = on_conflict
    else:
        raise ConfigurationError(
            f'on_conflict must be None, "nothing" or an Upsert, got {on_conflict!r}',
            parameter="on_conflict",
        )
    loaded = list(columns)
    if upsert.constraint is not None:
        if upsert.constraint not in shape.constraints:
            raise ConfigurationError(
                f"table {shape.name!r} has no unique constraint named {upsert.constraint!r} "
                "in its metadata",
                parameter="constraint",
            )
        key = shape.constraints[upsert.constraint]
    elif upsert.index is not None:
        key = tuple(_column_name(shape, name, "index") for name in upsert.index)
    else:
        candidates = [k for k in shape.unique_keys if all(c in loaded for c in k)]
        if len(candidates) != 1 and upsert.update == ():
            # DO NOTHING needs no target: any unique key that conflicts skips the row.
            return ConflictPlan(
                action="nothing", key=(), constraint=None, update=(), where=None, key_indices=()
            )
        if len(candidates) != 1:
            found = "no" if not candidates else "more than one"
            raise ConfigurationError(
                f"{found} unique key of {shape.name!r} is among the loaded columns; "
                "name the conflict target with Upsert(index=[...])",
                parameter="on_conflict",
            )
        key = candidates[0]
    for name in key:
        if name not in loaded:
            raise ConfigurationError(
                f"conflict key column {name!r} is not among the loaded columns",
                parameter="index",
            )
    increment = tuple(_column_name(shape, name, "increment") for name in upsert.increment)
    for name in increment:
        if name not in loaded or name in key:
            raise ConfigurationError(
                f"increment column {name!r} is not among the loaded non-key columns",
                parameter="increment",
            )
    if upsert.update == "all":
        update = tuple(c for c in loaded if c not in key and c not in increment)
    else:
        update = tuple(_column_name(shape, name, "update") for name in upsert.update)
        for name in update:
            if name not in loaded:
                raise ConfigurationError(
                    f"update column {name!r} is not among the loaded columns",
                    parameter="update",
                )
        update = tuple(c for c in update if c not in increment)
    action: Literal["nothing", "update"] = "update" if update or increment else "nothing"
    return ConflictPlan(
        action=action,
        key=key,
        constraint=upsert.constraint,
        update=update,
        where=upsert.where if action == "update" else None,
        key_indices=tuple(loaded.index(c) for c in key),
        increment=increment,
    )


def _column_name(shape: TableShape, name: str, parameter: str) -> str:
    column = shape.column(name)
    if column is None:
        raise ConfigurationError(
            f"table {shape.name!r} has no column {name!r}", parameter=parameter
        )
    return column.name


# -- rows --------------------------------------------------------------------------------


class RowProblem(Exception):
    """A row does not fit the table (internal; the flow turns it into ``InvalidBatchRow``)."""

    def __init__(self, message: str, position: int, column: str | None) -> None:
        super().__init__(message)
        self.position = position
        self.column = column


class RowShaper:
    """Turns input rows (dicts or tuples) into tuples in column order.

    The columns are ``columns`` when given, else the keys of the first row
    when it is a mapping, else every insertable column of the table in order.

    Raises:
        ConfigurationError: (at construction) an unknown column in
            ``columns``; a required column not loaded.
        RowProblem: (at construction) the first row, a mapping, has a key
            that is not a column of the table.
    """

    __slots__ = ("_getter", "_keys", "_width", "columns", "mapping", "shape")

    def __init__(
        self, shape: TableShape, first_row: object, columns: Sequence[str] | None = None
    ) -> None:
        self.shape = shape
        if columns is not None:
            names = _names(columns, "columns")
            keys = names
            self.mapping = isinstance(first_row, Mapping)
        elif isinstance(first_row, Mapping):
            keys = tuple(first_row)
            self.mapping = True
        else:
            keys = tuple(c.key for c in shape.columns)
            self.mapping = False
        resolved = []
        for key in keys:
            if not isinstance(key, str):
                raise ConfigurationError(
                    f"column names must be strings, got {key!r}", parameter="columns"
                )
            column = shape.column(key)
            if column is None:
                if columns is None:  # the key comes from the first row: a row problem
                    raise RowProblem(
                        f"row 0 has column {key!r}, which does not exist in {shape.name!r}",
                        0,
                        key,
                    )
                raise ConfigurationError(
                    f"table {shape.name!r} has no column {key!r}", parameter="columns"
                )
            resolved.append(column)
        names_seen = [c.name for c in resolved]
        if len(set(names_seen)) != len(names_seen):
            raise ConfigurationError(
                f"a column is named twice in {list(keys)!r}", parameter="columns"
            )
        for column in shape.columns:
            if column.required and column.name not in names_seen:
                raise ConfigurationError(
                    f"required column {column.name!r} of {shape.name!r} is not loaded "
                    "(NOT NULL without a default)",
                    parameter="columns",
                )
        if not resolved:
            raise ConfigurationError("no column to load", parameter="columns")
        self.columns: tuple[ColumnShape, ...] = tuple(resolved)
        self._keys = tuple(keys)
        self._width = len(keys)
        getter = itemgetter(*keys)
        if len(keys) == 1:
            self._getter: Callable[[Any], tuple[Any, ...]] = lambda row: (getter(row),)
        else:
            self._getter = getter

    @property
    def names(self) -> tuple[str, ...]:
        """The loaded column names, in order."""
        return tuple(c.name for c in self.columns)

    def shape_rows(self, rows: Sequence[Any], first_position: int) -> list[tuple[Any, ...]]:
        """Rows as tuples in column order.

        Raises:
            RowProblem: a row with an unknown or missing key, or of the wrong
                length or kind; the first such row is reported.
        """
        width = self._width
        if self.mapping:
            # C-level loops (map) on the hot path: a plain load shapes every row here.
            try:
                out = list(map(self._getter, rows))
            except (KeyError, TypeError):
                out = None
            if out is not None and (not rows or set(map(len, rows)) == {width}):
                return out
        elif all(type(row) is tuple and len(row) == width for row in rows):
            return list(rows)
        elif all(type(row) is list and len(row) == width for row in rows):
            return [tuple(row) for row in rows]
        # The slow path: row by row, so the first bad row is reported (and rows
        # of other sequence types, such as SQLAlchemy ``Row``, are accepted).
        return [self.shape_one(row, first_position + offset) for offset, row in enumerate(rows)]

    def shape_one(self, row: Any, position: int) -> tuple[Any, ...]:
        """One row as a tuple; raises :class:`RowProblem` when it does not fit."""
        self.check_row(row, position)
        if self.mapping:
            return self._getter(row)
        return tuple(row)

    def check_row(self, row: Any, position: int) -> None:
        """Raise :class:`RowProblem` naming what is wrong with ``row``, if anything."""
        if self.mapping:
            if not isinstance(row, Mapping):
                raise RowProblem(
                    f"row {position} is a {type(row).__name__}, expected a mapping like "
                    "the first row",
                    position,
                    None,
                )
            for key in self._keys:
                if key not in row:
                    raise RowProblem(f"row {position} has no column {key!r}", position, key)
            for key in row:
                if key not in self._keys:
                    column = self.shape.column(key) if isinstance(key, str) else None
                    why = "is not loaded (not in the first row)" if column else "does not exist"
                    raise RowProblem(
                        f"row {position} has column {key!r}, which {why}",
                        position,
                        key if isinstance(key, str) else None,
                    )
            return
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise RowProblem(
                f"row {position} is a {type(row).__name__}, expected a tuple or a mapping",
                position,
                None,
            )
        if len(row) != self._width:
            raise RowProblem(
                f"row {position} has {len(row)} values, expected {self._width} "
                f"({', '.join(self._keys)})",
                position,
                None,
            )

    def as_dict(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """A shaped row back as ``{column name: value}``."""
        return dict(zip(self.names, row, strict=True))


def _is_count(value: object, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def chunked(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Cut ``iterable`` into lists of ``size`` items (the last may be shorter), in order.

    >>> list(chunked(range(5), 2))
    [[0, 1], [2, 3], [4]]

    Raises:
        ConfigurationError: ``size`` < 1.
    """
    if not _is_count(size):
        raise ConfigurationError(f"chunk size must be an int >= 1, got {size!r}", parameter="size")
    iterator = iter(iterable)
    while True:
        chunk = list(islice(iterator, size))
        if not chunk:
            return
        yield chunk


def dedupe(
    rows: Sequence[tuple[Any, ...]],
    positions: Sequence[int],
    key_indices: Sequence[int],
    policy: Dedupe,
    as_dict: Callable[[tuple[Any, ...]], dict[str, Any]] | None = None,
    from_value: Callable[[Any], tuple[Any, ...]] | None = None,
) -> tuple[list[tuple[Any, ...]], Sequence[int], int]:
    """Keep one row per conflict key; return ``(rows, positions, dropped)``.

    ``"last"`` keeps the last row of a key, ``"first"`` the first, a callable
    ``merge(kept, new) -> row`` folds them in input order (rows as dicts;
    ``as_dict``/``from_value`` convert). The surviving rows keep the input
    order of the row whose values they carry (a merge takes the position of
    the last row). Rows with a NULL in the key never conflict, so they are
    never deduplicated. ``policy=None`` keeps every row.

    >>> dedupe([(1, "a"), (2, "b"), (1, "c")], [0, 1, 2], [0], "last")
    ([(2, 'b'), (1, 'c')], [1, 2], 1)
    """
    if policy is None:
        return list(rows), list(positions), 0
    single = len(key_indices) == 1
    first_index = key_indices[0]
    # The common case, every key distinct, found by C-level loops: nothing to drop.
    if len(set(map(itemgetter(*key_indices), rows))) == len(rows):
        return list(rows), positions, 0
    kept: dict[Hashable, int] = {}
    out_rows: list[tuple[Any, ...] | None] = []
    out_positions: list[int] = []
    dropped = 0
    for row, position in zip(rows, positions, strict=True):
        key: Hashable = row[first_index] if single else tuple(row[i] for i in key_indices)
        if key is None or (not single and None in key):  # type: ignore[operator]
            out_rows.append(row)
            out_positions.append(position)
            continue
        slot = kept.get(key)
        if slot is None:
            kept[key] = len(out_rows)
            out_rows.append(row)
            out_positions.append(position)
            continue
        dropped += 1
        if policy == "first":
            continue
        previous = out_rows[slot]
        assert previous is not None
        if policy == "last":
            merged = row
        else:
            assert as_dict is not None and from_value is not None
            merged = from_value(policy(as_dict(previous), as_dict(row)))
        out_rows[slot] = None
        kept[key] = len(out_rows)
        out_rows.append(merged)
        out_positions.append(position)
    final_rows = [r for r in out_rows if r is not None]
    final_positions = [p for r, p in zip(out_rows, out_positions, strict=True) if r is not None]
    return final_rows, final_positions, dropped


# -- method and chunk size ---------------------------------------------------------------


def choose_method(
    requested: Method,
    *,
    dialect: str,
    copy_capable: bool,
    needs_statement: bool,
    has_array_column: bool,
    small_chunks: bool,
) -> Method:
    """Pick the write method.

    ``needs_statement``: conflict handling or returned keys are wanted, so a
    bare COPY cannot do. ``small_chunks``: every chunk holds at most
    :data:`UNNEST_MAX_ROWS` rows (a small input, or a small ``chunk_size``).
    With ``requested="auto"`` on PostgreSQL through psycopg: bare loads use
    binary ``"copy"``; otherwise small chunks use ``"unnest"`` and larger
    ones ``"copy_staging"`` (unless an array column rules ``unnest`` out).
    Other PostgreSQL drivers (asyncpg, psycopg2) and other dialects use
    ``"executemany"`` (the fast paths run SQL on psycopg's connection).

    Raises:
        ConfigurationError: a method the dialect or driver cannot run, a bare
            COPY asked for with conflict handling or returned keys, or
            ``"unnest"`` with an array column (arrays of arrays do not unnest
            row by row).
    """
    if requested not in _METHODS:
        raise ConfigurationError(
            f"method must be one of {', '.join(_METHODS)}; got {requested!r}", parameter="method"
        )
    postgres = dialect == "postgresql"
    if requested == "auto":
        if not postgres:
            return "executemany"
        if not copy_capable:
            return "executemany"
        if not needs_statement:
            return "copy"
        if small_chunks and not has_array_column:
            return "unnest"
        return "copy_staging"
    if requested in _PG_ONLY and not postgres:
        raise ConfigurationError(
            f"method {requested!r} needs PostgreSQL, not {dialect}", parameter="method"
        )
    if requested in _PG_ONLY and not copy_capable:
        raise ConfigurationError(
            f"method {requested!r} needs the psycopg (3) driver", parameter="method"
        )
    if requested in ("copy", "copy_text") and needs_statement:
        raise ConfigurationError(
            f"method {requested!r} cannot handle conflicts or return keys; "
            'use "copy_staging" or "auto"',
            parameter="method",
        )
    if requested == "unnest" and has_array_column:
        raise ConfigurationError(
            'method "unnest" cannot load array columns; use "copy_staging"', parameter="method"
        )
    return requested


def default_chunk_size(method: Method, n_columns: int, dialect: str) -> int:
    """Rows per chunk when the caller gave none.

    COPY methods: :data:`COPY_CHUNK_ROWS`. ``unnest``: one bind parameter per
    column whatever the row count, so :data:`COPY_CHUNK_ROWS` too.
    ``executemany``: as many rows as the dialect's bind-parameter limit
    allows for ``n_columns`` columns (insertmanyvalues renders multi-row
    VALUES), at most :data:`EXECUTEMANY_MAX_ROWS`.

    >>> default_chunk_size("executemany", 10, "sqlite")
    3276
    >>> default_chunk_size("executemany", 3, "mssql")
    700

    Raises:
        ConfigurationError: ``n_columns`` < 1.
    """
    if n_columns < 1:
        raise ConfigurationError("no column to load", parameter="columns")
    if method != "executemany":
        return COPY_CHUNK_ROWS
    limit = BIND_LIMITS.get(dialect, _DEFAULT_BIND_LIMIT)
    return max(1, min(EXECUTEMANY_MAX_ROWS, math.floor(limit / n_columns)))
