"""The public :class:`CircuitBreaker`: one object for sync and async callers.

The breaker owns a :class:`~scalekit.breaker._core.BreakerCore` and a
``threading.Lock``. Every core call happens under the lock and is short
(counter updates, a dict lookup); the user's function always runs outside it.
The same lock serves threads and asyncio tasks: no ``await`` ever happens
while it is held, so it never blocks an event loop for longer than a core
call. The call drivers live in :mod:`._sync` and :mod:`._async`; they are
the only code that differs between the two worlds.

With a :class:`~scalekit.breaker.RedisStorage`, admission and outcomes go
through the shared state in :mod:`._redis` instead of the local core.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar, overload

from scalekit._clock import SYSTEM_CLOCK
from scalekit._deprecated import deprecated
from scalekit.breaker import _async, _sync
from scalekit.breaker._base import Recorder
from scalekit.breaker._config import FAILURE, IGNORED, SUCCESS, BreakerPolicy, ExceptionRule
from scalekit.breaker._core import CLOSED, DISABLED, BreakerCore, State, Transition, Trigger
from scalekit.breaker._events import BreakerRejected, BreakerStateChanged
from scalekit.errors import CircuitOpenError, ConfigurationError
from scalekit.instrumentation import emit
from scalekit.typing import Clock

if TYPE_CHECKING:
    from scalekit.breaker._pybreaker import ListenerBridge
    from scalekit.breaker._redis import RedisStorage, SharedState

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["BreakerMetrics", "CircuitBreaker", "Permit"]


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """A snapshot of one breaker, from :meth:`CircuitBreaker.metrics`.

    Counters are this process's since the breaker was built. ``window_*``
    describe the rate window (zeros without one); ``failure_rate`` is
    ``window_failures / window_calls`` (``None`` before any call).
    ``retry_after`` is ``None`` unless the breaker rejects calls now.

    For a Redis-shared breaker (``shared=True``), ``state`` and
    ``retry_after`` are the shared state as last seen (no I/O), while
    ``consecutive_failures`` and ``window_*`` describe only the local
    fallback breaker that serves while Redis is unreachable. ``degraded`` is
    true while Redis is unreachable (calls follow ``on_redis_error``), and
    ``fallback_incidents`` counts the outages seen since the breaker was built.
    """

    name: str
    state: State
    successes: int
    failures: int
    ignored: int
    rejected: int
    slow_calls: int
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    failure_rate: float | None
    probes_in_flight: int
    consecutive_openings: int
    retry_after: float | None
    shared: bool
    degraded: bool = False
    fallback_incidents: int = 0


class CircuitBreaker:
    """A circuit breaker for sync and ``async def`` callers.

    Use it as a decorator (the wrapped function keeps its signature), with
    :meth:`call` / :meth:`acall`, or as a context manager through
    :meth:`guard` (``with`` and ``async with``). Rejected calls raise
    :class:`~scalekit.errors.CircuitOpenError` carrying the breaker's name and
    ``retry_after``, unless a ``fallback`` is given: it then receives the
    call's arguments and its result is returned instead.

    Parameters are those of :class:`BreakerPolicy` (or pass ``policy=``), plus:
    ``fallback``; ``storage`` (a :class:`~scalekit.breaker.RedisStorage` to
    share state across processes); ``listeners`` (pybreaker-style listeners,
    see :mod:`scalekit.breaker` and ``docs/breaker.md``); ``clock``.

    >>> breaker = CircuitBreaker("billing", fail_max=3, reset_timeout=30.0)
    >>> @breaker
    ... def charge(amount: int) -> str:
    ...     return f"charged {amount}"
    >>> charge(5)
    'charged 5'
    >>> breaker.state
    <State.CLOSED: 'closed'>

    Raises:
        ConfigurationError: on a bad parameter (``.parameter`` names it).
    """

    __slots__ = (
        "_clock",
        "_core",
        "_listeners",
        "_lock",
        "_policy",
        "_rec",
        "_shared",
        "name",
    )

    def __init__(
        self,
        name: str,
        *,
        fail_max: int | None = None,
        failure_rate: float | None = None,
        window: int | None = None,
        window_seconds: float | None = None,
        window_buckets: int = 10,
        min_calls: int | None = None,
        slow_call_seconds: float | None = None,
        slow_call_rate: float | None = None,
        reset_timeout: float | Callable[[int], float] = 60.0,
        reset_backoff: float = 1.0,
        reset_timeout_max: float | None = None,
        half_open_max_calls: int = 1,
        success_threshold: int = 1,
        probe_timeout: float = 60.0,
        exclude: Iterable[ExceptionRule] | ExceptionRule | None = None,
        include: Iterable[ExceptionRule] | ExceptionRule | None = None,
        failure_result: Callable[[Any], bool] | None = None,
        policy: BreakerPolicy | None = None,
        fallback: Callable[..., Any] | None = None,
        storage: RedisStorage | None = None,
        listeners: Iterable[Any] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        name_value: object = name
        if not isinstance(name_value, str) or not name_value:
            raise ConfigurationError(
                f"name must be a non-empty str, got {name!r}", parameter="name"
            )
        given: dict[str, Any] = {
            key: value
            for key, value in (
                ("fail_max", fail_max),
                ("failure_rate", failure_rate),
                ("window", window),
                ("window_seconds", window_seconds),
                ("min_calls", min_calls),
                ("slow_call_seconds", slow_call_seconds),
                ("slow_call_rate", slow_call_rate),
                ("reset_timeout_max", reset_timeout_max),
                ("exclude", exclude),
                ("include", include),
                ("failure_result", failure_result),
            )
            if value is not None
        }
        if policy is not None:
            changed = set(given)
            changed.update(
                key
                for key, value, default in (
                    ("window_buckets", window_buckets, 10),
                    ("reset_timeout", reset_timeout, 60.0),
                    ("reset_backoff", reset_backoff, 1.0),
                    ("half_open_max_calls", half_open_max_calls, 1),
                    ("success_threshold", success_threshold, 1),
                    ("probe_timeout", probe_timeout, 60.0),
                )
                if value is not default and value != default
            )
            if changed:
                raise ConfigurationError(
                    f"give policy= or policy parameters ({', '.join(sorted(changed))}), not both",
                    parameter="policy",
                )
            if not isinstance(policy, BreakerPolicy):
                raise ConfigurationError(
                    f"policy must be a BreakerPolicy, got {policy!r}", parameter="policy"
                )
        else:
            policy = BreakerPolicy(
                window_buckets=window_buckets,
                reset_timeout=reset_timeout,
                reset_backoff=reset_backoff,
                half_open_max_calls=half_open_max_calls,
                success_threshold=success_threshold,
                probe_timeout=probe_timeout,
                **given,
            )
        if fallback is not None and not callable(fallback):
            raise ConfigurationError(
                f"fallback must be callable, got {fallback!r}", parameter="fallback"
            )
        if not isinstance(clock, Clock):
            raise ConfigurationError(f"clock must be a Clock, got {clock!r}", parameter="clock")
        self.name = name
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._core = BreakerCore(policy, clock.monotonic())
        listeners = tuple(listeners)
        if listeners:
            from scalekit.breaker._pybreaker import ListenerBridge

            self._listeners: ListenerBridge | None = ListenerBridge(listeners)
        else:
            self._listeners = None
        # What the drivers read, bound once, and the one record path.
        self._rec = Recorder(self, self._core, self._lock, policy, clock, fallback, self._listeners)
        self._shared: SharedState | None = None
        if storage is not None:
            from scalekit.breaker._redis import RedisStorage

            if not isinstance(storage, RedisStorage):
                raise ConfigurationError(
                    f"storage must be a RedisStorage, got {storage!r}", parameter="storage"
                )
            self._shared = storage.bind(self, self._rec)
            self._rec.share(self._shared)

    # -- reading -------------------------------------------------------------------

    @property
    def policy(self) -> BreakerPolicy:
        """The breaker's :class:`BreakerPolicy`."""
        return self._policy

    @property
    def state(self) -> State:
        """The current state (for a shared breaker: as last seen from Redis).

        An OPEN breaker whose open duration has passed still reads OPEN until
        the next call moves it to HALF_OPEN.
        """
        if self._shared is not None:
            return self._shared.view(self._clock.monotonic())[0]
        return self._core.state

    @property
    def needs_every_outcome(self) -> bool:
        """Whether this breaker must hear of every call's success, not only its failures.

        False for a breaker that only counts consecutive failures, keeps its
        state in the process, checks no results and has no listeners: while it
        is closed with no failure streak (``fail_counter == 0``), a success
        changes nothing in it, so code wrapping a hot path may read
        :attr:`state` and report only failures (through :meth:`acquire`).
        True for failure-rate and slow-call windows, result checks,
        listeners and shared (Redis) state. Fixed when the breaker is built.
        """
        return not self._rec.fast

    @property
    def current_state(self) -> str:
        """The state in pybreaker's words: ``"closed"``, ``"open"`` or ``"half-open"``."""
        from scalekit.breaker._pybreaker import pybreaker_state_name

        return pybreaker_state_name(self.state)

    @property
    def fail_counter(self) -> int:
        """Consecutive failures in the current closed period (pybreaker's name)."""
        return self._core.consecutive_failures

    @property
    def fail_max(self) -> int | None:
        """The consecutive-failure threshold (pybreaker's name)."""
        return self._policy.fail_max

    @property
    def reset_timeout(self) -> float | Callable[[int], float]:
        """The base open duration (pybreaker's name)."""
        return self._policy.reset_timeout

    def metrics(self) -> BreakerMetrics:
        """A snapshot of counters and state; no I/O (shared state as last seen).

        >>> CircuitBreaker("db").metrics().state
        <State.CLOSED: 'closed'>
        """
        now = self._clock.monotonic()
        core = self._core
        with self._lock:
            calls, failures, slow = core.window_totals(now)
            state = core.state
            retry_after = core.retry_after(now)
            probes = core.probes_in_flight()
            snapshot = (
                core.successes,
                core.failures,
                core.ignored,
                core.rejected,
                core.slow_calls,
                core.consecutive_failures,
                core.consecutive_openings,
            )
        degraded, incidents = False, 0
        if self._shared is not None:
            state, retry_after = self._shared.view(now)
            probes = self._shared.probes_in_flight
            degraded, incidents = self._shared.degraded, self._shared.incidents
        lockless = core.tallied()
        return BreakerMetrics(
            name=self.name,
            state=state,
            successes=snapshot[0] + lockless,
            failures=snapshot[1],
            ignored=snapshot[2],
            rejected=snapshot[3],
            slow_calls=snapshot[4],
            consecutive_failures=snapshot[5],
            window_calls=calls,
            window_failures=failures,
            window_slow_calls=slow,
            failure_rate=failures / calls if calls else None,
            probes_in_flight=probes,
            consecutive_openings=snapshot[6],
            retry_after=None if state in (CLOSED, DISABLED) else retry_after,
            shared=self._shared is not None,
            degraded=degraded,
            fallback_incidents=incidents,
        )

    # -- manual control ------------------------------------------------------------

    def open_circuit(self) -> None:
        """Open the circuit now, for the policy's open duration; then it probes.

        With an asyncio Redis storage, await :meth:`aopen_circuit` instead.
        """
        _sync.manual(self._rec, Trigger.MANUAL_OPEN)

    def close_circuit(self) -> None:
        """Close the circuit and reset its counts (also ends forced-open and disabled)."""
        _sync.manual(self._rec, Trigger.MANUAL_CLOSE)

    def force_open(self) -> None:
        """Reject every call until :meth:`close_circuit` (``retry_after`` is ``None``)."""
        _sync.manual(self._rec, Trigger.FORCE_OPEN)

    def disable(self) -> None:
        """Admit every call and never trip until :meth:`close_circuit`."""
        _sync.manual(self._rec, Trigger.DISABLE)

    def open(self) -> None:
        """:meth:`open_circuit` under pybreaker's name."""
        _sync.manual(self._rec, Trigger.MANUAL_OPEN)

    def close(self) -> None:
        """:meth:`close_circuit` under pybreaker's name."""
        _sync.manual(self._rec, Trigger.MANUAL_CLOSE)

    async def aopen_circuit(self) -> None:
        """:meth:`open_circuit` for asyncio code (required with an asyncio Redis storage).

        .. versionchanged:: issue 14
           Was ``open_async``, which stays one release as a deprecated alias.
        """
        await _async.amanual(self._rec, Trigger.MANUAL_OPEN)

    async def aclose_circuit(self) -> None:
        """:meth:`close_circuit` for asyncio code (was ``close_async``, deprecated)."""
        await _async.amanual(self._rec, Trigger.MANUAL_CLOSE)

    async def aforce_open(self) -> None:
        """:meth:`force_open` for asyncio code (was ``force_open_async``, deprecated)."""
        await _async.amanual(self._rec, Trigger.FORCE_OPEN)

    async def adisable(self) -> None:
        """:meth:`disable` for asyncio code (was ``disable_async``, deprecated)."""
        await _async.amanual(self._rec, Trigger.DISABLE)

    async def open_async(self) -> None:
        """Deprecated alias of :meth:`aopen_circuit` (removed in the next release)."""
        deprecated("CircuitBreaker.open_async", "CircuitBreaker.aopen_circuit")
        await self.aopen_circuit()

    async def close_async(self) -> None:
        """Deprecated alias of :meth:`aclose_circuit` (removed in the next release)."""
        deprecated("CircuitBreaker.close_async", "CircuitBreaker.aclose_circuit")
        await self.aclose_circuit()

    async def force_open_async(self) -> None:
        """Deprecated alias of :meth:`aforce_open` (removed in the next release)."""
        deprecated("CircuitBreaker.force_open_async", "CircuitBreaker.aforce_open")
        await self.aforce_open()

    async def disable_async(self) -> None:
        """Deprecated alias of :meth:`adisable` (removed in the next release)."""
        deprecated("CircuitBreaker.disable_async", "CircuitBreaker.adisable")
        await self.adisable()

    def _announce(self, *, shared: bool = False) -> None:
        with self._lock:
            transitions = self._core.take_transitions()
        for transition in transitions:
            self._emit_transition(transition, shared=shared)

    def _emit_transition(self, transition: Transition, *, shared: bool) -> None:
        emit(
            BreakerStateChanged(
                name=self.name,
                old_state=transition.old.value,
                new_state=transition.new.value,
                trigger=transition.trigger.value,
                reason=transition.reason,
                retry_after=transition.open_for,
                shared=shared,
            )
        )
        if self._listeners is not None:
            self._listeners.state_change(self, transition.old, transition.new)

    def _reject(self, state: State, retry_after: float | None) -> NoReturn:
        emit(BreakerRejected(name=self.name, state=state.value, retry_after=retry_after))
        raise CircuitOpenError(self.name, retry_after)

    # -- front-ends ----------------------------------------------------------------

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self, func: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, func: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``func`` (a plain or ``async def`` function); its signature is kept.

        Raises:
            ConfigurationError: ``func`` is a generator function (guard the
                code that consumes it instead) or not callable.
        """
        if not callable(func):
            raise ConfigurationError(f"cannot decorate {func!r}", parameter="func")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise ConfigurationError(
                "a breaker cannot guard a generator function; guard the code that iterates it",
                parameter="func",
            )
        if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__):
            # An ``async def`` function, or an object whose __call__ is one.
            return _async.awrap(self._rec, func)
        return _sync.wrap(self._rec, func)

    if TYPE_CHECKING:
        # What mypy and the API reference read. At run time the methods are the
        # drivers' functions themselves (below): one frame per call, not two.

        def call(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
            """Call ``func(*args, **kwargs)`` through the breaker.

            >>> CircuitBreaker("db").call(max, 1, 2)
            2

            Raises:
                CircuitOpenError: the breaker rejected the call (and no fallback).
                Exception: whatever ``func`` raised, unchanged.
            """

        async def acall(
            self, func: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs
        ) -> T:
            """Await ``func(*args, **kwargs)`` through the breaker.

            Raises:
                CircuitOpenError: the breaker rejected the call (and no fallback).
                Exception: whatever ``func`` raised, unchanged.

            .. versionchanged:: issue 14
               Was ``call_async``, which stays one release as a deprecated alias.
            """

    else:
        call = _sync.call
        acall = _async.acall

    async def call_async(
        self, func: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Deprecated alias of :meth:`acall` (removed in the next release)."""
        deprecated("CircuitBreaker.call_async", "CircuitBreaker.acall")
        result: T = await self.acall(func, *args, **kwargs)
        return result

    def acquire(self) -> Permit:
        """Ask to run one call; report its outcome on the returned :class:`Permit`.

        >>> breaker = CircuitBreaker("db")
        >>> permit = breaker.acquire()
        >>> permit.record_success()

        Raises:
            CircuitOpenError: rejected; ``.retry_after`` says for how long.
        """
        ticket = _sync.acquire(self._rec)
        return Permit(self._rec, ticket, self._clock.monotonic())

    async def aacquire(self) -> Permit:
        """:meth:`acquire` for asyncio code (required with an asyncio Redis storage).

        .. versionchanged:: issue 14
           Was ``acquire_async``, which stays one release as a deprecated alias.

        Raises:
            CircuitOpenError: rejected; ``.retry_after`` says for how long.
        """
        ticket = await _async.aacquire(self._rec)
        return Permit(self._rec, ticket, self._clock.monotonic())

    async def acquire_async(self) -> Permit:
        """Deprecated alias of :meth:`aacquire` (removed in the next release)."""
        deprecated("CircuitBreaker.acquire_async", "CircuitBreaker.aacquire")
        return await self.aacquire()

    def guard(self) -> Guard:
        """A context manager for a block: ``with breaker.guard():`` or ``async with``.

        Entering acquires (raising :class:`CircuitOpenError` when rejected);
        leaving records success, or classifies the exception that left the
        block. The block may record a result itself through the permit it gets
        (``with breaker.guard() as permit: ...; permit.record_result(r)``).
        """
        return Guard(self)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state.value})"


