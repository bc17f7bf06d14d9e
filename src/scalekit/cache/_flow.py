"""The stampede protocol as a generator of I/O requests, driven by either shell.

A miss or a refresh is several round trips with decisions between them: take
the in-process single-flight slot (or wait for the caller that holds it);
take the distributed lease (``SET NX PX`` with a token) or poll for its
holder's value and take the lease over when it is freed; read the key once
more before loading, in case another process filled it meanwhile; run the
loader, store its value and release the lease. Every decision is made here,
once, and no I/O is done here: each step *yields* a small request value
(:class:`Read`, :class:`Acquire`, :class:`Release`, :class:`Store`,
:class:`Sleep`, :class:`CallLoader`, :class:`WaitFlight`, :class:`Spawn`)
and receives its result (or has its exception thrown in). The shells
(``_async.py`` and the ``_sync.py`` generated from it) hold a ~15-line
driver, ``_drive``, and one ``_perform`` branch per request (the model is
httpx's ``auth_flow`` and :mod:`scalekit.batch._flow`).

The hit path never comes here: :meth:`get_or_set` decides a hit in the shell
with no generator in between; the flows start at a miss, a stale or an
early-recompute decision, where a few hundred nanoseconds vanish next to the
round trips.

Backend requests go through the shell's breaker (``_call``), which never
raises on an outage: their result is ``(ok, value)``. :class:`Read` answers
``(ok, entry, versions)`` as ``CacheBase``'s read does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from scalekit.cache._base import _Outcome
from scalekit.cache._core import Action, Kind
from scalekit.cache._events import CacheLeaseWait, CacheLoaded, CacheRefreshFailed
from scalekit.instrumentation import emit
from scalekit.testing import _switch as _testmode

if TYPE_CHECKING:
    from scalekit.cache._base import CacheBase

__all__ = [
    "OPS",
    "Acquire",
    "CallLoader",
    "Flight",
    "Op",
    "Read",
    "Release",
    "Sleep",
    "Spawn",
    "Store",
    "WaitFlight",
    "land",
    "lead",
    "refresh",
    "single_flight",
]

_log = logging.getLogger("scalekit.cache")


class Flight:
    """One in-process load of a key: the followers wait on ``done``.

    ``done`` is the shell's event (an ``asyncio.Event`` or a
    ``threading.Event``); ``outcome`` or ``error`` is set before it is.
    """

    __slots__ = ("done", "error", "outcome")

    def __init__(self, done: Any) -> None:
        self.done = done
        self.outcome: _Outcome | None = None
        self.error: BaseException | None = None


# --- the requests -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    """Read ``key`` (one ``GET``, pipelined with the counters of ``tags``)."""

    key: str
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Acquire:
    """Take the lease: ``SET lease token NX PX ttl_ms``; answers ``(ok, acquired)``."""

    lease: str
    token: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Release:
    """Free the lease if ``token`` still holds it."""

    lease: str
    token: str


@dataclass(frozen=True, slots=True)
class Store:
    """``SET key data PX ttl_ms`` (and tell the local tiers)."""

    key: str
    data: bytes
    ttl_ms: int
    notify: tuple[str, str]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Sleep on the injected clock."""

    seconds: float


@dataclass(frozen=True, slots=True)
class CallLoader:
    """Run the user's loader (awaiting its result in the asyncio shell)."""

    loader: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class WaitFlight:
    """Wait until the in-process leader of ``flight`` is done."""

    flight: Flight


@dataclass(frozen=True, slots=True)
class Spawn:
    """Drive ``flow`` in the background (a task, or a thread); answers ``None``.

    If it cannot be started, the error is thrown back into the flow.
    """

    flow: Generator[Op, Any, Any]


Op: TypeAlias = Read | Acquire | Release | Store | Sleep | CallLoader | WaitFlight | Spawn

#: Every request a flow can yield: each shell's ``_perform`` handles each one.
OPS: tuple[type, ...] = (Read, Acquire, Release, Store, Sleep, CallLoader, WaitFlight, Spawn)

Flow: TypeAlias = Generator[Op, Any, Any]


