"""Retry budgets: retries as a bounded fraction of traffic, per process or across processes.

Theory of operation (Finagle's ``RetryBudget``, tower's ``TpsBudget``)
--------------------------------------------------------------------

A budget keeps, over a sliding ``window`` of seconds cut into ``buckets``,
two counters: *deposits* (one per call, made before its first attempt) and
*withdrawals* (one per retry attempt). Its balance is::

    balance = min_per_second * window + ratio * deposits - withdrawals

A retry is allowed only when it can withdraw 1 from a balance >= 1, so at
every moment, over the current window::

    retries <= ratio * calls + min_per_second * window

With ``ratio=0.2`` a dependency that fails every call sees at most 20% extra
load from retries (plus the small reserve that lets low-traffic callers retry
at all), instead of ``attempts`` times the load: no retry storm.

:class:`BudgetWindow` is that arithmetic, pure (no clock, no lock, no I/O).
:class:`RetryBudget` wraps it with a lock and a clock for one process, and
shares its state with every other ``RetryBudget`` of the same ``name``.
:class:`RedisRetryBudget` keeps the counters in one Redis hash, updated by
one Lua script, so every process of a fleet spends the same budget; while
Redis is unreachable it decides with a local :class:`BudgetWindow` (which it
always keeps up to date) and emits :class:`~scalekit.FallbackUsed` once.
"""

from __future__ import annotations

import importlib.resources
import inspect
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from scalekit._clock import SYSTEM_CLOCK
from scalekit._redis_bounded import (
    DEFAULT_OP_TIMEOUT,
    aclose_twin,
    bounded,
    check_op_timeout,
    close_twin,
)
from scalekit.breaker._incident import Incident
from scalekit.errors import ConfigurationError
from scalekit.retry._validate import check_int, check_number, check_str

if TYPE_CHECKING:
    from scalekit.typing import Clock

__all__ = ["Budget", "BudgetWindow", "RedisRetryBudget", "RetryBudget"]

# Balances are sums of float products; this absorbs their rounding.
_EPSILON: Final = 1e-9


@runtime_checkable
class Budget(Protocol):
    """What :class:`~scalekit.retry.RetryPolicy` needs of a budget.

    ``deposit()`` is called before the first attempt of every call and must
    not do I/O; it returns ``True`` when the caller should now call
    ``flush()`` (sync code) or ``aflush()`` (async code) to publish buffered
    deposits. ``try_withdraw()``/``atry_withdraw()`` are called before every
    retry and return whether it may happen.
    """

    @property
    def name(self) -> str: ...

    def deposit(self) -> bool: ...

    def flush(self) -> None: ...

    async def aflush(self) -> None: ...

    def try_withdraw(self) -> bool: ...

    async def atry_withdraw(self) -> bool: ...


def _check_params(ratio: object, min_per_second: object, window: object, buckets: object) -> None:
    ratio = check_number(ratio, "ratio")
    if ratio > 1:
        raise ConfigurationError(f"ratio must be in [0, 1], got {ratio!r}", parameter="ratio")
    check_number(min_per_second, "min_per_second")
    check_number(window, "window", strict=True)
    check_int(buckets, "buckets")


