"""The errors scalekit raises, in one tree.

Every error scalekit raises on purpose derives from :class:`ScalekitError`, so
``except ScalekitError`` catches all of them and nothing else. Errors that
refine a builtin meaning also subclass that builtin (an invalid cursor *is* a
``ValueError``), so code written against the builtin keeps working.

::

    ScalekitError
    ├── ConfigurationError (ValueError)      bad parameters, found at construction; .parameter
    ├── CircuitOpenError                     a breaker rejected the call; .name, .retry_after
    │   └── RateLimiterUnavailable           a limiter's store is down, fallback "raise"
    ├── RetryError                           attempts ran out; .attempts, .last_exception
    ├── RateLimitExceeded                    a limiter denied the hit; .key, .retry_after, .decision
    │   └── ConcurrencyLimitExceeded         no free concurrency slot; .limit, .in_flight
    ├── InvalidCursor (ValueError)           a cursor is malformed, forged or stale; .reason
    ├── RoutingError
    │   ├── NoHealthyNode                    no node can serve; .role, .tried
    │   └── ReadOnlyViolation                a write was routed to a replica
    ├── CacheError
    │   ├── CacheUnavailable                 Redis is down and the policy is "raise"; .namespace
    │   └── SerializationError (ValueError)  a value cannot be encoded or decoded
    ├── BatchInsertError                     a chunk failed; .chunk_index, .rows_written
    │   ├── BatchChunkError                  the database refused a chunk; .position, .result
    │   └── InvalidBatchRow (ValueError)     a row does not fit the table; .position, .column
    ├── BufferFull                           a write-behind buffer is full; .pending
    └── ShardingError
        ├── UnknownShard (LookupError)       a shard name or key maps nowhere
        ├── StaleShardMap                    a write under an old map version; .target, .version
        ├── FanOutError                      a fan-out failed on some targets; .failures
        ├── ClockMovedBackwards              the clock went back past the bound; .behind_ms
        └── WorkerLeaseError                 no worker id could be leased, or it was lost; .worker

Errors carry the data a caller needs to act (``retry_after``, the node name,
the failing chunk) as attributes, never only inside the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "BatchChunkError",
    "BatchInsertError",
    "BufferFull",
    "CacheError",
    "CacheUnavailable",
    "CircuitOpenError",
    "ClockMovedBackwards",
    "ConcurrencyLimitExceeded",
    "ConfigurationError",
    "FanOutError",
    "InvalidBatchRow",
    "InvalidCursor",
    "NoHealthyNode",
    "RateLimitExceeded",
    "RateLimiterUnavailable",
    "ReadOnlyViolation",
    "RetryError",
    "RoutingError",
    "ScalekitError",
    "SerializationError",
    "ShardingError",
    "StaleShardMap",
    "UnknownShard",
    "WorkerLeaseError",
]


class ScalekitError(Exception):
    """Base class of every error scalekit raises on purpose.

    Every scalekit error pickles with its attributes (``retry_after``,
    ``chunk_index``...), so it survives a process pool or a task queue.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own __reduce__ calls cls(*self.args), which breaks for any
        # subclass whose __init__ takes other arguments: rebuild without __init__.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[ScalekitError], args: tuple[Any, ...], state: dict[str, Any]
) -> ScalekitError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigurationError(ScalekitError, ValueError):
    """A parameter is invalid; raised when the object is built, never later.

    ``parameter`` names the offending argument so tools can point at it.
    """

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class CircuitOpenError(ScalekitError):
    """A circuit breaker rejected the call without running it.

    ``name`` is the breaker's name; ``retry_after`` the seconds until it lets a
    probe through (``None`` when it is forced open and will not recover alone).
    """

    def __init__(self, name: str, retry_after: float | None) -> None:
        if retry_after is None:
            message = f"circuit {name!r} is open"
        else:
            message = f"circuit {name!r} is open; retry after {retry_after:.3f}s"
        super().__init__(message)
        self.name = name
        self.retry_after = retry_after


