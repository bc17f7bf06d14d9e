"""The framework-free part of the integrations: tokens, route limits, merged headers."""

from __future__ import annotations

import http_sf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.contrib import (
    RequestScope,
    RouteLimit,
    TokenSigner,
    combined_headers,
    current_request,
)
from scalekit.errors import ConfigurationError
from scalekit.ratelimit import Decision, Limit

SECRET = "0123456789abcdef-secret"
TOKEN = "0/16B3748@1700000000250"


def test_a_signed_token_verifies_and_a_tampered_one_does_not() -> None:
    signer = TokenSigner(SECRET)
    signed = signer.sign(TOKEN)
    assert signer.verify(signed, now=1700000001.0) == TOKEN
    assert signer.verify("1/0" + signed[3:], now=1700000001.0) is None
    assert signer.verify(TOKEN, now=1700000001.0) is None  # unsigned
    assert TokenSigner("another secret of 16+").verify(signed, now=1700000001.0) is None


def test_an_old_token_is_ignored() -> None:
    signer = TokenSigner(SECRET, max_age=60)
    signed = signer.sign(TOKEN)
    assert signer.verify(signed, now=1700000000.25 + 59) == TOKEN
    assert signer.verify(signed, now=1700000000.25 + 61) is None


@pytest.mark.parametrize("secret", ["short", b"", 12345])
def test_a_weak_secret_is_refused(secret: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenSigner(secret)  # type: ignore[arg-type]
    assert caught.value.parameter == "secret"


@given(st.text(max_size=200))
def test_verify_never_raises(text: str) -> None:
    assert TokenSigner(SECRET).verify(text) in (None, text.rpartition(".")[0])


def test_route_limit_parses_and_validates() -> None:
    assert RouteLimit.of("10/second; 1000/day").limits == tuple(
        Limit.parse_many("10/second; 1000/day")
    )
    assert RouteLimit.of(["5/minute", Limit(1, 1)]).limits[1] == Limit(1, 1)
    assert RouteLimit.of("5/minute", scope="api").counter_key("k", "/x") == "api|k"
    for bad in ({"limits": 5}, {"limits": "5/minute", "cost": 0}, {"limits": "x", "key": 1}):
        with pytest.raises(ConfigurationError):
            RouteLimit.of(**bad)  # type: ignore[arg-type]


def _decision(allowed: bool, limit: Limit, remaining: int, retry_after: float = 0.0) -> Decision:
    return Decision(allowed, "k", limit, remaining, 10.0, retry_after, (limit,))


def test_several_decisions_make_one_header_set() -> None:
    app = _decision(True, Limit(100, 60, name="app"), 99)
    route = _decision(False, Limit(5, 60, name="route"), 0, retry_after=7.5)
    headers = combined_headers([app, route])
    assert set(headers) == {"RateLimit-Policy", "RateLimit", "Retry-After"}
    policy = http_sf.parse(headers["RateLimit-Policy"].encode(), tltype="list")
    assert [(name, params["q"], params["w"]) for name, params in policy] == [
        ("app", 100, 60),
        ("route", 5, 60),
    ]
    items = http_sf.parse(headers["RateLimit"].encode(), tltype="list")
    assert [(name, params["r"]) for name, params in items] == [("app", 99), ("route", 0)]
    assert headers["Retry-After"] == "8"
    legacy = combined_headers([app, route], style="legacy")
    assert legacy["X-RateLimit-Limit"] == "5" and "RateLimit" not in legacy


def test_the_same_policy_is_listed_once() -> None:
    limit = Limit(10, 60)
    headers = combined_headers([_decision(True, limit, 9), _decision(True, limit, 9)])
    assert headers["RateLimit-Policy"].count("q=10") == 1


def test_no_request_outside_a_request() -> None:
    assert current_request() is None
    assert RequestScope("GET", "/", None).decisions == []
