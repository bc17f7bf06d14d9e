"""BreakerPolicy: validation (ConfigurationError names the parameter) and classification."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scalekit.breaker import BreakerPolicy, CircuitBreaker
from scalekit.breaker._config import FAILURE, IGNORED, SUCCESS
from scalekit.errors import ConfigurationError

BAD = [
    ({"fail_max": 0}, "fail_max"),
    ({"fail_max": 1.5}, "fail_max"),
    ({"fail_max": True}, "fail_max"),
    ({"failure_rate": 0}, "failure_rate"),
    ({"failure_rate": 1.5}, "failure_rate"),
    ({"failure_rate": -0.1}, "failure_rate"),
    ({"failure_rate": "0.5"}, "failure_rate"),
    ({"slow_call_rate": 0.5}, "slow_call_seconds"),
    ({"slow_call_seconds": 1.0}, "slow_call_rate"),
    ({"slow_call_seconds": -1.0, "slow_call_rate": 0.5}, "slow_call_seconds"),
    ({"failure_rate": 0.5, "window": 5, "min_calls": 10}, "window"),
    ({"failure_rate": 0.5, "window": 0}, "window"),
    ({"failure_rate": 0.5, "window_seconds": -1.0}, "window_seconds"),
    ({"failure_rate": 0.5, "window_seconds": float("inf")}, "window_seconds"),
    ({"failure_rate": 0.5, "window_seconds": 10.0, "window_buckets": 0}, "window_buckets"),
    ({"failure_rate": 0.5, "window": 10, "window_seconds": 10.0}, "window_seconds"),
    ({"failure_rate": 0.5, "min_calls": 0}, "min_calls"),
    ({"window": 10}, "failure_rate"),
    ({"reset_timeout": -1.0}, "reset_timeout"),
    ({"reset_timeout": float("nan")}, "reset_timeout"),
    ({"reset_backoff": 0.5}, "reset_backoff"),
    ({"reset_timeout_max": -2.0}, "reset_timeout_max"),
    ({"half_open_max_calls": 0}, "half_open_max_calls"),
    ({"success_threshold": 0}, "success_threshold"),
    ({"probe_timeout": 0}, "probe_timeout"),
    ({"exclude": [42]}, "exclude"),
    ({"include": ["ValueError"]}, "include"),
    ({"failure_result": 3}, "failure_result"),
]


@pytest.mark.parametrize(("kwargs", "parameter"), BAD, ids=[p for _, p in BAD])
def test_bad_parameters_name_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as policy_error:
        BreakerPolicy(**kwargs)
    assert policy_error.value.parameter == parameter
    with pytest.raises(ConfigurationError) as breaker_error:
        CircuitBreaker("x", **kwargs)
    assert breaker_error.value.parameter == parameter


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"name": ""}, "name"),
        ({"name": "x", "fallback": 3}, "fallback"),
        ({"name": "x", "policy": BreakerPolicy(), "fail_max": 3}, "policy"),
        ({"name": "x", "policy": BreakerPolicy(), "reset_timeout": 5.0}, "policy"),
        ({"name": "x", "policy": BreakerPolicy(), "half_open_max_calls": 2}, "policy"),
        ({"name": "x", "policy": {"fail_max": 3}}, "policy"),
        ({"name": "x", "clock": object()}, "clock"),
        ({"name": "x", "storage": object()}, "storage"),
        ({"name": "x", "listeners": [object()]}, "listeners"),
    ],
)
def test_bad_breaker_arguments(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        CircuitBreaker(**kwargs)
    assert error.value.parameter == parameter


def test_defaults_are_pybreaker_like() -> None:
    policy = BreakerPolicy()
    assert policy.fail_max == 5
    assert not policy.trip_on_rate
    assert policy.reset_timeout == 60.0


def test_rate_defaults_fill_the_window() -> None:
    assert BreakerPolicy(failure_rate=0.5).window == 100
    assert BreakerPolicy(failure_rate=0.5).min_calls == 10
    assert BreakerPolicy(failure_rate=0.5, window=4).min_calls == 4
    assert BreakerPolicy(failure_rate=0.5).fail_max is None
    timed = BreakerPolicy(failure_rate=0.5, window_seconds=30.0)
    assert timed.window is None
    assert timed.min_calls == 10


def test_open_duration_backoff_and_cap() -> None:
    policy = BreakerPolicy(reset_timeout=1.0, reset_backoff=2.0, reset_timeout_max=5.0)
    assert [policy.open_duration(k) for k in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert BreakerPolicy(reset_timeout=3.0).open_duration(50) == 3.0
    huge = BreakerPolicy(reset_timeout=1.0, reset_backoff=10.0)
    assert huge.open_duration(10_000) >= 1.0  # never overflows


def test_open_duration_user_function() -> None:
    policy = BreakerPolicy(reset_timeout=lambda n: n * 10.0, reset_timeout_max=25.0)
    assert [policy.open_duration(k) for k in (1, 2, 3)] == [10.0, 20.0, 25.0]
    broken = BreakerPolicy(reset_timeout=lambda n: -1.0)
    with pytest.raises(ConfigurationError) as error:
        broken.open_duration(1)
    assert error.value.parameter == "reset_timeout"


class NotFound(Exception):
    pass


class Transient(Exception):
    pass


@pytest.mark.parametrize(
    "exc",
    [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(), GeneratorExit()],
    ids=lambda e: type(e).__name__,
)
def test_never_counted_whatever_the_rules(exc: BaseException) -> None:
    everything = BreakerPolicy(include=[BaseException])
    assert everything.classify_exception(exc) == IGNORED
    assert BreakerPolicy().classify_exception(exc) == IGNORED


def test_exclude_include_and_predicates() -> None:
    policy = BreakerPolicy(exclude=(NotFound,))
    assert policy.classify_exception(NotFound()) == IGNORED
    assert policy.classify_exception(ValueError()) == FAILURE

    by_predicate = BreakerPolicy(exclude=lambda e: "ignore" in str(e))
    assert by_predicate.classify_exception(ValueError("ignore me")) == IGNORED
    assert by_predicate.classify_exception(ValueError("boom")) == FAILURE

    only = BreakerPolicy(include=[Transient, lambda e: isinstance(e, OSError)])
    assert only.classify_exception(Transient()) == FAILURE
    assert only.classify_exception(ConnectionError()) == FAILURE
    assert only.classify_exception(ValueError()) == SUCCESS  # the dependency answered

    both = BreakerPolicy(include=[Exception], exclude=[NotFound])
    assert both.classify_exception(NotFound()) == IGNORED


def test_result_predicate() -> None:
    policy = BreakerPolicy(failure_result=lambda status: status >= 500)
    assert policy.classify_result(503) == FAILURE
    assert policy.classify_result(200) == SUCCESS
    assert BreakerPolicy().classify_result(None) == SUCCESS


def test_policy_is_a_frozen_value() -> None:
    policy = BreakerPolicy(exclude=[NotFound])
    with pytest.raises(AttributeError):
        policy.fail_max = 3  # type: ignore[misc]
    assert policy.exclude == (NotFound,)
    assert policy == BreakerPolicy(exclude=(NotFound,))
