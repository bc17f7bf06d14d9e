"""The Lua scripts (on fakeredis) agree with the pure core, decision by decision.

fakeredis runs Lua through lupa, not Redis's own interpreter: the same check
against the real server is in ``tests/integration/test_ratelimit_parity.py``.
"""

from __future__ import annotations

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.ratelimit import MemoryBackend, RedisBackend
from scalekit.ratelimit._core import ALGORITHMS
from scalekit.ratelimit._scripts import (
    SINGLE_LIMIT_ALGORITHMS,
    algorithm_script,
    single_limit_script,
)
from tests.unit.ratelimit._scenarios import evaluator, random_scenario, replay, single_limit


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_lua_on_fakeredis_mirrors_the_core(algorithm: str, seed: int) -> None:
    scenario = random_scenario(seed, algorithm, length=40)
    client = fakeredis.FakeRedis()
    try:
        replay(scenario, evaluator(MemoryBackend()), evaluator(RedisBackend(client)), "user:1")
    finally:
        client.close()


@pytest.mark.parametrize("algorithm", sorted(SINGLE_LIMIT_ALGORITHMS))
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_lean_one_limit_scripts_mirror_the_core(algorithm: str, seed: int) -> None:
    scenario = single_limit(random_scenario(seed, algorithm, length=40))
    client = fakeredis.FakeRedis()
    try:
        replay(scenario, evaluator(MemoryBackend()), evaluator(RedisBackend(client)), "user:1")
        # One limit runs the lean script, never the generic driver.
        assert client.script_exists(single_limit_script(algorithm).sha) == [True]
        assert client.script_exists(algorithm_script(algorithm).sha) == [False]
    finally:
        client.close()
