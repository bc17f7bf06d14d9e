"""``ScalekitRouter``: Django's ``DATABASE_ROUTERS`` on scalekit's routing core.

::

    DATABASES = {"default": {...primary...}, "replica1": {...}, "replica2": {...}}
    DATABASE_ROUTERS = ["scalekit.contrib.django.ScalekitRouter"]
    SCALEKIT = {"ROUTING": {"PRIMARY": "default", "REPLICAS": ["replica1", "replica2"],
                            "MAX_LAG_SECONDS": 5.0}}

Django does not use SQLAlchemy, so the router works on Django aliases: the
nodes of a :class:`~scalekit.routing._core.RoutingCore` are the aliases, and
the I/O (health checks, replay positions, the primary's WAL position) runs on
Django's own connections. The rules are the routing pool's: replicas out of
the rotation while blacklisted (a connection error, with back-off) or lagging
past ``MAX_LAG_SECONDS``; a promoted replica takes the writes (failover); and
read-your-writes by LSN token: a write in this context makes the next read
resolve a :class:`~scalekit.routing.ConsistencyToken` (the primary's WAL
position) and go to a replica that has replayed it, else to the primary. The
events are the pool's (``NodeEjected``, ``NodeReadmitted``, ``LagChanged``,
``FailoverEvent``). Off PostgreSQL (SQLite in development) the token has no
LSN and reads stick to the primary for ``STICKY_SECONDS`` after a write.

The context is a context variable: per thread, per asyncio task, carried
through ``sync_to_async``; :class:`~scalekit.contrib.django.ConsistencyMiddleware`
scopes it to a request and carries the token to the user's next request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit.contrib.django import _settings
from scalekit.instrumentation import emit
from scalekit.routing import ConsistencyToken, FailoverEvent, NodeEjected, Target
from scalekit.routing._core import (
    EMPTY_CONTEXT,
    ContextState,
    RoutingConfig,
    RoutingCore,
    commit_position,
    parse_lsn,
)
from scalekit.routing._events import NodeReadmitted
from scalekit.routing._router import POSITION_SQL, REPLAY_SQL, TOKEN_SQL, check_nodes
from scalekit.typing import Clock

__all__ = ["Routing", "ScalekitRouter", "routing", "use_primary"]

_log = logging.getLogger("scalekit.contrib.django")

_context: ContextVar[ContextState] = ContextVar("scalekit_django_routing", default=EMPTY_CONTEXT)


class Routing:
    """The routing state of one process: the core over the Django aliases, and its I/O."""

    def __init__(self, options: dict[str, Any], clock: Clock = SYSTEM_CLOCK) -> None:
        from django.db import connections

        self.primary_alias: str = options.get("PRIMARY", "default")
        self.replicas: tuple[str, ...] = tuple(options.get("REPLICAS", ()))
        self.aliases = frozenset((self.primary_alias, *self.replicas))
        config = RoutingConfig(
            max_lag_seconds=options.get("MAX_LAG_SECONDS", 5.0),
            sticky_seconds=options.get("STICKY_SECONDS", 2.0),
            blacklist_seconds=options.get("BLACKLIST_SECONDS", 10.0),
            check_interval=options.get("CHECK_INTERVAL", 1.0),
        )
        self.core = RoutingCore([self.primary_alias], list(self.replicas), config, clock)
        self.clock = clock
        self.connections = connections
        self.postgres = all(connections[alias].vendor == "postgresql" for alias in self.aliases)
        self.apps_on_primary = frozenset(options.get("APPS_ON_PRIMARY", ()))
        self._check_lock = threading.Lock()
        self._reported: tuple[str | None, bool] = (self.primary_alias, False)

    # -- I/O on Django's connections ------------------------------------------------------------

    def _row(self, alias: str, sql: str) -> Any:
        with self.connections[alias].cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()

    def _failed(self, alias: str, exc: BaseException) -> None:
        seconds = self.core.record_failure(alias)
        if seconds is not None:
            emit(NodeEjected(name="django", node=alias, seconds=seconds, error=type(exc).__name__))

    def _succeeded(self, alias: str) -> None:
        down_for = self.core.record_success(alias)
        if down_for is not None:
            emit(NodeReadmitted(name="django", node=alias, seconds_down=down_for))

    def refresh(self) -> None:
        """Check every alias's role and WAL position now (PostgreSQL), and apply the results."""
        if not self.postgres:
            self.core.mark_checked()
            return
        check_nodes(self.core, "django", self._position_row, self._apply_roles)

    def _position_row(self, alias: str) -> Any:
        from django.db import Error

        try:
            row = self._row(alias, POSITION_SQL)
        except Error as exc:
            self._failed(alias, exc)
            self.connections[alias].close()
            return None
        self._succeeded(alias)
        return row

    def _apply_roles(self, roles: dict[str, Target | None]) -> None:
        change = self.core.apply_roles(roles)
        reported = (change.new_primary, change.split_brain)
        if reported != self._reported:
            self._reported = reported
            emit(
                FailoverEvent(
                    name="django",
                    old_primary=change.old_primary,
                    new_primary=change.new_primary,
                    split_brain=change.split_brain,
                )
            )

    def maybe_refresh(self) -> None:
        core = self.core
        if not (core.check_due() or core.role_check_due()):
            return
        if not self._check_lock.acquire(blocking=False):
            return
        try:
            self.refresh()
        except Exception as exc:  # a check runs on a read's path: it must never fail the read
            core.mark_checked()
            _log.warning("scalekit router: health check failed: %s", type(exc).__name__)
        finally:
            self._check_lock.release()

    def _probe(self, alias: str) -> None:
        from django.db import Error

        try:
            (text,) = self._row(alias, REPLAY_SQL)
        except Error as exc:
            self.core.observe_replay(alias, None)
            self._failed(alias, exc)
            return
        self.core.observe_replay(alias, None if text is None else parse_lsn(text))

    def primary_token(self) -> ConsistencyToken:
        """The primary's position now, as a token (no LSN off PostgreSQL or when unreadable)."""
        from django.db import Error

        now = self.clock.time()
        if not self.postgres:
            return ConsistencyToken(lsn=None, written_at=now)
        try:
            insert, flush, block, segment = self._row(self.write_alias(), TOKEN_SQL)
        except Error:
            return ConsistencyToken(lsn=None, written_at=now)
        position = commit_position(
            parse_lsn(insert), parse_lsn(flush), block_size=int(block), segment_size=int(segment)
        )
        return ConsistencyToken(lsn=position, written_at=now)

    # -- routing --------------------------------------------------------------------------------

    def write_alias(self) -> str:
        return self.core.choose_write()

    def note_write(self) -> None:
        state = _context.get()
        _context.set(dataclasses.replace(state, pending_write_at=self.clock.time()))

    def resolve(self) -> ContextState:
        """The context with a pending write turned into a token (one query on the primary)."""
        state = _context.get()
        if state.pending_write_at is None:
            return state
        token = self.primary_token().merge(state.token)
        state = dataclasses.replace(state, token=token, pending_write_at=None)
        _context.set(state)
        return state

    def read_alias(self) -> str:
        self.maybe_refresh()
        state = _context.get()
        if state.pending_write_at is not None:
            primary = self.write_alias()
            if self.connections[primary].in_atomic_block:
                return primary  # this transaction's own writes are only there
            state = self.resolve()
        plan = self.core.choose_read(state)
        if plan.probe:
            for alias in plan.probe[:2]:
                self._probe(alias)
            plan = self.core.choose_read(state, probed=True)
        return plan.attempts[0]

    def health(self) -> dict[str, Any]:
        """Per alias: role, up, lag; no connection details."""
        snapshot = self.core.snapshot()
        primary = self.core.primary
        now = self.clock.monotonic()
        nodes = {}
        for alias, state in snapshot.items():
            blacklisted = state.down_until is not None and now < state.down_until
            nodes[alias] = {
                "role": "primary" if alias == primary else state.role.value,
                "up": state.reachable and not blacklisted,
                "lagging": state.lagging,
                "lag_seconds": state.lag_seconds,
                "lag_bytes": state.lag_bytes,
            }
        return {"primary": primary, "split_brain": self.core.split_brain, "nodes": nodes}


