"""The shared direct path: requests are encoded byte for byte as redis-py would send them."""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

import fakeredis
import pytest
import redis
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit._redis_direct import (
    _PARENTS,
    _PARTIAL,
    KEEP,
    PROCESS,
    AsyncKept,
    _parse_reply,
    adirect_pool,
    direct_pool,
    is_final,
    keeps_connections,
    pack_command,
)

arguments = st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=40)), max_size=20)


@settings(max_examples=150, deadline=None)
@given(args=arguments)
def test_pack_command_matches_redis_py(args: list[bytes | str]) -> None:
    connection = redis.Connection()  # packs without connecting
    head = b"*%d\r\n$4\r\nMGET\r\n" % (len(args) + 1)
    assert pack_command(head, args) == b"".join(connection.pack_command("MGET", *args))


def test_only_a_plain_redis_client_qualifies() -> None:
    plain = redis.Redis()  # no connection is opened until a command runs
    assert direct_pool(plain) is plain.connection_pool
    assert direct_pool(fakeredis.FakeRedis()) is None  # a subclass keeps its own path

    class Instrumented(redis.Redis):  # type: ignore[type-arg]
        pass

    assert direct_pool(Instrumented()) is None
    assert direct_pool(object()) is None


async def test_only_a_plain_asyncio_redis_client_qualifies() -> None:
    plain = redis.asyncio.Redis()
    assert adirect_pool(plain) is plain.connection_pool
    assert direct_pool(plain) is None and adirect_pool(redis.Redis()) is None
    assert adirect_pool(fakeredis.FakeAsyncRedis()) is None
    await plain.aclose()


def test_a_pool_subclass_qualifies_unless_it_wants_a_command_name() -> None:
    class Passthrough(redis.ConnectionPool):
        def get_connection(self, *args: object, **kwargs: object) -> redis.Connection:
            return super().get_connection(*args, **kwargs)  # type: ignore[arg-type]

    class Old(redis.ConnectionPool):  # redis-py < 5.3's signature
        def get_connection(self, command_name: str, *keys: object, **options: object) -> object:  # type: ignore[override]
            return super().get_connection()

    passthrough = redis.Redis(connection_pool=Passthrough())
    assert direct_pool(passthrough) is passthrough.connection_pool
    assert direct_pool(redis.Redis(connection_pool=Old())) is None


# -- AsyncKept: the asyncio hot paths' kept connections (real Redis: tests/integration) --


