"""Property tests of the pure parts: the merged rate-limit headers, timeouts, the value codec."""

from __future__ import annotations

import math
from typing import Any

import http_sf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.contrib.django._cache_core import DjangoCodec, signing_keys, ttl_of
from scalekit.contrib.django._headers import merged_headers
from scalekit.errors import ConfigurationError, SerializationError
from scalekit.ratelimit import Decision, Limit
from tests.unit.django import _django  # noqa: F401  (configures Django)

limits = st.builds(
    Limit,
    st.integers(1, 10_000),
    st.integers(1, 86_400),
    name=st.one_of(st.none(), st.text(min_size=1, max_size=12)),
)


@st.composite
def decisions(draw: Any) -> Decision:
    checked = tuple(draw(st.lists(limits, min_size=1, max_size=3)))
    limit = draw(st.sampled_from(checked))
    allowed = draw(st.booleans())
    return Decision(
        allowed,
        "k",
        limit,
        draw(st.integers(0, limit.amount)),
        draw(st.floats(0, 1e5)),
        0.0 if allowed else draw(st.floats(0, 1e5)),
        checked,
    )


@given(st.lists(decisions(), min_size=1, max_size=4))
def test_one_header_set_that_parses_as_structured_fields(made: list[Decision]) -> None:
    headers = merged_headers(made)
    policy = http_sf.parse(headers["RateLimit-Policy"].encode(), tltype="list")
    state = http_sf.parse(headers["RateLimit"].encode(), tltype="list")
    names = [name for name, _ in policy]
    assert len(names) == len(set(names))  # each policy once, never duplicated
    assert {name for name, _ in state} <= set(names)
    assert all(params["q"] >= 1 and params["w"] >= 1 for _, params in policy)
    assert all(params["r"] >= 0 and params["t"] >= 0 for _, params in state)
    denied = [d for d in made if not d.allowed]
    if denied:
        assert int(headers["Retry-After"]) == max(max(math.ceil(d.retry_after), 1) for d in denied)
    else:
        assert "Retry-After" not in headers


@given(st.one_of(st.none(), st.integers(-10, 10**6), st.floats(-10, 1e6)))
def test_timeouts(timeout: Any) -> None:
    ttl = ttl_of(timeout, 300.0, object())
    if timeout is None:
        assert ttl is None
    elif timeout <= 0:
        assert ttl == 0.0
    else:
        assert ttl == float(timeout)


def test_default_timeout_and_bad_ones() -> None:
    missing = object()
    assert ttl_of(missing, 60, missing) == 60.0
    assert ttl_of(missing, None, missing) is None
    for bad in ("10", True, [1]):
        with pytest.raises(ConfigurationError):
            ttl_of(bad, 60, missing)


codec = DjangoCodec(*signing_keys("a-secret"))


@given(
    st.one_of(
        st.integers(),
        st.text(),
        st.binary(),
        st.none(),
        st.booleans(),
        st.lists(st.integers()),
        st.dictionaries(st.text(), st.floats(allow_nan=False)),
    )
)
def test_codec_round_trip(value: Any) -> None:
    decoded = codec.loads(codec.dumps(value))
    assert decoded == value
    assert type(decoded) is type(value)


@given(st.binary())
def test_codec_refuses_anything_unsigned(data: bytes) -> None:
    try:
        codec.loads(data)
    except SerializationError:
        return
    assert data[:1] == b"i"  # only digits are read without a signature
    int(data[1:])


def test_keys_rotate_with_secret_key_fallbacks() -> None:
    old = DjangoCodec(*signing_keys("old-secret"))
    keys, current = signing_keys("new-secret", ["old-secret"])
    new = DjangoCodec(keys, current)
    assert new.loads(old.dumps({"a": 1})) == {"a": 1}
    with pytest.raises(SerializationError):
        old.loads(new.dumps({"a": 1}))
    with pytest.raises(ConfigurationError):
        signing_keys("")
