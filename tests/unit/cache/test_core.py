"""The cache's pure core: envelopes, TTL jitter, the XFetch decision, keys."""

from __future__ import annotations

import datetime
import decimal
import math
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.cache._core import (
    NOT_FOUND,
    Action,
    Envelope,
    KeyBuilder,
    Kind,
    canonical_args,
    decide,
    jittered_ttl,
    pack_envelope,
    unpack_envelope,
    validate_tags,
    xfetch_early,
)
from scalekit.errors import ConfigurationError, SerializationError

finite = st.floats(min_value=0, max_value=1e9, allow_nan=False)
unit_open = st.floats(min_value=0.0, max_value=1.0, exclude_min=True)

envelopes = st.builds(
    Envelope,
    payload=st.binary(max_size=64),
    created=finite,
    cost=st.floats(min_value=0, max_value=1e4),
    soft_expiry=finite,
    hard_expiry=finite,
    codec=st.integers(0, 255),
    kind=st.sampled_from(Kind),
    tags=st.lists(
        st.tuples(st.text(min_size=1, max_size=12), st.integers(-(2**63), 2**63 - 1)),
        max_size=4,
    ).map(tuple),
)


@settings(max_examples=80)
@given(envelopes)
def test_envelope_round_trips(envelope: Envelope) -> None:
    assert unpack_envelope(pack_envelope(envelope)) == envelope


@settings(max_examples=80)
@given(st.binary(max_size=80))
def test_unpacking_garbage_only_raises_serialization_error(data: bytes) -> None:
    try:
        unpack_envelope(data)
    except SerializationError:
        pass


@settings(max_examples=50)
@given(envelopes, st.integers(min_value=1, max_value=40))
def test_truncated_envelope_is_refused(envelope: Envelope, cut: int) -> None:
    packed = pack_envelope(envelope)
    header_and_tags = len(packed) - len(envelope.payload)
    if cut > header_and_tags:
        return
    with pytest.raises(SerializationError):
        unpack_envelope(packed[: header_and_tags - cut])


def test_not_found_is_a_falsy_singleton() -> None:
    assert not NOT_FOUND
    assert type(NOT_FOUND)() is NOT_FOUND
    assert repr(NOT_FOUND) == "NOT_FOUND"


