"""PoolMonitor: usage and checkout wait time of a SQLAlchemy pool, at the cost of two calls.

SQLAlchemy announces a checkout only once it has a connection, so there is no
public event for "started waiting", and its ``checkout``/``checkin`` events
cost more than the rest of a pool hit (about 1.4x a bare checkout). The
monitor therefore wraps, on the pool instance, the two methods every
checkout and return go through: ``Pool._do_get`` and
``Pool._do_return_conn`` (the only private names it touches). When a pool
has neither (a custom pool), its numbers are simply unknown.

The fast path, a checkout that finds a free connection, is a counter
increment, an integer comparison and a store: no lock and no clock. It keeps
one number, *demand* (connections out plus checkouts in progress), so a
checkout whose demand exceeds the pool's capacity is one that will wait:
only those take a lock and read the clock, and count as waiters. A change of
pressure level is found by comparing the demand with the band of demands in
which the current level stays (``pressure_band``, computed once per level
from the pure rule ``pressure_level``); only a demand outside the band takes
the lock and re-judges. The counters are updated without a lock under the
GIL (an attribute ``+=`` on an int is not interrupted there); on a
free-threaded build every checkout takes the locked path.

After ``engine.dispose()`` SQLAlchemy builds a new pool, empty, with the
same pool event listeners; the monitor wraps it at its first connection (the
public ``connect`` event). It listens to no engine event: one would make
every ``Connection`` dispatch events.
"""

from __future__ import annotations

import math
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit.health._core import Status, check_monitor_levels, pressure_band, pressure_level
from scalekit.health._events import PoolPressure
from scalekit.instrumentation import emit
from scalekit.typing import Clock

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.pool import Pool

__all__ = ["PoolMonitor", "engine_label", "monitor_for"]

_MONITORS: weakref.WeakKeyDictionary[Any, PoolMonitor] = weakref.WeakKeyDictionary()

#: Whether plain ``+=`` on an attribute is safe between threads (the GIL); else every
#: checkout takes the locked path.
_GIL = bool(getattr(sys, "_is_gil_enabled", lambda: True)())


def engine_label(engine: Any) -> str:
    """``host:port/database`` of an Engine or AsyncEngine (``driver:database`` without a
    host): a name for logs and reports with no user, password or query string."""
    url = engine.url
    if url.host:
        port = f":{url.port}" if url.port else ""
        return f"{url.host}{port}/{url.database or ''}"
    return f"{url.get_backend_name()}:{url.database or 'memory'}"


def monitor_for(engine: Any) -> PoolMonitor | None:
    """The :class:`PoolMonitor` watching ``engine`` (an Engine or AsyncEngine), if any."""
    sync_engine = getattr(engine, "sync_engine", engine)
    return _MONITORS.get(sync_engine)


