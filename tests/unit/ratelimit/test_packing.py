"""The direct path's request encoding is byte for byte what redis-py would send."""

from __future__ import annotations

import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.ratelimit._backends._redis import _pack_evalsha
from scalekit.ratelimit._core import ALGORITHMS
from scalekit.ratelimit._scripts import algorithm_script

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