@settings(max_examples=100)
@given(
    st.floats(min_value=0.001, max_value=1e6),
    st.floats(min_value=0, max_value=0.99),
    st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_jitter_stays_within_its_bounds(ttl: float, jitter: float, rand: float) -> None:
    moved = jittered_ttl(ttl, jitter, rand)
    assert ttl * (1 - jitter) - 1e-9 * ttl <= moved <= ttl * (1 + jitter) + 1e-9 * ttl
    assert moved > 0


def _envelope(
    soft: float, hard: float, cost: float = 1.0, tags: tuple[tuple[str, int], ...] = ()
) -> Envelope:
    return Envelope(b"", 0.0, cost, soft, hard, 1, Kind.VALUE, tags)


@settings(max_examples=100)
@given(finite, finite, st.floats(min_value=0, max_value=100), st.floats(0, 10), unit_open)
def test_xfetch_always_recomputes_at_soft_expiry(
    now: float, soft: float, cost: float, beta: float, rand: float
) -> None:
    if now >= soft:
        assert xfetch_early(now, soft, cost, beta, rand)


@settings(max_examples=100)
@given(
    finite, st.floats(min_value=0, max_value=1e5), st.floats(0, 100), st.floats(0, 10), unit_open
)
def test_xfetch_never_recomputes_before_its_gap(
    now: float, ahead: float, cost: float, beta: float, rand: float
) -> None:
    gap = cost * beta * -math.log(rand)
    soft = now + ahead
    if soft - now > gap * (1 + 1e-9) + 1e-9:  # the gap that survives float rounding
        assert not xfetch_early(now, soft, cost, beta, rand)


def test_xfetch_never_early_without_cost_or_beta() -> None:
    assert not xfetch_early(99.0, 100.0, 0.0, 1.0, 1e-300)
    assert not xfetch_early(99.0, 100.0, 5.0, 0.0, 1e-300)
    assert xfetch_early(99.0, 100.0, 5.0, 1.0, 0.0)  # rand 0 is read as the tiniest float


@settings(max_examples=200)
@given(
    finite,
    finite,
    st.floats(min_value=0, max_value=1e5),
    st.floats(0, 100),
    st.floats(0, 10),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_decide_follows_the_table(
    now: float, soft: float, stale: float, cost: float, beta: float, rand: float
) -> None:
    hard = soft + stale
    action = decide(_envelope(soft, hard, cost), now, beta=beta, rand=rand)
    if now >= hard:
        assert action is Action.MISS
    elif now >= soft:
        assert action is Action.STALE
    else:
        assert action in (Action.FRESH, Action.EARLY)
        assert (action is Action.EARLY) == xfetch_early(now, soft, cost, beta, rand)


def test_decide_misses_when_nothing_or_a_tag_moved() -> None:
    assert decide(None, 0.0, beta=1.0, rand=0.5) is Action.MISS
    tagged = _envelope(100.0, 200.0, 0.0, (("user:1", 3),))
    assert decide(tagged, 0.0, beta=1.0, rand=0.5, tag_versions={"user:1": 3}) is Action.FRESH
    assert decide(tagged, 0.0, beta=1.0, rand=0.5, tag_versions={"user:1": 4}) is Action.MISS
    assert decide(tagged, 0.0, beta=1.0, rand=0.5, tag_versions={}) is Action.MISS
    assert decide(tagged, 0.0, beta=1.0, rand=0.5) is Action.FRESH  # versions not read


# --------------------------------------------------------------------------- keys

plain_args = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.dates()
    | st.decimals(allow_nan=False)
    | st.uuids(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=8,
)
calls = st.tuples(
    st.lists(plain_args, max_size=3).map(tuple),
    st.dictionaries(st.text(min_size=1, max_size=5), plain_args, max_size=2),
)


def _same_call(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    # Equal values of the same types everywhere; 1 == 1.0 == True are different calls.
    return repr(a) == repr(b) and _types(a) == _types(b)


def _types(value: object) -> object:
    if isinstance(value, dict):
        return ("dict", sorted((repr(k), _types(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_types(v) for v in value])
    return type(value).__name__


@settings(max_examples=150)
@given(calls, calls)
def test_argument_keys_are_collision_free(
    one: tuple[tuple[object, ...], dict[str, object]],
    two: tuple[tuple[object, ...], dict[str, object]],
) -> None:
    text_one = canonical_args(*one)
    text_two = canonical_args(*two)
    if text_one == text_two:
        assert _same_call((one[0], sorted(one[1].items())), (two[0], sorted(two[1].items())))


@settings(max_examples=60)
@given(calls)
def test_argument_keys_are_stable(call: tuple[tuple[object, ...], dict[str, object]]) -> None:
    args, kwargs = call
    assert canonical_args(args, kwargs) == canonical_args(
        tuple(args), dict(reversed(kwargs.items()))
    )


def test_argument_keys_tell_types_apart() -> None:
    keys = {canonical_args((value,), {}) for value in (1, 1.0, True, "1", b"1", (1,), [1], None)}
    assert len(keys) == 8
    assert canonical_args((datetime.date(2024, 1, 1),), {}) != canonical_args(("2024-01-01",), {})
    assert canonical_args((decimal.Decimal("1.0"),), {}) != canonical_args(
        (decimal.Decimal("1"),), {}
    )
    assert canonical_args((uuid.UUID(int=1),), {}) == canonical_args((uuid.UUID(int=1),), {})


@settings(max_examples=100)
@given(st.text(max_size=300), st.text(max_size=300))
def test_data_keys_are_injective_and_bounded(one: str, two: str) -> None:
    keys = KeyBuilder("app", 1, max_key_length=100)
    if one != two:
        assert keys.data(one) != keys.data(two)
    assert len(keys.data(one)) <= len("app:v1:") + 100
    assert keys.data(one) == KeyBuilder("app", 1, max_key_length=100).data(one)


@settings(max_examples=60)
@given(st.text(max_size=40))
def test_namespaces_and_versions_never_share_keys(key: str) -> None:
    seen = {
        KeyBuilder("app", 1).data(key),
        KeyBuilder("app", 2).data(key),
        KeyBuilder("other", 1).data(key),
        KeyBuilder("app", 1).lease(key),
        KeyBuilder("app", 1).tag(key or "t"),
    }
    assert len(seen) == 5


def test_odd_keys_are_hashed() -> None:
    keys = KeyBuilder("app")
    assert keys.data("user:1") == "app:v1:user:1"
    for odd in ("has space", "tab\there", "x" * 500, "#looks-hashed", "new\nline"):
        stored = keys.data(odd)
        assert stored.startswith("app:v1:#") and len(stored) == len("app:v1:#") + 64
    assert keys.lease_of(keys.data("user:1")) == keys.lease("user:1")


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"namespace": ""}, "namespace"),
        ({"namespace": "a:b"}, "namespace"),
        ({"namespace": "a b"}, "namespace"),
        ({"namespace": "a", "schema_version": -1}, "schema_version"),
        ({"namespace": "a", "schema_version": True}, "schema_version"),
        ({"namespace": "a", "max_key_length": 10}, "max_key_length"),
    ],
)
def test_key_builder_rejects_bad_configuration(kwargs: dict[str, object], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        KeyBuilder(**kwargs)  # type: ignore[arg-type]
    assert info.value.parameter == parameter


def test_keys_and_tags_must_be_strings() -> None:
    keys = KeyBuilder("app")
    with pytest.raises(ConfigurationError):
        keys.data(1)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        keys.tag("")
    with pytest.raises(ConfigurationError):
        validate_tags("user:1")
    assert validate_tags(["b", "a", "b"]) == ("a", "b")


# The signatures the compiled key builder specialises on (and the ones it
# must hand back to the reference path).


def _one(user_id: object) -> None: ...
def _method(self: object, b: object, a: object) -> None: ...
def _defaults(q: object, page: object = 1, exact: object = False) -> None: ...
def _keyword_only(a: object, *, b: object, c: object = None) -> None: ...
def _positional_only(a: object, /, b: object = 2) -> None: ...
def _variadic(a: object, *rest: object, **named: object) -> None: ...
def _nothing() -> None: ...


SIGNATURES = (_one, _method, _defaults, _keyword_only, _positional_only, _variadic, _nothing)
# The arguments of the fast path (str/int/bool/None/float) and a few that are not.
fast_args = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.text(min_size=150, max_size=400)  # past max_key_length: hashed
    | st.sampled_from(["a b", "tab\t", "#x", "\x00", "é", "\u2028", "x" * 200])
)
any_args = fast_args | plain_args
names = st.sampled_from(["user_id", "self", "a", "b", "c", "q", "page", "exact", "rest", "zz"])


def _call_key(func: Any) -> Any:
    import inspect

    from scalekit.cache._base import CallKey

    return CallKey(f"m.{func.__name__}", inspect.signature(func), ("self",))


def _reference(func: Any, keys: KeyBuilder, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The key through inspect.Signature.bind, or TypeError as calling would raise."""
    try:
        return keys.data(_call_key(func).text(keys, args, kwargs))
    except TypeError:
        return TypeError


def _compiled(func: Any, keys: KeyBuilder, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The key through the builder compiled for ``func``, or TypeError."""
    try:
        return _call_key(func).compile(keys)(args, kwargs)
    except TypeError:
        return TypeError


@settings(max_examples=400)
@given(
    st.sampled_from(SIGNATURES),
    st.lists(any_args, max_size=4).map(tuple),
    st.dictionaries(names, any_args, max_size=3),
)
def test_compiled_keys_equal_the_reference_keys(
    func: object, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    keys = KeyBuilder("app", max_key_length=100)
    assert _compiled(func, keys, args, kwargs) == _reference(func, keys, args, kwargs)


@settings(max_examples=300)
@given(fast_args)
def test_compiled_fast_path_equals_the_reference_for_one_argument(value: object) -> None:
    keys = KeyBuilder("app", max_key_length=100)
    for args, kwargs in (((value,), {}), ((), {"user_id": value})):
        assert _compiled(_one, keys, args, kwargs) == _reference(_one, keys, args, kwargs)
    stored = _compiled(_one, keys, (value,), {})
    assert isinstance(stored, str) and len(stored) <= len("app:v1:") + 100


@settings(max_examples=200)
@given(st.lists(fast_args, min_size=3, max_size=3))
def test_compiled_fast_path_equals_the_reference_for_several(values: list[object]) -> None:
    keys = KeyBuilder("app")
    for func, args, kwargs in (
        (_method, tuple(values), {}),
        (_method, tuple(values[:1]), {"a": values[2], "b": values[1]}),
        (_defaults, tuple(values), {}),
        (_defaults, tuple(values[:1]), {}),
        (_defaults, (), {"q": values[0], "exact": values[2]}),
        (_keyword_only, tuple(values[:1]), {"b": values[1]}),
        (_positional_only, tuple(values[:2]), {}),
    ):
        assert _compiled(func, keys, args, kwargs) == _reference(func, keys, args, kwargs)


def test_compiled_keys_tell_argument_types_apart() -> None:
    keys = KeyBuilder("app")
    # The stored format is unchanged by the compiled builder: entries stay readable.
    assert _compiled(_one, keys, (1,), {}) == "app:v1:m._one(;user_id=i1)"
    assert _compiled(_method, keys, (None, "x", 2.5), {}) == 'app:v1:m._method(;a=f2.5,b=s"x")'
    built = {_compiled(_one, keys, (value,), {}) for value in (1, 1.0, True, "1", None, "N")}
    assert len(built) == 6
    assert _compiled(_one, keys, (1,), {}) == _compiled(_one, keys, (), {"user_id": 1})
    assert _compiled(_defaults, keys, ("a",), {}) == _compiled(_defaults, keys, ("a", 1), {})


def test_compiled_keys_hash_what_they_cannot_spell() -> None:
    keys = KeyBuilder("app", max_key_length=100)
    for value in ("x" * 500, "has space", [{"a": [1, 2]}], {"k": {1, 2}}, object()):
        stored = _compiled(_one, keys, (value,), {})
        assert isinstance(stored, str) and len(stored) <= len("app:v1:") + 100
    assert _compiled(_one, keys, (), {}) is TypeError  # as calling would
    assert _compiled(_one, keys, (1, 2), {}) is TypeError
    assert _compiled(_one, keys, (1,), {"user_id": 1}) is TypeError
    assert _compiled(_positional_only, keys, (), {"a": 1}) is TypeError


@settings(max_examples=100)
@given(envelopes, finite, st.dictionaries(st.text(min_size=1, max_size=12), st.integers()))
def test_readable_is_exactly_not_a_miss(
    envelope: Envelope, now: float, versions: dict[str, int]
) -> None:
    from scalekit.cache._core import readable

    for tag_versions in (None, versions, dict(envelope.tags)):
        action = decide(envelope, now, beta=1.0, rand=0.5, tag_versions=tag_versions)
        assert readable(envelope, now, tag_versions) == (action is not Action.MISS)


@settings(max_examples=100)
@given(st.text(max_size=80))
def test_the_direct_get_is_packed_like_any_command(key: str) -> None:
    from scalekit._redis_direct import pack_command
    from scalekit.cache._backends import _GET_FORMAT, _GET_HEAD

    try:
        expected = pack_command(_GET_HEAD, (key,))
    except UnicodeEncodeError:  # lone surrogates: never a stored key (they are hashed)
        return
    raw = key.encode("utf-8")
    assert _GET_FORMAT % (len(raw), raw) == expected


async def test_the_async_memory_backend_sync_view_shares_its_data() -> None:
    # AsyncMemoryBackend.sync (a MemoryBackend) kept its meaning once the async
    # backend became the source of the generated sync one: the same data.
    from scalekit.cache import AsyncMemoryBackend, MemoryBackend

    backend = AsyncMemoryBackend()
    await backend.set_many([("k", b"v", 60_000)])
    view = backend.sync
    assert isinstance(view, MemoryBackend)
    assert view.get("k") == b"v"
    view.incr(["t"])
    assert await backend.counters(["t"]) == [1]
