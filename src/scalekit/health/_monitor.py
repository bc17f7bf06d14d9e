"""PoolMonitor: usage and checkout wait time of a SQLAlchemy pool, from its own events.

SQLAlchemy announces a checkout only once it has a connection, so there is no
public event for "started waiting". The monitor therefore wraps the one pool
method every checkout goes through, ``Pool._do_get`` (the only private name
it touches), on the pool instance: that gives waiters and wait times. Usage
comes from the public ``checkout``/``checkin`` events. When a pool has no
``_do_get`` (a custom pool), wait times are simply unknown.

After ``engine.dispose()`` SQLAlchemy builds a new pool with the same event
listeners; the monitor notices on the next checkout and wraps the new one.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit.health._core import Status, check_monitor_levels, pressure_level
from scalekit.health._events import PoolPressure
from scalekit.instrumentation import emit
from scalekit.typing import Clock

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.pool import Pool

__all__ = ["PoolMonitor", "engine_label", "monitor_for"]

_MONITORS: weakref.WeakKeyDictionary[Any, PoolMonitor] = weakref.WeakKeyDictionary()


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

    Attaches to the pool events of ``engine`` (an ``Engine``, or an
    ``AsyncEngine``: its ``sync_engine``) and emits one
    :class:`~scalekit.health.PoolPressure` event each time usage crosses
    ``warn_at`` or ``critical_at``, never one per checkout. Usage here is
    demand: connections checked out plus checkouts waiting, over capacity.
    Going back down needs usage below the level by ``hysteresis`` and by at
    least one connection. :func:`~scalekit.health.check_health` reads the
    monitor of an engine it probes, so waiters and wait times appear in the
    report. Works with a routing pool's engines (``pool.nodes``).

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
        self._checked_out = 0
        self._waiting = 0
        self._wait_ms_last: float | None = None
        self._wait_ms_max: float | None = None
        self._wait_ms_total = 0.0
        self._checkouts = 0
        self._connects = 0
        self._pool: Pool | None = None
        self._wrap(sync_engine.pool)
        # Connections already out when the monitor attached count too.
        checkedout = getattr(sync_engine.pool, "checkedout", None)
        if checkedout is not None:
            self._checked_out = int(checkedout())
        self._event = event
        event.listen(sync_engine, "checkout", self._on_checkout)
        event.listen(sync_engine, "checkin", self._on_checkin)
        event.listen(sync_engine, "connect", self._on_connect)
        _MONITORS[sync_engine] = self

    # -- reading --------------------------------------------------------------------------------

    @property
    def capacity(self) -> int | None:
        """``size + max_overflow`` of the current pool (``None`` when unbounded)."""
        pool = self.engine.pool
        size = getattr(pool, "size", None)
        max_overflow = getattr(pool, "_max_overflow", None)
        if size is None or not isinstance(max_overflow, int) or max_overflow < 0:
            return None
        value = size()
        return value + max_overflow if isinstance(value, int) else None

    @property
    def checked_out(self) -> int:
        """Connections checked out now, as counted from the pool's events."""
        return self._checked_out

    @property
    def usage(self) -> float | None:
        """``checked_out / capacity`` (``None`` for an unbounded pool)."""
        capacity = self.capacity
        return None if not capacity else self._checked_out / capacity

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
        """The last checkout's wait for a connection, in milliseconds."""
        return self._wait_ms_last

    @property
    def wait_ms_max(self) -> float | None:
        """The longest checkout wait seen since the monitor started (or :meth:`reset`)."""
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
            "checked_out": self._checked_out,
            "capacity": self.capacity,
            "usage": None if usage is None else round(usage, 4),
            "waiting": self.waiting,
            "checkouts": self._checkouts,
            "connects": self._connects,
            "wait_ms_last": self._wait_ms_last,
            "wait_ms_max": self._wait_ms_max,
            "wait_ms_mean": self.wait_ms_mean,
        }

    def reset(self) -> None:
        """Forget the wait-time statistics (not the current usage or level)."""
        with self._lock:
            self._wait_ms_last = self._wait_ms_max = None
            self._wait_ms_total = 0.0
            self._checkouts = 0

    def close(self) -> None:
        """Stop watching: remove the event listeners and the pool wrapper."""
        for name, handler in (
            ("checkout", self._on_checkout),
            ("checkin", self._on_checkin),
            ("connect", self._on_connect),
        ):
            if self._event.contains(self.engine, name, handler):
                self._event.remove(self.engine, name, handler)
        pool = self._pool
        if pool is not None and "_do_get" in vars(pool):
            del pool._do_get
        self._pool = None
        _MONITORS.pop(self.engine, None)

    def __repr__(self) -> str:
        return f"<PoolMonitor {self.name} {self._level} {self._checked_out}/{self.capacity}>"

    # -- events ---------------------------------------------------------------------------------

    def _wrap(self, pool: Pool) -> None:
        original = getattr(pool, "_do_get", None)
        if original is None:
            self._pool = None
            return
        clock = self._clock

        def _do_get() -> Any:
            with self._lock:
                self._waiting += 1
            started = clock.monotonic()
            try:
                return original()
            finally:
                waited = (clock.monotonic() - started) * 1000.0
                with self._lock:
                    self._waiting -= 1
                    self._wait_ms_last = waited
                    if self._wait_ms_max is None or waited > self._wait_ms_max:
                        self._wait_ms_max = waited
                    self._wait_ms_total += waited

        pool._do_get = _do_get  # type: ignore[method-assign]
        self._pool = pool

    def _on_connect(self, dbapi_connection: Any, connection_record: Any) -> None:
        with self._lock:
            self._connects += 1

    def _on_checkout(self, dbapi_connection: Any, connection_record: Any, proxy: Any) -> None:
        pool = self.engine.pool
        if pool is not self._pool and self._pool is not None:
            self._wrap(pool)  # engine.dispose() made a new pool
        with self._lock:
            self._checked_out += 1
            self._checkouts += 1
            event = self._transition()
        if event is not None:
            emit(event)

    def _on_checkin(self, dbapi_connection: Any, connection_record: Any) -> None:
        with self._lock:
            self._checked_out = max(self._checked_out - 1, 0)
            event = self._transition()
        if event is not None:
            emit(event)

    def _transition(self) -> PoolPressure | None:
        # Called with the lock held; returns the event to emit outside it.
        capacity = self.capacity
        if not capacity:
            return None
        # Demand, not only what is checked out: a connection returned while
        # others wait goes straight to a waiter, so it relieves nothing.
        usage = min((self._checked_out + self._waiting) / capacity, 1.0)
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
        return PoolPressure(
            name=self.name,
            pressure=level,
            previous=previous,
            usage=round(usage, 4),
            checked_out=self._checked_out,
            capacity=capacity,
            waiting=self._waiting,
        )
