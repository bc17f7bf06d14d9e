"""What :class:`Cache` and :class:`AsyncCache` share: configuration, encoding, decisions.

Everything here is free of I/O: it builds keys and envelopes, decodes what a
read found, decides (through the core) what a read must do, keeps the
counters and reacts to backend failures. The sync and async shells only add
the calls to the backend and the waiting.

Outages
-------

Every backend call goes through a :class:`~scalekit.breaker.CircuitBreaker`:
the user's (``breaker=``, which may guard everything else that talks to the
same Redis) or one the cache builds, which opens on the first outage error,
stays open ``retry_interval`` seconds, then lets one probe through. Only
outage errors (the backend's ``errors``, minus a full connection pool) are
reported to it as failures; a miss, an undecodable entry, a loader's own
exception or a client bug never are.

The hot path asks the breaker nothing it does not need: a breaker that only
counts consecutive failures, keeps its state locally and has no listeners
(the default one) is read once per call (``breaker.state``); a success while
it is closed changes nothing in it (a failure streak, if its ``fail_max`` > 1
allows one, is reset through a permit). Any other breaker (rate windows,
slow calls, shared state, listeners) gets a :class:`~scalekit.breaker.Permit`
for every call, as it needs every outcome.

Each cache keeps its own *incident*, apart from the breaker's state: it starts
at the first call that takes the fallback for an outage (a failed call, or a
rejection by an open breaker that another cache may have opened) and emits
one :class:`~scalekit.instrumentation.FallbackUsed`; it ends at the first call
that reaches Redis again, which flushes the local tier (invalidations sent
meanwhile were lost) and emits one :class:`~scalekit.instrumentation.Recovered`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from scalekit._clock import SystemClock
from scalekit._redis_bounded import DEFAULT_OP_TIMEOUT, bounded, check_op_timeout
from scalekit.breaker import CircuitBreaker, State
from scalekit.breaker._incident import Incident
from scalekit.cache._core import (
    NOT_FOUND,
    VALUE,
    Action,
    Envelope,
    KeyBuilder,
    Kind,
    _canon,
    _digest,
    _json_str,
    _needs_hash,
    decide,
    jittered_ttl,
    pack_envelope,
    unpack_envelope,
    validate_tags,
)
from scalekit.cache._events import CacheDecodeFailed
from scalekit.cache._local import LocalCache
from scalekit.cache._serializers import JsonSerializer, Serializer
from scalekit.errors import (
    CacheUnavailable,
    CircuitOpenError,
    ConfigurationError,
    SerializationError,
)
from scalekit.instrumentation import emit
from scalekit.typing import Clock

if TYPE_CHECKING:
    from scalekit.cache._flow import Flight

__all__ = ["CacheStats", "DownPolicy"]

_log = logging.getLogger("scalekit.cache")

DownPolicy = Literal["bypass", "stale_local", "raise"]
_POLICIES: Final = ("bypass", "stale_local", "raise")
InvalidationMode = Literal["auto", "tracking", "pubsub"]
_INVALIDATION_MODES: Final = ("auto", "tracking", "pubsub")
#: The channel Redis client tracking sends invalidations to (RESP2 redirect).
TRACKING_CHANNEL: Final = "__redis__:invalidate"
_CLOSED: Final = State.CLOSED
#: The tag versions of a read that names no tags (never written to).
_NO_VERSIONS: Final[dict[str, int]] = {}


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of a cache's counters (:meth:`Cache.stats`).

    ``hits`` count fresh values served (``local_hits`` of them from the local
    tier); ``stale`` stale values served while refreshing; ``early`` XFetch
    early recomputations; ``misses`` reads that found nothing usable;
    ``loads`` loader runs and ``load_seconds`` their total time;
    ``lease_waits`` waits for another process's loader; ``errors`` undecodable
    entries and failed refreshes; ``fallbacks`` operations that took the
    down-Redis path.
    """

    hits: int
    local_hits: int
    misses: int
    stale: int
    early: int
    loads: int
    load_seconds: float
    lease_waits: int
    errors: int
    fallbacks: int


class _Counters:
    __slots__ = (
        "early",
        "errors",
        "fallbacks",
        "hits",
        "lease_waits",
        "load_seconds",
        "loads",
        "local_hits",
        "misses",
        "stale",
    )

    def __init__(self) -> None:
        self.hits = self.local_hits = self.misses = self.stale = self.early = 0
        self.loads = self.lease_waits = self.errors = self.fallbacks = 0
        self.load_seconds = 0.0

    def snapshot(self) -> CacheStats:
        return CacheStats(
            hits=self.hits,
            local_hits=self.local_hits,
            misses=self.misses,
            stale=self.stale,
            early=self.early,
            loads=self.loads,
            load_seconds=self.load_seconds,
            lease_waits=self.lease_waits,
            errors=self.errors,
            fallbacks=self.fallbacks,
        )


#: Seconds without an undecodable entry that end an incident of them (one report each).
DECODE_INCIDENT_GAP: Final = 60.0

