"""``ShardSession``: a ``Session`` that routes each statement by its shard key.

``shards.sessionmaker()`` builds these (``AsyncShardMap.sessionmaker()`` as
the sync session of an ``AsyncSession``, so both colours route here). The
key of a statement is its ``shard_key`` execution option
(``session.execute(stmt, execution_options={"shard_key": user_id})``,
``select(...).execution_options(shard_key=...)``,
``session.get(User, 5, execution_options={"shard_key": 5})``), else the
session's own ``shard_key`` (``Session(shard_key=user_id)``), which flushes
use. With ``id_columns`` (columns holding shard-aware IDs, see
``sharding/_ids.py``) a statement with no ``shard_key`` option routes by the
logical shard encoded in an ID it names: ``session.get(Order, order_id)``,
a top-level ``WHERE order_id = :x`` or ``IN (...)`` (all on one target), and
a flush of an object whose ID column is set; the ID is more specific than
the session's ``shard_key``, so it wins over it. A statement with none of
these is refused with
:class:`~scalekit.errors.ShardingError`: reading every shard is
``shards.fan_out()``. Statements for several targets in one session open one
transaction per target; they are not atomic across targets.

This plays the role of ``sqlalchemy.ext.horizontal_shard.ShardedSession``
(whose ``execute_chooser`` runs a statement on several shards and whose
``shard_chooser`` picks one) with the key hashed by the map, and with
routing pools as targets: a target that is a pool sends reads to its
replicas and writes (and everything after a write) to its primary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList

from scalekit.errors import ConfigurationError, ShardingError
from scalekit.sharding._base import record_write, writes
from scalekit.sharding._ids import DEFAULT_ID_LAYOUT, IdLayout

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import Mapper, ORMExecuteState

    from scalekit.sharding._base import ShardMapBase
    from scalekit.sharding._hash import ShardKey

__all__ = ["SHARD_KEY_OPTION", "IdRouting", "ShardSession"]

SHARD_KEY_OPTION = "shard_key"
_ID_LIMIT = 1 << 63
SHARD_LOGICAL = "shard_logicals"
"""Bind argument: the logical shards (one target's) of the IDs a statement names."""


class IdRouting:
    """Which columns hold shard-aware IDs, and their layout: how a session routes by ID.

    Built by ``shards.sessionmaker(id_columns=[...], id_layout=...)``; pure
    (it reads statements and objects, no I/O).

    Raises:
        ConfigurationError: a column that is not a table column, or a layout
            that is not an :class:`~scalekit.sharding.IdLayout`.
    """

    def __init__(self, columns: Iterable[Any], layout: IdLayout = DEFAULT_ID_LAYOUT) -> None:
        if not isinstance(layout, IdLayout):
            raise ConfigurationError(
                f"id_layout must be an IdLayout, got {type(layout).__name__}",
                parameter="id_layout",
            )
        found: set[sa.Column[Any]] = set()
        for given in columns:
            column = _plain_column(given)
            if column is None:
                raise ConfigurationError(
                    f"id_columns takes table columns or mapped attributes, got {given!r}",
                    parameter="id_columns",
                )
            found.add(column)
        if not found:
            raise ConfigurationError("id_columns is empty", parameter="id_columns")
        self.columns = frozenset(found)
        self.layout = layout
        self._by_mapper: dict[Any, str | None] = {}

    def ids_in(self, statement: Any, parameters: Mapping[str, Any] | None) -> list[Any] | None:
        """The IDs a statement's top-level ``WHERE`` pins an ID column to, or None.

        A term ``id_column = value`` or ``id_column IN (values)`` ANDed at the
        top of the ``WHERE`` bounds every row the statement touches to those
        IDs; anything else (OR, a join condition, a subquery) is not read.
        """
        where = getattr(statement, "whereclause", None)
        if where is None:
            return None
        for term in _and_terms(where):
            if not isinstance(term, BinaryExpression):
                continue
            left, right, operator = term.left, term.right, term.operator
            if operator is operators.eq and isinstance(left, BindParameter):
                left, right = right, left
            if operator not in (operators.eq, operators.in_op):
                continue
            if _plain_column(left) not in self.columns or not isinstance(right, BindParameter):
                continue
            if parameters is not None and right.key in parameters:
                value = parameters[right.key]
            else:
                value = right.effective_value
            values = list(value) if operator is operators.in_op else [value]
            if values and all(type(v) is int and 0 <= v < _ID_LIMIT for v in values):
                return values
        return None

    def id_of(self, mapper: Mapper[Any], instance: object) -> Any:
        """The value of ``instance``'s ID column (None when its mapper has none, or unset)."""
        try:
            key = self._by_mapper[mapper]
        except KeyError:
            key = next(
                (
                    prop.key
                    for prop in mapper.column_attrs
                    if _plain_column(prop.columns[0]) in self.columns
                ),
                None,
            )
            self._by_mapper[mapper] = key
        if key is None:
            return None
        value = sa.inspect(instance).dict.get(key)
        return value if type(value) is int else None


def _plain_column(given: Any) -> sa.Column[Any] | None:
    element = given.__clause_element__() if hasattr(given, "__clause_element__") else given
    element = getattr(element, "_deannotate", lambda: element)()
    return element if isinstance(element, sa.Column) else None


def _and_terms(where: Any) -> Iterable[Any]:
    if isinstance(where, BooleanClauseList) and where.operator is operators.and_:
        for clause in where.clauses:
            yield from _and_terms(clause)
    else:
        yield where


class ShardSession(Session):
    """A ``Session`` routing each statement to the target of its ``shard_key``.

    Build it with ``shards.sessionmaker()``; ``shard_key=`` when opening it
    sets the key for statements that carry none, and for flushes.

    Raises:
        ConfigurationError: built without ``shard_map``.
        ShardingError: a statement or flush with no shard key.
    """

    def __init__(
        self,
        *args: Any,
        shard_map: ShardMapBase | None = None,
        shard_key: ShardKey | None = None,
        shard_ids: IdRouting | None = None,
        **kwargs: Any,
    ) -> None:
        if shard_map is None:
            raise ConfigurationError(
                "ShardSession needs shard_map=...; use shards.sessionmaker()",
                parameter="shard_map",
            )
        if not _installed:
            _install_events()
        self._sk_map = shard_map
        self._sk_key = shard_key
        self._sk_ids = shard_ids
        self._sk_primary: set[str] = set()
        super().__init__(*args, **kwargs)
        shard_map._watch_writes(self, None)

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        bind: Engine | Connection | None = None,
        shard_key: ShardKey | None = None,
        shard_target: str | None = None,
        shard_logicals: tuple[int, ...] | None = None,
        **kw: Any,
    ) -> Engine | Connection:
        """The engine for ``clause``: the target of its shard key (a pool's node by its role)."""
        if bind is not None:
            return bind
        shard_map = self._sk_map
        if shard_target is not None:
            name, logical = shard_target, -1
        elif shard_logicals and shard_key is None:
            name, logical = shard_map._owner_of(shard_logicals[0]), shard_logicals[0]
        else:
            name, logical = shard_map._route_statement(self._sk_key, shard_key, clause)
            shard_logicals = None
        write = shard_target is not None or writes(self, clause)
        if write:
            self._sk_primary.add(name)
            if shard_map.fenced and shard_target is None:
                for each in shard_logicals or (logical,):
                    record_write(self, name, each)
        # After a write the transaction stays on that target's primary (its own rows).
        return shard_map._sync_bind(name, writes=write or name in self._sk_primary)

    def flush(self, objects: Any = None) -> None:
        """Flush, each object to the target of its ID when it has one (see ``id_columns``)."""
        if self._sk_ids is None or "connection_callable" in self.__dict__:
            return super().flush(objects)  # no IDs, or a flush inside a flush
        # SQLAlchemy's per-instance hook (horizontal_shard's): set for flushes only,
        # because its bulk INSERT refuses to run while it is set.
        self.connection_callable = self._sk_connection_for
        try:
            super().flush(objects)
        finally:
            del self.connection_callable

    def _sk_connection_for(
        self, mapper: Mapper[Any] | None = None, instance: object | None = None, **kw: Any
    ) -> Connection:
        assert self._sk_ids is not None and mapper is not None
        id_ = None if instance is None else self._sk_ids.id_of(mapper, instance)
        arguments: dict[str, Any] = {"mapper": mapper}
        if id_ is not None:
            arguments[SHARD_LOGICAL] = (self._sk_ids.layout.shard_of(id_),)
        return self.connection(bind_arguments=arguments)

    def _sk_logicals_of_ids(self, ids: list[Any]) -> tuple[int, ...]:
        """The logical shards of ``ids``. Raises ShardingError when they span targets."""
        assert self._sk_ids is not None
        layout, shard_map = self._sk_ids.layout, self._sk_map
        logicals = tuple(sorted({layout.shard_of(id_) for id_ in ids}))
        names = {shard_map._owner_of(logical) for logical in logicals}
        if len(names) > 1:
            raise ShardingError(
                f"the IDs of this statement live on several targets ({', '.join(sorted(names))}); "
                "run one statement per target or read every shard with fan_out()"
            )
        return logicals


def _route_by_option(state: ORMExecuteState) -> Any:
    session = state.session
    if not isinstance(session, ShardSession):
        return None
    arguments = state.bind_arguments
    if SHARD_KEY_OPTION in arguments or SHARD_LOGICAL in arguments:
        return None
    key = state.execution_options.get(SHARD_KEY_OPTION)
    if key is not None:
        return state.invoke_statement(bind_arguments={**arguments, SHARD_KEY_OPTION: key})
    if session._sk_ids is None:
        return None
    parameters = state.parameters if isinstance(state.parameters, Mapping) else None
    ids = session._sk_ids.ids_in(state.statement, parameters)
    if ids is None:
        return None
    logicals = session._sk_logicals_of_ids(ids)
    return state.invoke_statement(bind_arguments={**arguments, SHARD_LOGICAL: logicals})


def _forget_primary(session: Session, transaction: Any) -> None:
    if transaction.parent is None and isinstance(session, ShardSession):
        session._sk_primary.clear()


_installed = False


def _install_events() -> None:
    global _installed
    if not _installed:
        event.listen(ShardSession, "do_orm_execute", _route_by_option)
        event.listen(ShardSession, "after_transaction_end", _forget_primary)
        _installed = True
