"""What the sync and async limiters share: everything but the I/O.

A check goes: :meth:`LimiterLogic.plan` (validate, build keys) ->
:meth:`~LimiterLogic.cached` (the local over-limit cache may answer) ->
:meth:`StoreGuard.available` (the breaker may skip the store) -> the store
call (the shell's part: :mod:`._async`, and :mod:`._sync` generated from it)
-> :meth:`~LimiterLogic.finish` or :meth:`~LimiterLogic.degraded`.
:func:`sync_backend` and :func:`async_backend` turn what a user passes as
``store`` into the backend of each colour.

:class:`StoreGuard` is a small consecutive-failure breaker: after
``failure_threshold`` failed calls the store is skipped for
``recovery_interval`` seconds (those checks take the fallback at once, so an
outage adds no latency); then one call probes it, and the others keep
skipping until that probe succeeds. It emits
:class:`~scalekit.instrumentation.FallbackUsed` once when an incident starts
and :class:`~scalekit.instrumentation.Recovered` when it ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, NamedTuple, TypeAlias

from scalekit._redis_bounded import DEFAULT_OP_TIMEOUT, check_op_timeout
from scalekit.breaker._incident import Incident
from scalekit.errors import ConfigurationError, RateLimiterUnavailable
from scalekit.instrumentation import Event, emit
from scalekit.ratelimit._backends._base import StoreUnavailable
from scalekit.ratelimit._backends._memory import AsyncMemoryBackend, MemoryBackend
from scalekit.ratelimit._backends._redis import (
    AsyncRedisBackend,
    OneKeyRequest,
    RedisBackend,
    one_key_request,
)
from scalekit.ratelimit._core import (
    Decision,
    Limit,
    Outcome,
    check_algorithm,
    check_cost,
    check_namespace,
    coerce_limit,
    decision_from_outcome,
    fixed_decision,
    hash_key_part,
    is_int,
    is_number,
    key_suffix,
)
from scalekit.ratelimit._scripts import SINGLE_LIMIT_ALGORITHMS

if TYPE_CHECKING:
    from scalekit.ratelimit._backends._base import AsyncBackend, SyncBackend
    from scalekit.typing import Clock

__all__ = [
    "FallbackPolicy",
    "LimiterLogic",
    "Plan",
    "ShadowDenied",
    "StoreGuard",
    "async_backend",
    "is_async_client",
    "sync_backend",
]

FallbackPolicy: TypeAlias = Literal["allow", "deny", "local", "raise"]
FALLBACKS: Final = ("allow", "deny", "local", "raise")


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowDenied(Event):
    """A limiter in shadow mode would have denied a hit (it allowed it).

    ``limit`` is the denying limit (``"100/3600s"``); ``key_hash`` a short
    hash of the key, never the key itself (keys are often IPs or API keys).
    """

    kind: ClassVar[str] = "ratelimit.shadow_denied"
    level: ClassVar[int] = logging.INFO

    limit: str
    key_hash: str
    retry_after: float


def key_digest(key: str | bytes) -> str:
    """A short, stable, non-reversible hash of a key, for events and logs."""
    raw = key if isinstance(key, bytes) else key.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def check_positive(value: float, parameter: str, *, most: float = math.inf) -> float:
    """``value`` as a float above 0, finite and at most ``most``; or ConfigurationError."""
    if not is_number(value) or not 0 < value <= most or not math.isfinite(value):
        bound = "" if most == math.inf else f" at most {most:g}"
        raise ConfigurationError(
            f"{parameter} must be a finite number above 0{bound}, got {value!r}",
            parameter=parameter,
        )
    return float(value)


def check_count(value: int, parameter: str) -> int:
    if not is_int(value) or value < 1:
        raise ConfigurationError(
            f"{parameter} must be an int >= 1, got {value!r}", parameter=parameter
        )
    return value


def unavailable(guard: StoreGuard, error: StoreUnavailable | None) -> RateLimiterUnavailable:
    """The error of ``fallback="raise"``: the store's error chained, when there was a call."""
    failure = RateLimiterUnavailable(guard.name, guard.retry_after())
    failure.__cause__ = None if error is None else error.__cause__
    failure.__suppress_context__ = True
    return failure