class BudgetWindow:
    """The budget arithmetic over a sliding window of buckets. Pure and not thread-safe.

    Time is passed in (seconds, any monotonic origin); a time earlier than
    one already seen counts in the current bucket.

    >>> window = BudgetWindow(ratio=0.5, min_per_second=0.0, window=10.0, buckets=10)
    >>> window.deposit(0.0); window.deposit(0.0)
    >>> window.try_withdraw(0.0), window.try_withdraw(0.0)
    (True, False)
    >>> window.try_withdraw(10.5)  # the deposits left the window
    False

    Raises:
        ConfigurationError: ratio outside [0, 1], negative ``min_per_second``,
            ``window`` <= 0, ``buckets`` < 1.
    """

    __slots__ = (
        "_bucket",
        "_deposit_total",
        "_deposits",
        "_withdraw_total",
        "_withdrawals",
        "buckets",
        "ratio",
        "reserve",
        "width",
    )

    def __init__(
        self, *, ratio: float, min_per_second: float, window: float, buckets: int = 10
    ) -> None:
        _check_params(ratio, min_per_second, window, buckets)
        self.ratio = float(ratio)
        self.reserve = float(min_per_second) * float(window)
        self.buckets = buckets
        self.width = float(window) / buckets
        self._deposits = [0] * buckets
        self._withdrawals = [0] * buckets
        self._deposit_total = 0
        self._withdraw_total = 0
        self._bucket: int | None = None

    def _advance(self, now: float) -> int:
        bucket = math.floor(now / self.width)
        current = self._bucket
        if current is None:
            self._bucket = bucket
            return bucket
        if bucket <= current:
            return current
        # Empty the buckets that slid out of the window (at most all of them).
        for step in range(1, min(bucket - current, self.buckets) + 1):
            index = (current + step) % self.buckets
            self._deposit_total -= self._deposits[index]
            self._withdraw_total -= self._withdrawals[index]
            self._deposits[index] = 0
            self._withdrawals[index] = 0
        self._bucket = bucket
        return bucket

    def deposit(self, now: float, count: int = 1) -> None:
        """Record ``count`` calls at ``now`` (a past ``now`` lands in its own bucket if still in the
        window, and is dropped if not)."""
        current = self._advance(now)
        bucket = math.floor(now / self.width)
        if bucket <= current - self.buckets:
            return
        index = min(bucket, current) % self.buckets
        self._deposits[index] += count
        self._deposit_total += count

    def withdraw(self, now: float) -> None:
        """Record a retry that was allowed elsewhere (even if the balance is short)."""
        index = self._advance(now) % self.buckets
        self._withdrawals[index] += 1
        self._withdraw_total += 1

    def balance(self, now: float) -> float:
        """``reserve + ratio * deposits - withdrawals`` over the window ending at ``now``."""
        self._advance(now)
        return self.reserve + self.ratio * self._deposit_total - self._withdraw_total

    def try_withdraw(self, now: float) -> bool:
        """Withdraw one retry if the balance allows it; return whether it did."""
        index = self._advance(now) % self.buckets
        if self.reserve + self.ratio * self._deposit_total - self._withdraw_total < 1 - _EPSILON:
            return False
        self._withdrawals[index] += 1
        self._withdraw_total += 1
        return True

    def counts(self, now: float) -> tuple[int, int]:
        """``(deposits, withdrawals)`` in the window ending at ``now``."""
        self._advance(now)
        return self._deposit_total, self._withdraw_total


class _Engine:
    """A :class:`BudgetWindow` behind a lock, with a lock-free deposit fast path.

    Deposits (one per call: the hot path) only bump an ``itertools.count``
    for the current bucket; ``next()`` on it is atomic under the GIL. The
    counts are folded into the window, at their bucket's time, when a
    withdrawal (or a balance read, or the next bucket) needs them. A deposit
    racing a fold may be lost, which only makes the budget stricter.
    """

    __slots__ = (
        "bucket_end",
        "bucket_start",
        "counter",
        "exhaustion",
        "folded",
        "key",
        "lock",
        "phantoms",
        "total",
        "window",
    )

    def __init__(
        self, window: BudgetWindow, key: tuple[object, ...] = (), name: str = "unnamed"
    ) -> None:
        self.window = window
        self.key = key
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.phantoms = 0  # next() calls made to read the counter, not deposits
        self.folded = 0  # deposits of this counter already in the window
        self.total = 0  # deposits ever folded (RedisRetryBudget publishes the difference)
        self.bucket_start = -math.inf
        self.bucket_end = -math.inf  # the first deposit takes the slow path
        self.exhaustion = Incident(name, _EXHAUSTED, "no_retries")

    def fold(self) -> None:
        """Move the counter's new deposits into the window. Hold :attr:`lock`."""
        counted = next(self.counter) - self.phantoms
        self.phantoms += 1
        new = counted - self.folded
        if new > 0:
            self.folded = counted
            self.total += new
            self.window.deposit(self.bucket_start, new)

    def deposit_slow(self, now: float) -> None:
        """Start the counter of ``now``'s bucket, then count one deposit in it."""
        with self.lock:
            if not self.bucket_start <= now < self.bucket_end:
                self.fold()
                width = self.window.width
                self.bucket_start = math.floor(now / width) * width
                self.bucket_end = self.bucket_start + width
                self.counter = itertools.count()
                self.phantoms = 0
                self.folded = 0
            next(self.counter)

    def try_withdraw(self, now: float) -> bool:
        with self.lock:
            self.fold()
            return self.window.try_withdraw(now)

    def withdraw(self, now: float) -> None:
        with self.lock:
            self.fold()
            self.window.withdraw(now)

    def balance(self, now: float) -> float:
        with self.lock:
            self.fold()
            return self.window.balance(now)

    def counts(self, now: float) -> tuple[int, int]:
        with self.lock:
            self.fold()
            return self.window.counts(now)


