"""Bound what a Redis outage can cost a caller, whatever the user's client settings.

The Redis-backed parts of scalekit (the cache, the rate limiter's fallback,
the breaker's shared state, the retry budget) are best effort around the
caller's own work: when Redis is stopped, killed or paused, the caller must
get the documented fallback after a short, known time, not after redis-py's
retries and back-off (redis-py 8: 10 retries with back-off, a 5 s socket
timeout; redis-py 5: no timeout at all, so a paused server hangs forever).

:func:`bounded` takes the user's client and returns one whose every command
costs at most about ``op_timeout`` seconds per phase (connect, then reply)
and is never retried by redis-py: the client itself when its own settings
already promise that, otherwise a *twin* over a new connection pool with the
same address, credentials, TLS, protocol and pool size, whose socket
timeouts are capped at ``op_timeout`` and whose retry policy is none. The
twin opens its own connections (as many as the client's pool allows), which
the documentation says.

Only the client types whose construction is known are twinned:
``redis.Redis`` and ``redis.asyncio.Redis`` over a ``ConnectionPool`` or a
``BlockingConnectionPool``, and ``redis.cluster.RedisCluster`` /
``redis.asyncio.cluster.RedisCluster``. Anything else (fakeredis, which does
no network I/O; a sentinel-managed pool; a user's subclass or proxy) is used
as given.
"""

from __future__ import annotations

import math
from typing import Any

from scalekit.errors import ConfigurationError

__all__ = [
    "DEFAULT_OP_TIMEOUT",
    "aclose_twin",
    "bounded",
    "check_op_timeout",
    "close_twin",
    "is_twin",
]

#: Seconds a Redis command of a best-effort component may take, per phase.
DEFAULT_OP_TIMEOUT = 0.25

_TWIN_MARK = "_scalekit_bounded_twin"