class Permit:
    """The right to run one call, from :meth:`CircuitBreaker.acquire`.

    Report exactly one outcome; later reports are ignored. Duration is
    measured from the permit's creation unless given. As a context manager
    (``with breaker.acquire() as permit:``) it records the block's outcome.
    With an asyncio Redis storage, use the ``a``-prefixed methods
    (:meth:`arecord_success`...) and ``async with``.
    """

    __slots__ = ("_done", "_rec", "_start", "_ticket")

    def __init__(self, recorder: Recorder, ticket: int, start: float) -> None:
        self._rec = recorder
        self._ticket = ticket
        self._start = start
        self._done = False

    @property
    def is_probe(self) -> bool:
        """True when this call is a half-open probe."""
        return self._ticket < 0

    def _take(self, duration: float | None) -> tuple[bool, float | None]:
        if self._done:
            return False, None
        self._done = True
        if duration is None and self._rec.timed:
            duration = self._rec.monotonic() - self._start
        return True, duration

    def _record(self, outcome: int, duration: float | None, exc: BaseException | None) -> None:
        fresh, duration = self._take(duration)
        if fresh:
            _sync.finish(self._rec, self._ticket, outcome, duration, exc)

    async def _arecord(
        self, outcome: int, duration: float | None, exc: BaseException | None
    ) -> None:
        fresh, duration = self._take(duration)
        if fresh:
            await _async.afinish(self._rec, self._ticket, outcome, duration, exc)

    def record_success(self, duration: float | None = None) -> None:
        """The call succeeded."""
        self._record(SUCCESS, duration, None)

    def record_failure(self, duration: float | None = None) -> None:
        """The call failed (counts toward tripping)."""
        self._record(FAILURE, duration, None)

    def record_exception(self, exc: BaseException, duration: float | None = None) -> None:
        """The call raised ``exc``; the policy decides what it counts as."""
        self._record(self._rec.classify(exc), duration, exc)

    def record_result(self, result: object, duration: float | None = None) -> None:
        """The call returned ``result``; ``failure_result`` decides what it counts as."""
        self._record(self._rec.classify_result(result), duration, None)

    def release(self) -> None:
        """Give the permit back without an outcome (counts as neither)."""
        self._record(IGNORED, None, None)

    async def arecord_success(self, duration: float | None = None) -> None:
        """:meth:`record_success` for asyncio code (was ``record_success_async``)."""
        await self._arecord(SUCCESS, duration, None)

    async def arecord_failure(self, duration: float | None = None) -> None:
        """:meth:`record_failure` for asyncio code (was ``record_failure_async``)."""
        await self._arecord(FAILURE, duration, None)

    async def arecord_exception(self, exc: BaseException, duration: float | None = None) -> None:
        """:meth:`record_exception` for asyncio code (was ``record_exception_async``)."""
        await self._arecord(self._rec.classify(exc), duration, exc)

    async def arecord_result(self, result: object, duration: float | None = None) -> None:
        """:meth:`record_result` for asyncio code (was ``record_result_async``)."""
        await self._arecord(self._rec.classify_result(result), duration, None)

    async def arelease(self) -> None:
        """:meth:`release` for asyncio code (was ``release_async``)."""
        await self._arecord(IGNORED, None, None)

    async def record_success_async(self, duration: float | None = None) -> None:
        """Deprecated alias of :meth:`arecord_success` (removed in the next release)."""
        deprecated("Permit.record_success_async", "Permit.arecord_success")
        await self.arecord_success(duration)

    async def record_failure_async(self, duration: float | None = None) -> None:
        """Deprecated alias of :meth:`arecord_failure` (removed in the next release)."""
        deprecated("Permit.record_failure_async", "Permit.arecord_failure")
        await self.arecord_failure(duration)

    async def record_exception_async(
        self, exc: BaseException, duration: float | None = None
    ) -> None:
        """Deprecated alias of :meth:`arecord_exception` (removed in the next release)."""
        deprecated("Permit.record_exception_async", "Permit.arecord_exception")
        await self.arecord_exception(exc, duration)

    async def record_result_async(self, result: object, duration: float | None = None) -> None:
        """Deprecated alias of :meth:`arecord_result` (removed in the next release)."""
        deprecated("Permit.record_result_async", "Permit.arecord_result")
        await self.arecord_result(result, duration)

    async def release_async(self) -> None:
        """Deprecated alias of :meth:`arelease` (removed in the next release)."""
        deprecated("Permit.release_async", "Permit.arelease")
        await self.arelease()

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.record_exception(exc)
        else:
            self.record_success()

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            await self.arecord_exception(exc)
        else:
            await self.arecord_success()


class Guard:
    """The context manager returned by :meth:`CircuitBreaker.guard`; single use."""

    __slots__ = ("_breaker", "_permit")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._permit: Permit | None = None

    def __enter__(self) -> Permit:
        self._permit = self._breaker.acquire()
        return self._permit

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._permit is not None
        self._permit.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> Permit:
        self._permit = await self._breaker.aacquire()
        return self._permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._permit is not None
        await self._permit.__aexit__(exc_type, exc, tb)
