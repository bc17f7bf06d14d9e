"""What the limiters expect of a store, and the pure parts of the Redis store.

The Redis store's encoding of a check (ARGV, the pre-packed EVALSHA of the
direct path), the decoding of its replies and the outage rule are the same in
both colours; the sync and asyncio backends (``_redis_async.py`` and its
generated twin ``_redis_sync.py``) only do the I/O.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from scalekit._redis_direct import pack_command
from scalekit.ratelimit._core import Outcome
from scalekit.ratelimit._scripts import SINGLE_LIMIT_ALGORITHMS, Script, single_limit_script

__all__ = [
    "AsyncBackend",
    "OneKeyRequest",
    "StoreUnavailable",
    "SyncBackend",
    "is_outage",
    "one_key_request",
]

Params = Sequence[tuple[float, float, float]]


class StoreUnavailable(Exception):
    """The store could not be reached (internal; limiters turn it into a fallback).

    ``reason`` is the class name of the underlying error (never its message,
    which could hold a host name or password); the error is ``__cause__``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SyncBackend(Protocol):
    """A blocking store: Redis through redis-py, or memory."""

    def evaluate(
        self,
        algorithm: str,
        keys: Sequence[str],
        params: Params,
        cost: float,
        *,
        consume_denied: bool,
        write: bool,
        now: float | None = None,
    ) -> Outcome:
        """Run one check of ``algorithm`` against every key at once; returns the raw outcome.

        Raises:
            StoreUnavailable: the store is unreachable.

        ``now`` (microseconds) replaces the store's clock: for tests only.
        """

    def delete(self, keys: Sequence[str]) -> None:
        """Delete the state under ``keys`` (``reset``)."""

    def acquire(
        self, key: str, limit: int, lease: float, lease_id: str, *, now: float | None = None
    ) -> tuple[bool, int, float]:
        """Try to take one of ``limit`` slots of ``key``: ``(granted, in_flight, retry_after)``.

        Raises:
            StoreUnavailable: the store is unreachable.

        Expired leases are dropped first; ``lease`` and ``retry_after`` are in microseconds.
        """

    def renew(self, key: str, lease: float, lease_id: str) -> bool:
        """Extend a live lease by ``lease`` microseconds; False if it expired or was released."""

    def release(self, key: str, lease_id: str) -> bool:
        """Remove a lease; False if it was not there (expired, or released already)."""


class AsyncBackend(Protocol):
    """The asyncio twin of :class:`SyncBackend`."""

    async def evaluate(
        self,
        algorithm: str,
        keys: Sequence[str],
        params: Params,
        cost: float,
        *,
        consume_denied: bool,
        write: bool,
        now: float | None = None,
    ) -> Outcome:
        """Run one check of ``algorithm`` against every key at once; returns the raw outcome.

        Raises:
            StoreUnavailable: the store is unreachable.

        ``now`` (microseconds) replaces the store's clock: for tests only.
        """

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete the state under ``keys`` (``reset``)."""

    async def acquire(
        self, key: str, limit: int, lease: float, lease_id: str, *, now: float | None = None
    ) -> tuple[bool, int, float]:
        """Try to take one of ``limit`` slots of ``key``: ``(granted, in_flight, retry_after)``.

        Raises:
            StoreUnavailable: the store is unreachable.

        Expired leases are dropped first; ``lease`` and ``retry_after`` are in microseconds.
        """

    async def renew(self, key: str, lease: float, lease_id: str) -> bool:
        """Extend a live lease by ``lease`` microseconds; False if it expired or was released."""

    async def release(self, key: str, lease_id: str) -> bool:
        """Remove a lease; False if it was not there (expired, or released already)."""


_OUTAGE_RESPONSES = ("OOM", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means "the store is unreachable now" rather than a bug."""
    from redis import exceptions as rex

    if isinstance(exc, rex.NoScriptError):
        return False
    if isinstance(
        exc,
        (
            rex.ConnectionError,
            rex.TimeoutError,
            rex.BusyLoadingError,
            rex.ReadOnlyError,
            rex.ClusterDownError,
            rex.MasterDownError,
            rex.TryAgainError,
            rex.SlotNotCoveredError,
            rex.RedisClusterException,
            rex.ClusterError,
            rex.OutOfMemoryError,
            OSError,
            asyncio.TimeoutError,
        ),
    ):
        return True
    return isinstance(exc, rex.ResponseError) and str(exc).startswith(_OUTAGE_RESPONSES)


#: Encoded tails of ARGV (everything after ``now``), per check shape: limits are
#: few and checks many, so the numbers are formatted once.
_TAILS: dict[tuple[Any, ...], tuple[bytes, ...]] = {}


