"""Whatever bytes sit under a key, decoding yields a value or "undecodable: a miss".

The decoder (``CacheBase._decode``) is the one place stored bytes enter the
cache; these properties feed it random and hostile bytes, envelopes around
random payloads, deeply nested JSON and bad cached-error documents, and check
that it never raises, and that what it accepts can be delivered (a cached
error rebuilds as one of ``cache_errors``, and nothing else).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalekit.cache import NOT_FOUND, Cache, JsonSerializer, SignedPickleSerializer
from scalekit.cache._core import Envelope, Kind, pack_envelope

CACHE_ERRORS = (LookupError, KeyError)


def _cache(**options: Any) -> Cache:
    return Cache(None, namespace="fuzz", cache_errors=CACHE_ERRORS, **options)


CACHES = {
    "json": _cache(),
    "pickle": _cache(
        serializer=SignedPickleSerializer({"k": b"fuzz-secret-fuzz-secret"}, current_key_id="k")
    ),
}


def _check(cache: Cache, raw: bytes) -> None:
    """The property: ``_decode`` never raises; what it returns can be delivered."""
    entry = cache._decode(raw)
    if entry is None:
        return
    envelope, value = entry
    if envelope.kind is Kind.ERROR:
        with pytest.raises(CACHE_ERRORS):
            cache._unwrap(envelope, value)
    elif envelope.kind is Kind.NOT_FOUND:
        assert cache._unwrap(envelope, value) is NOT_FOUND
    else:
        assert cache._unwrap(envelope, value) is value


def _envelope(payload: bytes, kind: int, codec: int, tags: list[tuple[str, int]]) -> bytes:
    good = pack_envelope(Envelope(payload, 1.0, 0.0, 2e9, 3e9, codec, Kind.VALUE, tuple(tags)))
    # The kind byte is written raw, so values no Kind has are tried too.
    return good[:5] + struct.pack(">B", kind) + good[6:]


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
markers = st.sampled_from(
    ["tuple", "map", "bytes", "datetime", "date", "time", "decimal", "uuid", "set", "frozenset"]
)
marked = st.builds(
    lambda mark, v: {"__sk__": mark, "v": v}, markers | st.text(max_size=6), json_values
)
error_documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                ["builtins.LookupError", "builtins.KeyError", "os.system", "builtins.SystemExit"]
            )
            | st.text(max_size=20),
            "args": json_values,
        }
    ),
)


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "dict":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"__sk__":"tuple","v":[' * depth + b"1" + b"]}" * depth


@pytest.mark.parametrize("codec", sorted(CACHES))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_random_bytes(codec: str, raw: bytes) -> None:
    _check(CACHES[codec], raw)


@settings(max_examples=300)
@given(
    payload=st.binary(max_size=100),
    kind=st.integers(0, 255),
    codec=st.integers(0, 255),
    tags=st.lists(st.tuples(st.text(min_size=1, max_size=5), st.integers(-5, 5)), max_size=3),
    cut=st.integers(0, 40),
)
def test_envelopes_around_random_payloads(
    payload: bytes, kind: int, codec: int, tags: list[tuple[str, int]], cut: int
) -> None:
    raw = _envelope(payload, kind, codec, tags)
    for cache in CACHES.values():
        _check(cache, raw)
        _check(cache, raw[: len(raw) - cut])  # truncated anywhere


@settings(max_examples=300)
@given(document=json_values | marked | st.lists(marked, max_size=3))
def test_json_payloads(document: Any) -> None:
    cache = CACHES["json"]
    _check(cache, _envelope(json.dumps(document).encode(), Kind.VALUE, 1, []))


@settings(max_examples=300)
@given(document=error_documents)
def test_cached_error_documents(document: Any) -> None:
    raw = _envelope(json.dumps(document).encode(), Kind.ERROR, 1, [])
    for cache in CACHES.values():
        _check(cache, raw)


@settings(max_examples=30, deadline=None)
@given(depth=st.integers(1, 200_000), shape=st.sampled_from(["list", "dict", "marked"]))
def test_deeply_nested_json(depth: int, shape: str) -> None:
    nested = _nested(depth, shape)
    cache = CACHES["json"]
    for kind in (Kind.VALUE, Kind.ERROR):
        _check(cache, _envelope(nested, kind, 1, []))


def test_deep_json_is_a_miss_not_a_recursion_error() -> None:
    cache = CACHES["json"]
    for kind in (Kind.VALUE, Kind.ERROR):
        assert cache._decode(_envelope(_nested(100_000, "list"), kind, 1, [])) is None
    # (Shallow enough, it is simply a value.)
    assert cache._decode(_envelope(_nested(50, "list"), Kind.VALUE, 1, [])) is not None
    assert JsonSerializer().loads(b"[[1]]") == [[1]]
