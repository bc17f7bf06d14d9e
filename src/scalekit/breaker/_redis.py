"""Breaker state shared across processes in Redis.

One Lua script (``_lua/breaker.lua``) holds the shared state machine; each
call runs it once, atomically, with Redis ``TIME`` in milliseconds as the
clock every process agrees on. The keys of one breaker share a hash tag
(``{scalekit:breaker:<name>}``), so it works on Redis Cluster.

What stays local, and why:

* **"Closed" is cached** for ``local_cache_seconds``: while the cache is
  fresh, admission and successes cost no round trip. Successes are counted
  locally and flushed in the next script call (the next failure, or the next
  refresh when the cache expires), so the shared window still sees them.
  A trip made by another process is seen here within ``local_cache_seconds``.
* **"Open" is cached** until its ``retry_after`` ends: rejections cost no
  round trip either.
* Failures, half-open probes and manual commands always run the script: a
  probe slot is reserved in Redis, so ``half_open_max_calls`` holds across
  the whole fleet.

When Redis is unreachable (any ``redis.RedisError`` or ``OSError``), the
breaker follows ``on_redis_error``: ``"fail_open"`` (default) runs the calls
under this process's own local breaker with the same policy; ``"fail_closed"``
rejects them with ``retry_after = retry_interval``. Redis is tried again
after ``retry_interval`` seconds; a :class:`~scalekit.FallbackUsed` event is
emitted once per incident and :class:`~scalekit.Recovered` when Redis is back.

Whatever the client's own settings (redis-py 8's defaults retry 10 times with
back-off; older ones have no socket timeout), every script call goes through
:func:`scalekit._redis_bounded.bounded`: a twin of the client whose commands
take at most ``op_timeout`` per phase (connect, then reply) and are never
retried. An outage so costs a caller at most about ``2 x op_timeout`` once per
``retry_interval``, then the fallback.
"""

from __future__ import annotations

import inspect
import math
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, Literal

from scalekit._redis_bounded import (
    DEFAULT_OP_TIMEOUT,
    aclose_twin,
    bounded,
    check_op_timeout,
    close_twin,
)
from scalekit.breaker._config import FAILURE, IGNORED
from scalekit.breaker._core import (
    CLOSED,
    DISABLED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    State,
    Transition,
    Trigger,
    is_slow,
)
from scalekit.breaker._incident import Incident
from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from scalekit.breaker._base import Recorder
    from scalekit.breaker._breaker import CircuitBreaker

__all__ = ["RedisStorage", "SharedState"]

# Tickets of calls admitted by the shared state are offset far from the local
# core's tickets, which serve while Redis is down (fail_open).
_REMOTE: Final = 1 << 62
# How many opening durations are precomputed for the script (later openings
# reuse the last one).
_SCHEDULE: Final = 32

_TARGETS: Final = {
    Trigger.MANUAL_OPEN: "open",
    Trigger.MANUAL_CLOSE: "closed",
    Trigger.FORCE_OPEN: "forced_open",
    Trigger.DISABLE: "disabled",
}

_script_source: str | None = None


def _lua_source() -> str:
    global _script_source
    if _script_source is None:
        _script_source = (
            resources.files("scalekit.breaker").joinpath("_lua/breaker.lua").read_text("utf-8")
        )
    return _script_source


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