def check_fallback(fallback: str) -> FallbackPolicy:
    for known in FALLBACKS:
        if fallback == known:
            return known
    raise ConfigurationError(
        f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}", parameter="fallback"
    )


def is_async_client(store: object) -> bool:
    """Whether ``store`` is a ``redis.asyncio`` client (standalone or cluster, or a fake of one)."""
    try:
        from redis.asyncio import Redis as AsyncRedis
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    except ImportError:  # pragma: no cover - redis is not installed
        return False
    return isinstance(store, (AsyncRedis, AsyncRedisCluster))


def sync_backend(store: Any, op_timeout: float = DEFAULT_OP_TIMEOUT) -> SyncBackend:
    """The backend for a blocking ``store``; raises ConfigurationError if it is not one.

    ``op_timeout`` is validated, and applies to a backend built here.
    """
    op_timeout = check_op_timeout(op_timeout)
    if isinstance(store, (MemoryBackend, RedisBackend)):
        return store
    if is_async_client(store):
        raise ConfigurationError(
            f"{type(store).__name__} is an asyncio client: use the Async* limiter",
            parameter="store",
        )
    if callable(getattr(store, "evalsha", None)):
        return RedisBackend(store, op_timeout=op_timeout)
    raise ConfigurationError(
        f"store must be a redis-py client or a MemoryBackend, got {type(store).__name__}",
        parameter="store",
    )


def async_backend(
    store: Any, timeout: float | None, op_timeout: float = DEFAULT_OP_TIMEOUT
) -> AsyncBackend:
    """The backend for an asyncio ``store``; raises ConfigurationError if it is not one.

    ``timeout`` and ``op_timeout`` are validated, and apply to a backend built here.
    """
    op_timeout = check_op_timeout(op_timeout)
    if timeout is not None:
        timeout = check_positive(timeout, "timeout")
    if isinstance(store, (AsyncRedisBackend, AsyncMemoryBackend)):
        return store
    if isinstance(store, MemoryBackend):
        return AsyncMemoryBackend(store)
    if is_async_client(store):
        return AsyncRedisBackend(store, timeout=timeout, op_timeout=op_timeout)
    if callable(getattr(store, "evalsha", None)):
        raise ConfigurationError(
            f"{type(store).__name__} is a blocking client: use RateLimiter, or pass a "
            "redis.asyncio client",
            parameter="store",
        )
    raise ConfigurationError(
        f"store must be a redis.asyncio client or a MemoryBackend, got {type(store).__name__}",
        parameter="store",
    )


class StoreGuard:
    """Consecutive-failure breaker and incident events around one store. Thread-safe."""

    def __init__(
        self,
        *,
        name: str,
        fallback: str,
        failure_threshold: int,
        recovery_interval: float,
        clock: Clock,
    ) -> None:
        self.name = name
        self.fallback = fallback
        self.failure_threshold = check_count(failure_threshold, "failure_threshold")
        self.recovery_interval = check_positive(recovery_interval, "recovery_interval")
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        # The outage rule shared by every fallback: FallbackUsed once, Recovered once.
        self._incident = Incident(name, "ratelimit", fallback)

    @property
    def degraded(self) -> bool:
        """Whether an incident is in progress (the last store call failed)."""
        return self._incident.degraded

    def available(self) -> bool:
        """Whether to call the store now; claims the probe when one is due."""
        if self._open_until is None:
            return True
        return self._claim_probe()

    def _claim_probe(self) -> bool:
        with self._lock:
            until = self._open_until
            if until is None:  # closed meanwhile by another thread
                return True
            now = self._clock.monotonic()
            if now < until:
                return False
            # This caller probes; the others skip the store for another interval.
            self._open_until = now + self.recovery_interval
            return True

    def retry_after(self) -> float:
        """Seconds until the store is tried again (0 when it is not skipped)."""
        until = self._open_until
        return 0.0 if until is None else max(until - self._clock.monotonic(), 0.0)

    def succeeded(self) -> None:
        if not self._incident.degraded and self._failures == 0:
            return
        with self._lock:
            self._failures = 0
            self._open_until = None
        self._incident.recovered(self._clock.monotonic())

    def failed(self, reason: str) -> None:
        with self._lock:
            now = self._clock.monotonic()
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open_until = now + self.recovery_interval
        self._incident.failed(now, reason)


