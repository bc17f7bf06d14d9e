"""The direct path's request encoding is byte for byte what redis-py would send."""

from __future__ import annotations

import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.ratelimit._backends._redis import (
    _evaluate_args,
    _pack_evalsha,
    _pack_one,
    one_key_request,
)
from scalekit.ratelimit._core import ALGORITHMS
from scalekit.ratelimit._scripts import (
    SINGLE_LIMIT_ALGORITHMS,
    algorithm_script,
    single_limit_script,
)

arguments = st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=40)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(keys_and_args=arguments, numkeys=st.integers(min_value=0, max_value=10_000))
def test_pack_evalsha_matches_redis_py(keys_and_args: list[bytes | str], numkeys: int) -> None:
    connection = redis.Connection()  # packs without connecting
    for algorithm in ALGORITHMS[:2]:
        script = algorithm_script(algorithm)
        expected = b"".join(
            connection.pack_command(b"EVALSHA", script.sha_bytes, numkeys, *keys_and_args)
        )
        assert _pack_evalsha(script, numkeys, keys_and_args) == expected


@settings(max_examples=150, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    key=st.text(alphabet=st.characters(codec="ascii"), max_size=200),
    amount=st.integers(min_value=1, max_value=10**12),
    period=st.integers(min_value=1, max_value=316_224_000_000_000),
    burst=st.integers(min_value=1, max_value=10**12),
    cost=st.integers(min_value=0, max_value=10**12),
    consume_denied=st.booleans(),
)
def test_a_prepared_hit_is_the_request_evaluate_sends(
    algorithm: str,
    key: str,
    amount: int,
    period: int,
    burst: int,
    cost: int,
    consume_denied: bool,
) -> None:
    # ``hit`` sends a request encoded once per limit and cost, with only the key
    # filled in per check: byte for byte what the general path would send.
    params = (float(amount), float(period), float(burst))
    request = one_key_request(algorithm, params, float(cost), consume_denied)
    if algorithm not in SINGLE_LIMIT_ALGORITHMS:
        assert request is None
        return
    assert request is not None
    assert request.script == single_limit_script(algorithm)
    args = _evaluate_args([key], [params], float(cost), consume_denied, True, None)
    assert _pack_one(request, key) == _pack_evalsha(request.script, 1, args)
    assert [key, *request.args] == args
