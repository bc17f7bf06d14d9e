"""The I/O shell around :class:`RoutingCore`, written once over sync ``Engine`` objects.

Both pools own a :class:`Router`. The async pool hands it the ``sync_engine``
of each ``AsyncEngine`` and runs its I/O inside SQLAlchemy's greenlet bridge
(``greenlet_spawn``), exactly as an ``AsyncSession`` runs the ORM: the rule
and the I/O are written once, and so are the entry points (the sync pool is
generated from the async one).

The router listens to the events of its own handles on the engines
(``Engine.execution_options()`` copies sharing each engine's connection pool;
the caller's engines get no listener, so using them directly costs nothing
more and is not seen by the pool):

* ``handle_error``: a connection error blacklists the node (and asks for a
  role check when it is the primary); SQLSTATE 25006 on the primary (it was
  demoted) asks for a role check; the failing node's name is attached to the
  raised exception as ``scalekit_node`` so that a read can be retried;
* ``after_cursor_execute``: a statement that worked readmits a node on
  probation, and DML on the primary marks the DBAPI connection as written;
* ``commit`` on a primary: a transaction that wrote leaves a *pending write*
  in the current context, resolved into a consistency token (the primary's
  flushed WAL position) by the next read in that context;
* ``before_execute`` on replicas: the read-only guard of ``pool.connect(readonly=True)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from scalekit.errors import ConfigurationError, ReadOnlyViolation
from scalekit.instrumentation import emit
from scalekit.routing._core import (
    EMPTY_CONTEXT,
    ConsistencyToken,
    ContextState,
    ReadPlan,
    RoutingConfig,
    RoutingCore,
    Target,
    commit_position,
    parse_lsn,
)
from scalekit.routing._events import (
    FailoverEvent,
    LagChanged,
    NodeEjected,
    NodeReadmitted,
    RouteDecision,
)
from scalekit.routing._statements import ROUTE_OPTION, classify, classify_text, route_rule
from scalekit.testing import _switch as _testmode
from scalekit.typing import Clock

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.engine import ExceptionContext

__all__ = [
    "POSITION_SQL",
    "READONLY_OPTION",
    "REPLAY_SQL",
    "TOKEN_SQL",
    "Router",
    "check_nodes",
    "is_connection_error",
    "mask_url",
]

_log = logging.getLogger("scalekit.routing")

READONLY_OPTION = "scalekit_readonly"
_WROTE_KEY = "scalekit_wrote"
# Role, position, the node's clock and (replicas) the commit time of the last replayed
# transaction, in one round trip per node.
POSITION_SQL = (
    "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() "
    "THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END::text, "
    "EXTRACT(EPOCH FROM clock_timestamp())::float8, "
    "CASE WHEN pg_is_in_recovery() "
    "THEN EXTRACT(EPOCH FROM pg_last_xact_replay_timestamp())::float8 END"
)
REPLAY_SQL = "SELECT pg_last_wal_replay_lsn()::text"
# Under synchronous_commit=off a commit returns before its record is flushed: only the
# insert position covers it (commit_position() turns it into the end of the last record).
TOKEN_SQL = (
    "SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text, "
    "current_setting('wal_block_size')::int, "
    "pg_size_bytes(current_setting('wal_segment_size'))"
)
# Which server a node reaches: the cluster's identifier (shared with its physical
# replicas) and the postmaster's start time (not shared by two running servers).
_SERVER_SQL = (
    "SELECT (SELECT system_identifier FROM pg_control_system())::text, "
    "pg_postmaster_start_time()::text"
)
_CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
_MAX_PROBES = 2  # replicas probed per read attempt for read-your-writes
_counter = itertools.count(1)


def mask_url(engine: Engine) -> str:
    """The engine's URL with the password hidden."""
    return engine.url.render_as_string(hide_password=True)