def check_op_timeout(value: object, *, name: str = "op_timeout") -> float:
    """``value`` as a float of seconds, or :class:`ConfigurationError` naming ``name``.

    It must be a finite number above 0 and at most 60.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{name} must be a number of seconds, got {value!r}", parameter=name
        )
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 60:
        raise ConfigurationError(
            f"{name} must be above 0 and at most 60 seconds, got {value!r}", parameter=name
        )
    return seconds


def is_twin(client: object) -> bool:
    """Whether ``client`` was made by :func:`bounded` (and so is owned by scalekit)."""
    return bool(getattr(client, _TWIN_MARK, False))


def close_twin(client: Any) -> None:
    """Close ``client`` and its connections if :func:`bounded` made it; else do nothing."""
    if not is_twin(client):
        return
    client.close()
    if isinstance(client, _DeferredCluster):
        return
    pool = getattr(client, "connection_pool", None)
    if pool is not None:  # a pool given to a client is not closed by client.close()
        pool.disconnect()
    nodes = getattr(client, "nodes_manager", None)
    if nodes is not None:  # a cluster: its startup nodes' connections too
        for node in list(getattr(nodes, "startup_nodes", {}).values()):
            connection = getattr(node, "redis_connection", None)
            if connection is not None:
                connection.close()


async def aclose_twin(client: Any) -> None:
    """:func:`close_twin` for an asyncio client."""
    if not is_twin(client):
        return
    if getattr(client, "connection_pool", None) is not None:
        await client.aclose(close_connection_pool=True)
        return
    # A cluster client owns its nodes' connections. redis-py's asyncio
    # RedisCluster.aclose() does nothing once a connection error has marked the
    # client for re-initialisation, leaving every node's connections open
    # (ResourceWarnings at garbage collection): disconnect the nodes ourselves.
    await client.aclose()
    nodes = getattr(client, "nodes_manager", None)
    if nodes is not None:
        await nodes.aclose()
        await nodes.aclose("startup_nodes")


def _capped(current: Any, op_timeout: float) -> float:
    if current is None:
        return op_timeout
    return min(float(current), op_timeout)


def _retries(retry: Any) -> int:
    if retry is None:
        return 0
    get = getattr(retry, "get_retries", None)
    if get is not None:
        return int(get())
    return int(getattr(retry, "_retries", 1))


def _kwargs_bounded(kwargs: dict[str, Any], op_timeout: float) -> bool:
    for key in ("socket_timeout", "socket_connect_timeout"):
        value = kwargs.get(key)
        if value is None or float(value) > op_timeout:
            return False
    return _retries(kwargs.get("retry")) == 0


def _bounded_kwargs(kwargs: dict[str, Any], op_timeout: float, retry: Any) -> dict[str, Any]:
    bounded_kwargs = dict(kwargs)
    bounded_kwargs["socket_timeout"] = _capped(kwargs.get("socket_timeout"), op_timeout)
    bounded_kwargs["socket_connect_timeout"] = _capped(
        kwargs.get("socket_connect_timeout"), op_timeout
    )
    bounded_kwargs["retry"] = retry
    bounded_kwargs["retry_on_timeout"] = False
    bounded_kwargs["retry_on_error"] = []
    return bounded_kwargs


def _mark(client: Any) -> Any:
    setattr(client, _TWIN_MARK, True)
    return client


def _twin_pool(pool: Any, plain: type, blocking: type, op_timeout: float, retry: Any) -> Any:
    kind = type(pool)
    if kind is not plain and kind is not blocking:
        return None
    kwargs = _bounded_kwargs(pool.connection_kwargs, op_timeout, retry)
    extra: dict[str, Any] = {}
    if kind is blocking:
        extra["timeout"] = _capped(getattr(pool, "timeout", None), op_timeout)
    return kind(
        connection_class=pool.connection_class,
        max_connections=pool.max_connections,
        **extra,
        **kwargs,
    )


def bounded(client: Any, op_timeout: float) -> Any:
    """``client``, or a twin of it whose commands are bounded by ``op_timeout``.

    Sync and asyncio clients alike (the twin is of the same kind). The twin
    shares nothing with ``client`` but its settings; the caller owns it.
    """
    try:
        import redis
        import redis.asyncio
        import redis.asyncio.cluster
        import redis.cluster
    except ImportError:  # pragma: no cover - redis is not installed
        return client
    if is_twin(client):
        return client
    kind = type(client)
    if kind is redis.Redis or kind is redis.asyncio.Redis:
        if getattr(client, "connection", None) is not None:
            return client  # a single-connection client: nothing to share safely
        pool = client.connection_pool
        if _kwargs_bounded(pool.connection_kwargs, op_timeout):
            return client
        if kind is redis.Redis:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            twin = _twin_pool(
                pool,
                redis.ConnectionPool,
                redis.BlockingConnectionPool,
                op_timeout,
                Retry(NoBackoff(), 0),
            )
        else:
            from redis.asyncio.retry import Retry as AsyncRetry
            from redis.backoff import NoBackoff

            twin = _twin_pool(
                pool,
                redis.asyncio.ConnectionPool,
                redis.asyncio.BlockingConnectionPool,
                op_timeout,
                AsyncRetry(NoBackoff(), 0),
            )
        if twin is None:
            return client
        return _mark(kind(connection_pool=twin))
    if kind is redis.cluster.RedisCluster:
        try:
            return _mark(_twin_cluster(client, op_timeout))
        except Exception:  # the cluster may be unreachable right now
            return _mark(_DeferredCluster(lambda: _twin_cluster(client, op_timeout)))
    if kind is redis.asyncio.cluster.RedisCluster:
        return _mark(_twin_async_cluster(client, op_timeout))
    return client


class _DeferredCluster:
    """A sync cluster twin built at its first use.

    A sync ``RedisCluster`` asks the cluster for its slots when it is built,
    so a twin made while the cluster is unreachable would make the component
    fail at construction. This stand-in builds the twin at the first command
    instead; until it can, every use raises ``redis.ConnectionError``, which
    the components treat as an outage like any other.
    """

    def __init__(self, build: Any) -> None:
        import threading

        self._build = build
        self._client: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        client = self._client
        if client is None:
            from redis.exceptions import ConnectionError as RedisConnectionError

            with self._lock:
                if self._client is None:
                    try:
                        self._client = self._build()
                    except RedisConnectionError:
                        raise
                    except Exception as exc:
                        raise RedisConnectionError(f"cluster unreachable: {exc}") from exc
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# ``db`` is there when the client came from a URL with a database number
# (``RedisCluster.from_url("redis://host:6379/0")``); RedisCluster refuses it back.
_CLUSTER_DROP = ("redis_connect_func", "host", "port", "retry", "connection_pool", "db")


def _twin_cluster(client: Any, op_timeout: float) -> Any:
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.retry import Retry

    kwargs = _bounded_kwargs(client.nodes_manager.connection_kwargs, op_timeout, None)
    for key in (*_CLUSTER_DROP, "retry_on_error", "retry_on_timeout"):
        kwargs.pop(key, None)
    nodes = [ClusterNode(node.host, node.port) for node in client.get_nodes()]  # type: ignore[no-untyped-call]
    return RedisCluster(
        startup_nodes=nodes,
        retry=Retry(NoBackoff(), 0),
        load_balancing_strategy=getattr(client, "load_balancing_strategy", None),
        **kwargs,
    )


def _twin_async_cluster(client: Any, op_timeout: float) -> Any:
    import inspect

    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.connection import SSLConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # Its connection_kwargs also hold what the constructor derived (callbacks,
    # the connection class): pass back only what the constructor takes.
    accepted = set(inspect.signature(RedisCluster.__init__).parameters) - {
        "self",
        "host",
        "port",
        "startup_nodes",
        "retry",
        "retry_on_error",
        "lib_name",
        "lib_version",
        "cluster_error_retry_attempts",
    }
    raw = client.connection_kwargs
    kwargs = {key: value for key, value in raw.items() if key in accepted}
    kwargs.update(_bounded_kwargs({}, op_timeout, None))
    for key in ("socket_timeout", "socket_connect_timeout"):
        kwargs[key] = _capped(raw.get(key), op_timeout)
    for key in ("retry", "retry_on_error", "retry_on_timeout"):
        kwargs.pop(key, None)
    if raw.get("connection_class") is SSLConnection:
        kwargs["ssl"] = True
    kwargs["require_full_coverage"] = getattr(client, "require_full_coverage", True)
    kwargs["load_balancing_strategy"] = getattr(client, "load_balancing_strategy", None)
    # Before its first command an asyncio cluster client knows only its startup nodes.
    known = client.get_nodes() or list(client.nodes_manager.startup_nodes.values())
    nodes = [ClusterNode(node.host, node.port) for node in known]
    return RedisCluster(startup_nodes=nodes, retry=Retry(NoBackoff(), 0), **kwargs)
