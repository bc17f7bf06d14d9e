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
from collections.abc import Sequence
from typing import Any

from scalekit._redis_direct import direct_pool, pack_command, send_packed
from scalekit.ratelimit._backends._base import StoreUnavailable
from scalekit.ratelimit._core import Outcome
from scalekit.ratelimit._scripts import (
    SINGLE_LIMIT_ALGORITHMS,
    Script,
    algorithm_script,
    concurrency_script,
    single_limit_script,
)

__all__ = ["AsyncRedisBackend", "RedisBackend", "is_outage"]

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


class RedisBackend:
    """Runs the limiters' scripts on a blocking redis-py client (standalone or cluster).

    ``client`` is used as given; its ``socket_timeout`` bounds how long a
    check can block when Redis hangs (set it: the default is no timeout).

    With a plain ``redis.Redis`` client and ``direct=True`` (the default), a
    check borrows a connection from the client's own pool and sends one
    pre-encoded EVALSHA on it, skipping redis-py's per-command machinery
    (retry wrapper, response callbacks, command metrics), which costs more
    than the script itself. A connection error on that path is retried once
    through ``client.evalsha``, so the client's ``retry`` policy still applies;
    a timeout is not retried. ``direct=False`` sends every check through
    ``client.evalsha`` (for instance to see the checks in redis-py's own
    OpenTelemetry metrics).
    """

    def __init__(self, client: Any, *, direct: bool = True) -> None:
        from redis import exceptions as rex

        self.client = client
        self._pool = direct_pool(client) if direct else None
        self._errors = rex

    def _run(self, script: Script, keys_and_args: list[Any], numkeys: int) -> Any:
        rex = self._errors
        try:
            pool = self._pool
            if pool is not None:
                try:
                    return self._direct(pool, script, keys_and_args, numkeys)
                except rex.NoScriptError:
                    return self.client.eval(script.source, numkeys, *keys_and_args)
                except rex.TimeoutError:
                    raise
                except rex.ConnectionError:
                    pass  # a stale pooled connection: once more, the client's way
            try:
                return self.client.evalsha(script.sha, numkeys, *keys_and_args)
            except rex.NoScriptError:
                return self.client.eval(script.source, numkeys, *keys_and_args)
        except Exception as exc:
            if is_outage(exc):
                raise StoreUnavailable(type(exc).__name__) from exc
            raise

    def _direct(self, pool: Any, script: Script, keys_and_args: list[Any], numkeys: int) -> Any:
        packed = _pack_evalsha(script, numkeys, keys_and_args)
        return send_packed(pool, packed, self._errors.ResponseError)

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
            self.client.delete(key)

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
            return bool(self.client.zrem(key, lease_id))
        except Exception as exc:
            if is_outage(exc):
                raise StoreUnavailable(type(exc).__name__) from exc
            raise

    def __repr__(self) -> str:
        return f"RedisBackend({type(self.client).__name__})"


class AsyncRedisBackend:
    """The asyncio twin of :class:`RedisBackend` (``redis.asyncio`` clients).

    ``timeout`` (seconds), when set, bounds every call with
    ``asyncio.wait_for`` in addition to the client's own socket timeout.
    """

    def __init__(self, client: Any, *, timeout: float | None = None) -> None:
        self.client = client
        self.timeout = timeout

    async def _run(self, script: Script, keys_and_args: list[Any], numkeys: int) -> Any:
        from redis import exceptions as rex

        async def call() -> Any:
            try:
                return await self.client.evalsha(script.sha, numkeys, *keys_and_args)
            except rex.NoScriptError:
                return await self.client.eval(script.source, numkeys, *keys_and_args)

        try:
            if self.timeout is None:
                return await call()
            return await asyncio.wait_for(call(), self.timeout)
        except Exception as exc:
            if is_outage(exc):
                raise StoreUnavailable(type(exc).__name__) from exc
            raise

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
            await self.client.delete(key)

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
            return bool(await self.client.zrem(key, lease_id))
        except Exception as exc:
            if is_outage(exc):
                raise StoreUnavailable(type(exc).__name__) from exc
            raise

    def __repr__(self) -> str:
        return f"AsyncRedisBackend({type(self.client).__name__})"