# --- single-flight bookkeeping ----------------------------------------------------


def lead(cache: CacheBase, key: str) -> tuple[Flight, bool]:
    """The flight of ``key`` and whether this caller leads it (it did not exist)."""
    with cache._flights_lock:
        flight = cache._flights.get(key)
        if flight is not None:
            return flight, False
        flight = cache._flights[key] = Flight(cache._new_event())
        return flight, True


def land(cache: CacheBase, key: str, flight: Flight) -> None:
    """End ``flight``: forget it and wake its followers."""
    with cache._flights_lock:
        if cache._flights.get(key) is flight:
            del cache._flights[key]
    flight.done.set()


# --- the flows ----------------------------------------------------------------------


def single_flight(
    cache: CacheBase,
    key: str,
    loader: Callable[[], Any],
    ttl: float | None,
    tags: tuple[str, ...],
    counts: list[int],
    *,
    store: bool,
) -> Generator[Op, Any, _Outcome]:
    """A miss: one loader per key per process; with ``store``, one across processes."""
    for _ in range(3):
        flight, leader = lead(cache, key)
        if not leader:
            yield WaitFlight(flight)
            if flight.error is not None:
                raise flight.error
            if flight.outcome is not None:
                return flight.outcome
            continue  # the leader was a refresh that did not run (or was cancelled): again
        try:
            outcome = (
                (yield from _load_with_lease(cache, key, loader, ttl, tags, counts))
                if store
                else (yield from _load(cache, key, loader, ttl, tags, counts, "miss", store=False))
            )
            flight.outcome = outcome
            return outcome
        except BaseException as exc:
            # A cancelled leader must not cancel its followers: they retry.
            if not isinstance(exc, asyncio.CancelledError):
                flight.error = exc
            raise
        finally:
            land(cache, key, flight)
    return (yield from _load(cache, key, loader, ttl, tags, counts, "miss", store=store))


def refresh(
    cache: CacheBase,
    key: str,
    loader: Callable[[], Any],
    ttl: float | None,
    tags: tuple[str, ...],
    counts: list[int],
    reason: str,
) -> Generator[Op, Any, _Outcome | None]:
    """Recompute a stale or early key unless this process or another already does.

    With ``background_refresh`` the work is spawned and ``None`` returned at
    once (the caller serves what it has); if it cannot be spawned, the flight
    is landed before the error propagates, so the key is not left claimed.
    """
    flight, leader = lead(cache, key)
    if not leader:
        return None
    work = _refresh_now(cache, flight, key, loader, ttl, tags, counts, reason)
    if cache.background_refresh:
        try:
            yield Spawn(work)
        except BaseException:
            land(cache, key, flight)
            raise
        return None
    return (yield from work)


def _refresh_now(
    cache: CacheBase,
    flight: Flight,
    key: str,
    loader: Callable[[], Any],
    ttl: float | None,
    tags: tuple[str, ...],
    counts: list[int],
    reason: str,
) -> Generator[Op, Any, _Outcome | None]:
    try:
        lease, token = cache.keys.lease_of(key), cache._new_token()
        ok, acquired = yield Acquire(lease, token, int(cache.lease_ttl * 1000))
        if not (ok and acquired):
            return None  # another process refreshes it (or Redis is down)
        try:
            # Refreshed by another process since we read it: nothing to do.
            outcome = (yield from _recheck(cache, key, tags, fresh_only=True)) or (
                yield from _load(cache, key, loader, ttl, tags, counts, reason, store=True)
            )
        except Exception as exc:
            cache.counters.errors += 1
            _log.warning("cache %r: refresh failed: %s", cache.namespace, type(exc).__name__)
            emit(CacheRefreshFailed(name=cache.namespace, reason=type(exc).__name__))
            return None
        finally:
            yield Release(lease, token)
        flight.outcome = outcome
        return outcome
    except Exception:  # a failure in the background must not go unnoticed
        _log.exception("cache %r: refresh crashed", cache.namespace)
        return None
    finally:
        land(cache, key, flight)