class RateLimiterUnavailable(CircuitOpenError):
    """A limiter's store (Redis) is unreachable and its ``fallback`` is ``"raise"``.

    Raised by every check during an outage: the one that found the store
    down (the store's error is chained as ``__cause__``) and those that skip
    the store while it recovers. ``name`` is the limiter's name;
    ``retry_after`` the seconds until a check tries the store again (0 when
    the next one will). A :class:`CircuitOpenError`, since the limiter's
    guard is a breaker around its store.
    """

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(name, retry_after)
        self.args = (
            f"rate limiter {name!r}: its store is unavailable; retry after {retry_after:.3f}s",
        )


class RetryError(ScalekitError):
    """A retry policy gave up: attempts or deadline ran out.

    ``last_exception`` is the error of the last attempt (also chained as
    ``__cause__``); ``attempts`` how many attempts ran.
    """

    def __init__(self, attempts: int, last_exception: BaseException | None) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {last_exception!r}")
        self.attempts = attempts
        self.last_exception = last_exception


class RateLimitExceeded(ScalekitError):
    """A rate limiter denied the hit.

    ``key`` is the limited key, ``retry_after`` the seconds until the same hit
    would be allowed, ``limit`` a description of the limit that denied it.
    """

    def __init__(
        self, key: str, retry_after: float, limit: object = None, *, decision: object = None
    ) -> None:
        super().__init__(f"rate limit exceeded for {key!r}; retry after {retry_after:.3f}s")
        self.key = key
        self.retry_after = retry_after
        self.limit = limit
        #: the limiter's full decision (a ``scalekit.ratelimit.Decision``), when there is one
        self.decision = decision


class ConcurrencyLimitExceeded(RateLimitExceeded):
    """A concurrency limiter had no free slot: ``limit`` requests already in flight.

    ``retry_after`` is the time until the oldest lease expires (an upper bound:
    a holder that finishes frees its slot sooner); ``in_flight`` the count seen.
    """

    def __init__(self, key: str, retry_after: float, limit: int, in_flight: int) -> None:
        super().__init__(key, retry_after, limit)
        self.in_flight = in_flight