_lock = threading.Lock()
_routing: Routing | None = None


def routing() -> Routing:
    """The process's :class:`Routing`, built from ``SCALEKIT['ROUTING']`` on first use."""
    global _routing
    found = _routing
    if found is None:
        with _lock:
            if _routing is None:
                _routing = Routing(_settings.section("ROUTING"))
            found = _routing
    return found


def reset() -> None:
    """Forget the routing state (tests change settings; call this)."""
    global _routing
    with _lock:
        _routing = None
    _context.set(EMPTY_CONTEXT)


@contextlib.contextmanager
def use_primary() -> Iterator[None]:
    """Send every read of this context to the primary inside the block."""
    previous = _context.get().force
    _context.set(dataclasses.replace(_context.get(), force=Target.PRIMARY))
    try:
        yield
    finally:
        _context.set(dataclasses.replace(_context.get(), force=previous))


class ScalekitRouter:
    """A Django database router for ``DATABASE_ROUTERS`` (see the module docstring).

    ``db_for_read`` picks a healthy, caught-up replica (or the primary);
    ``db_for_write`` the primary (the promoted one after a failover) and marks
    the context as having written; ``allow_relation`` accepts objects from any
    routed alias (they are one database); ``allow_migrate`` runs migrations on
    the primary only. Aliases not named in ``SCALEKIT['ROUTING']`` are left to
    the next router. Models of ``APPS_ON_PRIMARY`` apps always use the primary.

    Raises:
        NoHealthyNode: no primary is known for a write (after a failed failover).
    """

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        state = routing()
        if model is not None and model._meta.app_label in state.apps_on_primary:
            return state.write_alias()
        return state.read_alias()

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        state = routing()
        state.note_write()
        return state.write_alias()

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        aliases = routing().aliases
        if obj1._state.db in aliases and obj2._state.db in aliases:
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        state = routing()
        if db not in state.aliases:
            return None
        return db == state.primary_alias


def current_state() -> ContextState:
    """This context's routing state (its forced role, token, pending write)."""
    return _context.get()