class Plan(NamedTuple):
    """One check, ready for the store: validated limits, keys and numbers."""

    key: str | bytes
    limits: tuple[Limit, ...]
    keys: tuple[str, ...]
    params: tuple[tuple[float, float, float], ...]
    cost: float
    write: bool


#: Limit arguments the hot path of ``hit`` looks up as they are (hashable, and
#: validated the first time they are seen).
_PLAIN_LIMITS = (Limit, str)


class _Spec(NamedTuple):
    """What a check derives from one limit (cached per limiter)."""

    limit: Limit
    params: tuple[float, float, float]
    suffix: str
    limits: tuple[Limit]
    params_one: tuple[tuple[float, float, float]]
    #: What follows the key part in a storage key: ``"}" + suffix``.
    key_tail: str
    #: Per cost, the encoded request of a ``hit`` on Redis (see :meth:`LimiterLogic.prepare_hit`).
    requests: dict[int, OneKeyRequest]


@dataclass(frozen=True, slots=True)
class _Denial:
    until: float
    stored_at: float
    cost: float
    decision: Decision


class LimiterLogic:
    """The I/O-free part of :class:`RateLimiter` and :class:`AsyncRateLimiter`."""

    def __init__(
        self,
        *,
        algorithm: str,
        namespace: str,
        fallback: str,
        instances: int,
        local_cache: bool | int,
        shadow: bool,
        consume_denied: bool,
        failure_threshold: int,
        recovery_interval: float,
        max_local_keys: int,
        clock: Clock,
        name: str | None,
    ) -> None:
        self.algorithm = check_algorithm(algorithm)
        self.namespace = check_namespace(namespace)
        self.fallback = check_fallback(fallback)
        self.instances = check_count(instances, "instances")
        if isinstance(local_cache, bool):
            self.local_cache_size = 10_000 if local_cache else 0
        elif is_int(local_cache) and local_cache >= 0:
            self.local_cache_size = local_cache
        else:
            raise ConfigurationError(
                f"local_cache must be a bool or a size >= 0, got {local_cache!r}",
                parameter="local_cache",
            )
        self.shadow = bool(shadow)
        self.consume_denied = bool(consume_denied)
        self.clock = clock
        self.name = name or namespace
        self.guard = StoreGuard(
            name=self.name,
            fallback=self.fallback,
            failure_threshold=failure_threshold,
            recovery_interval=recovery_interval,
            clock=clock,
        )
        self.local = MemoryBackend(max_keys=max_local_keys, clock=clock)
        self._specs: dict[Limit | str, _Spec] = {}
        #: What a storage key starts with: ``"<namespace>:{"``.
        self.key_head = f"{self.namespace}:{{"
        #: The cached spec of a limit already seen, or None (no validation: the hot path's lookup).
        self.known_spec = self._specs.get
        self._denials: OrderedDict[tuple[str, ...], _Denial] = OrderedDict()
        self._denials_lock = threading.Lock()

    # -- before the store ---------------------------------------------------

    def plan(
        self,
        key: str | bytes,
        limits: Limit | str | Sequence[Limit | str],
        cost: int,
        *,
        write: bool,
    ) -> Plan:
        """Validate a check and build its keys.

        Raises:
            ConfigurationError: no limits, a bad limit, cost or key.
        """
        given: object = limits  # typed callers aside, anything may arrive here
        if isinstance(limits, (Limit, str)):
            listed: Sequence[Limit | str] = [limits]
        elif isinstance(given, (list, tuple)):
            listed = limits
        else:
            try:
                listed = list(limits)
            except TypeError:
                raise ConfigurationError(
                    f"limits must be a Limit, a string or a sequence of them, got {limits!r}",
                    parameter="limits",
                ) from None
        if len(listed) == 1:
            return self.plan_one(key, listed[0], cost, write=write)
        specs = [self._spec(limit) for limit in listed]
        if not specs:
            raise ConfigurationError("at least one limit is needed", parameter="limits")
        # Limits that differ only by name share one key: check it once.
        unique: dict[str, _Spec] = {}
        for spec in specs:
            unique.setdefault(spec.suffix, spec)
        specs = list(unique.values())
        parsed = tuple(spec.limit for spec in specs)
        cost_value = check_cost(cost, parsed)
        prefix = self.key_head + hash_key_part(key)
        keys = tuple(prefix + spec.key_tail for spec in specs)
        return Plan(key, parsed, keys, tuple(spec.params for spec in specs), cost_value, write)

    def plan_one(self, key: str | bytes, limit: Limit | str, cost: int, *, write: bool) -> Plan:
        """:meth:`plan` for one limit (``hit``): the same checks, fewer steps.

        Raises:
            ConfigurationError: a bad limit, cost or key.
        """
        given: object = limit  # typed callers aside, anything may arrive here
        spec = self._specs.get(limit) if isinstance(given, (Limit, str)) else None
        if spec is None:
            spec = self._spec(limit)
        if cost.__class__ is not int or not 0 <= cost <= spec.limit.burst:
            check_cost(cost, spec.limits)  # raises ConfigurationError
        return Plan(
            key,
            spec.limits,
            (self.key_head + hash_key_part(key) + spec.key_tail,),
            spec.params_one,
            float(cost),
            write,
        )

    @property
    def prepares_hits(self) -> bool:
        """Whether ``hit`` may use requests encoded once (:meth:`prepared_hit`) on Redis.

        Not with a local over-limit cache, which every enforced hit must consult.
        """
        return self.algorithm in SINGLE_LIMIT_ALGORITHMS and (
            not self.local_cache_size or self.shadow
        )

    def prepared_hit(
        self, key: str | bytes, limit: Limit | str, cost: int
    ) -> tuple[OneKeyRequest, str, tuple[Limit]] | None:
        """The encoded request, storage key and limits of a ``hit`` seen before, or None.

        None (take :meth:`plan_one`, then :meth:`prepare_hit`) for a limit or
        cost not prepared yet, or while the breaker skips the store. No
        validation here: only a limit and cost already validated were prepared.
        """
        if limit.__class__ not in _PLAIN_LIMITS or cost.__class__ is not int:
            return None
        spec = self.known_spec(limit)
        if spec is None:
            return None
        request = spec.requests.get(cost)
        if request is None or not self.guard.available():
            return None
        return request, self.key_head + hash_key_part(key) + spec.key_tail, spec.limits

    def prepare_hit(self, limit: Limit | str, cost: int) -> None:
        """Encode once the Redis request of a ``hit`` of ``cost`` against ``limit``.

        For a limit already planned (validated) with this cost; afterwards
        :meth:`prepared_hit` finds it, for limiters' hot path.
        """
        if limit.__class__ not in _PLAIN_LIMITS or cost.__class__ is not int:
            return
        spec = self._specs.get(limit)
        if spec is None or cost in spec.requests or len(spec.requests) >= 16:
            return
        request = one_key_request(self.algorithm, spec.params, float(cost), self.consume_denied)
        if request is not None:
            spec.requests[cost] = request

    def _spec(self, limit: Limit | str) -> _Spec:
        """What a check derives from a limit, cached: limits are few and checks many."""
        given: object = limit  # typed callers aside, anything may arrive here
        if not isinstance(given, (Limit, str)):
            coerce_limit(limit)  # raises ConfigurationError
        spec = self._specs.get(limit)
        if spec is None:
            parsed = coerce_limit(limit)
            params = parsed.params(self.algorithm)
            suffix = key_suffix(self.algorithm, parsed)
            spec = _Spec(parsed, params, suffix, (parsed,), (params,), "}" + suffix, {})
            if len(self._specs) >= 1024:  # many distinct limits: keep memory bounded
                self._specs.clear()
            self._specs[limit] = spec
        return spec

    def cached(self, plan: Plan) -> Decision | None:
        """A denial from the local over-limit cache, or None to ask the store."""
        if not self.local_cache_size or not plan.write or self.shadow:
            return None
        denial = self._denials.get(plan.keys)
        if denial is None:
            return None
        now = self.clock.monotonic()
        if now >= denial.until:
            with self._denials_lock:
                self._denials.pop(plan.keys, None)
            return None
        if plan.cost < denial.cost:
            return None  # a cheaper hit might fit: ask the store
        elapsed = now - denial.stored_at
        return dataclasses.replace(
            denial.decision,
            retry_after=denial.until - now,
            reset_after=max(denial.decision.reset_after - elapsed, 0.0),
            cached=True,
        )

    # -- after the store ----------------------------------------------------

    def finish(self, plan: Plan, outcome: Outcome) -> Decision:
        """The decision for the store's outcome; updates breaker and cache."""
        self.guard.succeeded()
        decision = decision_from_outcome(outcome, plan.key, plan.limits, shadow=self.shadow)
        if self.local_cache_size and plan.write and not self.shadow:
            self._remember(plan, decision)
        return self._report(decision)

    def finish_one(self, key: str | bytes, limits: tuple[Limit], outcome: Outcome) -> Decision:
        """:meth:`finish` for a one-limit ``hit`` of a limiter without a local over-limit cache."""
        self.guard.succeeded()
        return self._report(decision_from_outcome(outcome, key, limits, shadow=self.shadow))

    def degraded(self, plan: Plan, error: StoreUnavailable | None) -> Decision:
        """The decision of the fallback policy; ``error`` is None when the store was skipped.

        Raises:
            RateLimiterUnavailable: ``fallback="raise"``, whether the store
                failed now (its error is the ``__cause__``) or is being skipped.
        """
        if error is not None:
            self.guard.failed(error.reason)
        if self.fallback == "raise":
            raise unavailable(self.guard, error)
        if self.fallback == "local":
            limits = [limit.scaled(self.instances) for limit in plan.limits]
            params = [limit.params(self.algorithm) for limit in limits]
            if plan.cost > min(limit.burst for limit in limits):
                # More than this instance's share could ever admit: never over-admit.
                outcome = Outcome(False, 0, 0.0, 0.0, limits[0].period_us)
            else:
                outcome = self.local.evaluate(
                    self.algorithm,
                    plan.keys,
                    params,
                    plan.cost,
                    consume_denied=self.consume_denied,
                    write=plan.write,
                )
            decision = decision_from_outcome(
                outcome, plan.key, limits, fallback="local", shadow=self.shadow
            )
        else:
            decision = fixed_decision(
                self.fallback == "allow", plan.key, plan.limits, fallback=self.fallback
            )
            if not decision.allowed:
                decision = dataclasses.replace(
                    decision, retry_after=max(self.guard.retry_after(), 1.0)
                )
                if self.shadow:
                    decision = dataclasses.replace(decision, allowed=True, shadowed=True)
        return self._report(decision)

    def forget(self, keys: Sequence[str]) -> None:
        """Drop local state of ``keys`` (on reset)."""
        self.local.delete(keys)
        with self._denials_lock:
            for cached in [k for k in self._denials if set(k) & set(keys)]:
                del self._denials[cached]

    def _remember(self, plan: Plan, decision: Decision) -> None:
        with self._denials_lock:
            if decision.allowed:
                self._denials.pop(plan.keys, None)
                return
            now = self.clock.monotonic()
            self._denials[plan.keys] = _Denial(now + decision.retry_after, now, plan.cost, decision)
            self._denials.move_to_end(plan.keys)
            while len(self._denials) > self.local_cache_size:
                self._denials.popitem(last=False)

    def _report(self, decision: Decision) -> Decision:
        if decision.shadowed:
            emit(
                ShadowDenied(
                    name=self.name,
                    limit=str(decision.limit),
                    key_hash=key_digest(decision.key),
                    retry_after=decision.retry_after,
                )
            )
        return decision