class InvalidCursor(ScalekitError, ValueError):
    """A pagination cursor is malformed, was tampered with, or no longer fits the query.

    ``reason`` says which: ``"malformed"`` (not a cursor, or values that do not
    fit the sort keys), ``"tampered"`` (signature missing or wrong),
    ``"expired"`` or ``"wrong_query"`` (made for another order or filter).
    """

    def __init__(self, message: str = "invalid cursor", *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class RoutingError(ScalekitError):
    """Base class of the routing pool's errors."""


class NoHealthyNode(RoutingError):
    """No node of the wanted role can take the work.

    ``role`` is ``"primary"`` or ``"replica"``; ``tried`` the names of the nodes
    that were tried or skipped, in order.
    """

    def __init__(self, role: str, tried: Sequence[str] = (), reason: str | None = None) -> None:
        detail = f": {reason}" if reason else ""
        tried_part = f" (tried {', '.join(tried)})" if tried else ""
        super().__init__(f"no healthy {role} node{tried_part}{detail}")
        self.role = role
        self.tried = tuple(tried)
        self.reason = reason


class ReadOnlyViolation(RoutingError):
    """A statement that writes was about to run on a read-only (replica) connection."""


class CacheError(ScalekitError):
    """Base class of the cache's errors."""


class CacheUnavailable(CacheError):
    """The cache's store is unreachable and its ``on_redis_down`` policy is ``"raise"``.

    ``namespace`` is the cache's namespace; the store's error is chained as ``__cause__``.
    """

    def __init__(self, namespace: str) -> None:
        super().__init__(f"cache {namespace!r} is unavailable")
        self.namespace = namespace


class SerializationError(CacheError, ValueError):
    """A value could not be serialised, or stored bytes could not be read back."""


class BatchInsertError(ScalekitError):
    """A chunk of a batch insert failed.

    ``chunk_index`` is the zero-based index of the failing chunk and
    ``rows_written`` how many rows were durably written before it, so a rerun
    can resume; the driver's error is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, chunk_index: int, rows_written: int) -> None:
        super().__init__(message)
        self.chunk_index = chunk_index
        self.rows_written = rows_written


class BatchChunkError(BatchInsertError):
    """The database refused a chunk of a batch insert (after any retries).

    ``position`` is the input position (zero-based) of the chunk's first row;
    ``result`` the partial ``scalekit.batch.BatchResult`` of the load so far,
    whose ``resume_position`` says where a rerun can start.
    """

    def __init__(
        self,
        message: str,
        *,
        chunk_index: int,
        rows_written: int,
        position: int,
        result: object = None,
    ) -> None:
        super().__init__(message, chunk_index=chunk_index, rows_written=rows_written)
        self.position = position
        self.result = result


class InvalidBatchRow(BatchInsertError, ValueError):
    """An input row of a batch insert does not fit the table.

    Raised before anything of its chunk is written: an unknown or missing
    column, a tuple of the wrong length, a value COPY cannot encode for its
    column's type. ``position`` is the row's zero-based input position,
    ``column`` the offending column's name (``None`` when the whole row is
    wrong), ``result`` the partial ``scalekit.batch.BatchResult`` so far.
    """

    def __init__(
        self,
        message: str,
        *,
        chunk_index: int,
        rows_written: int,
        position: int,
        column: str | None = None,
        result: object = None,
    ) -> None:
        super().__init__(message, chunk_index=chunk_index, rows_written=rows_written)
        self.position = position
        self.column = column
        self.result = result


class BufferFull(ScalekitError):
    """A write-behind buffer is full and its overflow policy refuses the update.

    ``pending`` is how many keys were waiting for a flush. Nothing of the
    refused update was kept: retry it later, or flush first.
    """

    def __init__(self, message: str, *, pending: int) -> None:
        super().__init__(message)
        self.pending = pending


class ShardingError(ScalekitError):
    """Base class of shard routing errors."""


class UnknownShard(ShardingError, LookupError):
    """A shard name or key does not map to any configured shard.

    ``shard`` is what was asked for: a logical shard number or a target name.
    """

    def __init__(self, message: str, *, shard: int | str | None = None) -> None:
        super().__init__(message)
        self.shard = shard


class StaleShardMap(ShardingError):
    """A write was refused: its shard map version is older than the target's fence.

    Another instance published a newer map (a logical shard moved to or from
    ``target``); the transaction was not committed. Refresh the map
    (``shards.refresh()`` / ``await shards.arefresh()``) and retry.
    ``version`` is the map version the write used, ``current`` the version
    the target's fence requires.
    """

    def __init__(self, message: str, *, target: str, version: int, current: int) -> None:
        super().__init__(message)
        self.target = target
        self.version = version
        self.current = current


class FanOutError(ShardingError):
    """A fan-out read failed or timed out on some targets.

    ``failures`` maps each failed target name to its exception
    (``TimeoutError`` for a target past its timeout); the first one is also
    chained as ``__cause__``. No partial result is returned.
    """

    def __init__(self, message: str, *, failures: dict[str, BaseException]) -> None:
        super().__init__(message)
        self.failures = failures


class ClockMovedBackwards(ShardingError):
    """The wall clock is behind the last ID's time by more than the generator may wait.

    Issuing now could repeat an ID, so none is issued. ``behind_ms`` is how far
    behind the clock is, in milliseconds.
    """

    def __init__(self, message: str, *, behind_ms: int) -> None:
        super().__init__(message)
        self.behind_ms = behind_ms


class WorkerLeaseError(ShardingError):
    """An ID generator has no worker id: none was free, or its lease was lost.

    A generator whose lease is lost stops issuing IDs (another process may hold
    the worker id now). ``worker`` is the worker id concerned, if any.
    """

    def __init__(self, message: str, *, worker: int | None = None) -> None:
        super().__init__(message)
        self.worker = worker
