"""Redis through ``redis.asyncio``: one EVALSHA per check.

This file is the source of the blocking backend too (``scripts/unasync.py``
generates ``_sync.py``); the encoding, the decoding and the outage rule
are in :mod:`._base`. Only the direct path differs between the colours: the
blocking backend keeps connections of its pool between checks, the asyncio one
keeps its own per event loop (and has the asyncio-only ``timeout``).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Sequence
from typing import Any

from scalekit._redis_bounded import DEFAULT_OP_TIMEOUT, aclose_twin, bounded, check_op_timeout
from scalekit._redis_direct import (
    PROCESS,
    AsyncKept,
    adirect_pool,
    direct_pool,
    exchange,
    is_final,
)
from scalekit._unasync import IS_ASYNC
from scalekit.ratelimit._backends._base import (
    _KEEP,
    OneKeyRequest,
    StoreUnavailable,
    _acquire_args,
    _acquired,
    _evaluate_args,
    _outcome,
    _pack_eval,
    _pack_evalsha,
    _pack_one,
    _release_kept,
    _single_outcome,
    is_outage,
)
from scalekit.ratelimit._core import Outcome
from scalekit.ratelimit._scripts import (
    SINGLE_LIMIT_ALGORITHMS,
    Script,
    algorithm_script,
    concurrency_script,
    single_limit_script,
)

__all__ = ["AsyncRedisBackend"]

__unasync__ = {
    "aclose_twin": "close_twin",
    "Redis through ``redis.asyncio``": "Redis through redis-py",
    "\n\nThis file is the source of the blocking backend too (``scripts/unasync.py``\n"
    "generates ``_sync.py``); the encoding, the decoding and the outage rule\n"
    "are in :mod:`._base`. Only the direct path differs between the colours: the\n"
    "blocking backend keeps connections of its pool between checks, the asyncio one\n"
    "keeps its own per event loop (and has the asyncio-only ``timeout``).": "\n\n"
    "The encoding, the decoding and the outage rule are in :mod:`._base`.",
    "Runs the limiters' scripts on an asyncio redis-py client": "Runs the limiters' scripts "
    "on a blocking redis-py client",
    "The backend keeps up to 4 direct-path connections per event loop\n"
    "    (asyncio connections belong to one loop), made beside the pool with\n"
    "    its settings; they close when the loop shuts down or on :meth:`aclose`,\n"
    "    and none are kept beside a ``BlockingConnectionPool`` or a pool of\n"
    "    fewer than 64 connections, which the user capped.": (
        "The backend keeps up to 4 direct-path connections between checks\n"
        "    (taking one from the pool and giving it back costs as much again, in\n"
        "    redis-py's pool bookkeeping and a readiness syscall); it gives them\n"
        "    back on :meth:`close` or when it is garbage collected, and keeps none\n"
        "    from a ``BlockingConnectionPool`` or a pool of fewer than 64\n"
        "    connections, where they would be missed."
    ),
    "\n\n    ``timeout`` (seconds), when set, also bounds every call with\n"
    "    ``asyncio.wait_for``; an asyncio connection left open warns when it is\n"
    "    collected.": "",
    "Close the connections this backend keeps, and its twin client, if any.\n\n"
    "        The client you passed is not closed.": (
        "Give back the connections this backend keeps, and close its twin client, if any.\n\n"
        "        The client you passed is not closed."
    ),
}


class AsyncRedisBackend:
    """Runs the limiters' scripts on an asyncio redis-py client (standalone or cluster).

    Works with ``redis.asyncio.Redis`` and ``redis.asyncio.cluster.RedisCluster``
    (and fakeredis with Lua support). Every key of a check shares one hash
    tag, so the cluster client routes the script to the one node owning the
    slot. A script missing from the server's cache (restart, failover,
    SCRIPT FLUSH) raises NOSCRIPT; the backend then sends it with EVAL, which
    also caches it, so the next call is an EVALSHA again.

    An outage costs a check at most about ``2 * op_timeout`` seconds
    (connect, then reply; default 0.25 s each) once per probe, whatever the
    client's own settings: unless ``client`` already bounds its commands that
    tightly and never retries, the backend talks to Redis through a *twin* of
    it (same address, credentials, TLS, protocol and pool size; its own
    connections) whose socket timeouts are capped at ``op_timeout`` and which
    redis-py never retries. ``client`` stays the client you passed;
    :meth:`aclose` closes the twin.

    With a plain ``redis.asyncio.Redis`` client and ``direct=True`` (the
    default), a check sends one pre-encoded EVALSHA on a connection of the
    client's own pool, skipping redis-py's per-command machinery (retry
    wrapper, response callbacks, command metrics), which costs more than the
    script itself. A connection error on that path is retried once through
    ``client.evalsha``, so the client's ``retry`` policy still applies; a
    timeout is not retried. ``direct=False`` sends every check through
    ``client.evalsha`` (for instance to see the checks in redis-py's own
    OpenTelemetry metrics).

    The backend keeps up to 4 direct-path connections per event loop
    (asyncio connections belong to one loop), made beside the pool with
    its settings; they close when the loop shuts down or on :meth:`aclose`,
    and none are kept beside a ``BlockingConnectionPool`` or a pool of
    fewer than 64 connections, which the user capped.

    ``timeout`` (seconds), when set, also bounds every call with
    ``asyncio.wait_for``; an asyncio connection left open warns when it is
    collected.
    """

    def __init__(
        self,
        client: Any,
        *,
        timeout: float | None = None,  # unasync: async-only
        direct: bool = True,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
    ) -> None:
        from redis import exceptions as rex

        #: The client you passed (the escape hatch; the backend's I/O goes through ``_client``).
        self.client = client
        self.timeout = timeout  # unasync: async-only
        self.op_timeout = check_op_timeout(op_timeout)
        self._client: Any = bounded(client, self.op_timeout)
        self._errors = rex
        self._response_error = rex.ResponseError
        if IS_ASYNC:
            self._pool = adirect_pool(self._client) if direct else None
            #: The connections kept per event loop (see :class:`AsyncKept`).
            self._keeper = None if self._pool is None else AsyncKept(self._pool)
        else:
            import redis

            self._pool: Any = direct_pool(self._client) if direct else None
            pool = self._pool
            #: Connections kept between checks (a list: pop and append are atomic).
            self._kept: list[Any] = []
            #: The pid of the process the kept connections belong to (a list: the
            #: finalizer shares it).
            self._owner = [os.getpid()]
            self._keep = 0
            if (
                pool is not None
                and not isinstance(pool, redis.BlockingConnectionPool)
                and getattr(pool, "max_connections", 0) >= 64
            ):
                self._keep = _KEEP
                weakref.finalize(self, _release_kept, pool, self._kept, self._owner)

    async def aclose(self) -> None:
        """Close the connections this backend keeps, and its twin client, if any.

        The client you passed is not closed.

        The backend stays usable: the next check connects again.
        """
        if IS_ASYNC:
            if self._keeper is not None:
                await self._keeper.aclose()
        else:
            _release_kept(self._pool, self._kept, self._owner)
        await aclose_twin(self._client)

    async def _run(
        self,
        script: Script,
        keys_and_args: Sequence[Any],
        numkeys: int,
        packed: bytes = b"",
        bounded: bool = False,  # unasync: async-only
    ) -> Any:
        rex = self._errors
        try:
            if IS_ASYNC:  # noqa: SIM102 (the sync twin drops this whole test)
                if self.timeout is not None and not bounded:
                    return await asyncio.wait_for(
                        self._run(script, keys_and_args, numkeys, packed, True), self.timeout
                    )
            if self._pool is not None:
                try:
                    try:
                        return await self._send(
                            packed or _pack_evalsha(script, numkeys, keys_and_args)
                        )
                    except rex.NoScriptError:  # EVAL loads it on the same connection
                        return await self._send(_pack_eval(script, numkeys, keys_and_args))
                except rex.TimeoutError:
                    raise
                except rex.ConnectionError as exc:
                    if is_final(exc):  # a kept connection, re-made for this check
                        raise
                    # a stale pooled connection: once more, the client's way
            try:
                return await self._client.evalsha(script.sha, numkeys, *keys_and_args)
            except rex.NoScriptError:
                return await self._client.eval(script.source, numkeys, *keys_and_args)
        except Exception as exc:
            if is_outage(exc):
                raise StoreUnavailable(type(exc).__name__) from exc
            raise

    if IS_ASYNC:

        async def _send(self, packed: bytes) -> Any:
            """Send one packed command on a kept connection; return its reply."""
            return await self._keeper.send(packed, self._response_error)  # type: ignore[union-attr]

    else:

        def _send(self, packed: bytes) -> Any:
            """Send one packed command on a kept or pooled connection; return its reply.

            A server error reply leaves the connection clean; any other failure
            disconnects it (a reply may still be in flight) and gives it back to
            the pool.
            """
            kept = self._kept
            if self._owner[0] != PROCESS[0]:  # forked: the kept sockets are the parent's
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

    async def hit_one(self, request: OneKeyRequest, key: str) -> Outcome:
        """:meth:`evaluate` of a one-limit write check prepared by :func:`one_key_request`.

        ``key`` is the storage key (ASCII, as the limiters build it).

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
        # One key at a time: keys of one user key share a slot, but DEL of
        # several keys on a cluster client is split per slot anyway.
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
