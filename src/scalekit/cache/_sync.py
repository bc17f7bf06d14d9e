# This file is generated from src/scalekit/cache/_async.py by scripts/unasync.py.
# DO NOT EDIT; edit the async file and run: python scripts/unasync.py
"""The sync shell: :class:`Cache` over ``redis.Redis``/``RedisCluster`` or memory.

The read path of :meth:`Cache.get_or_set`, in order: the local tier (if
any); one ``GET`` (pipelined with the tag counters when the call has tags);
the core's decision (``_core.py``); a hit returns there, with no generator
in between. A miss, a stale or an early value runs a flow of ``_flow.py``:
in-process single-flight (one loader per key per process, the other threads
wait for its result) and the distributed lease (``SET NX PX`` with a token; the
holder loads, the others poll for its value, or take the lease over when it
is freed, or load themselves after ``lease_wait``). This shell only drives
it: ``_drive`` performs each request the flow yields (a Redis call through
the breaker, a sleep, the loader). Background refreshes are threads.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeAlias, TypeVar, cast

from scalekit._clock import SYSTEM_CLOCK
from scalekit._redis_bounded import DEFAULT_OP_TIMEOUT, close_twin, is_twin
from scalekit.cache._backends import (
    MemoryBackend,
    RedisBackend,
    _is_cluster,
    is_async_client,
    is_sync_client,
)
from scalekit.cache._base import (
    _CLOSED,
    _NO_VERSIONS,
    TRACKING_CHANNEL,
    CacheBase,
    CallKey,
    DownPolicy,
    InvalidationMode,
    _Outcome,
    check_colour,
    check_function,
    function_name,
    keys_of,
    make_tags,
    other_colour_client,
    pairs_of,
)
from scalekit.cache._core import FRESH, VALUE, Action, Envelope, Kind, readable, validate_tags
from scalekit.cache._events import CacheStaleServed
from scalekit.cache._flow import (
    Acquire,
    CallLoader,
    Op,
    Read,
    Release,
    Sleep,
    Spawn,
    Store,
    WaitFlight,
    refresh,
    single_flight,
)
from scalekit.cache._local import LocalCache
from scalekit.errors import CircuitOpenError, ConfigurationError
from scalekit.instrumentation import emit
from scalekit.typing import Clock

if TYPE_CHECKING:
    from scalekit.breaker import CircuitBreaker
    from scalekit.cache._serializers import Serializer

__all__ = ["Cache", "CachedFunction"]

_log = logging.getLogger("scalekit.cache")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

Loader = Callable[[], Any]
LoaderOf: TypeAlias = Callable[[], R]


class Cache(CacheBase):
    """Cache-aside over Redis with stampede protection, tags and a local tier.

    ``client`` is a ``redis.Redis``, a ``redis.cluster.RedisCluster``, a
    fakeredis client, or ``None`` for an in-process :class:`MemoryBackend`
    (tests, single-process apps). A client that decodes responses
    (``decode_responses=True``) is refused.

    Keys are stored as ``<namespace>:v<schema_version>:<key>``. A value lives
    ``ttl`` seconds (``default_ttl``), moved by ``±jitter``, then is served
    stale for ``stale_ttl`` more seconds (default a quarter of the TTL) while
    one caller refreshes it. ``beta`` tunes XFetch early recomputation (0
    turns it off). A loader returning :data:`NOT_FOUND`, or raising one of
    ``cache_errors``, is cached for ``negative_ttl``.

    When Redis fails, ``on_redis_down`` decides: ``"bypass"`` runs the loader
    (``get`` returns the default), ``"stale_local"`` serves the local tier even
    past its TTL and otherwise bypasses, ``"raise"`` raises
    :class:`~scalekit.errors.CacheUnavailable`. Every Redis call goes through
    a :class:`~scalekit.breaker.CircuitBreaker`: pass ``breaker=`` to share
    yours with everything else that talks to this Redis; by default the cache
    builds one that opens on the first outage error (a Redis or socket error;
    never a miss, a bad entry or a loader's error), skips Redis for
    ``retry_interval`` seconds, then lets one call probe it. One
    :class:`~scalekit.instrumentation.FallbackUsed` is emitted per incident and
    one :class:`~scalekit.instrumentation.Recovered` when it ends. Whatever
    the client's own settings, an outage costs a caller at most about
    ``2 x op_timeout`` (connect, then reply) once per probe: the cache talks
    to Redis through a twin of ``client`` bounded by ``op_timeout`` and never
    retried (built once here; :meth:`close` closes it; ``client`` stays
    yours and :attr:`client` returns it).

    >>> cache = Cache(None, namespace="demo", default_ttl=60)
    >>> cache.get_or_set("answer", lambda: 42)
    42
    >>> cache.get("answer")
    42

    With a local tier, ``invalidation`` picks how it hears about writes
    (the listener is a thread started at construction):
    ``"auto"`` uses Redis client tracking (writes by any client evict) on a
    standalone Redis >= 6 and pub/sub otherwise; ``"tracking"`` is the same
    but refuses a cluster; ``"pubsub"`` hears only scalekit caches. The
    attribute ``invalidation_mode`` says which is in use.

    Raises:
        ConfigurationError: at construction, for any invalid parameter.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        namespace: str = "app",
        schema_version: int = 1,
        default_ttl: float = 300.0,
        stale_ttl: float | None = None,
        jitter: float = 0.1,
        beta: float = 1.0,
        negative_ttl: float = 30.0,
        cache_errors: Sequence[type[BaseException]] = (),
        lease_ttl: float = 10.0,
        lease_wait: float = 5.0,
        poll_interval: float = 0.05,
        on_redis_down: DownPolicy = "bypass",
        retry_interval: float = 0.5,
        local: LocalCache | None = None,
        serializer: Serializer | None = None,
        background_refresh: bool = True,
        max_key_length: int = 200,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        invalidation: InvalidationMode = "auto",
        breaker: CircuitBreaker | None = None,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
    ) -> None:
        super().__init__(
            namespace=namespace,
            schema_version=schema_version,
            default_ttl=default_ttl,
            stale_ttl=stale_ttl,
            jitter=jitter,
            beta=beta,
            negative_ttl=negative_ttl,
            cache_errors=cache_errors,
            lease_ttl=lease_ttl,
            lease_wait=lease_wait,
            poll_interval=poll_interval,
            on_redis_down=on_redis_down,
            retry_interval=retry_interval,
            local=local,
            serializer=serializer,
            background_refresh=background_refresh,
            max_key_length=max_key_length,
            clock=clock,
            rng=rng,
            invalidation=invalidation,
            breaker=breaker,
            op_timeout=op_timeout,
        )
        self._user_client: Any = None
        if invalidation == "tracking" and _is_cluster(client):
            raise ConfigurationError(
                "invalidation='tracking' needs a standalone Redis, not a cluster",
                parameter="invalidation",
            )
        if client is None:
            self.backend: Any = MemoryBackend(clock=clock)
        elif isinstance(client, MemoryBackend):
            self.backend = client
        elif is_sync_client(client):
            self.backend = RedisBackend(self._store_client(client))
            self._user_client = client
        elif is_async_client(client):
            raise other_colour_client(shell_is_async=False)
        else:
            raise ConfigurationError(
                "client must be a redis.Redis, a redis.cluster.RedisCluster "
                f"or None, got {type(client).__name__}",
                parameter="client",
            )
        self._use_backend(self.backend)
        self._new_event = threading.Event
        self._closed = threading.Event()
        self.subscribed = threading.Event()
        self._listener: threading.Thread | None = None
        if self.local is not None and isinstance(self.backend, RedisBackend):
            self._listener = threading.Thread(
                target=self._listen, name=f"scalekit-cache-{namespace}", daemon=True
            )
            self._listener.start()

    @property
    def client(self) -> Any:
        """The Redis client given to this cache (``None`` for the memory backend).

        The cache's own commands may go through a twin of it bounded by
        ``op_timeout`` (``backend.client``); this is always the client you passed.
        """
        return self._user_client

    # ------------------------------------------------------------------ backend calls

    def guarded_call(self, method: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """Run ``method(*args)``, a command of your own on this cache's Redis client,
        as the cache runs its own: through its breaker and outage fallback.

        For integrations that add commands to the cache's keys (the Django
        backend's ``add``, ``incr`` and ``touch``): an outage is logged and
        counted as the cache's own and the breaker sees it.

        Returns:
            ``(True, result)``, or ``(False, None)`` when Redis was down, the
            command failed or the breaker refused the call.

        Raises:
            ConfigurationError: Redis refused an expiry the command gave.
        """
        return self._call(method, *args)

    def _call(self, method: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """``method(*args)`` through the breaker: ``(True, result)``, or ``(False, None)``
        after the fallback bookkeeping (see ``_base.py``, "Outages")."""
        if not self._light or self.breaker.state is not _CLOSED:
            return self._call_with_permit(method, args)
        try:
            result = method(*args)
        except Exception as exc:
            kind = self._failure_kind(exc)
            if kind == "outage":
                self._trip()  # a light breaker is local: no I/O
            self._fall_back(exc, kind)
            return False, None
        if self._incident.since is not None or self._streaks:
            self._backend_ok()
        return True, result

    def _call_with_permit(
        self, method: Callable[..., Any], args: tuple[Any, ...]
    ) -> tuple[bool, Any]:
        if self._open_until and self._refused():
            return False, None
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError as exc:
            self._rejected(exc)
            return False, None
        try:
            result = method(*args)
        except Exception as exc:
            kind = self._failure_kind(exc)
            if kind == "outage":
                permit.record_failure()
            else:
                permit.release()
            self._fall_back(exc, kind)
            return False, None
        except BaseException:  # cancelled or interrupted: neither a success nor a failure
            permit.release()
            raise
        permit.record_success()
        if self._incident.since is not None:
            self._backend_ok()
        return True, result

    def _versions(self, tags: Sequence[str]) -> tuple[bool, list[int]]:
        if not tags:
            return True, []
        return self._call(self.backend.counters, self._tag_keys(tuple(tags)))

    def _read(
        self, key: str, tags: tuple[str, ...]
    ) -> tuple[bool, tuple[Envelope, Any] | None, dict[str, int]]:
        """One round trip: the entry and the current versions of ``tags``."""
        if tags:
            ok, reply = self._call(self.backend.get_with_counters, key, self._tag_keys(tags))
            if not ok:
                return False, None, {}
            raw, counts = reply
            versions = dict(zip(tags, counts, strict=True))
        else:  # the hot path: one GET
            ok, raw = self._call(self.backend.get, key)
            if not ok:
                return False, None, {}
            versions = {}
        entry = self._decode(raw)
        if entry is not None and entry[0].tags and not self._add_versions(entry, versions):
            return False, None, {}
        return True, entry, versions

    def _add_versions(self, entry: tuple[Envelope, Any], versions: dict[str, int]) -> bool:
        """Add the versions of the entry's tags this call did not name; False if Redis failed."""
        missing = [tag for tag, _ in entry[0].tags if tag not in versions]
        if missing:  # stored with tags this call did not name: check them too
            ok, extra = self._versions(missing)
            if not ok:
                return False
            versions.update(zip(missing, extra, strict=True))
        return True

    # ------------------------------------------------------------------ plain operations

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value of ``key``, or ``default`` when there is none.

        A stale value (within the stale window) is returned; a negative
        entry (:data:`NOT_FOUND` or a cached error) counts as none. When Redis
        is down, ``default`` (or, under ``stale_local``, the local tier).

        Raises:
            CacheUnavailable: Redis is down and the policy is ``"raise"``.
        """
        full = self.keys.data(key)
        local = self._local_get(full)
        if local is not None and local[0].kind is Kind.VALUE:
            self.counters.hits += 1
            self.counters.local_hits += 1
            return local[1]
        ok, entry, versions = self._read(full, ())
        if not ok:
            stale = self._local_get(full, allow_expired=self.on_redis_down == "stale_local")
            return stale[1] if stale is not None and stale[0].kind is Kind.VALUE else default
        if (
            entry is None
            or entry[0].kind is not Kind.VALUE
            or not readable(entry[0], self.clock.time(), versions)
        ):
            self.counters.misses += 1
            return default
        self.counters.hits += 1
        self._local_put(full, entry[0], entry[1])
        return entry[1]

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The cached values of ``keys`` that have one, in one ``MGET``.

        Raises:
            CacheUnavailable: Redis is down and the policy is ``"raise"``.
        """
        wanted = keys_of(keys)
        full = [self.keys.data(key) for key in wanted]
        ok, raws = self._call(self.backend.mget, full)
        if not ok:
            return {}
        entries = [self._decode(raw) for raw in raws]
        tags = sorted({tag for e in entries if e is not None for tag, _ in e[0].tags})
        ok, counts = self._versions(tags)
        if not ok:
            return {}
        versions = dict(zip(tags, counts, strict=True))
        found: dict[str, Any] = {}
        now = self.clock.time()
        for key, entry in zip(wanted, entries, strict=True):
            if (
                entry is not None
                and entry[0].kind is Kind.VALUE
                and readable(entry[0], now, versions)
            ):
                found[key] = entry[1]
                self.counters.hits += 1
            else:
                self.counters.misses += 1
        return found

    def set(
        self, key: str, value: Any, ttl: float | None = None, *, tags: Iterable[str] | None = None
    ) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds (default ``default_ttl``).

        Returns whether it was stored (``False`` when Redis is down).

        Raises:
            SerializationError: the serialiser cannot encode ``value``.
            CacheUnavailable: Redis is down and the policy is ``"raise"``.
        """
        return self.set_many({key: value}, ttl, tags=tags)

    def set_many(
        self,
        items: Mapping[str, Any] | Iterable[tuple[str, Any]],
        ttl: float | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> bool:
        """Store every ``key: value`` of ``items`` in one pipelined round trip.

        ``items`` is a mapping or an iterable of ``(key, value)`` pairs (as
        ``dict()`` takes; a later pair wins over an earlier one of the same key).

        With ``tags``, the tags' versions are read first (one more round trip).

        Raises:
            SerializationError: the serialiser cannot encode a value.
            CacheUnavailable: Redis is down and the policy is ``"raise"``.
        """
        tag_tuple = validate_tags(tags)
        self._ttl(ttl)
        ok, versions = self._versions(tag_tuple)
        if not ok:
            return False
        writes: list[tuple[str, bytes, int]] = []
        built: list[tuple[str, Envelope, Any]] = []
        for key, value in pairs_of(items):
            full = self.keys.data(key)
            kind, plain = self._outcome_of(value)
            envelope, data, ttl_ms = self._build(kind, plain, ttl, 0.0, tag_tuple, versions)
            writes.append((full, data, ttl_ms))
            built.append((full, envelope, plain))
        if not writes:
            return True
        notify = self._notify("k", [w[0] for w in writes])
        ok, _ = self._call(self.backend.set_many, writes, notify)
        if ok:
            for full, envelope, plain in built:
                self._local_put(full, envelope, plain)
        return ok

    def delete(self, *keys: str) -> bool:
        """Remove ``keys`` (here, in Redis and in every process's local tier).

        Raises:
            CacheUnavailable: Redis is down and the policy is ``"raise"``.
        """
        full = [self.keys.data(key) for key in keys]
        if self.local is not None:
            for item in full:
                self.local.discard(item)
        if not full:
            return True
        ok, _ = self._call(self.backend.delete, full, self._notify("k", full))
        return ok

    def invalidate_tags(self, *tags: str) -> bool:
        """Invalidate every entry stored with any of ``tags``, in O(1) per tag.

        Each tag's version counter is incremented; entries remember the
        versions they were computed under and read as misses once a version
        moved. Works the same on Redis Cluster (no key scan).

        Raises:
            CacheUnavailable: Redis is down and the policy is ``"raise"``.
        """
        tag_tuple = validate_tags(tags)
        if self.local is not None:
            for tag in tag_tuple:
                self.local.discard_tag(tag)
        if not tag_tuple:
            return True
        ok, _ = self._call(
            self.backend.incr, self._tag_keys(tag_tuple), self._notify("t", tag_tuple)
        )
        return ok

    # ------------------------------------------------------------------ get_or_set

    def get_or_set(
        self,
        key: str,
        loader: LoaderOf[R],
        ttl: float | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> R:
        """The cached value of ``key``, computing it with ``loader()`` when needed.

        Exactly one ``loader`` runs per process for a missing key (other
        threads wait for its result), and across processes the lease makes
        the others wait for it (up to ``lease_wait``). Values close to expiry
        are recomputed early (XFetch); stale ones are served while one
        caller refreshes them. A loader's exception reaches every caller
        waiting on it and is not cached, unless it is one of ``cache_errors``.

        Raises:
            Whatever ``loader`` raises; SerializationError when its value
            cannot be encoded; CacheUnavailable under the ``"raise"`` policy.
        """
        self._check_call(loader, ttl)
        return cast(R, self._get_or_load(self.keys.data(key), loader, ttl, validate_tags(tags)))

    def _get_or_load(
        self, key: str, loader: Loader, ttl: float | None, tags: tuple[str, ...]
    ) -> Any:
        local = None if self.local is None else self._local_get(key)
        if local is not None and self._decide(local, None) is FRESH:
            self.counters.hits += 1
            self.counters.local_hits += 1
            return self._unwrap(*local)
        if tags:
            ok, entry, versions = self._read(key, tags)
        else:  # the hot path: _read() written out for one GET
            ok, raw = self._call(self.backend.get, key)
            entry = self._decode(raw) if ok else None
            versions = _NO_VERSIONS
            if entry is not None and entry[0].tags:
                versions = {}
                ok = self._add_versions(entry, versions)
        if not ok:
            if self.on_redis_down == "stale_local":
                stale = self._local_get(key, allow_expired=True)
                if stale is not None:
                    return self._unwrap(*stale)
            counts = [0] * len(tags)
            return self._deliver(
                self._drive(single_flight(self, key, loader, ttl, tags, counts, store=True))
            )
        action = self._decide(entry, versions)
        if action is FRESH and entry is not None:
            self.counters.hits += 1
            if self.local is not None:
                self._local_put(key, *entry)
            return entry[1] if entry[0].kind is VALUE else self._unwrap(*entry)
        counts = [versions.get(tag, 0) for tag in tags]
        if action is Action.MISS or entry is None:
            self.counters.misses += 1
            return self._deliver(
                self._drive(single_flight(self, key, loader, ttl, tags, counts, store=True))
            )
        if action is Action.EARLY:
            self.counters.early += 1
            fresh = self._drive(refresh(self, key, loader, ttl, tags, counts, "early"))
        else:
            self.counters.stale += 1
            emit(CacheStaleServed(name=self.namespace, age=self.clock.time() - entry[0].created))
            fresh = self._drive(refresh(self, key, loader, ttl, tags, counts, "stale"))
        if fresh is not None:
            return self._deliver(fresh)
        return self._unwrap(*entry)

    def _deliver(self, outcome: _Outcome) -> Any:
        if outcome.kind is Kind.ERROR:
            raise outcome.value
        return outcome.value

    # ------------------------------------------------------------------ the flow driver

    def _drive(self, flow: Generator[Op, Any, T]) -> T:
        """Run a flow of ``_flow.py``: perform each request, send back its result
        or throw its error (a cancellation too, so the flow's cleanup runs)."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return cast(T, stop.value)
            error = None
            try:
                value = self._perform(op)
            except BaseException as exc:
                value, error = None, exc

    def _perform(self, op: Op) -> Any:
        """The I/O of one request (every kind in ``_flow.OPS``)."""
        if isinstance(op, Read):
            return self._read(op.key, op.tags)
        if isinstance(op, Acquire):
            return self._call(self.backend.acquire, op.lease, op.token, op.ttl_ms)
        if isinstance(op, Release):
            return self._call(self.backend.release, op.lease, op.token)
        if isinstance(op, Store):
            return self._call(self.backend.set_many, [(op.key, op.data, op.ttl_ms)], op.notify)
        if isinstance(op, Sleep):
            return self.clock.sleep(op.seconds)
        if isinstance(op, CallLoader):
            return op.loader()
        if isinstance(op, WaitFlight):
            return op.flight.done.wait()
        if isinstance(op, Spawn):
            thread = threading.Thread(
                target=self._drive,
                args=(op.flow,),
                name="scalekit-cache-refresh",
                daemon=True,
            )
            thread.start()
            return None
        raise AssertionError(f"unknown request {op!r}")  # pragma: no cover

    # ------------------------------------------------------------------ decorator

    def cached(
        self,
        ttl: float | None = None,
        *,
        key: Callable[..., str] | None = None,
        tags: Iterable[str] | Callable[..., Iterable[str]] | None = None,
        skip: Iterable[str] = ("self", "cls"),
    ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
        """Cache a function's results by its arguments.

        Keys are ``module.qualname(<arguments>)``, built from the bound
        arguments (so ``f(1)`` and ``f(x=1)`` share one), with parameters
        named in ``skip`` left out (``self``/``cls`` by default); pass
        ``key=`` (same parameters as the function, returns a str) to choose
        your own. ``tags`` is a list, or a function of the arguments. Long or
        odd keys are hashed. The wrapper keeps the signature and has
        ``.invalidate(*args, **kwargs)`` and ``.key_for(*args, **kwargs)``.

        Raises:
            ConfigurationError: on a coroutine function (the asyncio shell's ``cached`` takes it).
        """
        skipped = self._decorator_options(ttl, key, tags, skip)

        def decorate(func: Callable[P, R]) -> CachedFunction[P, R]:
            check_function(func)
            check_colour(func, shell_is_async=False)
            return CachedFunction(self, func, ttl, key, tags, skipped)

        return decorate

    # ------------------------------------------------------------------ local tier messages

    def _listen(self) -> None:
        """Apply invalidations to the local tier (a thread).

        With client tracking, Redis itself reports every write under this
        cache's prefix (by any client) on ``__redis__:invalidate``, redirected
        from a dedicated connection to this listener's; otherwise only the
        caches' own pub/sub messages are heard. Any loss or reconnect of either
        connection flushes the local tier and sets everything up again.
        """
        client = self.backend.client
        first = True
        while not self._closed.is_set():
            pubsub = None
            tracker = None
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                channels = [self.channel]
                self._reconnected = False
                if self._want_tracking(self.backend.cluster):
                    tracker = self._start_tracking(pubsub)
                    if tracker is not None:
                        channels.append(TRACKING_CHANNEL)
                pubsub.subscribe(*channels)
                if pubsub.connection is not None:
                    pubsub.connection.register_connect_callback(self._on_connect)
                # Back after a loss: anything may have changed while we were not
                # listening. (The first subscription follows construction by
                # moments; what was cached meanwhile is capped by the local TTL.)
                if self.local is not None and not first:
                    self.local.clear()
                first = False
                self.invalidation_mode = "pubsub" if tracker is None else "tracking"
                self.subscribed.set()
                next_check = time.monotonic() + 1.0
                while not self._closed.is_set():
                    if self._reconnected:
                        raise ConnectionError("invalidation connection reconnected")
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None:
                        self._dispatch(message)
                    if tracker is not None and time.monotonic() >= next_check:
                        # A silently dropped tracking connection would stop the
                        # invalidations without any error on the listener's side.
                        tracker.send_command("PING")
                        tracker.read_response()
                        next_check = time.monotonic() + 1.0
            except Exception as exc:
                self.subscribed.clear()
                self.invalidation_mode = "none"
                self._channel_lost()
                _log.debug(
                    "cache %r: invalidation channel lost: %s", self.namespace, type(exc).__name__
                )
                self._closed.wait(self.retry_interval)
            finally:
                if tracker is not None:
                    self._stop_tracking(tracker)
                if pubsub is not None:
                    if pubsub.connection is not None:
                        pubsub.connection.deregister_connect_callback(self._on_connect)
                    try:
                        pubsub.close()
                    except Exception:  # pragma: no cover - closing a broken connection
                        pass

    def _start_tracking(self, pubsub: Any) -> Any:
        """Turn tracking on, redirected to ``pubsub``'s connection; ``None`` if refused."""
        from redis.exceptions import ResponseError

        pool = self.backend.client.connection_pool
        try:
            # RESP2 on this connection: the redirected invalidations then come
            # as pub/sub messages on __redis__:invalidate (RESP3 would send
            # "invalidate" pushes that redis-py's PubSub drops).
            pubsub.execute_command("HELLO", "2")
            pubsub.parse_response(block=True)
            pubsub.execute_command("CLIENT", "ID")
            client_id = int(pubsub.parse_response(block=True))
        except ResponseError as exc:
            self._tracking_refused_by(exc)
            return None
        tracker = pool.get_connection()
        try:
            tracker.send_command(*self._tracking_command(client_id))
            tracker.read_response()
        except ResponseError as exc:
            self._tracking_refused_by(exc)
            pool.release(tracker)
            return None
        except BaseException:
            self._stop_tracking(tracker)
            raise
        tracker.register_connect_callback(self._on_connect)
        return tracker

    def _stop_tracking(self, tracker: Any) -> None:
        """Give the tracking connection back to the pool, tracking off (disconnected)."""
        tracker.deregister_connect_callback(self._on_connect)
        try:
            tracker.disconnect()
        finally:
            self.backend.client.connection_pool.release(tracker)

    def close(self) -> None:
        """Stop the invalidation listener (if any), and close the
        cache's own twin client. The client you passed stays yours to close."""
        self._closed.set()
        if self._listener is not None:
            self._listener.join(timeout=2.0)
        store = getattr(self.backend, "client", None)
        if store is not None and is_twin(store):
            close_twin(store)

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cache(namespace={self.namespace!r}, backend={type(self.backend).__name__})"


class CachedFunction(Generic[P, R]):
    """A function wrapped by :meth:`Cache.cached`."""

    def __init__(
        self,
        cache: Cache,
        func: Callable[P, R],
        ttl: float | None,
        key: Callable[..., str] | None,
        tags: Iterable[str] | Callable[..., Iterable[str]] | None,
        skip: tuple[str, ...],
    ) -> None:
        self.cache = cache
        self.__wrapped__ = func
        self._ttl = ttl
        self._key = key
        self._tags = tags if tags is None or callable(tags) else validate_tags(tags)
        self._skip = skip
        self._name = function_name(func)
        self._call_key = CallKey(self._name, inspect.signature(func), skip)
        self._key_of = self._call_key.compile(cache.keys)
        functools.update_wrapper(self, func)

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        """The stored key of a call with these arguments."""
        if self._key is not None:
            return self.cache.keys.data(self._key(*args, **kwargs))
        return self._key_of(args, kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = self._key
        if key is None:
            full = self._key_of(args, kwargs)
        else:
            full = self.cache.keys.data(key(*args, **kwargs))
        tags = () if self._tags is None else make_tags(self._tags, args, kwargs)
        func = self.__wrapped__
        result: R = self.cache._get_or_load(full, lambda: func(*args, **kwargs), self._ttl, tags)
        return result

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Forget the cached result of a call with these arguments."""
        full = self.key_for(*args, **kwargs)
        if self.cache.local is not None:
            self.cache.local.discard(full)
        ok, _ = self.cache._call(self.cache.backend.delete, [full], self.cache._notify("k", [full]))
        return bool(ok)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundCached(self, instance)

    def __repr__(self) -> str:
        return f"<cached {self._name}>"


class _BoundCached:
    __slots__ = ("_cached", "_instance")

    def __init__(self, cached: CachedFunction[Any, Any], instance: Any) -> None:
        self._cached = cached
        self._instance = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._cached(self._instance, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        return self._cached.invalidate(self._instance, *args, **kwargs)

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        return self._cached.key_for(self._instance, *args, **kwargs)