class RedisStorage:
    """Where a :class:`~scalekit.breaker.CircuitBreaker` keeps shared state: Redis.

    ``client`` is your ``redis.Redis``, ``redis.cluster.RedisCluster``, or
    their ``redis.asyncio`` twins (with an asyncio client, use the breaker
    only through its async front-ends: ``async def`` functions,
    ``acall``, ``aacquire``, ``async with guard()``).

    >>> import fakeredis
    >>> from scalekit.breaker import CircuitBreaker, RedisStorage
    >>> breaker = CircuitBreaker("billing", fail_max=5,
    ...                          storage=RedisStorage(fakeredis.FakeRedis()))
    >>> breaker.call(len, "abc")
    3

    Parameters: ``prefix`` of the keys; ``local_cache_seconds`` how long a
    "closed" answer is trusted locally; ``on_redis_error`` ``"fail_open"`` or
    ``"fail_closed"``; ``retry_interval`` seconds before Redis is tried again
    after an error; ``ttl_seconds`` how long idle state lives in Redis;
    ``op_timeout`` (default 0.25 s) the longest a Redis command may take per
    phase (connect, then reply), whatever the client's own settings: an
    outage costs a caller at most about ``2 x op_timeout`` once per
    ``retry_interval``, then ``on_redis_error``. Commands go through a twin of
    ``client`` with those timeouts and no redis-py retries (its own
    connection pool; ``client`` itself is untouched and stays in
    :attr:`client`); a client whose settings already bound a command is used
    as given. :meth:`close`/:meth:`aclose` release the twin.

    Raises:
        ConfigurationError: bad parameter, or a client that is not a redis-py one.
    """

    __slots__ = (
        "bounded_client",
        "client",
        "is_async",
        "local_cache_seconds",
        "on_redis_error",
        "op_timeout",
        "prefix",
        "retry_interval",
        "ttl_seconds",
    )

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "scalekit:breaker",
        local_cache_seconds: float = 1.0,
        on_redis_error: Literal["fail_open", "fail_closed"] = "fail_open",
        retry_interval: float = 1.0,
        ttl_seconds: float = 86_400.0,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
    ) -> None:
        if not callable(getattr(client, "register_script", None)):
            raise ConfigurationError(
                f"client must be a redis-py client, got {client!r}", parameter="client"
            )
        prefix_value: object = prefix
        if not isinstance(prefix_value, str) or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"prefix must be a str without braces, got {prefix!r}", parameter="prefix"
            )
        checks: tuple[tuple[str, object, bool], ...] = (
            ("local_cache_seconds", local_cache_seconds, True),
            ("retry_interval", retry_interval, False),
            ("ttl_seconds", ttl_seconds, False),
        )
        for parameter, value, allow_zero in checks:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
                or (value == 0 and not allow_zero)
            ):
                raise ConfigurationError(
                    f"{parameter} must be a finite number {'>=' if allow_zero else '>'} 0, "
                    f"got {value!r}",
                    parameter=parameter,
                )
        if on_redis_error not in ("fail_open", "fail_closed"):
            raise ConfigurationError(
                f"on_redis_error must be 'fail_open' or 'fail_closed', got {on_redis_error!r}",
                parameter="on_redis_error",
            )
        self.op_timeout = check_op_timeout(op_timeout)
        self.client = client
        #: What the breaker talks to: ``client``, or its bounded twin.
        self.bounded_client = bounded(client, self.op_timeout)
        self.prefix = prefix
        self.local_cache_seconds = float(local_cache_seconds)
        self.on_redis_error = on_redis_error
        self.retry_interval = float(retry_interval)
        self.ttl_seconds = float(ttl_seconds)
        self.is_async = inspect.iscoroutinefunction(getattr(type(client), "execute_command", None))

    def close(self) -> None:
        """Close the bounded twin of a sync client, if scalekit made one (never ``client``).

        Still usable afterwards: the next command connects again.
        """
        if not self.is_async:
            close_twin(self.bounded_client)

    async def aclose(self) -> None:
        """Close the bounded twin, if scalekit made one (never ``client``)."""
        if self.is_async:
            await aclose_twin(self.bounded_client)
        else:
            close_twin(self.bounded_client)

    def keys(self, name: str) -> list[str]:
        """The Redis keys of breaker ``name`` (one hash tag: one cluster slot)."""
        tag = f"{{{self.prefix}:{name}}}"
        return [tag, f"{tag}:probes", f"{tag}:window"]

    def bind(self, breaker: CircuitBreaker, recorder: Recorder) -> SharedState:
        """The shared state of ``breaker`` (called by the breaker; one per breaker)."""
        return SharedState(self, breaker, recorder)

    def __repr__(self) -> str:
        return (
            f"RedisStorage(prefix={self.prefix!r}, on_redis_error={self.on_redis_error!r}, "
            f"local_cache_seconds={self.local_cache_seconds!r}, op_timeout={self.op_timeout!r})"
        )


