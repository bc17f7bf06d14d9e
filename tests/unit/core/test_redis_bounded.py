"""How :func:`scalekit._redis_bounded.bounded` builds a twin (no server needed)."""

from __future__ import annotations

import math

import fakeredis
import pytest
import redis
import redis.asyncio

from scalekit._redis_bounded import DEFAULT_OP_TIMEOUT, bounded, check_op_timeout, is_twin
from scalekit.errors import ConfigurationError


def test_a_default_client_gets_a_twin_with_capped_timeouts_and_no_retries() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, db=2, password="s3cret", max_connections=7)
    twin = bounded(client, 0.2)
    kwargs = twin.connection_pool.connection_kwargs
    assert is_twin(twin) and not is_twin(client)
    assert kwargs["socket_timeout"] == 0.2 and kwargs["socket_connect_timeout"] == 0.2
    assert kwargs["retry"].get_retries() == 0
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "127.0.0.1",
        1,
        2,
        "s3cret",
    )
    assert twin.connection_pool.max_connections == 7
    # The user's own client keeps its settings.
    assert client.connection_pool.connection_kwargs["retry"].get_retries() > 0


def test_a_shorter_timeout_of_the_user_is_kept() -> None:
    client = redis.Redis(port=1, socket_timeout=0.05)
    kwargs = bounded(client, 0.2).connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.05 and kwargs["socket_connect_timeout"] == 0.2


def test_a_blocking_pool_stays_blocking_with_a_capped_wait() -> None:
    pool = redis.BlockingConnectionPool(port=1, max_connections=3, timeout=20)
    twin = bounded(redis.Redis(connection_pool=pool), 0.2)
    assert type(twin.connection_pool) is redis.BlockingConnectionPool
    assert twin.connection_pool.timeout == 0.2


def test_an_asyncio_client_gets_an_asyncio_twin() -> None:
    client = redis.asyncio.Redis(port=1)
    twin = bounded(client, 0.2)
    assert type(twin) is redis.asyncio.Redis and is_twin(twin)
    assert twin.connection_pool.connection_kwargs["socket_timeout"] == 0.2


def test_fakes_and_subclasses_are_used_as_given() -> None:
    fake = fakeredis.FakeRedis()
    assert bounded(fake, 0.2) is fake


@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, 61, "1", True, None])
def test_a_bad_op_timeout_is_a_configuration_error(value: object) -> None:
    with pytest.raises(ConfigurationError, match="op_timeout") as refused:
        check_op_timeout(value)
    assert refused.value.parameter == "op_timeout"


def test_the_default_is_well_under_a_second() -> None:
    assert check_op_timeout(DEFAULT_OP_TIMEOUT) < 1
