"""Redis through redis-py: one EVALSHA per check, sync and asyncio.

Works with ``redis.Redis``, ``redis.cluster.RedisCluster``,
``redis.asyncio.Redis`` and ``redis.asyncio.cluster.RedisCluster`` (and
fakeredis with Lua support). Every key of a check shares one hash tag, so the
cluster client routes the script to the one node owning the slot.

A script missing from the server's cache (restart, failover, SCRIPT FLUSH)
raises NOSCRIPT; the backend then sends it with EVAL, which also caches it,
so the next call is an EVALSHA again.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

from scalekit._redis_bounded import (
    DEFAULT_OP_TIMEOUT,
    aclose_twin,
    bounded,
    check_op_timeout,
    close_twin,
)
from scalekit._redis_direct import adirect_pool, asend_packed, direct_pool, exchange, pack_command
from scalekit.ratelimit._backends._base import StoreUnavailable
from scalekit.ratelimit._core import Outcome
from scalekit.ratelimit._scripts import (
    SINGLE_LIMIT_ALGORITHMS,
    Script,
    algorithm_script,
    concurrency_script,
    single_limit_script,
)

__all__ = ["AsyncRedisBackend", "OneKeyRequest", "RedisBackend", "is_outage"]

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


class RedisBackend:
    """Runs the limiters' scripts on a blocking redis-py client (standalone or cluster).

    An outage costs a check at most about ``2 * op_timeout`` seconds
    (connect, then reply; default 0.25 s each) once per probe, whatever the
    client's own settings: unless ``client`` already bounds its commands that
    tightly and never retries, the backend talks to Redis through a *twin* of
    it (same address, credentials, TLS, protocol and pool size; its own
    connections) whose socket timeouts are capped at ``op_timeout`` and which
    redis-py never retries. ``client`` stays the client you passed;
    :meth:`close` closes the twin.

    With a plain ``redis.Redis`` client and ``direct=True`` (the default), a
    check sends one pre-encoded EVALSHA on a connection of the client's own
    pool, skipping redis-py's per-command machinery (retry wrapper, response
    callbacks, command metrics), which costs more than the script itself.
    The backend keeps up to 4 of those connections between checks (taking
    one from the pool and giving it back costs as much again, in redis-py's
    pool bookkeeping and a readiness syscall); it gives them back on
    :meth:`close` or when it is garbage collected, and keeps none from a
    ``BlockingConnectionPool`` or a pool of fewer than 64 connections, where
    they would be missed. A connection error on that path is retried once
    through ``client.evalsha``, so the client's ``retry`` policy still
    applies; a timeout is not retried. ``direct=False`` sends every check
    through ``client.evalsha`` (for instance to see the checks in redis-py's
    own OpenTelemetry metrics).
    """

    def __init__(
        self, client: Any, *, direct: bool = True, op_timeout: float = DEFAULT_OP_TIMEOUT
    ) -> None:
        import redis
        from redis import exceptions as rex

        #: The client you passed (the escape hatch; the backend's I/O goes through ``_client``).
        self.client = client
        self.op_timeout = check_op_timeout(op_timeout)
        self._client: Any = bounded(client, self.op_timeout)
        self._pool: Any = direct_pool(self._client) if direct else None
        pool = self._pool
        self._errors = rex
        self._response_error = rex.ResponseError
        #: Connections kept between checks (a list: pop and append are atomic).
        self._kept: list[Any] = []
        #: The pid of the process the kept connections belong to (a list: the finalizer shares it).
        self._owner = [os.getpid()]
        self._keep = 0
        if (
            pool is not None
            and not isinstance(pool, redis.BlockingConnectionPool)
            and getattr(pool, "max_connections", 0) >= 64
        ):
            self._keep = _KEEP
            weakref.finalize(self, _release_kept, pool, self._kept, self._owner)

    def close(self) -> None:
        """Give back the connections this backend keeps, and close its twin client, if any.

        The backend stays usable (the next check connects again); the
        client you passed is not closed.
        """
        if self._pool is not None:
            _release_kept(self._pool, self._kept, self._owner)
        close_twin(self._client)

    def _run(
        self, script: Script, keys_and_args: Sequence[Any], numkeys: int, packed: bytes = b""
    ) -> Any:
        rex = self._errors
        try:
            if self._pool is not None:
                try:
                    return self._send(packed or _pack_evalsha(script, numkeys, keys_and_args))
                except rex.NoScriptError:
                    return self._client.eval(script.source, numkeys, *keys_and_args)
                except rex.TimeoutError:
                    raise
                except rex.ConnectionError:
                    pass  # a stale pooled connection: once more, the client's way
            try:
                return self._client.evalsha(script.sha, numkeys, *keys_and_args)
            except rex.NoScriptError:
                return self._client.eval(script.source, numkeys, *keys_and_args)
        except Exception as exc:
            if is_outage(exc):
                raise StoreUnavailable(type(exc).__name__) from exc
            raise

    def _send(self, packed: bytes) -> Any:
        """Send one packed command on a kept or pooled connection; return its reply.

        A server error reply leaves the connection clean; any other failure
        disconnects it (a reply may still be in flight) and gives it back to
        the pool.
        """
        kept = self._kept
        if self._owner[0] != os.getpid():  # forked: the kept sockets are the parent's
            kept.clear()
            self._owner[0] = os.getpid()
        try:
            connection = kept.pop()
        except IndexError:
            connection = self._pool.get_connection()
        try:
            reply = exchange(connection, packed, self._response_error)
        except self._response_error:
            self._put_back(connection)
            raise
        except BaseException:  # disconnected by exchange(): the pool reconnects it
            self._pool.release(connection)
            raise
        self._put_back(connection)
        return reply

    def _put_back(self, connection: Any) -> None:
        kept = self._kept
        if len(kept) < self._keep:
            kept.append(connection)
        else:
            self._pool.release(connection)

    def hit_one(self, request: OneKeyRequest, key: str) -> Outcome:
        """:meth:`evaluate` of a one-limit write check prepared by :func:`one_key_request`.

        ``key`` is the storage key (ASCII, as the limiters build it).

        Raises:
            StoreUnavailable: Redis is unreachable (the cause is chained).
        """
        packed = b"" if self._pool is None else _pack_one(request, key)
        return _single_outcome(self._run(request.script, (key, *request.args), 1, packed))

    def evaluate(
        self,
        algorithm: str,
        keys: Sequence[str],
        params: Sequence[tuple[float, float, float]],
        cost: float,
        *,
        consume_denied: bool,
        write: bool,
        now: float | None = None,
    ) -> Outcome:
        """Run one check of ``algorithm`` against every key at once; returns the raw outcome.

        Raises:
            StoreUnavailable: Redis is unreachable (the cause is chained).

        ``now`` (microseconds) replaces the store's clock: for tests only.
        """
        args = _evaluate_args(keys, params, cost, consume_denied, write, now)
        if len(keys) == 1 and algorithm in SINGLE_LIMIT_ALGORITHMS:
            return _single_outcome(self._run(single_limit_script(algorithm), args, 1))
        return _outcome(self._run(algorithm_script(algorithm), args, len(keys)))

    def delete(self, keys: Sequence[str]) -> None:
        # One key at a time: keys of one user key share a slot, but DEL of
        # several keys on a cluster client is split per slot anyway.
        """Delete the state under ``keys`` (``reset``)."""
        for key in keys:
            self._client.delete(key)

    def acquire(
        self, key: str, limit: int, lease: float, lease_id: str, *, now: float | None = None
    ) -> tuple[bool, int, float]:
        """Try to take one of ``limit`` slots of ``key``: ``(granted, in_flight, retry_after)``.

        Raises:
            StoreUnavailable: Redis is unreachable (the cause is chained).

        Expired leases are dropped first; ``lease`` and ``retry_after`` are in microseconds.
        """
        args = _acquire_args(key, limit, lease, lease_id, now)
        return _acquired(self._run(concurrency_script("acquire"), args, 1))

    def renew(self, key: str, lease: float, lease_id: str) -> bool:
        """Extend a live lease by ``lease`` microseconds; False if it expired or was released."""
        args = [key, "", str(int(lease)), lease_id]
        return bool(int(self._run(concurrency_script("renew"), args, 1)))

    def release(self, key: str, lease_id: str) -> bool:
        """Remove a lease; False if it was not there (expired, or released already)."""
        try:
            return bool(self._client.zrem(key, lease_id))
        except Exception as exc:
            if is_outage(exc):
                raise StoreUnavailable(type(exc).__name__) from exc
            raise

    def __repr__(self) -> str:
        return f"RedisBackend({type(self.client).__name__})"


class AsyncRedisBackend:
    """The asyncio twin of :class:`RedisBackend` (``redis.asyncio`` clients).

    With a plain ``redis.asyncio.Redis`` client and ``direct=True`` (the
    default), a check borrows a connection from the client's own pool and
    sends one pre-encoded EVALSHA on it, as :class:`RedisBackend` does (the
    connection goes back to the pool after every check: asyncio connections
    belong to one event loop). A connection error on that path is retried
    once through ``client.evalsha``; a timeout is not retried.
    ``direct=False`` sends every check through ``client.evalsha``.

    ``op_timeout`` bounds what an outage costs, through a twin of the client
    when needed, as for :class:`RedisBackend`; :meth:`aclose` closes the twin
    (an asyncio connection left open warns when it is collected).
    ``timeout`` (seconds), when set, also bounds every call with
    ``asyncio.wait_for``.
    """

    def __init__(
        self,
        client: Any,
        *,
        timeout: float | None = None,
        direct: bool = True,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
    ) -> None:
        from redis import exceptions as rex

        #: The client you passed (the escape hatch; the backend's I/O goes through ``_client``).
        self.client = client
        self.timeout = timeout
        self.op_timeout = check_op_timeout(op_timeout)
        self._client: Any = bounded(client, self.op_timeout)
        self._pool = adirect_pool(self._client) if direct else None
        self._errors = rex

    async def aclose(self) -> None:
        """Close the twin client this backend made, if any (never the client you passed).

        The backend stays usable: the next check connects again.
        """
        await aclose_twin(self._client)

    async def _run(
        self, script: Script, keys_and_args: Sequence[Any], numkeys: int, packed: bytes = b""
    ) -> Any:
        try:
            if self.timeout is None:
                return await self._call(script, keys_and_args, numkeys, packed)
            return await asyncio.wait_for(
                self._call(script, keys_and_args, numkeys, packed), self.timeout
            )
        except Exception as exc:
            if is_outage(exc):
                raise StoreUnavailable(type(exc).__name__) from exc
            raise

    async def _call(
        self, script: Script, keys_and_args: Sequence[Any], numkeys: int, packed: bytes
    ) -> Any:
        rex = self._errors
        pool = self._pool
        if pool is not None:
            try:
                return await asend_packed(
                    pool,
                    packed or _pack_evalsha(script, numkeys, keys_and_args),
                    rex.ResponseError,
                )
            except rex.NoScriptError:
                return await self._client.eval(script.source, numkeys, *keys_and_args)
            except rex.TimeoutError:
                raise
            except rex.ConnectionError:
                pass  # a stale pooled connection: once more, the client's way
        try:
            return await self._client.evalsha(script.sha, numkeys, *keys_and_args)
        except rex.NoScriptError:
            return await self._client.eval(script.source, numkeys, *keys_and_args)

    async def hit_one(self, request: OneKeyRequest, key: str) -> Outcome:
        """See :meth:`RedisBackend.hit_one`.

        Raises:
            StoreUnavailable: Redis is unreachable (the cause is chained).
        """
        packed = b"" if self._pool is None else _pack_one(request, key)
        return _single_outcome(await self._run(request.script, (key, *request.args), 1, packed))

    async def evaluate(
        self,
        algorithm: str,
        keys: Sequence[str],
        params: Sequence[tuple[float, float, float]],
        cost: float,
        *,
        consume_denied: bool,
        write: bool,
        now: float | None = None,
    ) -> Outcome:
        """Run one check of ``algorithm`` against every key at once; returns the raw outcome.

        Raises:
            StoreUnavailable: Redis is unreachable (the cause is chained).

        ``now`` (microseconds) replaces the store's clock: for tests only.
        """
        args = _evaluate_args(keys, params, cost, consume_denied, write, now)
        if len(keys) == 1 and algorithm in SINGLE_LIMIT_ALGORITHMS:
            return _single_outcome(await self._run(single_limit_script(algorithm), args, 1))
        return _outcome(await self._run(algorithm_script(algorithm), args, len(keys)))

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete the state under ``keys`` (``reset``)."""
        for key in keys:
            await self._client.delete(key)

    async def acquire(
        self, key: str, limit: int, lease: float, lease_id: str, *, now: float | None = None
    ) -> tuple[bool, int, float]:
        """Try to take one of ``limit`` slots of ``key``: ``(granted, in_flight, retry_after)``.

        Raises:
            StoreUnavailable: Redis is unreachable (the cause is chained).

        Expired leases are dropped first; ``lease`` and ``retry_after`` are in microseconds.
        """
        args = _acquire_args(key, limit, lease, lease_id, now)
        return _acquired(await self._run(concurrency_script("acquire"), args, 1))

    async def renew(self, key: str, lease: float, lease_id: str) -> bool:
        """Extend a live lease by ``lease`` microseconds; False if it expired or was released."""
        args = [key, "", str(int(lease)), lease_id]
        return bool(int(await self._run(concurrency_script("renew"), args, 1)))

    async def release(self, key: str, lease_id: str) -> bool:
        """Remove a lease; False if it was not there (expired, or released already)."""
        try:
            return bool(await self._client.zrem(key, lease_id))
        except Exception as exc:
            if is_outage(exc):
                raise StoreUnavailable(type(exc).__name__) from exc
            raise

    def __repr__(self) -> str:
        return f"AsyncRedisBackend({type(self.client).__name__})"