#: The longest duration (seconds) any TTL, window or wait of a cache may be: about
#: 31.7 years. Redis refuses an expiry past 2**63 - 1 ms from now, and Python's
#: sleeps and waits overflow near 9.2e9 s; this bound keeps well inside both.
MAX_SECONDS: Final = 1e9


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as seconds in (0, MAX_SECONDS] (or [0, ...] with ``allow_zero``).

    Raises:
        ConfigurationError: not a number, or out of that range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{name} must be a number of seconds, got {type(value).__name__}", parameter=name
        )
    bound = ">= 0" if allow_zero else "> 0"
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if not (seconds > 0 or (allow_zero and seconds == 0)) or not seconds <= MAX_SECONDS:
        # (repr() of a huge int is refused by Python itself beyond 4300 digits.)
        shown = repr(value) if isinstance(value, float) or abs(value) < 10**18 else "a huge int"
        raise ConfigurationError(
            f"{name} must be a number of seconds {bound} and at most {MAX_SECONDS:.0e} "
            f"(about 31 years), got {shown}",
            parameter=name,
        )
    return seconds


class _Outcome:
    """What a loader produced: a kind, the value (or exception) and the envelope stored."""

    __slots__ = ("envelope", "kind", "value")

    def __init__(self, kind: Kind, value: Any, envelope: Envelope | None) -> None:
        self.kind = kind
        self.value = value
        self.envelope = envelope


#: How a backend call failed (see :meth:`CacheBase._failure_kind`).
FailureKind = Literal["outage", "busy", "refused", "bug"]