def _evaluate_args(
    keys: Sequence[str],
    params: Sequence[tuple[float, float, float]],
    cost: float,
    consume_denied: bool,
    write: bool,
    now: float | None,
) -> list[Any]:
    shape = (tuple(params), cost, consume_denied, write)
    tail = _TAILS.get(shape)
    if tail is None:
        parts = [str(int(cost)), "1" if consume_denied else "0", "1" if write else "0"]
        for amount, period, capacity in params:
            parts += [str(int(amount)), str(int(period)), str(int(capacity))]
        tail = tuple(part.encode("ascii") for part in parts)
        if len(_TAILS) >= 1024:  # many distinct limits: keep memory bounded
            _TAILS.clear()
        _TAILS[shape] = tail
    return [*keys, b"" if now is None else repr(float(now)).encode("ascii"), *tail]


def _outcome(reply: Any) -> Outcome:
    allowed, index, remaining, reset_after, retry_after = reply
    return Outcome(
        bool(int(allowed)), int(index), float(remaining), float(reset_after), float(retry_after)
    )


def _single_outcome(reply: Any) -> Outcome:
    if len(reply) == 2:
        return Outcome(True, 0, float(reply[0]), float(reply[1]), 0.0)
    remaining, reset_after, retry_after = reply
    return Outcome(False, 0, float(remaining), float(reset_after), float(retry_after))


def _acquire_args(
    key: str, limit: int, lease: float, lease_id: str, now: float | None
) -> list[Any]:
    return [key, "" if now is None else repr(float(now)), str(limit), str(int(lease)), lease_id]


def _acquired(reply: Any) -> tuple[bool, int, float]:
    granted, in_flight, retry_after = reply
    return bool(int(granted)), int(in_flight), float(retry_after)


def _pack_evalsha(script: Script, numkeys: int, keys_and_args: Sequence[Any]) -> bytes:
    """``EVALSHA sha numkeys *keys_and_args`` as one RESP request."""
    count = b"%d" % numkeys
    head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(keys_and_args) + 3,
        script.sha_bytes,
        len(count),
        count,
    )
    return pack_command(head, keys_and_args)


def _pack_eval(script: Script, numkeys: int, keys_and_args: Sequence[Any]) -> bytes:
    """``EVAL source numkeys *keys_and_args`` as one RESP request (after NOSCRIPT; caches it)."""
    count = b"%d" % numkeys
    source = script.source.encode("utf-8")
    head = b"*%d\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(keys_and_args) + 3,
        len(source),
        source,
        len(count),
        count,
    )
    return pack_command(head, keys_and_args)


class OneKeyRequest(NamedTuple):
    """A one-limit check's EVALSHA, encoded once but for its key (see :meth:`RedisBackend.hit_one`).

    Built per (algorithm, limit, cost, flags): limits are few and checks
    many, so a check only encodes its key between ``head`` and ``tail``.
    """

    script: Script
    #: ``*<n> EVALSHA <sha> 1``, encoded.
    head: bytes
    #: ARGV (``now`` empty: the server's clock), encoded.
    tail: bytes
    #: The same ARGV, for the client's own path.
    args: tuple[bytes, ...]


def one_key_request(
    algorithm: str, params: tuple[float, float, float], cost: float, consume_denied: bool
) -> OneKeyRequest | None:
    """The :class:`OneKeyRequest` of a ``hit``; None when ``algorithm`` has no one-limit script."""
    if algorithm not in SINGLE_LIMIT_ALGORITHMS:
        return None
    script = single_limit_script(algorithm)
    args = tuple(_evaluate_args((), (params,), cost, consume_denied, True, None))
    packed = _pack_evalsha(script, 1, (b"", *args))
    key_at = packed.index(b"$0\r\n\r\n")  # the empty key placeholder: the first empty bulk
    return OneKeyRequest(script, packed[:key_at], packed[key_at + 6 :], args)


def _pack_one(request: OneKeyRequest, key: str) -> bytes:
    """``request`` with its key: ``EVALSHA sha 1 key *args`` as one RESP request."""
    raw = key.encode()
    return b"%s$%d\r\n%s\r\n%s" % (request.head, len(raw), raw, request.tail)


#: Connections a backend keeps between checks, at most (see :class:`RedisBackend`).
_KEEP = 4


def _release_kept(pool: Any, kept: list[Any], owner: list[int]) -> None:
    """Give the connections a backend kept back to the client's pool.

    Only in the process that took them (``owner`` holds its pid): a forked
    child must not touch its parent's sockets.
    """
    if os.getpid() == owner[0]:
        while kept:
            pool.release(kept.pop())