def is_connection_error(context: ExceptionContext) -> bool:
    """Whether a failed execution means the node is unreachable (not a bad query)."""
    if context.is_disconnect or context.connection is None:
        return True
    sqlstate = getattr(context.original_exception, "sqlstate", None)
    return isinstance(sqlstate, str) and (
        sqlstate.startswith("08") or sqlstate in _CONNECTION_SQLSTATES
    )


def _is_pg(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


class Router:
    """Route statements over named sync engines; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        primaries: Sequence[tuple[str, Engine]],
        replicas: Sequence[tuple[str, Engine]],
        config: RoutingConfig,
        clock: Clock,
        sleep: Callable[[float], None],
    ) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self._sleep = sleep
        self.engines: dict[str, Engine] = {}
        for node, engine in [*primaries, *replicas]:
            if node in self.engines:
                raise ConfigurationError(f"duplicate node name {node!r}", parameter="replicas")
            self.engines[node] = engine
        seen: dict[int, str] = {}
        for node, engine in self.engines.items():
            if id(engine) in seen:
                raise ConfigurationError(
                    f"{node!r} is the same engine as {seen[id(engine)]!r}; each node needs "
                    "its own engine",
                    parameter="replicas",
                )
            seen[id(engine)] = node
        # The pool talks through its own handles, ``Engine.execution_options()``
        # copies that share each engine's connection pool: the listeners below
        # are installed on the copies, so statements run on the caller's engines
        # directly dispatch none of them (and cost what a pristine engine costs).
        self.engines = {node: engine.execution_options() for node, engine in self.engines.items()}
        seen = {id(engine): node for node, engine in self.engines.items()}
        self._names_by_engine = seen
        self.core = RoutingCore([n for n, _ in primaries], [n for n, _ in replicas], config, clock)
        pg = all(_is_pg(engine) for engine in self.engines.values())
        mode = config.consistency
        if mode == "lsn" and not pg:
            raise ConfigurationError(
                "consistency='lsn' needs PostgreSQL engines; use 'time' or 'auto'",
                parameter="consistency",
            )
        self.postgres = pg
        self.mode = ("lsn" if pg else "time") if mode == "auto" else mode
        self.var: ContextVar[ContextState] = ContextVar(
            f"scalekit_routing_{name}_{next(_counter)}", default=EMPTY_CONTEXT
        )
        self._check_lock = threading.Lock()
        self._reported_roles: tuple[str | None, bool] = (self.core.primary, False)
        self._aliases: dict[str, str] = {}
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._install_listeners()

    # -- engine events --------------------------------------------------------------------------

    def _listen(self, target: Any, event_name: str, fn: Callable[..., Any], **kw: Any) -> None:
        from sqlalchemy import event

        event.listen(target, event_name, fn, **kw)
        self._listeners.append((target, event_name, fn))

    def _install_listeners(self) -> None:
        for node, engine in self.engines.items():
            self._listen(engine, "handle_error", self._on_error)
            self._listen(engine, "after_cursor_execute", self._make_after_execute(node))
            self._listen(engine, "commit", self._on_commit)
            self._listen(engine, "rollback", self._on_rollback)
            self._listen(engine, "before_execute", self._guard)

    def close(self) -> None:
        """Remove the listeners from the engines (the engines stay open: they are the caller's)."""
        from sqlalchemy import event

        for target, event_name, fn in self._listeners:
            with contextlib.suppress(Exception):
                event.remove(target, event_name, fn)
        self._listeners.clear()

    def _on_error(self, context: ExceptionContext) -> None:
        engine = context.engine
        node = None if engine is None else self._names_by_engine.get(id(engine))
        if node is None:
            return
        exc = context.sqlalchemy_exception
        sqlstate = getattr(context.original_exception, "sqlstate", None)
        if sqlstate == "25006":
            if node == self.core.primary:
                # A demoted primary: find the new one before the next write.
                self.core.request_role_check()
                if exc is not None:
                    exc.scalekit_node = node  # type: ignore[attr-defined]
                return
            raise ReadOnlyViolation(
                f"a statement that writes ran on replica {node!r} (read-only transaction)"
            ) from context.original_exception
        if not is_connection_error(context):
            return
        if exc is not None:
            exc.scalekit_node = node  # type: ignore[attr-defined]
        self.record_failure(node, type(context.original_exception).__name__)

    def record_failure(self, node: str, error: str) -> None:
        seconds = self.core.record_failure(node)
        if seconds is not None:
            emit(NodeEjected(name=self.name, node=node, seconds=seconds, error=error))

    def _make_after_execute(self, node: str) -> Callable[..., None]:
        core = self.core
        states = core._nodes  # the readmission fast path reads two attributes, no lock
        state = states[node]
        router = self

        def after_cursor_execute(
            conn: Connection,
            cursor: Any,
            statement: Any,
            parameters: Any,
            context: Any,
            executemany: bool,
        ) -> None:
            if state.failures or state.down_until is not None:
                down_for = core.record_success(node)
                if down_for is not None:
                    emit(NodeReadmitted(name=router.name, node=node, seconds_down=down_for))
            if context is not None and node == core.primary and _may_write(context, statement):
                if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                    router.note_write()
                else:
                    conn.info[_WROTE_KEY] = True

        return after_cursor_execute

    def _on_commit(self, conn: Connection) -> None:
        if not conn.invalidated and conn.info.pop(_WROTE_KEY, False):
            self.note_write()

    def _on_rollback(self, conn: Connection) -> None:
        # An invalidated connection (its server died) has no info left to clear, and
        # touching it would raise PendingRollbackError from inside the rollback.
        if not conn.invalidated:
            conn.info.pop(_WROTE_KEY, None)

    def _guard(
        self,
        conn: Connection,
        clauseelement: Any,
        multiparams: Any,
        params: Any,
        execution_options: Any,
    ) -> None:
        if not conn.get_execution_options().get(READONLY_OPTION):
            return
        route = execution_options.get(ROUTE_OPTION) if execution_options else None
        classification = classify(clauseelement) if route is None else route_rule(route)
        if classification.writes:
            raise ReadOnlyViolation(
                f"a statement that writes ({classification.reason}) was run on a read-only "
                "replica connection; use pool.connect() or pool.begin() for writes"
            )

    # -- context -------------------------------------------------------------------------------

    def note_write(self) -> None:
        """A write committed in this context: the next read resolves a consistency token."""
        if self.mode == "none":
            return
        state = self.var.get()
        self.var.set(dataclasses.replace(state, pending_write_at=self.clock.time()))

    @contextlib.contextmanager
    def forced(self, target: Target) -> Iterator[None]:
        previous = self.var.get().force
        self.var.set(dataclasses.replace(self.var.get(), force=target))
        try:
            yield
        finally:
            # Keep what the block learned (a token, a pending write); undo only the forcing.
            self.var.set(dataclasses.replace(self.var.get(), force=previous))

    def current_token(self) -> ConsistencyToken | None:
        """The context's token, resolving a pending write first (one query on the primary)."""
        return self.resolved_state().token

    def set_token(self, token: ConsistencyToken | None) -> None:
        state = self.var.get()
        merged = None if token is None else token.merge(state.token)
        self.var.set(dataclasses.replace(state, token=merged))

    def resolved_state(self) -> ContextState:
        state = self.var.get()
        if state.pending_write_at is None:
            return state
        lsn = None
        if self.mode == "lsn":
            lsn = self._primary_lsn()
            if lsn is None:
                return state  # unresolved: the read goes to the primary
        token = ConsistencyToken(lsn=lsn, written_at=state.pending_write_at).merge(state.token)
        new = dataclasses.replace(state, token=token, pending_write_at=None)
        self.var.set(new)
        return new

    # -- I/O ------------------------------------------------------------------------------------

    def _scalar_row(self, node: str, sql: str) -> Any:
        with self.engines[node].connect() as conn:
            row = conn.exec_driver_sql(sql).one()
            conn.rollback()
        return row

    def _primary_lsn(self) -> int | None:
        primary = self.core.primary
        if primary is None:
            return None
        try:
            insert, flush, block_size, segment_size = self._scalar_row(primary, TOKEN_SQL)
        except Exception as exc:
            if not _is_db_error(exc):
                raise
            _log.debug("could not read the primary's WAL position: %s", type(exc).__name__)
            return None
        return commit_position(
            parse_lsn(insert),
            parse_lsn(flush),
            block_size=int(block_size),
            segment_size=int(segment_size),
        )

    def probe(self, node: str) -> int | None:
        """Read a replica's replayed position (one query); None when it cannot be read."""
        try:
            (text,) = self._scalar_row(node, REPLAY_SQL)
        except Exception as exc:
            if not _is_db_error(exc):
                raise
            self.core.observe_replay(node, None)
            return None
        lsn = None if text is None else parse_lsn(text)
        self.core.observe_replay(node, lsn)
        return lsn

    def refresh(self) -> None:
        """Check every node's role and WAL position now (PostgreSQL), and apply the results."""
        if not self.postgres:
            self.core.mark_checked()
            return
        check_nodes(self.core, self.name, self._position_row, self._apply_checked_roles)

    def _position_row(self, node: str) -> Any:
        try:
            return self._scalar_row(node, POSITION_SQL)
        except Exception as exc:
            if not _is_db_error(exc):
                raise
            return None

    def _apply_checked_roles(self, roles: dict[str, Target | None]) -> None:
        servers = None
        writable = [node for node, role in roles.items() if role is Target.PRIMARY]
        if len(writable) > 1:
            # Two nodes accept writes: a split brain, or two engines reaching one server.
            servers = {node: self._server_identity(node) for node in writable}
        self.apply_roles(roles, servers)

    def _server_identity(self, node: str) -> tuple[str, str] | None:
        """Which server ``node`` reaches (see ``_SERVER_SQL``); None when it cannot be read."""
        try:
            sysid, started = self._scalar_row(node, _SERVER_SQL)
        except Exception as exc:
            if not _is_db_error(exc):
                raise
            return None
        return (str(sysid), str(started))

    def apply_roles(
        self, roles: Mapping[str, Target | None], servers: Mapping[str, Any] | None = None
    ) -> None:
        change = self.core.apply_roles(roles, servers)
        aliases = {
            node: state.same_server_as
            for node, state in self.core.snapshot().items()
            if state.same_server_as is not None
        }
        for node, kept in aliases.items():
            if self._aliases.get(node) != kept:
                _log.info(
                    "routing pool %r: %r reaches the same server as %r; it serves reads, "
                    "never behind",
                    self.name,
                    node,
                    kept,
                )
        self._aliases = aliases
        state = (change.new_primary, change.split_brain)
        if state != self._reported_roles:
            # Once per incident: a split brain seen by every later check is not news.
            self._reported_roles = state
            old = change.old_primary
            if old is not None and old != change.new_primary:
                # Connections to the old primary may be stuck in read-only mode.
                self.engines[old].dispose()
            emit(
                FailoverEvent(
                    name=self.name,
                    old_primary=old,
                    new_primary=change.new_primary,
                    split_brain=change.split_brain,
                )
            )

    def maybe_refresh(self) -> None:
        core = self.core
        if not (core.check_due() or core.role_check_due()):
            return
        if not self.postgres:
            core.mark_checked()
            return
        if not self._check_lock.acquire(blocking=False):
            return  # another thread is checking; route on what we know
        try:
            self.refresh()
        except Exception as exc:
            # A health check runs on a caller's read path: it must never fail that read.
            core.mark_checked()
            _log.warning("routing pool %r: health check failed: %s", self.name, type(exc).__name__)
        finally:
            self._check_lock.release()

    # -- routing -------------------------------------------------------------------------------

    def in_use(self) -> dict[str, int] | None:
        if self.config.balancer != "least_in_use":
            return None
        out = {}
        for node, engine in self.engines.items():
            checkedout = getattr(engine.pool, "checkedout", None)
            out[node] = int(checkedout()) if callable(checkedout) else 0
        return out

    def route_write(self) -> str:
        """The node a write goes to (checks roles first when a failover is suspected).

        Raises:
            NoHealthyNode: no primary, or a split brain.
        """
        if self.core.role_check_due():
            self.maybe_refresh()
        return self.core.choose_write()

    def plan_read(self, exclude: frozenset[str] = frozenset(), *, fast: bool = True) -> ReadPlan:
        """Plan a read in the current context, probing replicas for read-your-writes if needed.

        ``fast=False`` skips the core's O(1) fast path (the caller already tried it).

        Raises:
            NoHealthyNode: nothing can serve the read.
        """
        if fast and not exclude:
            attempts = self.core.fast_read(self.var.get())
            if attempts is not None:
                return ReadPlan(attempts, "replica")
        self.maybe_refresh()
        state = self.resolved_state()
        token = state.token
        if (
            token is not None
            and (self.mode == "time" or token.lsn is None)
            and self.clock.time() >= token.written_at + self.config.sticky_seconds
        ):
            # A time-based token past its sticky period asks nothing of a read: drop it, so
            # the context routes like a fresh one again (and may take the fast path).
            state = dataclasses.replace(state, token=None)
            self.var.set(state)
        if state.pending_write_at is not None and state.force is not Target.REPLICA:
            plan = ReadPlan(
                self.core._require_primary("token_unresolved", exclude), "token_unresolved"
            )
            self._report(plan)
            return plan
        deadline = None
        in_use = self.in_use()
        probed = False
        while True:
            plan = self.core.choose_read(state, in_use=in_use, probed=probed, exclude=exclude)
            if not plan.probe:
                if plan.reason == "token_ahead" and self.config.sticky_timeout > 0:
                    now = self.clock.monotonic()
                    if deadline is None:
                        deadline = now + self.config.sticky_timeout
                    if now < deadline and not _testmode.is_testing():
                        self._sleep(min(self.config.lsn_probe_interval or 0.01, deadline - now))
                        probed = False
                        continue
                break
            token = state.token
            # A bounded number of round trips per attempt: with many replicas, probing
            # them all in turn would cost more than reading from the primary.
            for node in plan.probe[:_MAX_PROBES]:
                lsn = self.probe(node)
                if (
                    lsn is not None
                    and token is not None
                    and token.lsn is not None
                    and lsn >= token.lsn
                ):
                    break
            probed = True
        self._report(plan)
        return plan

    def _report(self, plan: ReadPlan) -> None:
        if plan.reason not in ("replica", "caught_up"):
            emit(
                RouteDecision(
                    name=self.name,
                    node=plan.attempts[0] if plan.attempts else "",
                    reason=plan.reason,
                    spill=plan.spill,
                )
            )

    def route_read(self, exclude: frozenset[str] = frozenset(), *, fast: bool = True) -> str:
        return self.plan_read(exclude, fast=fast).attempts[0]

    def primary_read(self) -> str:
        return self.route_write()

    def is_replica(self, node: str) -> bool:
        return node != self.core.primary

    # -- health --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        snapshot = self.core.snapshot()
        primary = self.core.primary
        nodes: dict[str, Any] = {}
        now = self.clock.monotonic()
        for node, state in snapshot.items():
            engine = self.engines[node]
            pool = engine.pool
            size = _call(pool, "size")
            checked_out = _call(pool, "checkedout")
            overflow = _call(pool, "overflow")
            max_overflow = getattr(pool, "_max_overflow", None)
            capacity = None
            if isinstance(size, int) and isinstance(max_overflow, int) and max_overflow >= 0:
                capacity = size + max_overflow
            usage = None
            if capacity and isinstance(checked_out, int):
                usage = checked_out / capacity
            warnings = []
            if usage is not None and usage >= 0.95:
                warnings.append("pool usage above 95%")
            elif usage is not None and usage >= 0.8:
                warnings.append("pool usage above 80%")
            blacklisted = state.down_until is not None and now < state.down_until
            if state.lagging:
                warnings.append("lagging: out of the read rotation")
            role = "primary" if node == primary else state.role.value
            nodes[node] = {
                "role": role,
                "up": state.reachable and not blacklisted,
                "blacklisted_for": round(state.down_until - now, 3)
                if blacklisted and state.down_until is not None
                else 0.0,
                "failures": state.failures,
                "lagging": state.lagging,
                "lag_seconds": state.lag_seconds,
                "lag_bytes": state.lag_bytes,
                "replay_lsn": None if state.replay_lsn is None else _fmt(state.replay_lsn),
                "same_server_as": state.same_server_as,
                "url": mask_url(engine),
                "pool": {
                    "size": size,
                    "checked_out": checked_out,
                    "overflow": overflow,
                    "capacity": capacity,
                    "usage": usage,
                },
                "warnings": warnings,
            }
        return {
            "name": self.name,
            "primary": primary,
            "split_brain": self.core.split_brain,
            "consistency": self.mode,
            "nodes": nodes,
        }


def check_nodes(
    core: RoutingCore,
    name: str,
    read_position: Callable[[str], Sequence[Any] | None],
    apply_roles: Callable[[dict[str, Target | None]], None],
) -> None:
    """Run one health check over every node of ``core``: the rule the shells share.

    ``read_position(node)`` runs :data:`POSITION_SQL` on the node and returns
    its row, or None when the node cannot be reached; ``apply_roles(roles)``
    hands the roles (None: unreachable) to ``core.apply_roles`` and reports a
    failover. The positions are then fed to the core, the primary's first (a
    replica's lag is measured against it), each lag flip is emitted as
    :class:`LagChanged` under ``name``, and the check is marked done. Plain
    calls, no I/O of its own: :class:`Router` (sync, and async through
    SQLAlchemy's greenlet bridge) and the Django router both drive it.
    """
    roles: dict[str, Target | None] = {}
    positions: dict[str, tuple[bool, int | None, float | None, float | None]] = {}
    for node in core.names:
        row = read_position(node)
        if row is None:
            roles[node] = None
            continue
        in_recovery, text, server_time, replay_time = row
        roles[node] = Target.REPLICA if in_recovery else Target.PRIMARY
        lsn = None if text is None else parse_lsn(text)
        positions[node] = (bool(in_recovery), lsn, server_time, replay_time)
    apply_roles(roles)
    primary = core.primary
    for node in sorted(positions, key=lambda n: n != primary):
        in_recovery, lsn, server_time, replay_time = positions[node]
        if core.observe_position(
            node,
            in_recovery=in_recovery,
            lsn=lsn,
            server_time=server_time,
            replay_time=replay_time,
        ):
            state = core.snapshot()[node]
            emit(
                LagChanged(
                    name=name,
                    node=node,
                    lagging=state.lagging,
                    lag_seconds=state.lag_seconds,
                    lag_bytes=state.lag_bytes,
                )
            )
    core.mark_checked()


def _may_write(context: Any, statement: object) -> bool:
    """Whether a statement that ran on the primary may have written.

    Compiled DML says so itself; ``text()`` and driver-level SQL count as
    writes unless they are unmistakable reads (a read-your-writes token is
    cheap, a stale read after an ``INSERT`` written as text is not).
    """
    if context.isinsert or context.isupdate or context.isdelete:
        return True
    compiled = context.compiled
    if compiled is None:
        return classify_text(statement).writes
    if getattr(compiled.statement, "__visit_name__", "") == "textclause":
        return classify(compiled.statement).writes
    return False


def _fmt(lsn: int) -> str:
    from scalekit.routing._core import format_lsn

    return format_lsn(lsn)


def _call(pool: Any, method: str) -> int | None:
    fn = getattr(pool, method, None)
    if not callable(fn):
        return None
    try:
        value = fn()
    except Exception:
        return None
    return value if isinstance(value, int) else None


def _is_db_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, (SQLAlchemyError, OSError))
