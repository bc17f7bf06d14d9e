"""The shared direct path: requests are encoded byte for byte as redis-py would send them."""

from __future__ import annotations

import fakeredis
import redis
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit._redis_direct import adirect_pool, direct_pool, pack_command

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