def _load_with_lease(
    cache: CacheBase,
    key: str,
    loader: Callable[[], Any],
    ttl: float | None,
    tags: tuple[str, ...],
    counts: list[int],
) -> Generator[Op, Any, _Outcome]:
    lease, token = cache.keys.lease_of(key), cache._new_token()
    lease_ms = int(cache.lease_ttl * 1000)
    ok, acquired = yield Acquire(lease, token, lease_ms)
    if ok and not acquired:
        waited = yield from _wait_for_holder(cache, key, tags, lease, token, lease_ms)
        if isinstance(waited, _Outcome):
            return waited
        acquired = waited
    try:
        if ok and acquired:
            # Another process may have stored the value between our read and
            # taking the lease: check once more, so it is not loaded twice.
            filled = yield from _recheck(cache, key, tags, fresh_only=False)
            if filled is not None:
                return filled
        # Stored even without the lease: a failed lease call may be this call's
        # alone (a full pool), and during an outage the breaker skips it for free.
        return (yield from _load(cache, key, loader, ttl, tags, counts, "miss", store=True))
    finally:
        if ok and acquired:
            yield Release(lease, token)


def _recheck(
    cache: CacheBase, key: str, tags: tuple[str, ...], *, fresh_only: bool
) -> Generator[Op, Any, _Outcome | None]:
    """The entry now stored for ``key`` if usable (only a fresh one with ``fresh_only``)."""
    ok, entry, versions = yield Read(key, tags)
    if not ok or entry is None:
        return None
    action = cache._decide(entry, versions)
    if action is Action.MISS or (fresh_only and action is not Action.FRESH):
        return None
    cache._local_put(key, *entry)
    return cache._entry_outcome(entry)


def _wait_for_holder(
    cache: CacheBase, key: str, tags: tuple[str, ...], lease: str, token: str, lease_ms: int
) -> Generator[Op, Any, _Outcome | bool]:
    """Poll for the lease holder's value; True when the lease was taken over."""
    cache.counters.lease_waits += 1
    clock = cache.clock
    started = clock.monotonic()
    deadline = started + cache.lease_wait
    polls = 0
    while True:
        now = clock.monotonic()
        if now >= deadline or (polls and _testmode.is_testing()):
            # In testing mode one look is all the wait there is: as if lease_wait passed.
            emit(CacheLeaseWait(name=cache.namespace, seconds=now - started, outcome="timeout"))
            return False
        polls += 1
        if not _testmode.is_testing():
            yield Sleep(min(cache.poll_interval, deadline - now))
        ok, entry, versions = yield Read(key, tags)
        if not ok:
            return False
        if entry is not None and cache._decide(entry, versions) is not Action.MISS:
            waited = clock.monotonic() - started
            emit(CacheLeaseWait(name=cache.namespace, seconds=waited, outcome="filled"))
            cache._local_put(key, *entry)
            return cache._entry_outcome(entry)
        ok, acquired = yield Acquire(lease, token, lease_ms)
        if ok and acquired:
            waited = clock.monotonic() - started
            emit(CacheLeaseWait(name=cache.namespace, seconds=waited, outcome="acquired"))
            return True


def _load(
    cache: CacheBase,
    key: str,
    loader: Callable[[], Any],
    ttl: float | None,
    tags: tuple[str, ...],
    counts: list[int],
    reason: str,
    *,
    store: bool,
) -> Generator[Op, Any, _Outcome]:
    clock = cache.clock
    started = clock.monotonic()
    try:
        kind, value = cache._outcome_of((yield CallLoader(loader)))
    except Exception as exc:
        if not cache._is_cached_error(exc):
            raise
        kind, value = Kind.ERROR, exc
    cost = clock.monotonic() - started
    cache.counters.loads += 1
    cache.counters.load_seconds += cost
    emit(CacheLoaded(name=cache.namespace, reason=reason, seconds=cost))
    envelope, data, ttl_ms = cache._build(kind, value, ttl, cost, tags, counts)
    if store:
        yield Store(key, data, ttl_ms, cache._notify("k", [key]))
    if kind is Kind.VALUE:
        cache._local_put(key, envelope, value)
    return _Outcome(kind, value, envelope)
