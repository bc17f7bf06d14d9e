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

On asyncio, taking a connection from the pool and giving it back costs about
as much as the command (two pool locks, an event dispatch, a readiness
check), so :class:`AsyncKept` keeps a few connections of its own per event
loop between commands. A timer per command (``asyncio.timeout``) costs a
third of a cache hit again, so one timer per loop watches every command in
flight on a kept connection. redis-py's asyncio reply reader costs a fifth
of the round trip, so the usual replies (integers, bulk strings, arrays of
them) are read off the connection's stream directly; the rest, errors
included, still go through redis-py (:func:`_read_reply`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import weakref
from collections.abc import AsyncGenerator, Sequence
from typing import Any

__all__ = [
    "KEEP",
    "PROCESS",
    "AsyncKept",
    "adirect_pool",
    "asend_packed",
    "direct_pool",
    "exchange",
    "is_final",
    "keeps_connections",
    "pack_command",
    "send_packed",
]

#: Connections kept between commands, at most: per backend (sync), per event loop (asyncio).
KEEP = 4

#: This process's id, kept current by an at-fork hook: the kept connections
#: check it on every command, where ``os.getpid()`` is a system call.
PROCESS = [os.getpid()]


def _forked() -> None:
    PROCESS[0] = os.getpid()


if hasattr(os, "register_at_fork"):  # pragma: no branch - not on Windows (no fork either)
    os.register_at_fork(after_in_child=_forked)


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


_FINAL = "_scalekit_final"


def is_final(exc: BaseException) -> bool:
    """Whether ``exc`` (a ``ConnectionError``) needs no second try through the client.

    True when it came from a kept connection that was connected for this
    command (fresh, or re-made after a stale one failed): another attempt
    would only connect to the same server again, doubling what an outage
    costs a caller.
    """
    return bool(getattr(exc, _FINAL, False))


def keeps_connections(pool: Any) -> bool:
    """Whether connections may be kept beside ``pool`` between commands.

    Not beside a ``BlockingConnectionPool`` or a pool of fewer than 64
    connections: the user capped the connections, and kept ones would be
    missed (or would exceed the cap).
    """
    return "Blocking" not in type(pool).__name__ and getattr(pool, "max_connections", 0) >= 64


class _LoopKept:
    """The connections :class:`AsyncKept` keeps in one event loop."""

    __slots__ = ("closed", "idle", "inflight", "made", "timer", "tripped", "watch")

    def __init__(self) -> None:
        self.idle: list[Any] = []
        #: Connections made for this loop (idle or in use); at most ``KEEP``.
        self.made = 0
        #: Set once the loop shut down (or the keeper closed): nothing goes back to ``idle``.
        self.closed = False
        #: The async generator the loop closes at its shutdown (see :func:`_watch`).
        self.watch: Any = None
        #: The deadline (loop time) of each connection with a command in flight.
        self.inflight: dict[Any, float] = {}
        #: The loop's one pending watchdog timer (:func:`_expire`), if any.
        self.timer: Any = None
        #: Connections whose command the watchdog timed out (their error is a timeout).
        self.tripped: set[Any] = set()


class AsyncKept:
    """Up to :data:`KEEP` connections per event loop, kept between commands on an asyncio pool.

    asyncio connections belong to the event loop that opened them, so they
    are kept per running loop: made on first use with the pool's own
    connection class and settings (address, auth, TLS, protocol, decoding),
    never taken from the pool itself, and closed when the loop shuts down
    (``asyncio.run`` and any runner calling ``loop.shutdown_asyncgens()``) or
    by :meth:`aclose`. A loop closed without that shutdown has its sockets
    closed on the next use from another loop. In a forked child the parent's
    connections are dropped untouched. A connection that failed is
    disconnected and reconnects on its next command (after a Redis restart,
    say). When every kept connection of the loop is busy, or ``pool`` is one
    whose connections must not be exceeded (:func:`keeps_connections`), a
    command takes a pooled connection instead (:func:`asend_packed`).

    The pool's ``socket_timeout`` bounds the whole command (send and reply)
    from its start. One timer per loop (:func:`_expire`) watches the
    deadlines of the commands in flight, rather than one timer per command,
    which would cost a third of a cache hit again: a command past its
    deadline has its reader fail with a timeout and its socket aborted (a
    connect stays bounded by ``socket_connect_timeout``, which defaults to
    ``socket_timeout`` as in redis-py).
    """

    def __init__(self, pool: Any) -> None:
        from redis import exceptions as rex

        try:
            from redis.asyncio.connection import AbstractConnection

            own_read: Any = AbstractConnection.read_response
        except ImportError:  # pragma: no cover - an older redis-py: it reads every reply
            own_read = None

        self.pool = pool
        self.keep = KEEP if keeps_connections(pool) else 0
        kwargs = dict(getattr(pool, "connection_kwargs", {}))
        self._timeout: float | None = kwargs.get("socket_timeout")
        kwargs["socket_timeout"] = None  # the loop's watchdog bounds the exchange instead
        if kwargs.get("socket_connect_timeout") is None:
            kwargs["socket_connect_timeout"] = self._timeout  # redis-py's own default
        #: Whether a command first checks an idle connection (``health_check_interval``).
        self._check_health = bool(kwargs.get("health_check_interval"))
        #: Whether replies may be read by :func:`_read_reply`: raw bytes, no health
        #: bookkeeping, redis-py's own ``read_response`` (not a subclass's) on a
        #: Python that has the stream methods it uses. Else redis-py reads every one.
        self._raw = (
            _STREAM_READS
            and not self._check_health
            and not kwargs.get("decode_responses")
            and own_read is not None
            and getattr(pool.connection_class, "read_response", None) is own_read
        )
        self._kwargs = kwargs
        self._timeout_error = rex.TimeoutError
        self._connection_error = rex.ConnectionError
        self._loops: dict[asyncio.AbstractEventLoop, _LoopKept] = {}
        self._pid = os.getpid()
        weakref.finalize(self, _sweep, self._loops)

    async def send(self, packed: bytes, response_error: type[BaseException]) -> Any:
        """Send one packed command on a kept connection of the running loop; return its reply.

        A server error reply (``response_error``) leaves the connection kept;
        any other failure disconnects it first. A ``ConnectionError`` on a
        connection that was already open (killed, or Redis restarted) is
        retried once on a new socket, after the pool's idle connections are
        disconnected (they most likely died with it); one that still fails is
        marked :func:`is_final`. A timeout raises redis-py's ``TimeoutError`` and is
        never retried.
        """
        if not self.keep:
            return await asend_packed(self.pool, packed, response_error)
        loop = asyncio.get_running_loop()
        kept = self._loops.get(loop)
        if kept is None or self._pid != PROCESS[0]:
            kept = await self._enter(loop)
        try:
            connection = kept.idle.pop()
        except IndexError:
            if kept.made >= self.keep:  # all busy: a pooled one, as without keeping
                return await asend_packed(self.pool, packed, response_error)
            connection = self.pool.connection_class(**self._kwargs)
            kept.made += 1
        timeout = self._timeout
        inflight = kept.inflight
        for retried in (False, True):
            stale = connection.is_connected  # a socket from before: the server may have gone
            try:
                if timeout is None:
                    await connection.send_packed_command([packed], self._check_health)
                    if self._raw:
                        reply = await _read_reply(connection)
                    else:
                        reply = await connection.read_response()
                else:
                    deadline = loop.time() + timeout
                    inflight[connection] = deadline
                    if kept.timer is None:
                        kept.timer = loop.call_at(deadline, _expire, kept, loop)
                    try:
                        await connection.send_packed_command([packed], self._check_health)
                        if self._raw:
                            reply = await _read_reply(connection)
                        else:
                            reply = await connection.read_response()
                    finally:
                        del inflight[connection]
            except response_error:
                await self._put_back(kept, connection)
                raise
            except BaseException as exc:
                await connection.disconnect(nowait=True)  # it reconnects on its next command
                if connection in kept.tripped or isinstance(exc, asyncio.TimeoutError):
                    kept.tripped.discard(connection)  # timed out by the watchdog: not retried
                    await self._put_back(kept, connection)
                    raise self._timeout_error("Timeout reading from the kept connection") from None
                if retried or not stale or not isinstance(exc, self._connection_error):
                    await self._put_back(kept, connection)
                    if isinstance(exc, self._connection_error):
                        setattr(exc, _FINAL, True)  # (re)connected for it: see is_final
                    raise
                # Killed or restarted under it: the pool's idle connections are
                # most likely dead too (redis-py 8 does not check them before use,
                # and the twins never retry), then once more on a new socket.
                await _drop_idle(self.pool)
                continue
            if kept.closed:  # the loop shut down (or aclose) while it was in use
                await connection.disconnect(nowait=True)
            elif kept.tripped and connection in kept.tripped:
                # Its reply came in just as the watchdog aborted it: the reply
                # stands, the socket does not.
                kept.tripped.discard(connection)
                await connection.disconnect(nowait=True)
                kept.idle.append(connection)
            else:
                kept.idle.append(connection)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _put_back(kept: _LoopKept, connection: Any) -> None:
        if kept.closed:  # the loop shut down (or aclose) while it was in use
            await connection.disconnect(nowait=True)
        else:
            kept.idle.append(connection)

    async def _enter(self, loop: asyncio.AbstractEventLoop) -> _LoopKept:
        """Start keeping connections for ``loop`` (the running one)."""
        if self._pid != os.getpid():
            self._forget_parents()
        _sweep(self._loops)
        kept = _LoopKept()
        watch = _watch(self._loops, loop, kept)
        await watch.asend(None)  # the loop now closes it at its shutdown
        kept.watch = watch
        self._loops[loop] = kept
        return kept

    def _forget_parents(self) -> None:
        """In a forked child: drop the parent's connections without touching them.

        They are held for the life of the child: collecting one would close
        its transport, and unregistering the socket from the inherited
        epoll instance would unregister it in the parent as well.
        """
        for kept in list(self._loops.values()):
            _PARENTS.extend(kept.idle)
            kept.idle.clear()
            kept.closed = True
            _close_now(kept.watch)
        self._loops.clear()
        self._pid = os.getpid()

    async def aclose(self) -> None:
        """Close every kept connection; the next command makes new ones.

        Those of the running loop are closed here; those of another open
        loop are closed in that loop; those of a closed loop lose their
        sockets without it.
        """
        running = asyncio.get_running_loop()
        loops = self._loops
        if self._pid != os.getpid():
            self._forget_parents()
            return
        _sweep(loops)
        for loop, kept in list(loops.items()):
            del loops[loop]
            kept.closed = True
            idle, kept.idle = kept.idle, []
            if loop is running:
                _close_now(kept.watch)
                for connection in idle:
                    await _disconnect(connection)
            else:
                kept.idle = idle
                loop.call_soon_threadsafe(_close_in_loop, kept.watch)


#: The private ``asyncio.StreamReader`` methods :func:`_read_reply` waits and
#: consumes with; without them (another Python), redis-py reads every reply.
_STREAM_READS = all(
    hasattr(asyncio.StreamReader, name) for name in ("_wait_for_data", "_maybe_resume_transport")
)


async def _read_reply(connection: Any) -> Any:
    """The reply to the one command in flight on ``connection``, read straight off its stream.

    redis-py's reader takes a coroutine per line of the reply (a limiter's
    two-item array is five) and its parser's buffer between: about a fifth of
    the round trip. Replies of integers, bulk strings, nulls and
    arrays of them, whole in the stream's buffer, are parsed here as redis-py
    returns them undecoded; anything else (an error reply, a RESP3 push or
    type, a reply still arriving, a closed or failed stream) is left for
    redis-py's ``read_response``, which raises its own errors as before.
    """
    reader: Any = connection._reader
    plain = reader.__class__ is asyncio.StreamReader  # (a bool of its own: mypy keeps Any)
    if plain:
        buffer = reader._buffer
        try:
            while not buffer and not reader._eof and reader._exception is None:
                await reader._wait_for_data("read")
        except Exception:  # the watchdog's timeout, a lost connection: redis-py raises it
            pass
        else:
            if buffer:
                try:
                    reply, end = _parse_reply(buffer, 0)
                except ValueError:  # not RESP: redis-py raises its protocol error
                    reply = _PARTIAL
                if reply is not _PARTIAL:
                    del buffer[:end]
                    reader._maybe_resume_transport()
                    return reply
    return await connection.read_response()


#: What :func:`_parse_reply` returns for a reply it leaves to redis-py.
_PARTIAL: Any = object()


def _parse_reply(buffer: bytearray, start: int) -> tuple[Any, int]:
    """The RESP reply at ``start`` of ``buffer`` and where it ends, or ``_PARTIAL``.

    ``:`` integers, ``$`` bulk strings (bytes), ``*`` arrays of them, and
    their nulls (``$-1``, ``*-1``) only.
    """
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return _PARTIAL, 0
    kind = buffer[start]
    if kind == 0x3A:  # ":"
        return int(buffer[start + 1 : line_end]), line_end + 2
    if kind == 0x24:  # "$"
        size = int(buffer[start + 1 : line_end])
        if size < 0:
            return None, line_end + 2
        stop = line_end + 2 + size
        if len(buffer) < stop + 2:
            return _PARTIAL, 0
        return bytes(buffer[line_end + 2 : stop]), stop + 2
    if kind == 0x2A:  # "*"
        count = int(buffer[start + 1 : line_end])
        if count < 0:
            return None, line_end + 2
        items = []
        end = line_end + 2
        for _ in range(count):
            item, end = _parse_reply(buffer, end)
            if item is _PARTIAL:
                return _PARTIAL, 0
            items.append(item)
        return items, end
    return _PARTIAL, 0


async def _watch(
    loops: dict[asyncio.AbstractEventLoop, _LoopKept],
    loop: asyncio.AbstractEventLoop,
    kept: _LoopKept,
) -> AsyncGenerator[None, None]:
    """Suspended for the life of ``loop``; its shutdown closes ``kept``'s connections."""
    try:
        yield
    finally:
        if loops.get(loop) is kept:
            del loops[loop]
        kept.closed = True
        while kept.idle:
            await _disconnect(kept.idle.pop())


#: How soon the watchdog looks again at a command past its deadline still connecting.
_CONNECTING_RECHECK = 0.01


def _expire(kept: _LoopKept, loop: asyncio.AbstractEventLoop) -> None:
    """The loop's watchdog: time out the commands past their deadline, then sleep till the next.

    A timed-out command's reader fails with ``asyncio.TimeoutError`` (which
    redis-py's ``read_response`` turns into its own ``TimeoutError``) and its
    socket is aborted (which also ends a write waiting on a full buffer).
    One still connecting is bounded by its connect timeout: looked at again
    shortly. The timer is re-armed only while commands are in flight.
    """
    kept.timer = None
    now = loop.time()
    nearest = None
    for connection, deadline in list(kept.inflight.items()):
        if deadline <= now:
            reader = getattr(connection, "_reader", None)
            if reader is None:  # connecting: its connect timeout bounds it
                deadline = now + _CONNECTING_RECHECK
            else:
                kept.inflight[connection] = float("inf")  # tripped once
                kept.tripped.add(connection)
                reader.set_exception(asyncio.TimeoutError())
                writer = getattr(connection, "_writer", None)
                if writer is not None:
                    writer.transport.abort()
                continue
        if nearest is None or deadline < nearest:
            nearest = deadline
    if nearest is not None:
        kept.timer = loop.call_at(nearest, _expire, kept, loop)


async def _drop_idle(pool: Any) -> None:
    """Disconnect ``pool``'s idle connections (each reconnects when next handed out)."""
    try:
        await pool.disconnect(inuse_connections=False)
    except Exception:  # one of another (closed) loop: it is marked disconnected anyway
        pass


async def _disconnect(connection: Any) -> None:
    try:
        await connection.disconnect()
    except Exception:  # closing: a failure changes nothing
        pass


def _close_in_loop(watch: Any) -> None:
    """Close ``watch`` as a task of its own (running) loop."""
    task = asyncio.ensure_future(watch.aclose())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


#: A forked child's copies of its parent's kept connections, never touched (see
#: :meth:`AsyncKept._forget_parents`).
_PARENTS: list[Any] = []

#: Closing tasks of :func:`_close_in_loop`, held until done.
_CLOSING: set[Any] = set()


def _close_now(watch: Any) -> None:
    """Close ``watch`` synchronously: its connections were taken away, so it awaits nothing."""
    if watch is None:
        return
    closer = watch.aclose()
    try:
        closer.send(None)
    except StopIteration:
        return
    closer.close()  # pragma: no cover - it awaited after all


def _sweep(loops: dict[asyncio.AbstractEventLoop, _LoopKept]) -> None:
    """Forget the connections of closed loops, closing their sockets directly.

    A closed loop cannot close its sockets any more. Connections of a loop
    still open are left to its shutdown.
    """
    for loop, kept in list(loops.items()):
        if not loop.is_closed():
            continue
        del loops[loop]
        kept.closed = True
        for connection in kept.idle:
            _abandon(connection)
        kept.idle.clear()
        _close_now(kept.watch)


def _abandon(connection: Any) -> None:
    """Close the socket of ``connection`` whose event loop is closed (it cannot do it)."""
    writer = getattr(connection, "_writer", None)
    connection._reader = connection._writer = None
    if writer is None:
        return
    transport = writer.transport
    try:
        transport.close()  # marks it closing; its closed loop refuses the rest
    except RuntimeError:
        pass
    sock = getattr(transport, "_sock", None)
    if sock is not None:
        sock.close()
        transport._sock = None