# The component name of a spent-budget incident ("retry.budget" is a Redis outage).
_EXHAUSTED: Final = "retry.budget.exhausted"


def _note_exhaustion(exhaustion: Incident, granted: bool, now: float) -> None:
    """A spent budget is an incident: from the first refusal after a grant to the
    next grant. The refusals themselves are events at DEBUG
    (``retry.budget_exhausted``); the incident is logged once, at its start
    (:class:`~scalekit.FallbackUsed`, WARNING) and at its end
    (:class:`~scalekit.Recovered`, INFO), as every fallback is."""
    if granted:
        exhaustion.recovered(now)
    else:
        exhaustion.failed(now, "budget_exhausted")


def _monotonic_of(clock: Clock) -> Callable[[], float]:
    # The system clock's method is a Python-level wrapper; skip it on the hot path.
    return time.monotonic if clock is SYSTEM_CLOCK else clock.monotonic


_registry: dict[str, _Engine] = {}
_registry_lock = threading.Lock()


class RetryBudget:
    """An in-process retry budget: ``retries <= ratio * calls + min_per_second * window``.

    Budgets with the same ``name`` share one state across the process (every
    call site and thread), so the budget of a dependency can be declared
    where each client is built. An unnamed budget is private to the object.

    Pass it to :class:`~scalekit.retry.RetryPolicy` (``budget=``); the policy
    deposits before each call's first attempt and withdraws before each
    retry. When the budget refuses a retry, the policy raises the attempt's
    error at once and emits :class:`~scalekit.retry.RetryBudgetExhausted`.

    >>> budget = RetryBudget(ratio=0.1, min_per_second=1.0, window=10.0, name="billing")
    >>> budget.deposit()
    False
    >>> budget.try_withdraw()  # the reserve allows ~10 retries per window
    True

    Raises:
        ConfigurationError: ratio outside [0, 1], negative ``min_per_second``,
            ``window`` <= 0, ``buckets`` < 1; or ``name`` already used by a
            budget with other parameters or another clock.
    """

    __slots__ = ("_engine", "_name", "_now", "min_per_second", "window")

    def __init__(
        self,
        ratio: float = 0.2,
        *,
        min_per_second: float = 10.0,
        window: float = 10.0,
        name: str | None = None,
        buckets: int = 10,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        _check_params(ratio, min_per_second, window, buckets)
        self._now = _monotonic_of(clock)
        self.min_per_second = float(min_per_second)
        self.window = float(window)
        fresh = BudgetWindow(
            ratio=ratio, min_per_second=min_per_second, window=window, buckets=buckets
        )
        if name is None:
            self._name = "unnamed"
            self._engine = _Engine(fresh)
            return
        self._name = check_str(name, "name")
        key = (float(ratio), float(min_per_second), float(window), buckets, id(clock))
        with _registry_lock:
            engine = _registry.get(name)
            if engine is None:
                engine = _registry[name] = _Engine(fresh, key, name)
            elif engine.key != key:
                raise ConfigurationError(
                    f"a retry budget named {name!r} already exists with other parameters "
                    f"(ratio, min_per_second, window, buckets, clock) = {engine.key[:4]!r}",
                    parameter="name",
                )
        self._engine = engine

    @property
    def name(self) -> str:
        """The budget's name (``"unnamed"`` for a private budget), used in events."""
        return self._name

    @property
    def ratio(self) -> float:
        """Retries allowed per call, on top of the reserve."""
        return self._engine.window.ratio

    def deposit(self) -> bool:
        """Record one call. No lock, no I/O; always ``False`` (nothing to flush)."""
        now = self._now()
        engine = self._engine
        if engine.bucket_start <= now < engine.bucket_end:
            next(engine.counter)
        else:
            engine.deposit_slow(now)
        return False

    def try_withdraw(self) -> bool:
        """Take one retry from the budget if the balance allows it; return whether it did.

        The first refusal after a grant starts an incident, logged once
        (:class:`~scalekit.FallbackUsed`); the next grant ends it
        (:class:`~scalekit.Recovered`).
        """
        now = self._now()
        engine = self._engine
        granted = engine.try_withdraw(now)
        _note_exhaustion(engine.exhaustion, granted, now)
        return granted

    def flush(self) -> None:
        """Nothing to publish: the state is in this process."""

    async def aflush(self) -> None:
        """Nothing to publish: the state is in this process."""

    async def atry_withdraw(self) -> bool:
        """:meth:`try_withdraw` for async code (no I/O, no await)."""
        return self.try_withdraw()

    def balance(self) -> float:
        """The current balance: the retries allowed right now are ``floor(balance)``."""
        return self._engine.balance(self._now())

    def counts(self) -> tuple[int, int]:
        """``(calls, retries)`` counted in the current window."""
        return self._engine.counts(self._now())

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio!r}, min_per_second={self.min_per_second!r}, "
            f"window={self.window!r}, name={self._name!r})"
        )


