"""Serialisers: JSON round trips, signed pickle refuses what it did not sign."""

from __future__ import annotations

import datetime
import decimal
import pickle
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.cache import JsonSerializer, MsgpackSerializer, SignedPickleSerializer
from scalekit.errors import ConfigurationError, SerializationError

SECRET = b"0123456789abcdef-secret"

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.datetimes(timezones=st.none() | st.just(datetime.UTC))
    | st.dates()
    | st.times()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.uuids()
)
hashable = st.recursive(scalars, lambda inner: st.tuples(inner, inner), max_leaves=4)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        | st.dictionaries(st.integers() | st.tuples(st.integers()), inner, max_size=2)
        | st.frozensets(hashable, max_size=3)
        | st.sets(st.integers(), max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=150)
@given(values)
def test_json_round_trips_every_supported_value(value: object) -> None:
    codec = JsonSerializer()
    back = codec.loads(codec.dumps(value))
    assert back == value
    assert type(back) is type(value)


@settings(max_examples=100)
@given(st.binary(max_size=60))
def test_json_loads_only_raises_serialization_error(data: bytes) -> None:
    try:
        JsonSerializer().loads(data)
    except SerializationError:
        pass


def test_json_refuses_what_it_would_change() -> None:
    import enum

    class Colour(enum.IntEnum):
        RED = 1

    codec = JsonSerializer()
    for value in (object(), Colour.RED, {1: object()}, [complex(1, 2)]):
        with pytest.raises(SerializationError):
            codec.dumps(value)
    with pytest.raises(SerializationError, match="unknown type marker"):
        codec.loads(b'{"__sk__": "evil", "v": 1}')
    with pytest.raises(SerializationError):
        codec.loads(b'{"__sk__": "decimal", "v": "not a number"}')
    # A user dict that happens to use the marker key is escaped, not misread.
    assert codec.loads(codec.dumps({"__sk__": "tuple", "v": [1]})) == {"__sk__": "tuple", "v": [1]}


def test_json_types_named_in_the_issue() -> None:
    codec = JsonSerializer()
    value = {
        "at": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        "on": datetime.date(2024, 5, 1),
        "amount": decimal.Decimal("10.50"),
        "id": uuid.UUID(int=7),
        "blob": b"\x00\xff",
    }
    assert codec.loads(codec.dumps(value)) == value


def test_msgpack_needs_its_package() -> None:
    try:
        import msgpack  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigurationError, match="msgpack"):
            MsgpackSerializer()
    else:  # pragma: no cover - msgpack is not a dependency
        codec = MsgpackSerializer()
        assert codec.loads(codec.dumps({"a": (1, b"x")})) == {"a": (1, b"x")}


class _Exploit:
    ran = False

    def __reduce__(self) -> tuple[object, ...]:
        return (_mark_ran, ())


def _mark_ran() -> None:
    _Exploit.ran = True


def test_signed_pickle_round_trips_and_rotates() -> None:
    old = SignedPickleSerializer({"k1": SECRET}, current_key_id="k1")
    data = old.dumps({"amount": decimal.Decimal("1.5"), "tags": {"a"}})
    rotated = SignedPickleSerializer({"k1": SECRET, "k2": SECRET[::-1]}, current_key_id="k2")
    assert rotated.loads(data) == {"amount": decimal.Decimal("1.5"), "tags": {"a"}}
    newer = rotated.dumps([1])
    assert old.loads(data) == old.loads(data)
    with pytest.raises(SerializationError, match="unknown key"):
        old.loads(newer)  # signed with k2, which the old reader does not know
    retired = SignedPickleSerializer({"k2": SECRET[::-1]}, current_key_id="k2")
    with pytest.raises(SerializationError, match="unknown key"):
        retired.loads(data)


def test_unsigned_or_tampered_pickle_is_refused_before_unpickling() -> None:
    codec = SignedPickleSerializer({"k1": SECRET}, current_key_id="k1")
    evil = pickle.dumps(_Exploit())
    forged = bytes([2]) + b"k1" + b"\x00" * 32 + evil
    signed = codec.dumps("fine")
    tampered = signed[:-1] + bytes([signed[-1] ^ 1])
    other_key = SignedPickleSerializer({"k1": b"another-secret-of-16"}, current_key_id="k1")
    for payload in (evil, forged, tampered, b"", b"\x02k1", other_key.dumps(_Exploit())):
        with pytest.raises(SerializationError):
            codec.loads(payload)
    assert not _Exploit.ran


@pytest.mark.parametrize(
    ("keys", "current"),
    [({}, "k1"), ({"k1": b"short"}, "k1"), ({"k1": SECRET}, "k2"), ({"": SECRET}, "")],
)
def test_signed_pickle_configuration(keys: dict[str, bytes], current: str) -> None:
    with pytest.raises(ConfigurationError):
        SignedPickleSerializer(keys, current_key_id=current)


def test_signed_pickle_never_shows_its_secret() -> None:
    codec = SignedPickleSerializer({"k1": SECRET}, current_key_id="k1")
    assert SECRET.decode() not in repr(codec) and "k1" in repr(codec)


def _careful_loads(data: bytes) -> object:
    """What JsonSerializer.loads must return: always the decoder with the marker hook."""
    from scalekit.cache._serializers import _DECODER

    try:
        return _DECODER.decode(data.decode("utf-8"))
    except (ValueError, TypeError, RecursionError, AttributeError, SerializationError):
        return SerializationError


json_texts = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "__sk__", "v", "é"]), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300)
@given(
    json_texts,
    st.sampled_from(["", " ", "\n", "x", "]"]),
    st.sampled_from(["", " ", "\t"]),
    st.booleans(),
)
def test_json_fast_decoding_equals_the_careful_one(
    value: object, tail: str, head: str, ascii_only: bool
) -> None:
    import json

    data = (head + json.dumps(value, ensure_ascii=ascii_only) + tail).encode()
    try:
        fast: object = JsonSerializer().loads(data)
    except SerializationError:
        fast = SerializationError
    assert repr(fast) == repr(_careful_loads(data))


@settings(max_examples=200)
@given(st.binary(max_size=40))
def test_json_decoding_garbage_only_raises_serialization_error(data: bytes) -> None:
    try:
        fast: object = JsonSerializer().loads(data)
    except SerializationError:
        fast = SerializationError
    assert repr(fast) == repr(_careful_loads(data))