class SharedState:
    """One breaker's view of its Redis state: local caches, pending successes, I/O.

    The decisions (:meth:`_admit_cached`, :meth:`_apply`) are plain code under
    the breaker's lock; the sync and async methods only differ in how they
    run the script. The lock is never held across a Redis call.
    """

    def __init__(self, storage: RedisStorage, breaker: CircuitBreaker, recorder: Recorder) -> None:
        self.storage = storage
        self.breaker = breaker
        self.rec = recorder
        policy = breaker.policy
        self._keys = storage.keys(breaker.name)
        self._script = storage.bounded_client.register_script(_lua_source())
        durations = ",".join(
            str(max(round(policy.open_duration(k) * 1000), 0)) for k in range(1, _SCHEDULE + 1)
        )
        window_ms = round(policy.window_seconds * 1000) if policy.window_seconds else 0
        self._policy_args: list[Any] = [
            policy.fail_max or 0,
            repr(float(policy.failure_rate or 0.0)),
            repr(float(policy.slow_call_rate or 0.0)),
            0 if window_ms else (policy.window or 0),
            window_ms,
            policy.window_buckets,
            policy.min_calls or 0,
            durations,
            policy.half_open_max_calls,
            policy.success_threshold,
            max(round(policy.probe_timeout * 1000), 1),
        ]
        self._ttl_ms = max(int(storage.ttl_seconds * 1000), 1)
        self._is_async = storage.is_async
        self.state = CLOSED
        self.gen = -1  # unknown until the first reply
        self.fresh_until = -math.inf
        self.open_until = -math.inf
        self.open_for = 0.0  # retry_after as Redis last said (no float drift added)
        self.probes_in_flight = 0
        self._pending_fast = 0
        self._pending_slow = 0
        self._down_until = -math.inf
        # Redis outages: FallbackUsed once per incident, Recovered at its end.
        self._incident = Incident(breaker.name, "breaker", storage.on_redis_error)
        self._errors: tuple[type[BaseException], ...] | None = None

    # -- pure decisions (under the breaker's lock) -----------------------------------

    def _admit_cached(self, now: float) -> int | tuple[State, float | None] | None:
        """A ticket, a rejection ``(state, retry_after)``, or ``None``: ask Redis."""
        if now < self._down_until:
            if self.storage.on_redis_error == "fail_closed":
                return (OPEN, self._down_until - now)
            return -1  # marker: use the local breaker
        state = self.state
        if state is CLOSED or state is DISABLED:
            if now < self.fresh_until:
                return _REMOTE + self.gen
        elif state is OPEN:
            if now < self.open_until:
                return (OPEN, min(self.open_until - now, self.open_for))
        elif state is FORCED_OPEN and now < self.fresh_until:
            return (FORCED_OPEN, None)
        return None

    def _args(
        self, op: str, arg: object = 0, probe: int = 0, outcome: int = 0, slow: bool = False
    ) -> list[Any]:
        """Script arguments; takes (and clears) the pending successes. Under the lock."""
        fast, slow_successes = self._pending_fast, self._pending_slow
        self._pending_fast = self._pending_slow = 0
        return [
            op,
            *self._policy_args,
            self.gen,
            fast,
            slow_successes,
            arg,
            probe,
            outcome,
            1 if slow else 0,
            self._ttl_ms,
        ]

    def _apply(self, reply: list[Any], now: float) -> tuple[int | None, State, float | None]:
        """Take a script reply: update caches; return (ticket or None, state, retry_after)."""
        state_name, gen, probe, retry_ms, _openings, old, trigger, reason = (
            item.decode() if isinstance(item, bytes) else item for item in reply
        )
        new_state = State(state_name)
        gen, probe, retry_ms = int(gen), int(probe), int(retry_ms)
        with self.rec.lock:
            seen_state = self.state
            self.state = new_state
            self.gen = gen
            self.fresh_until = now + self.storage.local_cache_seconds
            self.open_for = max(retry_ms, 0) / 1000
            self.open_until = now + self.open_for if new_state is OPEN else -math.inf
            if probe:
                self.probes_in_flight += 1
            self._down_until = -math.inf
        self._incident.recovered(now)
        if new_state is not seen_state:
            open_for = retry_ms / 1000 if new_state is OPEN else None
            if trigger:  # this very script call moved the state
                transition = Transition(
                    State(old) if old else seen_state,
                    new_state,
                    Trigger(trigger),
                    reason,
                    now,
                    open_for,
                )
            else:  # another process moved it since we last looked
                transition = Transition(
                    seen_state,
                    new_state,
                    _observed_trigger(new_state),
                    "changed by another process",
                    now,
                    open_for,
                )
            self.rec.emit_transition(transition, shared=True)
        if probe:
            return -(_REMOTE + probe), new_state, None
        if new_state is CLOSED or new_state is DISABLED:
            return _REMOTE + gen, new_state, None
        return None, new_state, None if retry_ms < 0 else retry_ms / 1000

    def _went_down(self, exc: BaseException, now: float) -> bool:
        """Note that Redis failed; True if this starts an incident."""
        with self.rec.lock:
            self._down_until = now + self.storage.retry_interval
            self.fresh_until = -math.inf
        first = self._incident.failed(now, type(exc).__name__)
        if first:
            with self.rec.lock:
                # The local breaker starts each incident clean.
                self.rec.core.fire(Trigger.MANUAL_CLOSE, now, "redis unreachable")
                self.rec.core.take_transitions()
        return first

    def _record_locally(self, ticket: int, outcome: int, duration: float | None) -> bool:
        """Keep a closed-state success locally; True when no round trip is needed."""
        if -_REMOTE < ticket < _REMOTE:
            # Admitted by the local breaker while Redis was down.
            self.rec.record(ticket, outcome, duration)
            return True
        if ticket >= _REMOTE and outcome != FAILURE:
            if outcome == IGNORED:
                return True
            with self.rec.lock:
                slow = self.rec.core.count(outcome, duration)
                if ticket - _REMOTE == self.gen:
                    if slow:
                        self._pending_slow += 1
                    else:
                        self._pending_fast += 1
            return True
        return False

    def _record_args(self, ticket: int, outcome: int, duration: float | None) -> list[Any]:
        slow = is_slow(self.breaker.policy, outcome, duration)
        with self.rec.lock:
            if ticket < 0:
                self.probes_in_flight = max(self.probes_in_flight - 1, 0)
                return self._args("record", 0, -ticket - _REMOTE, outcome, slow)
            return self._args("record", ticket - _REMOTE, 0, outcome, slow)

    def _count(self, outcome: int, duration: float | None) -> None:
        """Count a recorded outcome in this process's metrics (the core's rule)."""
        with self.rec.lock:
            self.rec.core.count(outcome, duration)

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and calls follow ``on_redis_error``."""
        return self._incident.degraded

    @property
    def incidents(self) -> int:
        """Redis outages seen since the breaker was built (each starts a fallback)."""
        return self._incident.count

    def view(self, now: float) -> tuple[State, float | None]:
        """(state, retry_after) as last seen, without I/O."""
        if now < self._down_until and self.storage.on_redis_error == "fail_open":
            return self.rec.core.state, self.rec.core.retry_after(now)
        if self.state is OPEN:
            return self.state, max(min(self.open_until - now, self.open_for), 0.0)
        return self.state, None if self.state is FORCED_OPEN else 0.0

    def check_sync(self) -> None:
        """Refuse a blocking call on a storage whose client is an asyncio one.

        Raises:
            ConfigurationError: the client is a ``redis.asyncio`` one.
        """
        if self._is_async:
            raise ConfigurationError(
                f"breaker {self.breaker.name!r} shares state through an asyncio Redis client; "
                "use its async front-ends (async def, acall, aacquire)",
                parameter="storage",
            )

    def _decided(self, decision: int | tuple[State, float | None]) -> int:
        if isinstance(decision, tuple):
            self.rec.count_rejection()
            self.rec.reject(*decision)
        if decision == -1:
            return self.rec.acquire_local()
        return decision

    # -- the steps the drivers run around each script call (no I/O here) -------------

    def errors(self) -> tuple[type[BaseException], ...]:
        """What a script call raises when Redis is unreachable."""
        if self._errors is None:
            self._errors = _unavailable_errors()
        return self._errors

    def run(self, args: list[Any]) -> Any:
        """Run the script: the reply, or (asyncio client) an awaitable of it."""
        return self._script(keys=self._keys, args=args)

    def admit(self, now: float) -> int | list[Any]:
        """A ticket decided without Redis, or the script's arguments to ask it.

        Raises:
            CircuitOpenError: rejected from the cache (open, or fail_closed).
        """
        with self.rec.lock:
            # The success path: "closed" still fresh, Redis not known to be down.
            state = self.state
            if (
                now < self.fresh_until
                and (state is CLOSED or state is DISABLED)
                and now >= self._down_until
            ):
                return _REMOTE + self.gen
            decision = self._admit_cached(now)
            if decision is None:
                return self._args("acquire")
        return self._decided(decision)

    def admitted(self, reply: Any) -> int:
        """The ticket from the script's reply to :meth:`admit`'s arguments.

        Raises:
            CircuitOpenError: Redis rejected the call.
        """
        ticket, state, retry_after = self._apply(reply, self.rec.monotonic())
        if ticket is None:
            self.rec.count_rejection()
            self.rec.reject(state, retry_after)
        return ticket

    def unreachable(self, exc: BaseException, now: float) -> int:
        """Redis failed while admitting: follow ``on_redis_error``.

        Raises:
            CircuitOpenError: fail_closed, or the local breaker rejected.
        """
        self._went_down(exc, now)
        return self._decided(self._admit_cached(now) or -1)

    def record_args(self, ticket: int, outcome: int, duration: float | None) -> list[Any] | None:
        """The script's arguments to record an outcome; ``None`` when kept locally."""
        if self._record_locally(ticket, outcome, duration):
            return None
        return self._record_args(ticket, outcome, duration)

    def recorded(self, reply: Any, outcome: int, duration: float | None) -> None:
        """Take the script's reply to :meth:`record_args`' arguments."""
        self._count(outcome, duration)
        self._apply(reply, self.rec.monotonic())

    def lost_record(
        self, exc: BaseException, now: float, outcome: int, duration: float | None
    ) -> None:
        """Redis failed while recording: count the outcome in the local breaker."""
        self._went_down(exc, now)
        if self.storage.on_redis_error == "fail_open":
            ticket = self.rec.core.free_ticket
            if ticket is not None:
                self.rec.record(ticket, outcome, duration)
                return
        self._count(outcome, duration)

    def manual_args(self, trigger: Trigger) -> list[Any]:
        """The script's arguments for a manual command."""
        with self.rec.lock:
            return self._args("set", _TARGETS[trigger])

    def applied(self, reply: Any, now: float) -> None:
        """Take the script's reply to a manual command."""
        self._apply(reply, now)


def _observed_trigger(new_state: State) -> Trigger:
    """The trigger to report for a change another process made."""
    return {
        OPEN: Trigger.TRIP,
        HALF_OPEN: Trigger.OPEN_ELAPSED,
        CLOSED: Trigger.PROBES_PASSED,
        FORCED_OPEN: Trigger.FORCE_OPEN,
        DISABLED: Trigger.DISABLE,
    }[new_state]