_LUA: str | None = None


def _budget_script() -> str:
    global _LUA
    if _LUA is None:
        _LUA = (
            importlib.resources.files("scalekit.retry")
            .joinpath("_lua/budget.lua")
            .read_text(encoding="utf-8")
        )
    return _LUA


class RedisRetryBudget:
    """A retry budget shared by every process that uses the same Redis and ``name``.

    The counters live in one Redis hash (``<prefix>:{<name>}``; the hash tag
    keeps it on one Redis Cluster slot) and change only through one Lua
    script, so processes cannot overdraw it together. The success path never
    waits on Redis: deposits are counted locally and published at most once
    per ``flush_interval`` (default: one bucket, ``window / buckets``), and
    with every retry request. Time comes from the Redis server's clock, so
    the hosts' clocks need not agree (pass ``clock=`` to use your own
    wall clock instead, e.g. a :class:`~scalekit.testing.FakeClock` in tests).

    ``client`` is a ``redis.Redis``, ``redis.cluster.RedisCluster``, or their
    ``redis.asyncio`` twins. With an asyncio client use the policy from
    ``async def`` code only.

    When Redis fails (connection refused, timeout...), the budget decides
    with its local window, which mirrors this process's own traffic, and
    tries Redis again after ``retry_interval`` seconds. It emits
    :class:`~scalekit.FallbackUsed` once when Redis is first lost and
    :class:`~scalekit.Recovered` when it answers again. A retry is never
    blocked *because* Redis is down, and the budget never raises.

    Whatever the client's own settings, a Redis command of the budget takes
    at most ``op_timeout`` (default 0.25 s) per phase (connect, then reply)
    and is never retried by redis-py: commands go through a twin of
    ``client`` with those timeouts (its own connection pool; ``client`` is
    untouched). An outage so costs a retrying caller at most about
    ``2 x op_timeout`` once per ``retry_interval``, then the local decision.
    :meth:`close`/:meth:`aclose` release the twin.

    >>> import fakeredis  # doctest: +SKIP
    >>> budget = RedisRetryBudget(fakeredis.FakeRedis(), "billing", ratio=0.1)  # doctest: +SKIP

    Raises:
        ConfigurationError: bad parameters (see :class:`RetryBudget`), an empty
            ``name``, a non-positive ``flush_interval``/negative ``retry_interval``;
            and, at first use, a sync method used with an asyncio client.
    """

    __slots__ = (
        "_async",
        "_clock",
        "_down_until",
        "_errors",
        "_exhaustion",
        "_expire_ms",
        "_flush_interval",
        "_flush_lock",
        "_key",
        "_local",
        "_monotonic",
        "_name",
        "_next_flush",
        "_outage",
        "_published",
        "_retry_interval",
        "_script",
        "_static_args",
        "bounded_client",
        "client",
        "op_timeout",
    )

    def __init__(
        self,
        client: Any,
        name: str,
        ratio: float = 0.2,
        *,
        min_per_second: float = 10.0,
        window: float = 10.0,
        buckets: int = 10,
        prefix: str = "scalekit:retry-budget",
        flush_interval: float | None = None,
        retry_interval: float = 1.0,
        clock: Clock | None = None,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
    ) -> None:
        _check_params(ratio, min_per_second, window, buckets)
        check_str(name, "name")
        op_timeout = check_op_timeout(op_timeout)
        if flush_interval is None:
            flush_interval = window / buckets
        check_number(flush_interval, "flush_interval", strict=True)
        check_number(retry_interval, "retry_interval")
        register = getattr(client, "register_script", None)
        if register is None:
            raise ConfigurationError(
                f"client must be a redis-py client, got {type(client).__name__}",
                parameter="client",
            )
        import redis.exceptions  # the client exists, so redis-py is installed

        self.client = client
        self.op_timeout = op_timeout
        #: What the budget talks to: ``client``, or its bounded twin.
        self.bounded_client = bounded(client, op_timeout)
        self._name = name
        self._key = f"{prefix}:{{{name}}}"
        self._script = self.bounded_client.register_script(_budget_script())
        self._async = inspect.iscoroutinefunction(getattr(client, "execute_command", None))
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._clock = clock
        self._monotonic = _monotonic_of(clock or SYSTEM_CLOCK)
        width_ms = max(1, round(window / buckets * 1000))
        self._expire_ms = int(window * 1000) + 2 * width_ms
        self._static_args = (
            str(width_ms),
            str(buckets),
            repr(float(ratio)),
            repr(float(min_per_second) * float(window)),
            str(self._expire_ms),
        )
        self._local = _Engine(
            BudgetWindow(ratio=ratio, min_per_second=min_per_second, window=window, buckets=buckets)
        )
        self._flush_lock = threading.Lock()
        self._published = 0
        self._flush_interval = float(flush_interval)
        self._retry_interval = float(retry_interval)
        self._next_flush = 0.0
        self._down_until = 0.0
        # A Redis outage (the budget decides locally meanwhile), and a spent budget.
        self._outage = Incident(self._name, "retry.budget", "local")
        self._exhaustion = Incident(self._name, _EXHAUSTED, "no_retries")

    @property
    def name(self) -> str:
        """The budget's name: part of the Redis key and of every event."""
        return self._name

    @property
    def key(self) -> str:
        """The Redis key holding the counters."""
        return self._key

    @property
    def degraded(self) -> bool:
        """Whether the budget is deciding locally because Redis failed."""
        return self._outage.degraded

    # -- the parts both shells share ------------------------------------------------

    def _args(self, deposits: int, withdraw: bool) -> list[str]:
        width, buckets, ratio, reserve, expire = self._static_args
        now = "" if self._clock is None else str(int(self._clock.time() * 1000))
        flag = "1" if withdraw else "0"
        return [now, width, buckets, str(deposits), flag, ratio, reserve, expire]

    def _take_pending(self, now: float) -> int:
        """Deposits counted locally since the last publication; they are now being published."""
        local = self._local
        with local.lock:
            local.fold()
            pending = local.total - self._published
            self._published = local.total
        self._next_flush = now + self._flush_interval
        return pending

    def _redis_failed(self, exc: BaseException, now: float) -> None:
        self._down_until = now + self._retry_interval
        self._outage.failed(now, type(exc).__name__)

    def _redis_answered(self, now: float) -> None:
        self._outage.recovered(now)

    def _reply_granted(self, reply: Any, now: float) -> bool:
        self._redis_answered(now)
        granted = int(reply[0]) == 1
        if granted:
            self._local.withdraw(now)
        _note_exhaustion(self._exhaustion, granted, now)
        return granted

    def _local_decision(self, now: float) -> bool:
        granted = self._local.try_withdraw(now)
        _note_exhaustion(self._exhaustion, granted, now)
        return granted

    def _require_sync(self) -> None:
        if self._async:
            raise ConfigurationError(
                f"retry budget {self._name!r} has an asyncio Redis client; "
                "use it from async code only (or give it a sync client)",
                parameter="client",
            )

    # -- the budget protocol ---------------------------------------------------------

    def deposit(self) -> bool:
        """Count one call locally; ``True`` when buffered deposits are due to be flushed."""
        now = self._monotonic()
        local = self._local
        if local.bucket_start <= now < local.bucket_end:
            next(local.counter)
        else:
            local.deposit_slow(now)
        if now < self._next_flush or now < self._down_until:
            return False
        with self._flush_lock:
            if now < self._next_flush:
                return False
            # Claim the flush so that only one caller performs it.
            self._next_flush = now + self._flush_interval
        return True

    def flush(self) -> None:
        """Publish buffered deposits to Redis (one script call). Never raises on Redis errors."""
        self._require_sync()
        now = self._monotonic()
        pending = self._take_pending(now)
        if pending == 0:
            return
        try:
            self._script(keys=[self._key], args=self._args(pending, False))
        except self._errors as exc:
            self._redis_failed(exc, now)
        else:
            self._redis_answered(now)

    async def aflush(self) -> None:
        """:meth:`flush` for async code."""
        now = self._monotonic()
        pending = self._take_pending(now)
        if pending == 0:
            return
        try:
            reply = self._script(keys=[self._key], args=self._args(pending, False))
            if inspect.isawaitable(reply):
                await reply
        except self._errors as exc:
            self._redis_failed(exc, now)
        else:
            self._redis_answered(now)

    def try_withdraw(self) -> bool:
        """Ask the shared budget for one retry (publishing buffered deposits with it)."""
        self._require_sync()
        now = self._monotonic()
        if now < self._down_until:
            return self._local_decision(now)
        pending = self._take_pending(now)
        try:
            reply = self._script(keys=[self._key], args=self._args(pending, True))
        except self._errors as exc:
            self._redis_failed(exc, now)
            return self._local_decision(now)
        return self._reply_granted(reply, now)

    async def atry_withdraw(self) -> bool:
        """:meth:`try_withdraw` for async code."""
        now = self._monotonic()
        if now < self._down_until:
            return self._local_decision(now)
        pending = self._take_pending(now)
        try:
            reply = self._script(keys=[self._key], args=self._args(pending, True))
            if inspect.isawaitable(reply):
                reply = await reply
        except self._errors as exc:
            self._redis_failed(exc, now)
            return self._local_decision(now)
        return self._reply_granted(reply, now)

    def balance(self) -> float:
        """The shared balance read from Redis (sync client only; one script call).

        Raises:
            redis.exceptions.RedisError: Redis is unreachable (this is a
                diagnostic, not a decision, so it does not fall back).
        """
        self._require_sync()
        reply = self._script(keys=[self._key], args=self._args(0, False))
        return float(reply[1])

    def close(self) -> None:
        """Close the bounded twin of a sync client, if scalekit made one (never ``client``).

        Still usable afterwards: the next command connects again.
        """
        if not self._async:
            close_twin(self.bounded_client)

    async def aclose(self) -> None:
        """Close the bounded twin, if scalekit made one (never ``client``)."""
        if self._async:
            await aclose_twin(self.bounded_client)
        else:
            close_twin(self.bounded_client)

    def __repr__(self) -> str:
        return f"RedisRetryBudget(name={self._name!r}, key={self._key!r})"
