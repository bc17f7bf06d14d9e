"""Limit, Decision, headers and keys: the value objects of the core."""

from __future__ import annotations

import pickle
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError, RateLimitExceeded
from scalekit.ratelimit import ALGORITHMS, Decision, Limit, hash_key_part, storage_key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/hour", Limit(100, per=3600)),
        ("10 per 5 seconds", Limit(10, per=5)),
        ("5/2m", Limit(5, per=120)),
        ("1000/day", Limit(1000, per=timedelta(days=1))),
        ("  7 / s ", Limit(7, per=1)),
        ("3/500ms", Limit(3, per=0.5)),
        ("1/WEEK", Limit(1, per=timedelta(weeks=1))),
    ],
)
def test_parse(text: str, expected: Limit) -> None:
    assert Limit.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["", "100", "/hour", "100/fortnight", "-1/hour", "0/hour", "1.5/hour", "10/0s", "a/b"]
)
def test_parse_errors_are_clear(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Limit.parse(text)
    assert caught.value.parameter in ("limit", "amount", "per")
    assert (
        "limit" in str(caught.value) or "amount" in str(caught.value) or "per" in str(caught.value)
    )


def test_parse_many() -> None:
    assert Limit.parse_many("10/second; 1000/hour") == [Limit(10, 1), Limit(1000, 3600)]
    with pytest.raises(ConfigurationError):
        Limit.parse_many(" ; ")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amount": 0},
        {"amount": True},
        {"amount": 1.5},
        {"amount": 10, "per": 0},
        {"amount": 10, "per": float("nan")},
        {"amount": 10, "per": "1s"},
        {"amount": 10, "burst": 0},
        {"amount": 10, "name": ""},
        {"amount": 10, "per": 1e300},
        {"amount": 10, "per": -1e300},
        {"amount": 10, "per": float("inf")},
        {"amount": 10, "per": 86400 * 3661},
        {"amount": 10, "per": timedelta.max},
        {"amount": 10**12 + 1},
        {"amount": 10, "burst": 10**12 + 1},
        # The burst would take 3661 days to refill: beyond what the scripts keep exact.
        {"amount": 1, "per": 86400, "burst": 3661},
    ],
)
def test_bad_limits(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Limit(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "10/1000000000000w",
        "10/" + "9" * 400 + "s",
        "10/" + "9" * 400 + ".5 ms",
        "9" * 5000 + "/s",
        "1000000000001/s",
        "10/3661d",
        "10/0.0000001ms",
    ],
)
def test_parse_refuses_out_of_range_numbers(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Limit.parse(text)
    assert caught.value.parameter in ("limit", "per", "amount")
    assert len(str(caught.value)) < 300  # a long input is cut short in the message


def test_limits_at_the_documented_maxima_are_accepted() -> None:
    assert Limit.parse("1000000000000/3660d").amount == 10**12
    assert Limit(1, per=86400, burst=3660).burst == 3660
    assert Limit(10**12, per=timedelta(microseconds=1)).period_us == 1
    # A local share never exceeds the refill bound, however the division rounds.
    assert Limit(3, per=86400 * 3659, burst=3).scaled(2).burst == 1
    with pytest.raises(ConfigurationError) as caught:
        Limit(100_001, per=60).params("sliding_window_log")
    assert caught.value.parameter == "amount"
    assert Limit(100_000, per=60).params("sliding_window_log")[0] == 100_000


_UNIT_WORDS = ["ms", "s", "sec", "second", "seconds", "m", "min", "h", "hour", "d", "day", "w"]
_NUMBERS = st.one_of(
    st.integers(-5, 10**20).map(str),
    st.integers(0, 10**3000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text("0123456789.٣", min_size=1, max_size=30),
)
_LIMIT_TEXT = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda amount, sep, count, space, unit, pad: f"{pad}{amount}{sep}{count}{space}{unit}{pad}",
        _NUMBERS,
        st.sampled_from(["/", " per ", "/ ", "per", "//"]),
        st.one_of(st.just(""), _NUMBERS),
        st.sampled_from(["", " ", "\t"]),
        st.one_of(st.sampled_from(_UNIT_WORDS), st.text(max_size=8)),
        st.sampled_from(["", " ", "\n"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(_LIMIT_TEXT)
def test_parse_only_ever_raises_configuration_error(text: str) -> None:
    try:
        limit = Limit.parse(text)
    except ConfigurationError:
        return
    assert 1 <= limit.amount <= 10**12 and limit.burst == limit.amount
    assert timedelta(microseconds=1) <= limit.per <= timedelta(days=3660)
    for algorithm in ALGORITHMS:  # what a limiter derives from it raises nothing else either
        try:
            limit.params(algorithm)
        except ConfigurationError:
            assert algorithm == "sliding_window_log"


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.integers(-3, 10**13), st.floats(), st.booleans(), st.none()),
    st.one_of(st.floats(), st.integers(-3, 10**20), st.timedeltas(), st.text(max_size=5)),
    st.one_of(st.none(), st.integers(-3, 10**14), st.floats()),
)
def test_limit_only_ever_raises_configuration_error(amount: Any, per: Any, burst: Any) -> None:
    try:
        limit = Limit(amount, per, burst=burst)
    except ConfigurationError:
        return
    refill_us = limit.period_us * limit.burst // limit.amount
    assert refill_us <= 3660 * 86400 * 10**6 or limit.burst <= limit.amount


def test_limit_repr_and_scaling() -> None:
    limit = Limit(100, per=60, burst=120, name="api")
    assert repr(limit) == "Limit(100/60s, burst=120, name='api')"
    assert str(limit) == "100/60s"
    assert limit.scaled(4) == Limit(25, per=60, burst=30, name="api")
    assert Limit(3, per=1).scaled(10) == Limit(1, per=1)


def test_headers_ietf_legacy_both() -> None:
    limits = (Limit(10, per=1), Limit(1000, per=3600, name="hourly"))
    allowed = Decision(True, "k", limits[0], 7, 0.3, 0.0, limits)
    assert allowed.headers() == {
        "RateLimit-Policy": '"10-per-1s";q=10;w=1, "hourly";q=1000;w=3600',
        "RateLimit": '"10-per-1s";r=7;t=1',
    }
    denied = Decision(False, "k", limits[1], 0, 42.2, 3.2, limits)
    assert denied.headers(style="legacy") == {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "43",
        "Retry-After": "4",
    }
    both = denied.headers(style="both")
    assert set(both) == {
        "RateLimit-Policy",
        "RateLimit",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "Retry-After",
    }
    with pytest.raises(ConfigurationError):
        denied.headers(style="x")  # type: ignore[arg-type]


def test_header_names_are_valid_structured_field_strings() -> None:
    limit = Limit(1, per=1, name='we"ird\\näme')
    header = Decision(True, "k", limit, 0, 1.0, 0.0).headers()["RateLimit"]
    assert header == '"we\\"ird\\\\n?me";r=0;t=1'


def test_headers_from_the_parts_kept_on_each_limit() -> None:
    # A limit formats its header parts once and keeps them: an equal limit
    # (another object, or one back from pickle) writes the same headers.
    limit = Limit(100, per=60, name="api")
    twin = pickle.loads(pickle.dumps(limit))
    for reported, checked in ((limit, ()), (limit, (limit,)), (limit, (twin,)), (twin, (limit,))):
        decision = Decision(True, "k", reported, 50, 29.2, 0.0, checked)
        assert decision.headers() == {
            "RateLimit-Policy": '"api";q=100;w=60',
            "RateLimit": '"api";r=50;t=30',
        }
    assert twin == limit and repr(twin) == repr(limit)
    late = Decision(False, "k", Limit(1, per=0.5), 0, -0.1, 0.2)  # reset in the past: t=0
    assert late.headers() == {
        "RateLimit-Policy": '"1-per-0.5s";q=1;w=1',
        "RateLimit": '"1-per-0.5s";r=0;t=0',
        "Retry-After": "1",
    }


def test_raise_for_denied_carries_the_decision() -> None:
    decision = Decision(False, "k", Limit(1, per=1), 0, 1.0, 0.5)
    with pytest.raises(RateLimitExceeded) as caught:
        decision.raise_for_denied()
    assert caught.value.decision is decision and caught.value.retry_after == 0.5
    ok = Decision(True, "k", Limit(1, per=1), 0, 1.0, 0.0)
    assert ok.raise_for_denied() is ok


def test_keys_are_readable_when_safe_and_hashed_otherwise() -> None:
    assert hash_key_part("customer:42") == "k:customer:42"
    for unsafe in ("a b", "x*", "{tag}", "ü", "y" * 65, "", b"\xff"):
        part = hash_key_part(unsafe)
        assert part.startswith("h:") and len(part) == 34
    assert hash_key_part(b"customer:42") == hash_key_part("customer:42")
    with pytest.raises(ConfigurationError):
        hash_key_part(42)  # type: ignore[arg-type]


def test_storage_keys_share_one_hash_tag_per_user_key() -> None:
    one = storage_key("ns", "gcra", "u:1", Limit(10, per=1))
    two = storage_key("ns", "gcra", "u:1", Limit(1000, per=3600))
    assert one != two
    assert one.split("}")[0] == two.split("}")[0] == "ns:{k:u:1"


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)), st.text(max_size=80))
def test_distinct_keys_never_collide(first: str | bytes, second: str) -> None:
    first_text = first.decode("utf-8", "surrogateescape") if isinstance(first, bytes) else first
    if first_text == second:
        return
    if isinstance(first, bytes):
        try:
            if first.decode("utf-8") == second:
                return
        except UnicodeDecodeError:
            pass
    assert hash_key_part(first) != hash_key_part(second)
    part = hash_key_part(first)
    assert "{" not in part and "}" not in part and "*" not in part and " " not in part


def test_limits_pickle_and_hash_alike_in_another_process() -> None:
    limit = Limit(5, per=60, burst=7, name="per-minute")
    assert pickle.loads(pickle.dumps(limit)) == limit
    code = (
        "import pickle, sys\n"
        "from scalekit.ratelimit import Limit\n"
        "loaded = pickle.loads(sys.stdin.buffer.read())\n"
        "print({Limit(5, per=60, burst=7, name='per-minute'): 'found'}.get(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(limit), capture_output=True, check=True
    )
    assert result.stdout.strip() == b"found"


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        (("bad namespace!", "gcra", "u:1", Limit(10, per=1)), "namespace"),
        (("ns", "leaky", "u:1", Limit(10, per=1)), "algorithm"),
        (("ns", "gcra", 42, Limit(10, per=1)), "key"),
        (("ns", "gcra", "u:1", "10/second"), "limit"),
    ],
)
def test_storage_key_refuses_bad_input_clearly(arguments: tuple[Any, ...], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as failure:
        storage_key(*arguments)
    assert failure.value.parameter == parameter