class PoolMonitor:
    """Watch an engine's pool: usage, waiters, checkout wait time, and pressure events.

    Attaches to the pool of ``engine`` (an ``Engine``, or an ``AsyncEngine``:
    its ``sync_engine``) and emits one :class:`~scalekit.health.PoolPressure`
    event each time usage crosses ``warn_at`` or ``critical_at``, never one
    per checkout. Usage here is demand: connections checked out plus
    checkouts waiting, over capacity. Going back down needs usage below the
    level by ``hysteresis`` and by at least one connection.
    :func:`~scalekit.health.check_health` reads the monitor of an engine it
    probes, so waiters and wait times appear in the report. Works with a
    routing pool's engines (``pool.nodes``). A checkout that finds a free
    connection costs a counter and a comparison; only one that has to wait
    reads the clock.

    >>> monitor = PoolMonitor(engine, warn_at=0.8, critical_at=0.95)  # doctest: +SKIP
    >>> monitor.usage, monitor.waiting, monitor.wait_ms_max  # doctest: +SKIP
    (0.1, 0, 3.2)
    >>> monitor.close()  # doctest: +SKIP

    Raises:
        ConfigurationError: levels outside 0..1, ``warn_at > critical_at``, or
            an engine that is already monitored.
    """

    def __init__(
        self,
        engine: Engine | Any,
        *,
        warn_at: float = 0.8,
        critical_at: float = 0.95,
        hysteresis: float = 0.05,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        from sqlalchemy import event

        from scalekit.errors import ConfigurationError

        check_monitor_levels(warn_at, critical_at, hysteresis)
        sync_engine = getattr(engine, "sync_engine", engine)
        if sync_engine in _MONITORS:
            raise ConfigurationError(
                f"engine {engine_label(sync_engine)} already has a PoolMonitor", parameter="engine"
            )
        self.engine = sync_engine
        self.name = name if name is not None else engine_label(sync_engine)
        self.warn_at = float(warn_at)
        self.critical_at = float(critical_at)
        self.hysteresis = float(hysteresis)
        self._clock = clock
        self._lock = threading.Lock()
        self._level: Status = "ok"
        # Connections out plus checkouts in progress (see the module docstring).
        self._demand = 0
        self._waiting = 0
        self._capacity: int | None = None
        # The demands at which the current level stays: low <= demand < high.
        self._low: float = 0
        self._high: float = math.inf
        self._wait_ms_last: float | None = None
        # The checkout count at the last checkout that went the locked way.
        self._last_wait_at = 0
        self._wait_ms_max: float | None = None
        self._wait_ms_total = 0.0
        self._checkouts = 0
        self._connects = 0
        self._pool: Pool | None = None
        self._wrap(sync_engine.pool)
        self._event = event
        # A pool event (SQLAlchemy keeps it on the pools dispose() builds). No
        # engine event: one would make every Connection dispatch events.
        event.listen(sync_engine, "connect", self._on_connect)
        _MONITORS[sync_engine] = self

    # -- reading --------------------------------------------------------------------------------

    @property
    def capacity(self) -> int | None:
        """``size + max_overflow`` of the current pool (``None`` when unbounded)."""
        return self._capacity

    @property
    def checked_out(self) -> int:
        """Connections checked out now (demand less the checkouts still waiting)."""
        return max(self._demand - self._waiting, 0)

    @property
    def usage(self) -> float | None:
        """``checked_out / capacity`` (``None`` for an unbounded pool)."""
        capacity = self._capacity
        return None if not capacity else self.checked_out / capacity

    @property
    def level(self) -> Status:
        """The current pressure level: ``"ok"``, ``"warn"`` or ``"critical"``."""
        return self._level

    @property
    def waiting(self) -> int | None:
        """Checkouts blocked waiting for a connection now (``None`` if it cannot be seen)."""
        return self._waiting if self._pool is not None else None

    @property
    def wait_ms_last(self) -> float | None:
        """The last checkout's wait for a connection, in milliseconds (0 when it found one)."""
        if self._wait_ms_last is not None and self._last_wait_at == self._checkouts:
            return self._wait_ms_last
        return 0.0 if self._checkouts else None

    @property
    def wait_ms_max(self) -> float | None:
        """The longest checkout wait seen since the monitor started (or :meth:`reset`)."""
        if self._wait_ms_max is None and self._checkouts:
            return 0.0
        return self._wait_ms_max

    @property
    def wait_ms_mean(self) -> float | None:
        """The mean checkout wait since the monitor started (or :meth:`reset`)."""
        return None if not self._checkouts else self._wait_ms_total / self._checkouts

    def stats(self) -> dict[str, Any]:
        """The monitor's numbers as a dict (for a metrics endpoint)."""
        usage = self.usage
        return {
            "name": self.name,
            "level": self._level,
            "checked_out": self.checked_out,
            "capacity": self._capacity,
            "usage": None if usage is None else round(usage, 4),
            "waiting": self.waiting,
            "checkouts": self._checkouts,
            "connects": self._connects,
            "wait_ms_last": self.wait_ms_last,
            "wait_ms_max": self.wait_ms_max,
            "wait_ms_mean": self.wait_ms_mean,
        }

    def reset(self) -> None:
        """Forget the wait-time statistics (not the current usage or level)."""
        with self._lock:
            self._wait_ms_last = self._wait_ms_max = None
            self._wait_ms_total = 0.0
            self._checkouts = 0

    def close(self) -> None:
        """Stop watching: remove the event listeners and the pool wrappers."""
        if self._event.contains(self.engine, "connect", self._on_connect):
            self._event.remove(self.engine, "connect", self._on_connect)
        self._unwrap()
        _MONITORS.pop(self.engine, None)

    def __repr__(self) -> str:
        return f"<PoolMonitor {self.name} {self._level} {self.checked_out}/{self._capacity}>"

    # -- the pool's two methods -----------------------------------------------------------------

    def _wrap(self, pool: Pool) -> None:
        get = getattr(pool, "_do_get", None)
        put = getattr(pool, "_do_return_conn", None)
        if get is None or put is None:
            self._pool = None
            return
        self._capacity = _capacity(pool)
        checkedout = getattr(pool, "checkedout", None)
        # Connections already out when the monitor attached count too.
        self._demand = int(checkedout()) if checkedout is not None else 0
        self._waiting = 0
        self._set_band()
        # A checkout with a demand above this may wait: it takes the locked path.
        limit = self._capacity if self._capacity is not None else math.inf

        # The fast path (see the module docstring): demand only rises here and
        # only falls on return, so each side checks its own edge of the band.
        def _do_get() -> Any:
            self._demand = demand = self._demand + 1
            if demand > limit:
                return self._slow_get(get, counted=True)
            try:
                record = get()
            except BaseException:
                self._demand -= 1
                raise
            self._checkouts += 1
            if demand >= self._high:
                self._cross()
            return record

        def _do_return_conn(record: Any) -> None:
            try:
                put(record)
            finally:
                self._demand = demand = self._demand - 1
            if demand < self._low:
                self._cross()

        def _locked_do_get() -> Any:
            return self._slow_get(get, counted=False)

        def _locked_do_return_conn(record: Any) -> None:
            try:
                put(record)
            finally:
                with self._lock:
                    self._demand -= 1
            self._cross()

        if _GIL:
            pool._do_get = _do_get  # type: ignore[method-assign]
            pool._do_return_conn = _do_return_conn  # type: ignore[method-assign]
        else:
            pool._do_get = _locked_do_get  # type: ignore[method-assign]
            pool._do_return_conn = _locked_do_return_conn  # type: ignore[method-assign]
        self._pool = pool

    def _unwrap(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for name in ("_do_get", "_do_return_conn"):
                if name in vars(pool):
                    delattr(pool, name)

    def _slow_get(self, get: Any, *, counted: bool) -> Any:
        """A checkout under the lock's bookkeeping: one that may wait (the pool is full),
        or any checkout on a free-threaded build. A waiter is counted and timed.

        ``counted``: the caller has already added this checkout to the demand.
        """
        with self._lock:
            if not counted:
                self._demand += 1
            waits = self._capacity is not None and self._demand > self._capacity
            if waits:
                self._waiting += 1
        started = self._clock.monotonic() if waits else 0.0
        try:
            record = get()
        except BaseException:
            with self._lock:
                self._waiting -= waits
                self._demand -= 1
            raise
        waited = (self._clock.monotonic() - started) * 1000.0 if waits else 0.0
        with self._lock:
            self._waiting -= waits
            self._checkouts += 1
            self._wait_ms_last = waited
            self._last_wait_at = self._checkouts
            if waits and (self._wait_ms_max is None or waited > self._wait_ms_max):
                self._wait_ms_max = waited
            self._wait_ms_total += waited
            event = self._transition()
        if event is not None:
            emit(event)
        return record

    # -- crossings ------------------------------------------------------------------------------

    def _set_band(self) -> None:
        capacity = self._capacity
        if not capacity:
            self._low, self._high = 0, math.inf
            return
        self._low, self._high = pressure_band(
            self._level,
            capacity,
            warn_at=self.warn_at,
            critical_at=self.critical_at,
            hysteresis=self.hysteresis,
        )

    def _cross(self) -> None:
        """Re-judge the level under the lock (the demand left the band); emit a change."""
        with self._lock:
            event = self._transition()
        if event is not None:
            emit(event)

    def _transition(self) -> PoolPressure | None:
        # Called with the lock held; returns the event to emit outside it.
        capacity = self._capacity
        if not capacity:
            return None
        # Demand, not only what is checked out: a connection returned while
        # others wait goes straight to a waiter, so it relieves nothing.
        demand = max(self._demand, 0)
        usage = min(demand / capacity, 1.0)
        level = pressure_level(
            usage,
            self._level,
            warn_at=self.warn_at,
            critical_at=self.critical_at,
            hysteresis=self.hysteresis,
            step=1.0 / capacity,
        )
        if level == self._level:
            return None
        previous, self._level = self._level, level
        self._set_band()
        return PoolPressure(
            name=self.name,
            pressure=level,
            previous=previous,
            usage=round(usage, 4),
            checked_out=max(demand - self._waiting, 0),
            capacity=capacity,
            waiting=self._waiting,
        )

    # -- events ---------------------------------------------------------------------------------

    def _on_connect(self, dbapi_connection: Any, connection_record: Any) -> None:
        event = None
        with self._lock:
            self._connects += 1
            pool = self.engine.pool
            if self._pool is not None and pool is not self._pool:
                # engine.dispose() built a new pool, which starts empty: this is
                # its first connection. Connections of the old one no longer count.
                self._unwrap()
                self._wrap(pool)
                event = self._transition()
        if event is not None:
            emit(event)


def _capacity(pool: Any) -> int | None:
    size = getattr(pool, "size", None)
    max_overflow = getattr(pool, "_max_overflow", None)
    if size is None or not isinstance(max_overflow, int) or max_overflow < 0:
        return None
    value = size()
    return value + max_overflow if isinstance(value, int) else None
