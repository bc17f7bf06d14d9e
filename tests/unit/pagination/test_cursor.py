"""The cursor codec: round trips, signing, rotation, expiry, and only InvalidCursor on bad input."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import random
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError, InvalidCursor
from scalekit.pagination import CursorCodec
from scalekit.testing import FakeClock

SECRET = b"k" * 32
OLD_SECRET = b"o" * 32

timezones = st.integers(-23 * 60, 23 * 60).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**100), 2**100),
    st.text(max_size=30),
    st.binary(max_size=30),
    st.floats(allow_nan=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.datetimes(),
    st.datetimes(timezones=timezones),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.uuids(),
)


def same(left: Any, right: Any) -> bool:
    if isinstance(left, float) and math.isnan(left):
        return isinstance(right, float) and math.isnan(right)
    if isinstance(left, dt.datetime) and left.tzinfo is not None:
        return (
            isinstance(right, dt.datetime)
            and left == right
            and (left.utcoffset() == right.utcoffset())
        )
    return type(left) is type(right) and left == right


@settings(max_examples=300)
@given(st.lists(values, max_size=6), st.binary(max_size=20), st.booleans())
def test_round_trip_keeps_every_value_and_its_type(
    items: list[Any], fingerprint: bytes, signed: bool
) -> None:
    codec = CursorCodec(secret=SECRET if signed else None)
    token = codec.encode(items, fingerprint=fingerprint)
    assert all(ch.isalnum() or ch in "-_" for ch in token)  # URL-safe, no padding
    decoded = codec.decode(token, fingerprint=fingerprint)
    assert len(decoded) == len(items)
    assert all(same(a, b) for a, b in zip(items, decoded, strict=True))


#: Cursors outlive deployments (a client holds one across a release), so the
#: version-1 wire format is pinned: every value type, made by the first encoder.
GOLDEN_VALUES = (
    dt.datetime(2024, 1, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    dt.datetime(2024, 1, 1, 12, 30, tzinfo=dt.timezone.utc),
    dt.datetime(2020, 2, 29, 1, 2, 3, 4),
    -5,
    2**40,
    "ünï",
    b"\x00b",
    None,
    True,
    False,
    1.5,
    decimal.Decimal("1.10"),
    dt.date(2024, 1, 2),
    uuid.UUID(int=7),
    dt.time(1, 2, 3, 4),
    dt.timedelta(days=-1, microseconds=5),
)
GOLDEN_TOKEN = (
    "AQDLXr4NTUYQCYDo-tL794YGgKC60jUJgIi1pbH4hgYACIjjroiQ688FAwkDgICAgIBABAXDvG7DrwUCAGIAAgEGP_gAAAAAAAAH"
    "BDEuMTAKmLQCCwAAAAAAAAAAAAAAAAAAAAcMxPGh7w0N9f-63YMF"
)


def test_wire_format_is_stable() -> None:
    codec = CursorCodec()
    assert codec.encode(GOLDEN_VALUES, fingerprint=b"golden") == GOLDEN_TOKEN
    decoded = codec.decode(GOLDEN_TOKEN, fingerprint=b"golden")
    assert all(same(a, b) for a, b in zip(GOLDEN_VALUES, decoded, strict=True))


def test_cursor_is_compact() -> None:
    token = CursorCodec().encode((dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc), 123456))
    assert len(token) <= 32
    signed = CursorCodec(secret=SECRET).encode((dt.datetime(2024, 5, 1, 12), 123456))
    assert len(signed) <= 56


def test_nan_and_special_decimals_round_trip() -> None:
    codec = CursorCodec()
    (nan, inf, dec_nan, dec_inf) = codec.decode(
        codec.encode([math.nan, math.inf, decimal.Decimal("NaN"), decimal.Decimal("-Infinity")])
    )
    assert math.isnan(nan) and inf == math.inf
    assert dec_nan.is_nan() and dec_inf == decimal.Decimal("-Infinity")


def test_a_signed_decimal_nan_decodes_as_postgresqls_one_nan() -> None:
    # PostgreSQL's numeric refuses "-NaN" (a forged cursor found it): the sign is dropped.
    codec = CursorCodec()
    (value,) = codec.decode(codec.encode([decimal.Decimal("-NaN")]))
    assert value.is_nan() and not value.is_signed()


@pytest.mark.parametrize(
    "value", [object(), {"a": 1}, [1], dt.time(1, tzinfo=dt.timezone.utc)], ids=repr
)
def test_unsupported_values_are_a_configuration_error(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        CursorCodec().encode([value])
    assert info.value.parameter == "order_by"


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"secret": b"short"}, "secret"),
        ({"secret": 123}, "secret"),
        ({"secret": SECRET, "previous_secrets": [b"x"]}, "previous_secrets"),
        ({"previous_secrets": [OLD_SECRET]}, "previous_secrets"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"max_length": 10}, "max_length"),
    ],
)
def test_bad_configuration_is_rejected_at_construction(
    kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        CursorCodec(**kwargs)
    assert info.value.parameter == parameter


def test_repr_never_shows_the_secret() -> None:
    assert "kkkk" not in repr(CursorCodec(secret=SECRET))


def flip(token: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[index % len(raw)] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_every_single_bit_change_of_a_signed_cursor_is_rejected() -> None:
    codec = CursorCodec(secret=SECRET)
    token = codec.encode([42, "x", None], fingerprint=b"q")
    size = len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for index in range(size):
        with pytest.raises(InvalidCursor):
            codec.decode(flip(token, index), fingerprint=b"q")


def test_tampered_value_in_signed_cursor_is_reported_as_tampered() -> None:
    codec = CursorCodec(secret=SECRET)
    token = codec.encode([42], fingerprint=b"q")
    forged = CursorCodec().encode([43], fingerprint=b"q")
    with pytest.raises(InvalidCursor) as info:
        codec.decode(forged, fingerprint=b"q")
    assert info.value.reason == "tampered"
    with pytest.raises(InvalidCursor) as info:
        codec.decode(flip(token, 12), fingerprint=b"q")
    assert info.value.reason in ("tampered", "malformed")
    other_key = CursorCodec(secret=b"z" * 32).encode([42], fingerprint=b"q")
    with pytest.raises(InvalidCursor) as info:
        codec.decode(other_key, fingerprint=b"q")
    assert info.value.reason == "tampered"


def test_signed_cursor_given_to_an_unsigned_codec_is_rejected() -> None:
    token = CursorCodec(secret=SECRET).encode([1])
    with pytest.raises(InvalidCursor) as info:
        CursorCodec().decode(token)
    assert info.value.reason == "tampered"


def test_key_rotation_accepts_old_cursors_and_signs_with_the_new_key() -> None:
    old = CursorCodec(secret=OLD_SECRET)
    rotated = CursorCodec(secret=SECRET, previous_secrets=[OLD_SECRET])
    assert rotated.decode(old.encode([7])) == (7,)
    fresh = rotated.encode([8])
    assert CursorCodec(secret=SECRET).decode(fresh) == (8,)
    with pytest.raises(InvalidCursor):
        old.decode(fresh)
    # Once the old key is retired, its cursors stop working.
    with pytest.raises(InvalidCursor):
        CursorCodec(secret=SECRET).decode(old.encode([7]))


def test_wrong_fingerprint_is_reported_as_wrong_query() -> None:
    for codec in (CursorCodec(), CursorCodec(secret=SECRET)):
        token = codec.encode([1], fingerprint=b"order-a")
        with pytest.raises(InvalidCursor) as info:
            codec.decode(token, fingerprint=b"order-b")
        assert info.value.reason == "wrong_query"


def test_expiry_follows_the_injected_clock() -> None:
    clock = FakeClock()
    codec = CursorCodec(secret=SECRET, ttl=60, clock=clock)
    token = codec.encode([1])
    clock.advance(59)
    assert codec.decode(token) == (1,)
    clock.advance(2)
    with pytest.raises(InvalidCursor) as info:
        codec.decode(token)
    assert info.value.reason == "expired"
    # A codec without ttl still honours the expiry stamped into a cursor.
    with pytest.raises(InvalidCursor):
        CursorCodec(secret=SECRET, clock=clock).decode(token)


def test_too_long_cursor_is_rejected_both_ways() -> None:
    codec = CursorCodec(max_length=64)
    with pytest.raises(ConfigurationError):
        codec.encode(["x" * 100])
    with pytest.raises(InvalidCursor):
        codec.decode("A" * 65)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!",
        "a",
        "AQ",
        "AQA",
        "====",
        "AQAAAAAAAAAB",
        "AgAAAAAAAAAA",
        "AQQAAAAAAAAA",
        "AQAAAAAAAAAC",
        "AQAAAAAAAAABDw",
        "AQAAAAAAAAAB_w",
        None,
        12,
        b"\xff",
        1.5,
        ["AQ"],
        "AQAAAAAAAAABBP____8P",
        "AQAAAAAAAAABCP______________________AQ",
    ],
    ids=repr,
)
def test_garbage_raises_invalid_cursor(token: Any) -> None:
    with pytest.raises(InvalidCursor) as info:
        CursorCodec().decode(token)
    assert info.value.reason in ("malformed", "wrong_query")


@settings(max_examples=1000)
@given(st.one_of(st.binary(max_size=80), st.text(max_size=80)))
def test_decoding_arbitrary_input_raises_only_invalid_cursor(token: bytes | str) -> None:
    for codec in (CursorCodec(), CursorCodec(secret=SECRET)):
        try:
            codec.decode(token)
        except InvalidCursor:
            pass


@settings(max_examples=1000)
@given(st.binary(max_size=60))
def test_arbitrary_payload_bytes_in_valid_base64_raise_only_invalid_cursor(raw: bytes) -> None:
    token = base64.urlsafe_b64encode(b"\x01" + raw).rstrip(b"=").decode()
    try:
        CursorCodec().decode(token)
    except InvalidCursor:
        pass


def _mutations(rng: random.Random, token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.5 and raw:
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        elif choice < 0.7 and raw:
            del raw[rng.randrange(len(raw)) :]
        elif choice < 0.9:
            raw.insert(rng.randrange(len(raw) + 1), rng.randrange(256))
        else:
            raw += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.slow
def test_fuzz_100k_random_and_mutated_inputs_raise_only_invalid_cursor() -> None:
    rng = random.Random(20240501)
    unsigned, signed = CursorCodec(), CursorCodec(secret=SECRET, ttl=3600)
    seeds = [
        unsigned.encode([1, "abc", None, dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)]),
        unsigned.encode([decimal.Decimal("1.5"), uuid.uuid4(), dt.date(2020, 2, 2), True]),
        unsigned.encode([-(2**70), 2.5, b"\x00\x01", dt.timedelta(days=-3), dt.time(1, 2)]),
        signed.encode([1, "x"]),
    ]
    decoded = 0
    for i in range(100_000):
        if i % 2:
            token: object = _mutations(rng, rng.choice(seeds))
        elif i % 4 == 0:
            token = bytes(rng.randrange(256) for _ in range(rng.randint(0, 60)))
        else:
            size = rng.randint(0, 60)
            token = "".join(rng.choice("ABCDEFabcdef0123456789-_AQ=+/!") for _ in range(size))
        for codec in (unsigned, signed):
            try:
                codec.decode(token)
                decoded += 1
            except InvalidCursor:
                pass
    assert decoded > 0  # some mutations still decode: the fuzzer reaches the value parser