class CacheBase:
    """Configuration and I/O-free logic of both shells (not public)."""

    #: What the backend raises when Redis is unreachable (set by the shells).
    _errors: tuple[type[BaseException], ...]
    #: Of those, what means only "the client's pool is full" (this call alone fails).
    _busy: tuple[type[BaseException], ...]
    #: Of those, what means "the server refused this command" (an error reply).
    _refusals: tuple[type[BaseException], ...] = ()
    #: Of the refusals, those that say the server cannot serve now (an outage).
    _unavailable_replies: tuple[type[BaseException], ...] = ()

    def __init__(
        self,
        *,
        namespace: str,
        schema_version: int,
        default_ttl: float,
        stale_ttl: float | None,
        jitter: float,
        beta: float,
        negative_ttl: float,
        cache_errors: Sequence[type[BaseException]],
        lease_ttl: float,
        lease_wait: float,
        poll_interval: float,
        on_redis_down: DownPolicy,
        retry_interval: float,
        local: LocalCache | None,
        serializer: Serializer | None,
        background_refresh: bool,
        max_key_length: int,
        clock: Clock,
        rng: random.Random | None,
        invalidation: InvalidationMode = "auto",
        breaker: CircuitBreaker | None = None,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
    ) -> None:
        self.keys = KeyBuilder(namespace, schema_version, max_key_length)
        self.op_timeout = check_op_timeout(op_timeout)
        self.namespace = namespace
        self.default_ttl = _positive("default_ttl", default_ttl)
        self.stale_ttl = (
            None if stale_ttl is None else _positive("stale_ttl", stale_ttl, allow_zero=True)
        )
        self.jitter = _positive("jitter", jitter, allow_zero=True)
        if self.jitter >= 1:
            raise ConfigurationError(
                "jitter must be < 1 (a fraction of the TTL)", parameter="jitter"
            )
        self.beta = _positive("beta", beta, allow_zero=True)
        self.negative_ttl = _positive("negative_ttl", negative_ttl)
        errors: tuple[object, ...] = tuple(cache_errors)
        for error in errors:
            if not (isinstance(error, type) and issubclass(error, Exception)):
                raise ConfigurationError(
                    "cache_errors must be Exception subclasses", parameter="cache_errors"
                )
        self.cache_errors = cast("tuple[type[Exception], ...]", errors)
        self.lease_ttl = _positive("lease_ttl", lease_ttl)
        self.lease_wait = _positive("lease_wait", lease_wait, allow_zero=True)
        self.poll_interval = _positive("poll_interval", poll_interval)
        if on_redis_down not in _POLICIES:
            raise ConfigurationError(
                f"on_redis_down must be one of {', '.join(_POLICIES)}", parameter="on_redis_down"
            )
        self.on_redis_down: DownPolicy = on_redis_down
        self.retry_interval = _positive("retry_interval", retry_interval)
        self.breaker = self._make_breaker(breaker, namespace, clock)
        policy = self.breaker.policy
        # Nothing but a consecutive-failure count, local state, no listeners: a
        # success while closed changes nothing, so a hit only reads the state.
        self._light: bool = not self.breaker.needs_every_outcome
        # Such a breaker with fail_max > 1 may hold a failure streak while closed.
        self._streaks = self._light and (policy.fail_max or 1) > 1
        # Monotonic start of this cache's outage incident (None while healthy).
        # The outage rule shared by every component (breaker/_incident.py).
        self._incident = Incident(self.namespace, "cache", self.on_redis_down)
        # Until when the breaker said it rejects calls (its retry_after), so an
        # open breaker is not asked again on every call: 0.0 when not known.
        self._open_until = 0.0
        if local is not None and not isinstance(local, LocalCache):
            raise ConfigurationError("local must be a LocalCache", parameter="local")
        self.local = local
        chosen: object = JsonSerializer() if serializer is None else serializer
        if not isinstance(chosen, Serializer):
            raise ConfigurationError(
                "serializer needs codec_id, dumps() and loads()", parameter="serializer"
            )
        self.serializer: Serializer = chosen
        self.background_refresh = bool(background_refresh)
        self.clock = clock
        # The wall clock of every read's decision; the system clock's own
        # function when it is the system clock (one Python call less per read).
        self._now: Callable[[], float] = time.time if type(clock) is SystemClock else clock.time
        self._monotonic: Callable[[], float] = (
            time.monotonic if type(clock) is SystemClock else clock.monotonic
        )
        self.rng = rng if rng is not None else random.Random()
        self.counters = _Counters()
        self._unexpected_seen: set[type[BaseException]] = set()
        # Monotonic time until which an undecodable entry is part of the current
        # incident (see _undecodable).
        self._decode_quiet_until = -math.inf
        # Invalidation messages for other processes' local tiers.
        self.channel = f"{self.keys.namespace}!invalidate"
        self.origin = secrets.token_hex(6)
        if invalidation not in _INVALIDATION_MODES:
            raise ConfigurationError(
                f"invalidation must be one of {', '.join(_INVALIDATION_MODES)}",
                parameter="invalidation",
            )
        self.invalidation: InvalidationMode = invalidation
        # What keeps the local tier honest right now: "tracking", "pubsub", or
        # "none" (no local tier, memory backend, or not connected yet).
        self.invalidation_mode: str = "none"
        self._tracking_refused = False
        self._reconnected = False
        # Single-flight (see _flow.py): the in-process load of each key, and the
        # event type its followers wait on (set by each shell).
        self._flights: dict[str, Flight] = {}
        self._flights_lock = threading.Lock()
        self._new_event: Callable[[], Any] = threading.Event

    # ------------------------------------------------------------------ the client

    def _store_client(self, client: Any) -> Any:
        """The client the backend uses for ``client``: bounded by ``op_timeout``.

        The user's client when its own settings already bound a command,
        otherwise a twin of it that this cache owns and closes (see
        :mod:`scalekit._redis_bounded`).

        Raises:
            ConfigurationError: ``client`` decodes responses.
        """
        if decodes_responses(client):
            raise ConfigurationError(
                "the cache stores bytes, and this Redis client decodes every reply to str "
                "(decode_responses=True), so no entry could ever be read back: give the "
                "cache a client made without decode_responses (the default), e.g. "
                "redis.Redis(host, port) next to the one your app uses",
                parameter="client",
            )
        return bounded(client, self.op_timeout)

    def _use_backend(self, backend: Any) -> None:
        """Take the backend's error classification (see :meth:`_failure_kind`)."""
        self._errors = backend.errors
        self._busy = getattr(backend, "busy_errors", ())
        self._refusals = getattr(backend, "refusals", ())
        self._unavailable_replies = getattr(backend, "unavailable_replies", ())

    # ------------------------------------------------------------------ stats, keys

    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        return self.counters.snapshot()

    def _ttl(self, ttl: float | None) -> float:
        return self.default_ttl if ttl is None else _positive("ttl", ttl)

    def _check_call(self, loader: object, ttl: float | None) -> None:
        """A ``get_or_set`` call's own arguments, checked before any I/O."""
        if not callable(loader):
            raise ConfigurationError(
                f"loader must be a callable, got {type(loader).__name__}", parameter="loader"
            )
        if ttl is not None:
            self._ttl(ttl)

    def _decorator_options(
        self, ttl: float | None, key: object, tags: object, skip: object
    ) -> tuple[str, ...]:
        """Check :meth:`cached`'s options; the parameter names to leave out of keys."""
        if ttl is not None:
            self._ttl(ttl)
        if key is not None and not callable(key):
            raise ConfigurationError("key must be a callable returning a str", parameter="key")
        if tags is not None and not callable(tags):
            validate_tags(cast("Iterable[str]", tags))
        if isinstance(skip, str | bytes) or not isinstance(skip, Iterable):
            raise ConfigurationError(
                f"skip must be a list of parameter names, got {type(skip).__name__}",
                parameter="skip",
            )
        skipped = tuple(skip)
        if not all(isinstance(name, str) for name in skipped):
            raise ConfigurationError("skip must hold parameter names (str)", parameter="skip")
        return skipped

    def _stale_window(self, ttl: float) -> float:
        return ttl * 0.25 if self.stale_ttl is None else self.stale_ttl

    def _tag_keys(self, tags: tuple[str, ...]) -> list[str]:
        return [self.keys.tag(tag) for tag in tags]

    # ------------------------------------------------------------------ encoding

    def encode_value(self, value: Any, ttl: float) -> bytes:
        """The bytes this cache stores for ``value`` living ``ttl`` seconds (its envelope).

        For integrations that write entries with commands of their own (see
        ``guarded_call``); the cache reads them back as its own entries.

        Raises:
            SerializationError: the serializer cannot encode ``value``.
        """
        return self._build(Kind.VALUE, value, ttl, 0.0, (), ())[1]

    def _build(
        self,
        kind: Kind,
        value: Any,
        ttl: float | None,
        cost: float,
        tags: tuple[str, ...],
        versions: Sequence[int],
    ) -> tuple[Envelope, bytes, int]:
        """The envelope, its bytes and the store TTL in ms for a loader's result."""
        now = self.clock.time()
        if kind is Kind.VALUE:
            soft_ttl = jittered_ttl(self._ttl(ttl), self.jitter, self.rng.random())
            stale = self._stale_window(self._ttl(ttl))
            payload = self.serializer.dumps(value)
        else:
            soft_ttl = jittered_ttl(self.negative_ttl, self.jitter, self.rng.random())
            stale = 0.0
            payload = b"" if kind is Kind.NOT_FOUND else _error_payload(value)
        envelope = Envelope(
            payload=payload,
            created=now,
            cost=max(cost, 0.0),
            soft_expiry=now + soft_ttl,
            hard_expiry=now + soft_ttl + stale,
            codec=self.serializer.codec_id,
            kind=kind,
            tags=tuple(zip(tags, versions, strict=True)),
        )
        return envelope, pack_envelope(envelope), max(int((soft_ttl + stale) * 1000), 1)

    def _decode(self, raw: bytes | None) -> tuple[Envelope, Any] | None:
        """Bytes from the store to (envelope, value), or ``None`` (a miss).

        Never raises: an entry that cannot be decoded for any reason (another
        writer, corruption, a hostile payload, a cached error whose type this
        cache cannot rebuild) is a miss, counted in ``stats().errors`` and
        reported once per incident (see :meth:`_undecodable`). A cached
        error's value is ``(type, args)``, rebuilt on every delivery.
        """
        if raw is None:
            return None
        try:
            envelope = unpack_envelope(raw)
            if envelope.kind is not VALUE:
                if envelope.kind is Kind.ERROR:
                    return envelope, self._error_spec(envelope.payload)
                return envelope, None
            if envelope.codec != self.serializer.codec_id:
                raise SerializationError(
                    f"entry written with codec {envelope.codec}, this cache reads "
                    f"{self.serializer.codec_id}"
                )
            return envelope, self.serializer.loads(envelope.payload)
        except Exception as exc:  # a user's serialiser may raise anything
            self._undecodable(exc)
            return None

    def _undecodable(self, exc: Exception) -> None:
        """Count an undecodable entry; report it once per incident.

        An incident is a run of such reads with less than
        :data:`DECODE_INCIDENT_GAP` seconds between two of them: one corrupt key
        read by every request logs one line, not one per read.
        """
        self.counters.errors += 1
        now = self._monotonic()
        quiet = now >= self._decode_quiet_until
        self._decode_quiet_until = now + DECODE_INCIDENT_GAP
        if quiet:
            # Our own messages name types and codecs only; another exception's
            # text might quote the stored bytes, so only its type is reported.
            reason = type(exc).__name__
            if isinstance(exc, SerializationError):
                reason = f"{reason}: {exc}"
            emit(CacheDecodeFailed(name=self.namespace, reason=reason))

    def _error_spec(self, payload: bytes) -> tuple[type[Exception], tuple[Any, ...]]:
        """The type and arguments of a cached error, checked to rebuild.

        Raises:
            SerializationError: the payload is not a cached error of one of
                ``cache_errors`` that its arguments rebuild.
        """
        try:
            data = json.loads(payload)
            name, args = data["type"], tuple(data["args"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise SerializationError("unreadable cached error") from exc
        for error in self.cache_errors:
            if f"{error.__module__}.{error.__qualname__}" == name:
                try:
                    error(*args)
                except Exception as exc:  # a constructor that wants other arguments
                    raise SerializationError(
                        f"cached error of type {name} cannot be rebuilt"
                    ) from exc
                return error, args
        raise SerializationError("cached error of a type not in cache_errors")

    def _decide(
        self, entry: tuple[Envelope, Any] | None, versions: Mapping[str, int] | None
    ) -> Action:
        envelope = None if entry is None else entry[0]
        return decide(
            envelope,
            self._now(),
            beta=self.beta,
            rand=1.0 - self.rng.random(),
            tag_versions=versions,
        )

    def _unwrap(self, envelope: Envelope, value: Any) -> Any:
        """The value a caller gets from an entry: the value, NOT_FOUND, or a raised error."""
        if envelope.kind is VALUE:
            return value
        if envelope.kind is Kind.NOT_FOUND:
            return NOT_FOUND
        error, args = value
        raise error(*args)

    def _outcome_of(self, loader_result: Any) -> tuple[Kind, Any]:
        return (
            (Kind.NOT_FOUND, NOT_FOUND)
            if loader_result is NOT_FOUND
            else (Kind.VALUE, loader_result)
        )

    def _entry_outcome(self, entry: tuple[Envelope, Any]) -> _Outcome:
        """An entry found in the store, as the outcome a waiting caller receives."""
        envelope, value = entry
        if envelope.kind is Kind.ERROR:
            error, args = value
            return _Outcome(Kind.ERROR, error(*args), envelope)
        if envelope.kind is Kind.NOT_FOUND:
            return _Outcome(Kind.NOT_FOUND, NOT_FOUND, envelope)
        return _Outcome(Kind.VALUE, value, envelope)

    def _is_cached_error(self, exc: BaseException) -> bool:
        return bool(self.cache_errors) and isinstance(exc, self.cache_errors)

    # ------------------------------------------------------------------ local tier

    def _local_get(self, key: str, *, allow_expired: bool = False) -> tuple[Envelope, Any] | None:
        if self.local is None:
            return None
        return self.local.get(key, self.clock.time(), allow_expired=allow_expired)

    def _local_put(self, key: str, envelope: Envelope, value: Any) -> None:
        if self.local is not None:
            self.local.put(key, envelope, value, self.clock.time())

    def _notify(self, kind: str, items: Iterable[str]) -> tuple[str, str]:
        """The invalidation message for other processes' local tiers.

        Sent with every write and invalidation, with or without a local tier
        here: the other processes may have one.
        """
        return (self.channel, f"{kind}:{self.origin}:" + "\n".join(items))

    def _apply_message(self, message: str) -> None:
        """Apply an invalidation message from another process to the local tier."""
        if self.local is None:
            return
        kind, _, rest = message.partition(":")
        origin, _, arg = rest.partition(":")
        if origin == self.origin:
            return
        if kind == "k":
            for key in arg.split("\n"):
                self.local.discard(key)
        elif kind == "t":
            for tag in arg.split("\n"):
                self.local.discard_tag(tag)
        else:
            self.local.clear()

    def _want_tracking(self, cluster: bool) -> bool:
        """Whether the listener should try Redis client tracking (not on a cluster)."""
        return self.invalidation != "pubsub" and not cluster and not self._tracking_refused

    def _tracking_command(self, client_id: int) -> tuple[str, ...]:
        """``CLIENT TRACKING`` broadcasting this cache's data keys to ``client_id``."""
        return (
            "CLIENT",
            "TRACKING",
            "ON",
            "REDIRECT",
            str(client_id),
            "BCAST",
            "PREFIX",
            self.keys.data(""),
        )

    def _tracking_refused_by(self, exc: BaseException) -> None:
        """The server refused ``CLIENT TRACKING``: use pub/sub from now on."""
        self._tracking_refused = True
        _log.log(
            logging.WARNING if self.invalidation == "tracking" else logging.INFO,
            "cache %r: Redis client tracking unavailable (%s); using pub/sub invalidation",
            self.namespace,
            type(exc).__name__,
        )

    def _on_connect(self, connection: object) -> Any:
        """Connect callback of the listener's connections: a reconnect loses tracking."""
        self._reconnected = True

    def _apply_tracking(self, data: object) -> None:
        """Apply a client-tracking invalidation: keys to evict, or ``None`` (flush all)."""
        if self.local is None:
            return
        if data is None:
            self.local.clear()
            return
        items = data if isinstance(data, list | tuple) else [data]
        for item in items:
            key = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            self.local.discard(key)

    def _dispatch(self, message: dict[str, Any]) -> None:
        """Route one pub/sub message to tracking or to our own invalidation format."""
        if message.get("type") != "message":
            return
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        data = message.get("data")
        if channel == TRACKING_CHANNEL:
            self._apply_tracking(data)
        elif data is not None:
            self._apply_message(data.decode() if isinstance(data, bytes) else str(data))

    def _channel_lost(self) -> None:
        """The invalidation channel broke: messages may be lost, the local tier is suspect."""
        if self.local is None:
            return
        if self.on_redis_down == "stale_local":
            self.local.expire_all()  # still served while Redis is down, never as fresh
        else:
            self.local.clear()

    # ------------------------------------------------------------------ outages

    def _make_breaker(
        self, breaker: CircuitBreaker | None, namespace: str, clock: Clock
    ) -> CircuitBreaker:
        if breaker is None:
            # Today's outage rule: open on the first outage error, probe once per
            # retry_interval (a probe that never reports frees its slot as fast).
            return CircuitBreaker(
                f"cache:{namespace}",
                fail_max=1,
                reset_timeout=self.retry_interval,
                probe_timeout=self.retry_interval,
                clock=clock,
            )
        given: object = breaker
        if not isinstance(given, CircuitBreaker):
            raise ConfigurationError(
                f"breaker must be a scalekit.breaker.CircuitBreaker, got {type(given).__name__}",
                parameter="breaker",
            )
        return breaker

    def _rejected(self, exc: CircuitOpenError) -> None:
        """The breaker rejected a call: remember for how long, take the fallback."""
        wait = self.retry_interval if exc.retry_after is None else exc.retry_after
        self._open_until = self._monotonic() + wait
        self._backend_failed(None)

    def _refused(self) -> bool:
        """Whether the breaker's last rejection still holds (then take the fallback).

        Asking an open breaker builds an event and an exception per call;
        until its ``retry_after`` has passed the answer is known, unless the
        breaker was closed meanwhile (by another cache's probe, or by hand).
        """
        if self._monotonic() < self._open_until and self.breaker.state is not _CLOSED:
            self._backend_failed(None)
            return True
        self._open_until = 0.0
        return False

    def _trip(self) -> None:
        """Report an outage error of a call made without a permit (light breakers only)."""
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError:
            return  # another call opened it meanwhile
        permit.record_failure()

    def _backend_failed(self, exc: BaseException | None, *, outage: bool = True) -> None:
        """Take the fallback for a failed or rejected call; raises under ``raise``.

        ``exc`` is ``None`` when the breaker rejected the call. ``outage=False``
        is a failure of this call only (the client's connection pool is
        exhausted, Redis itself is fine): the call takes the fallback, but
        it is not an incident and the breaker never hears of it.
        """
        self.counters.fallbacks += 1
        if outage and self._incident.since is None:
            # Logged (by the default LoggingHook) and counted once per incident.
            self._incident.failed(
                self.clock.monotonic(), "CircuitOpenError" if exc is None else type(exc).__name__
            )
        if self.on_redis_down == "raise":
            raise CacheUnavailable(self.namespace) from exc

    def _failure_kind(self, exc: Exception) -> FailureKind:
        """What a backend call's exception means.

        ``"outage"``: Redis is down (the breaker hears of it); ``"busy"``: the
        client's pool is full (this call only); ``"refused"``: an error reply to
        this command (a value Redis rejects, a key of another type written by
        someone else, out of memory: this call only, Redis is up);
        ``"bug"``: nothing a Redis client should raise.
        """
        if not isinstance(exc, self._errors):
            return "bug"
        if isinstance(exc, self._busy):
            return "busy"
        if isinstance(exc, self._refusals) and not isinstance(exc, self._unavailable_replies):
            return "refused"
        return "outage"

    def _fall_back(self, exc: Exception, kind: FailureKind) -> None:
        """Take the fallback for a call that raised ``exc`` (of ``kind``).

        Raises:
            ConfigurationError: Redis refused a value the caller gave (which
                validation should have caught first).
        """
        if kind == "bug":
            self._unexpected(exc)
        elif kind == "refused":
            self._refused_reply(exc)
        else:
            self._backend_failed(exc, outage=kind == "outage")

    def _refused_reply(self, exc: Exception) -> None:
        """Redis answered this command with an error: the call's own failure.

        Never an outage (the breaker does not hear of it: one bad call must not
        bypass Redis for every key). An expiry Redis refuses is the caller's
        value: :class:`ConfigurationError`. Anything else takes the fallback
        and is logged once per error type (by type only: the reply to a
        pipeline quotes the command, values included).
        """
        if "expire time" in str(exc):
            raise ConfigurationError(
                "Redis refused the expiry of this write; give a ttl within the documented range",
                parameter="ttl",
            ) from exc
        kind = type(exc)
        if kind not in self._unexpected_seen:
            self._unexpected_seen.add(kind)
            _log.warning(
                "cache %r: Redis refused a command (%s); the call fell back",
                self.namespace,
                kind.__name__,
            )
        self._backend_failed(exc, outage=False)

    def _unexpected(self, exc: Exception) -> None:
        """A backend call raised something no Redis client should (seen: redis-py's
        asyncio cluster under heavy concurrency). The caller's work must not fail
        because of the cache: this call takes the fallback, and the error type is
        logged once, with its traceback, so it is not hidden."""
        kind = type(exc)
        if kind not in self._unexpected_seen:
            self._unexpected_seen.add(kind)
            _log.warning(
                "cache %r: unexpected %s from the store client; the call fell back",
                self.namespace,
                kind.__name__,
                exc_info=exc,
            )
        self._backend_failed(exc, outage=False)

    def _backend_ok(self) -> None:
        """After a call that reached the backend: end a streak or an incident.

        Called only when :attr:`_streaks` or an incident is open, never on a
        plain hit.
        """
        if self._streaks and self.breaker.fail_counter:
            try:
                self.breaker.acquire().record_success()
            except CircuitOpenError:  # pragma: no cover - opened by another call meanwhile
                pass
        if self._incident.recovered(self.clock.monotonic()) is not None and self.local is not None:
            # Messages sent during the outage were lost: start clean.
            self.local.clear()

    def _new_token(self) -> str:
        return secrets.token_hex(12)


def pairs_of(items: object) -> list[tuple[str, Any]]:
    """``set_many``'s items: a mapping, or an iterable of ``(key, value)`` pairs.

    Raises:
        ConfigurationError: anything else (a bare string, a pair that is not two items).
    """
    if isinstance(items, Mapping):
        return list(items.items())
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ConfigurationError(
            "items must be a mapping of key to value, or (key, value) pairs; "
            f"got {type(items).__name__}",
            parameter="items",
        )
    pairs: list[tuple[str, Any]] = []
    for pair in items:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ConfigurationError(
                f"items must be (key, value) pairs; got a {type(pair).__name__} item",
                parameter="items",
            )
        pairs.append((pair[0], pair[1]))
    return pairs


def keys_of(keys: object) -> list[str]:
    """``get_many``'s keys, without duplicates, in order.

    Raises:
        ConfigurationError: a bare string or something not iterable (the keys
            themselves are checked when they are built).
    """
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise ConfigurationError(
            f"keys must be an iterable of str, not {type(keys).__name__}", parameter="keys"
        )
    return list(dict.fromkeys(keys))


def check_function(func: object) -> None:
    """What ``cached`` decorates must be a callable."""
    if not callable(func):
        raise ConfigurationError(
            f"cached() decorates a function, got {type(func).__name__}", parameter="func"
        )


def check_colour(func: Callable[..., Any], *, shell_is_async: bool) -> None:
    """``cached`` of each shell decorates functions of its own colour only."""
    if inspect.iscoroutinefunction(func) == shell_is_async:
        return
    if shell_is_async:
        message = f"{function_name(func)} is not async; decorate it with Cache.cached"
    else:
        message = f"{function_name(func)} is async; decorate it with AsyncCache.cached"
    raise ConfigurationError(message, parameter="func")


def other_colour_client(*, shell_is_async: bool) -> ConfigurationError:
    """The error for a Redis client of the other colour than the shell's."""
    if shell_is_async:
        return ConfigurationError("this is a sync client; use Cache", parameter="client")
    return ConfigurationError("this is an asyncio client; use AsyncCache", parameter="client")


def _error_payload(exc: BaseException) -> bytes:
    args = [
        arg if isinstance(arg, str | int | float | bool) or arg is None else repr(arg)
        for arg in exc.args
    ]
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return json.dumps({"type": name, "args": args}).encode()


def function_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of ``func``: the stable part of the decorator's keys."""
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


_MISSING: Final = object()  # a parameter the call did not give and that has no default

#: A compiled key builder: ``(args, kwargs) -> stored key``.
KeyFunction = Callable[[tuple[Any, ...], dict[str, Any]], str]


class CallKey:
    """Turns a decorated function's call into the text of its cache key.

    ``f(1)``, ``f(x=1)`` and ``f(1, <default>)`` give the same text. The
    reference is :meth:`text` (through :func:`bind_arguments`, i.e.
    :meth:`inspect.Signature.bind`, which costs more than a Redis hit's own
    Python work). :meth:`compile` returns a builder specialised once per
    decorated function that fills parameters from positions, names and
    defaults itself and builds the stored key directly; it produces exactly
    :meth:`text`'s key and falls back to it for anything unusual (``*args``,
    ``**kwargs``, a call that does not fit the signature).
    """

    __slots__ = ("_defaults", "_index_of", "_name", "_order", "_plain", "_signature", "_skip")

    def __init__(self, name: str, signature: inspect.Signature, skip: Iterable[str]) -> None:
        self._name = name
        self._signature = signature
        self._skip = frozenset(skip)
        params = list(signature.parameters.values())
        # No *args / **kwargs: every parameter is one slot, filled from a position,
        # a name (keyword-capable ones) or its default.
        self._plain = all(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
        self._defaults = tuple(_MISSING if p.default is p.empty else p.default for p in params)
        self._index_of = {
            p.name: i for i, p in enumerate(params) if p.kind is not p.POSITIONAL_ONLY
        }
        # Keys list parameters by name (canonical_args sorts named arguments).
        self._order = tuple(
            sorted((p.name, i) for i, p in enumerate(params) if p.name not in self._skip)
        )

    def text(self, keys: KeyBuilder, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """The user key of this call (before :meth:`KeyBuilder.data`): the reference.

        Raises:
            TypeError: the arguments do not fit the signature (as calling would).
        """
        positional, named = bind_arguments(self._signature, args, kwargs, self._skip)
        return keys.function(self._name, positional, named)

    def compile(self, keys: KeyBuilder) -> KeyFunction:
        """A function ``(args, kwargs) -> stored key`` equal to ``keys.data(text(...))``.

        Raises (from the returned function):
            TypeError: the arguments do not fit the signature (as calling would).
        """

        def reference(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            return keys.data(self.text(keys, args, kwargs))

        head = f"{self._name}(;"
        if not self._plain or _needs_hash(head, len(head)):
            return reference  # odd names would hash anyway: not worth a fast path
        prefix = keys.data("")  # "<namespace>:v<version>:"
        max_length = keys.max_key_length
        defaults = self._defaults
        size = len(defaults)
        index_of = self._index_of
        # A call with exactly every parameter by position (the common case)
        # needs no filling; with keyword-only parameters there is no such call.
        arity = sum(p.kind is not p.KEYWORD_ONLY for p in self._signature.parameters.values())
        positional = size if arity == size else -1
        labels = tuple((f"{name}=", index) for name, index in self._order)

        def fill(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Sequence[Any] | None:
            given = len(args)
            if given > arity:
                return None  # too many positional arguments: bind() raises
            values = list(args)
            values.extend(defaults[given:])
            for name, value in kwargs.items():
                index = index_of.get(name)
                if index is None or index < given:
                    return None  # unknown, positional-only or given twice: bind() raises
                values[index] = value
            for value in values:
                if value is _MISSING:
                    return None
            return values

        def finish(text: str) -> str:
            # KeyBuilder.data's rule (the text cannot start with "#": head does not).
            if len(text) > max_length or " " in text or not text.isprintable():
                return prefix + _digest(text)
            return prefix + text

        if len(labels) == 1:
            ((label, index),) = labels
            lead = head + label

            def key_of_one(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
                if kwargs or len(args) != positional:
                    values = fill(args, kwargs)
                    if values is None:
                        return reference(args, kwargs)
                    value = values[index]
                else:
                    value = args[index]
                # _canon's first cases, inline: the usual argument is an int or a str.
                kind = type(value)
                if kind is int:
                    text = f"{lead}i{value})"
                elif kind is str:
                    text = f"{lead}s{_json_str(value)})"
                else:
                    text = f"{lead}{_canon(value)})"
                # finish(), inline (one call less on the hottest path).
                if len(text) > max_length or " " in text or not text.isprintable():
                    return prefix + _digest(text)
                return prefix + text

            return key_of_one

        def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            values: Sequence[Any] = args
            if kwargs or len(args) != positional:
                filled = fill(args, kwargs)
                if filled is None:
                    return reference(args, kwargs)
                values = filled
            text = head + ",".join([label + _canon(values[index]) for label, index in labels])
            return finish(text + ")")

        return key_of


def bind_arguments(
    signature: inspect.Signature,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    skip: Iterable[str],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Normalise a call so that ``f(1, b=2)`` and ``f(a=1, b=2)`` share a key.

    Raises:
        TypeError: the arguments do not fit the signature (as calling would).
    """
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    skipped = set(skip)
    positional: list[Any] = []
    named: dict[str, Any] = {}
    for name, param in signature.parameters.items():
        if name in skipped:
            continue
        value = bound.arguments[name]
        if param.kind is param.VAR_POSITIONAL:
            positional.extend(value)
        elif param.kind is param.VAR_KEYWORD:
            named.update({f"**{k}": v for k, v in value.items()})
        else:
            named[name] = value
    return tuple(positional), named


def make_tags(
    tags: Iterable[str] | Callable[..., Iterable[str]] | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> tuple[str, ...]:
    """The tags of a decorated call: a fixed list, or a function of the call's arguments."""
    if tags is None:
        return ()
    if callable(tags):
        return validate_tags(tags(*args, **kwargs))
    return validate_tags(tags)


# --- the Redis store, both colours (see _backends_async.py) ---------------------

_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

Notify = tuple[str, str] | None


def _as_int(raw: bytes | str | None) -> int:
    if raw is None:
        return 0
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis import exceptions as rex

    return (rex.RedisError, OSError, asyncio.TimeoutError)


def _busy_errors() -> tuple[type[BaseException], ...]:
    # The client's own pool is full (redis-py's default holds 100 connections):
    # this call fails, Redis is not down.
    from redis import exceptions as rex

    return (rex.MaxConnectionsError,)


def _refusal_errors() -> tuple[type[BaseException], ...]:
    # An error reply: the server is up and refused this one command.
    from redis import exceptions as rex

    return (rex.ResponseError,)


def _unavailable_replies() -> tuple[type[BaseException], ...]:
    # Error replies that say the server cannot serve now (a failover, a cluster
    # reconfiguring): an outage like a refused connection.
    from redis import exceptions as rex

    return (rex.ReadOnlyError, rex.ClusterDownError, rex.TryAgainError, rex.AskError)


def decodes_responses(client: Any) -> bool:
    """Whether a redis-py (or fakeredis) client decodes replies to ``str``.

    Asks the client's encoder, else the connection settings of its pool
    (standalone) or of its nodes manager / itself (cluster).
    """
    get_encoder = getattr(client, "get_encoder", None)
    if callable(get_encoder):
        try:
            encoder = get_encoder()
        except Exception:  # a client that cannot say: look at its settings
            encoder = None
        if encoder is not None and hasattr(encoder, "decode_responses"):
            return bool(encoder.decode_responses)
    for holder in (
        getattr(client, "connection_pool", None),
        getattr(client, "nodes_manager", None),
        client,
    ):
        kwargs = getattr(holder, "connection_kwargs", None)
        if isinstance(kwargs, dict):
            return bool(kwargs.get("decode_responses", False))
    return False


def is_async_client(client: Any) -> bool:
    """Whether ``client`` is a ``redis.asyncio`` client (plain or cluster)."""
    import redis.asyncio
    import redis.asyncio.cluster

    return isinstance(client, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster)


def is_sync_client(client: Any) -> bool:
    """Whether ``client`` is a sync ``redis.Redis`` or ``redis.cluster.RedisCluster``."""
    import redis
    import redis.cluster

    return isinstance(client, redis.Redis | redis.cluster.RedisCluster)


_GET_HEAD = b"*2\r\n$3\r\nGET\r\n"
# pack_command(_GET_HEAD, (key,)) in one formatting step (keys are always str).
_GET_FORMAT = _GET_HEAD + b"$%d\r\n%s\r\n"


def _is_cluster(client: Any) -> bool:
    return hasattr(client, "get_nodes") and hasattr(client, "get_node_from_key")