class FakeConnection:
    """A connection whose replies are scripted: a value, an exception, or ``HANG``."""

    replies: ClassVar[list[Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.is_connected = False
        self.connects = 0
        self.sent: list[bytes] = []
        #: Like redis-py's: the stream its replies are read from (None until connected).
        self._reader: asyncio.StreamReader | None = None

    async def send_packed_command(self, command: list[bytes], check_health: bool = True) -> None:
        if not self.is_connected:
            self.is_connected = True
            self.connects += 1
            self._reader = asyncio.StreamReader()
        self.sent += command

    async def read_response(self) -> Any:
        outcome = self.replies.pop(0)
        if outcome is HANG:
            assert self._reader is not None
            try:
                await asyncio.wait_for(self._reader.readline(), 30)  # no reply comes
            except asyncio.TimeoutError:  # as redis-py's read_response turns it
                await self.disconnect()
                raise redis.TimeoutError("Timeout reading") from None
        if isinstance(outcome, tuple):  # (LATE, seconds, reply): answers whatever the reader says
            await asyncio.sleep(outcome[1])
            return outcome[2]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def disconnect(self, nowait: bool = False) -> None:
        self.is_connected = False
        self._reader = None


HANG = object()
LATE = object()


class FakePool:
    connection_class = FakeConnection

    def __init__(self, max_connections: int = 100, socket_timeout: float | None = None) -> None:
        self.max_connections = max_connections
        self.connection_kwargs = {"host": "redis.invalid", "socket_timeout": socket_timeout}
        self.borrowed = 0
        self.dropped = 0

    async def get_connection(self) -> FakeConnection:
        self.borrowed += 1
        connection = FakeConnection()
        return connection

    async def release(self, connection: FakeConnection) -> None:
        pass

    async def disconnect(self, inuse_connections: bool = True) -> None:
        assert not inuse_connections
        self.dropped += 1


def _one(keeper: AsyncKept) -> FakeConnection:
    (kept,) = keeper._loops.values()
    (connection,) = kept.idle
    assert isinstance(connection, FakeConnection)
    return connection


def test_connections_are_kept_beside_uncapped_pools_only() -> None:
    assert keeps_connections(redis.asyncio.ConnectionPool())  # 100 by default
    assert keeps_connections(redis.ConnectionPool())
    assert not keeps_connections(redis.asyncio.ConnectionPool(max_connections=63))
    assert not keeps_connections(redis.asyncio.BlockingConnectionPool(max_connections=1000))
    assert not keeps_connections(redis.BlockingConnectionPool(max_connections=1000))
    assert keeps_connections(FakePool()) and not keeps_connections(FakePool(8))


async def test_a_kept_connection_is_made_with_the_pools_settings_but_one_timer() -> None:
    pool = FakePool(socket_timeout=0.05)
    keeper = AsyncKept(pool)
    FakeConnection.replies = [b"1", b"2"]
    assert await keeper.send(b"PING", redis.ResponseError) == b"1"
    assert await keeper.send(b"PING", redis.ResponseError) == b"2"
    connection = _one(keeper)
    assert connection.kwargs == {
        "host": "redis.invalid",
        "socket_timeout": None,  # the keeper's watchdog bounds the exchange
        "socket_connect_timeout": 0.05,  # as redis-py defaults it
    }
    assert connection.sent == [b"PING", b"PING"] and connection.connects == 1
    assert pool.borrowed == 0
    (kept,) = keeper._loops.values()
    assert kept.inflight == {}
    FakeConnection.replies = [HANG]  # the pool's socket_timeout bounds the whole exchange
    with pytest.raises(redis.TimeoutError):
        await keeper.send(b"PING", redis.ResponseError)
    assert _one(keeper) is connection and not connection.is_connected  # reconnects next time
    assert kept.inflight == {} and kept.tripped == set()
    FakeConnection.replies = [b"3"]
    assert await keeper.send(b"PING", redis.ResponseError) == b"3"
    assert connection.connects == 2
    await keeper.aclose()


async def test_one_watchdog_times_out_only_the_commands_past_their_deadline() -> None:
    keeper = AsyncKept(FakePool(socket_timeout=0.2))
    FakeConnection.replies = [b"warm"]
    await keeper.send(b"PING", redis.ResponseError)
    (kept,) = keeper._loops.values()

    async def late(delay: float) -> Any:
        await asyncio.sleep(delay)
        return await keeper.send(b"GET", redis.ResponseError)

    # Two commands hang, started 0.1 s apart; one answers at once in between.
    FakeConnection.replies = [HANG, b"quick", HANG]
    first = asyncio.ensure_future(late(0))
    quick = asyncio.ensure_future(late(0.05))
    second = asyncio.ensure_future(late(0.1))
    assert await quick == b"quick"
    with pytest.raises(redis.TimeoutError):
        await first
    assert not second.done()  # its own deadline, not the first one's
    with pytest.raises(redis.TimeoutError):
        await second
    assert kept.inflight == {} and kept.tripped == set()
    await asyncio.sleep(0.3)
    assert kept.timer is None  # nothing in flight: the watchdog sleeps
    FakeConnection.replies = [b"after"]
    assert await keeper.send(b"GET", redis.ResponseError) == b"after"
    await keeper.aclose()


async def test_an_error_reply_keeps_the_connection_a_stale_one_is_retried_once() -> None:
    pool = FakePool()
    keeper = AsyncKept(pool)
    FakeConnection.replies = [redis.ResponseError("NOSCRIPT"), b"ok"]
    with pytest.raises(redis.ResponseError):
        await keeper.send(b"EVALSHA", redis.ResponseError)
    connection = _one(keeper)
    assert connection.is_connected and connection.connects == 1
    assert await keeper.send(b"EVALSHA", redis.ResponseError) == b"ok"
    # Killed under it (or Redis restarted): once more on a new socket.
    FakeConnection.replies = [redis.ConnectionError("closed"), b"again"]
    assert await keeper.send(b"GET", redis.ResponseError) == b"again"
    assert connection.connects == 2 and connection.sent[-2:] == [b"GET", b"GET"]
    assert pool.dropped == 1  # the pool's idle connections died with it, most likely
    # Twice in a row: the caller hears it (and takes the client's path).
    # Marked final: another try through the client would only connect again.
    FakeConnection.replies = [redis.ConnectionError("closed"), redis.ConnectionError("refused")]
    with pytest.raises(redis.ConnectionError) as twice:
        await keeper.send(b"GET", redis.ResponseError)
    assert is_final(twice.value)
    assert not connection.is_connected and _one(keeper) is connection
    # A connection that just connected is not retried: the server is not there.
    FakeConnection.replies = [redis.ConnectionError("refused")]
    with pytest.raises(redis.ConnectionError) as fresh:
        await keeper.send(b"GET", redis.ResponseError)
    assert connection.connects == 4 and FakeConnection.replies == []
    assert is_final(fresh.value) and not is_final(redis.ConnectionError("pooled"))
    await keeper.aclose()


async def test_a_cancelled_exchange_disconnects_the_connection() -> None:
    keeper = AsyncKept(FakePool())
    FakeConnection.replies = [b"1", HANG]
    await keeper.send(b"GET", redis.ResponseError)
    connection = _one(keeper)
    task = asyncio.ensure_future(keeper.send(b"GET", redis.ResponseError))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not connection.is_connected and _one(keeper) is connection  # a reply may be in flight
    await keeper.aclose()


async def test_busy_kept_connections_and_capped_pools_borrow_from_the_pool() -> None:
    pool = FakePool()
    keeper = AsyncKept(pool)
    FakeConnection.replies = [HANG] * KEEP + [b"pooled"]
    hung = [asyncio.ensure_future(keeper.send(b"GET", redis.ResponseError)) for _ in range(KEEP)]
    await asyncio.sleep(0.01)
    assert await keeper.send(b"GET", redis.ResponseError) == b"pooled"
    assert pool.borrowed == 1
    for task in hung:
        task.cancel()
    await asyncio.gather(*hung, return_exceptions=True)
    (kept,) = keeper._loops.values()
    assert kept.made == KEEP and len(kept.idle) == KEEP
    await keeper.aclose()
    capped = FakePool(max_connections=8)
    keeper = AsyncKept(capped)
    FakeConnection.replies = [b"x"]
    assert await keeper.send(b"GET", redis.ResponseError) == b"x"
    assert capped.borrowed == 1 and keeper._loops == {}


def test_each_loop_keeps_its_own_and_its_shutdown_closes_them() -> None:
    keeper = AsyncKept(FakePool())
    made: list[FakeConnection] = []

    async def use() -> None:
        FakeConnection.replies = [b"v"]
        assert await keeper.send(b"GET", redis.ResponseError) == b"v"
        (connection,) = keeper._loops[asyncio.get_running_loop()].idle
        made.append(connection)

    asyncio.run(use())
    assert keeper._loops == {} and not made[0].is_connected
    loop = asyncio.new_event_loop()
    loop.run_until_complete(use())
    assert made[1] is not made[0] and made[1].is_connected
    other = asyncio.new_event_loop()
    other.run_until_complete(use())  # a second open loop: its own connection
    assert len(keeper._loops) == 2 and made[2] is not made[1]
    other.run_until_complete(keeper.aclose())  # closes the other loop's in that loop
    assert keeper._loops == {} and not made[2].is_connected
    assert made[1].is_connected  # not closed from a foreign loop...
    loop.run_until_complete(asyncio.sleep(0))  # ...but in its own, once it runs
    assert not made[1].is_connected
    for each in (loop, other):
        each.run_until_complete(each.shutdown_asyncgens())
        each.close()


def test_a_forked_child_leaves_the_parents_connections_alone() -> None:
    keeper = AsyncKept(FakePool())
    loop = asyncio.new_event_loop()
    FakeConnection.replies = [b"parent"]
    loop.run_until_complete(keeper.send(b"GET", redis.ResponseError))
    parents = _one(keeper)
    keeper._pid = -1  # as in a forked child
    FakeConnection.replies = [b"child"]
    try:
        assert loop.run_until_complete(keeper.send(b"GET", redis.ResponseError)) == b"child"
        assert _one(keeper) is not parents
        assert parents.is_connected and parents.sent == [b"GET"]  # never touched
        assert parents in _PARENTS  # held: collecting it would close the parent's socket
    finally:
        _PARENTS.remove(parents)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


replies = st.recursive(
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=30),
    lambda items: st.lists(items, max_size=4),
    max_leaves=12,
)


def _resp(value: Any, null_array: bool = False) -> bytes:
    """``value`` as Redis (RESP2) writes it."""
    if value is None:
        return b"*-1\r\n" if null_array else b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(_resp(item) for item in value)


@settings(max_examples=200, deadline=None)
@given(reply=replies, null_array=st.booleans())
def test_replies_parse_as_redis_py_returns_them_and_partial_ones_are_left(
    reply: Any, null_array: bool
) -> None:
    raw = _resp(reply, null_array)
    assert _parse_reply(bytearray(raw + b"+NEXT\r\n"), 0) == (reply, len(raw))
    for cut in range(len(raw)):  # a reply still arriving is left to redis-py
        assert _parse_reply(bytearray(raw[:cut]), 0) == (_PARTIAL, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"-NOSCRIPT No matching script\r\n",
        b"+OK\r\n",
        b">2\r\n$7\r\nmessage\r\n:1\r\n",
        b"_\r\n",
        b",1.5\r\n",
        b"#t\r\n",
        b"%1\r\n:1\r\n:2\r\n",
        b"*2\r\n:1\r\n-ERR x\r\n",
    ],
)
def test_errors_and_other_types_are_left_to_redis_py(raw: bytes) -> None:
    assert _parse_reply(bytearray(raw), 0) == (_PARTIAL, 0)


def test_a_reply_that_is_not_resp_is_not_parsed() -> None:
    # _read_reply leaves it to redis-py, which raises its protocol error.
    with pytest.raises(ValueError, match="invalid literal"):
        _parse_reply(bytearray(b":x\r\n"), 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_the_process_id_is_current_in_a_forked_child() -> None:
    # The kept connections compare PROCESS, not os.getpid(), on every command.
    assert PROCESS[0] == os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, b"1" if PROCESS[0] == os.getpid() else b"0")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert PROCESS[0] == os.getpid()


async def test_a_reply_read_as_the_watchdog_aborts_stands_but_its_socket_does_not() -> None:
    keeper = AsyncKept(FakePool(socket_timeout=0.05))
    FakeConnection.replies = [(LATE, 0.2, b"late")]
    assert await keeper.send(b"GET", redis.ResponseError) == b"late"
    connection = _one(keeper)
    (kept,) = keeper._loops.values()
    assert not connection.is_connected and kept.tripped == set() and kept.inflight == {}
    FakeConnection.replies = [b"next"]
    assert await keeper.send(b"GET", redis.ResponseError) == b"next"
    assert connection.connects == 2
    await keeper.aclose()
