"""Hot-path commands sent straight on a connection of the user's own redis-py pool.

redis-py 8 wraps every command in machinery (a retry loop, response
callbacks, command metrics) that costs 15-25 µs, more than a small Lua
script or a GET takes on the server. The rate limiter's checks and the
cache's reads are one command each and run on every request, so they borrow
a connection from the client's own pool (its address, auth, TLS and socket
timeouts as configured) and send one pre-encoded command on it.

Only a plain ``redis.Redis`` or ``redis.asyncio.Redis`` qualifies (see
:func:`direct_pool` and :func:`adirect_pool`); cluster
clients, single-connection clients, subclasses such as fakeredis and
proxies keep the client's own path. Callers retry a ``ConnectionError`` once
through the client (a pooled connection may have gone stale), so the client's
retry policy still applies; a timeout is never retried.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

__all__ = ["adirect_pool", "asend_packed", "direct_pool", "exchange", "pack_command", "send_packed"]


def _wants_command_name(pool: Any) -> bool:
    """Whether ``pool.get_connection`` has a required first argument (redis-py < 5.3).

    A subclass's ``get_connection(*args, **kwargs)`` takes none.
    """
    first = next(iter(inspect.signature(pool.get_connection).parameters.values()), None)
    return (
        first is not None
        and first.kind
        in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and first.default is inspect.Parameter.empty
    )


def direct_pool(client: Any) -> Any:
    """The pool of a plain ``redis.Redis`` client whose connections may be used directly.

    None for anything else, and for redis-py versions whose pool wants a
    command name to hand out a connection.
    """
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is not installed
        return None
    if type(client) is not redis.Redis or getattr(client, "connection", None) is not None:
        return None
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, redis.ConnectionPool):
        return None
    if _wants_command_name(pool):
        return None  # redis-py < 5.3 wants a command name: use the client's own path
    return pool


def adirect_pool(client: Any) -> Any:
    """The pool of a plain ``redis.asyncio.Redis`` client, as :func:`direct_pool`."""
    try:
        import redis.asyncio
    except ImportError:  # pragma: no cover - redis is not installed
        return None
    if type(client) is not redis.asyncio.Redis or getattr(client, "connection", None) is not None:
        return None
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, redis.asyncio.ConnectionPool):
        return None
    if _wants_command_name(pool):
        return None
    return pool


def pack_command(head: bytes, args: Sequence[Any]) -> bytes:
    """``head`` (already encoded RESP: the array header and fixed words) + ``args``.

    What redis-py's ``pack_command`` builds, at a fraction of its cost.
    Arguments are bytes or anything whose ``str()`` is the value (UTF-8).
    """
    parts = [head]
    for arg in args:
        raw = arg if arg.__class__ is bytes else str(arg).encode("utf-8")
        parts += (b"$%d\r\n" % len(raw), raw, b"\r\n")
    return b"".join(parts)


def send_packed(pool: Any, packed: bytes, response_error: type[BaseException]) -> Any:
    """Send one packed command on a pooled connection and return its reply.

    A server error reply leaves the connection clean; any other failure
    disconnects it, since a reply may still be in flight.
    """
    connection = pool.get_connection()
    try:
        return exchange(connection, packed, response_error)
    finally:
        pool.release(connection)


def exchange(connection: Any, packed: bytes, response_error: type[BaseException]) -> Any:
    """Send one packed command on ``connection`` (held by the caller) and read its reply.

    A server error reply leaves the connection clean; any other failure
    disconnects it, since a reply may still be in flight.
    """
    try:
        connection.send_packed_command([packed])
        return connection.read_response()
    except response_error:
        raise
    except BaseException:
        connection.disconnect()
        raise


async def asend_packed(pool: Any, packed: bytes, response_error: type[BaseException]) -> Any:
    """:func:`send_packed` on an asyncio pool; a cancelled read disconnects the connection."""
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command([packed])
        return await connection.read_response()
    except response_error:
        raise
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
