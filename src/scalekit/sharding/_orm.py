"""``ShardSession``: a ``Session`` that routes each statement by its shard key.

``shards.sessionmaker()`` builds these (``AsyncShardMap.sessionmaker()`` as
the sync session of an ``AsyncSession``, so both colours route here). The
key of a statement is its ``shard_key`` execution option
(``session.execute(stmt, execution_options={"shard_key": user_id})``,
``select(...).execution_options(shard_key=...)``,
``session.get(User, 5, execution_options={"shard_key": 5})``), else the
session's own ``shard_key`` (``Session(shard_key=user_id)``), which flushes
use. A statement with neither is refused with
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

from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from scalekit.errors import ConfigurationError
from scalekit.sharding._base import record_write, writes

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import ORMExecuteState

    from scalekit.sharding._base import ShardMapBase
    from scalekit.sharding._hash import ShardKey

__all__ = ["SHARD_KEY_OPTION", "ShardSession"]

SHARD_KEY_OPTION = "shard_key"


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
        **kw: Any,
    ) -> Engine | Connection:
        """The engine for ``clause``: the target of its shard key (a pool's node by its role)."""
        if bind is not None:
            return bind
        shard_map = self._sk_map
        if shard_target is not None:
            name, logical = shard_target, -1
        else:
            name, logical = shard_map._route_statement(self._sk_key, shard_key, clause)
        write = shard_target is not None or writes(self, clause)
        if write:
            self._sk_primary.add(name)
            if shard_map.fenced and shard_target is None:
                record_write(self, name, logical)
        # After a write the transaction stays on that target's primary (its own rows).
        return shard_map._sync_bind(name, writes=write or name in self._sk_primary)


def _route_by_option(state: ORMExecuteState) -> Any:
    if not isinstance(state.session, ShardSession):
        return None
    key = state.execution_options.get(SHARD_KEY_OPTION)
    if key is None or SHARD_KEY_OPTION in state.bind_arguments:
        return None
    return state.invoke_statement(bind_arguments={**state.bind_arguments, SHARD_KEY_OPTION: key})


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
