"""The cache's pure core: keys, envelopes, TTLs, the read decision.

Theory of operation
-------------------

Every stored value travels in an :class:`Envelope`: the value (already
encoded by a serialiser), the wall time it was *created*, the *cost* (seconds
the loader took), its *soft expiry* and *hard expiry*, a *kind* (a value, a
"not found" marker, or a cached exception) and the tag versions it was
computed under. One ``GET`` brings back everything a read needs.

The store's own TTL is the hard expiry: soft TTL (jittered, default ±10%, so
keys written together do not expire together) plus the stale window. A read
is turned into one :class:`Action` by :func:`decide`:

============  ==========================================  ==========================
action        when                                        the shell then
============  ==========================================  ==========================
``FRESH``     before soft expiry, XFetch says "not yet"   returns the value
``EARLY``     before soft expiry, XFetch says "now"       recomputes (if nobody else
                                                          is), returns the new value
``STALE``     between soft and hard expiry                returns the stale value,
                                                          refreshes in the background
``MISS``      nothing stored, past hard expiry, or a tag  single-flight + lease, then
              was invalidated since it was written        runs the loader
============  ==========================================  ==========================

XFetch (Vattani, Chierichetti, Lowenstein, "Optimal Probabilistic Cache
Stampede Prevention", VLDB 2015) recomputes early when
``now - cost * beta * ln(u) >= soft_expiry`` with ``u`` uniform in (0, 1]: the
slower the loader, the earlier somebody volunteers, and the closer to expiry,
the likelier. Nothing here does I/O, reads the clock or draws random numbers:
the shells pass ``now`` and ``u`` in, so the rule is tested exactly.

:class:`KeyBuilder` makes every stored key: ``<namespace>:v<schema>:<key>``,
with keys that are too long, hold whitespace or control characters, or start
with ``#`` replaced by ``#`` + a SHA-256 digest. Internal keys (leases, tag
versions) use ``!`` after the version so they never meet a user key.

Outages are not decided here: the shells guard every backend call with a
:class:`scalekit.breaker.CircuitBreaker` (see ``_base.py``).
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
import json
import math
import struct
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple, cast

from scalekit.errors import ConfigurationError, SerializationError

__all__ = [
    "EARLY",
    "ENVELOPE_PREFIX",
    "FRESH",
    "MISS",
    "NOT_FOUND",
    "STALE",
    "VALUE",
    "Action",
    "Envelope",
    "KeyBuilder",
    "Kind",
    "NotFound",
    "canonical_args",
    "decide",
    "jittered_ttl",
    "pack_envelope",
    "readable",
    "unpack_envelope",
    "validate_tags",
    "xfetch_early",
]


class NotFound:
    """The type of :data:`NOT_FOUND`: a loader's "there is nothing", cached as a negative entry."""

    __slots__ = ()
    _instance: NotFound | None = None

    def __new__(cls) -> NotFound:
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_FOUND"

    def __reduce__(self) -> str:
        return "NOT_FOUND"


NOT_FOUND: Final = NotFound()
"""Return this from a loader to cache "nothing here" for ``negative_ttl`` (unlike ``None``)."""


class Kind(enum.IntEnum):
    """What an envelope holds."""

    VALUE = 0
    NOT_FOUND = 1
    ERROR = 2


_KINDS: Final = tuple(Kind)
# Enum members read through their class cost ~0.3 us each on Python 3.11 (a
# descriptor call); the hot paths compare against these module constants.
VALUE: Final = Kind.VALUE


class Action(enum.Enum):
    """What a read must do; see the table in the module docstring."""

    FRESH = "fresh"
    EARLY = "early"
    STALE = "stale"
    MISS = "miss"


FRESH: Final = Action.FRESH
EARLY: Final = Action.EARLY
STALE: Final = Action.STALE
MISS: Final = Action.MISS


# --------------------------------------------------------------------------- envelopes

_MAGIC: Final = b"\xa7SK"
_FORMAT: Final = 1
#: The first bytes of every stored envelope (magic and format): what a script that
#: reads entries in Redis checks before it trusts one.
ENVELOPE_PREFIX: Final = _MAGIC + bytes([_FORMAT])
# magic, format, codec id, kind, created, cost, soft expiry, hard expiry, tag count
_HEADER: Final = struct.Struct(">3sBBBddddH")
_TAG_LEN: Final = struct.Struct(">H")
_TAG_VERSION: Final = struct.Struct(">q")


class Envelope(NamedTuple):
    """One stored entry: the encoded payload and what a read needs to decide.

    ``payload`` is the serialiser's bytes (for :attr:`Kind.ERROR`, a small JSON
    document naming the exception); times are wall-clock seconds; ``tags``
    maps each tag to the version it had when the value was computed.
    An immutable named tuple rather than a frozen dataclass: one is built on
    every read, and a tuple is several times cheaper to build.
    """

    payload: bytes
    created: float
    cost: float
    soft_expiry: float
    hard_expiry: float
    codec: int
    kind: Kind = Kind.VALUE
    tags: tuple[tuple[str, int], ...] = ()

    def tags_current(self, versions: Mapping[str, int]) -> bool:
        """Whether every tag still has the version this entry was computed under."""
        return all(versions.get(tag, 0) == version for tag, version in self.tags)


# Envelope's own __new__ is Python code; tuple.__new__ builds the same object in C.
_new_envelope = cast("Callable[[type[Envelope], tuple[Any, ...]], Envelope]", tuple.__new__)


def pack_envelope(envelope: Envelope) -> bytes:
    """Encode ``envelope`` to the bytes stored in Redis (a fixed header, tags, payload)."""
    parts = [
        _HEADER.pack(
            _MAGIC,
            _FORMAT,
            envelope.codec,
            int(envelope.kind),
            envelope.created,
            envelope.cost,
            envelope.soft_expiry,
            envelope.hard_expiry,
            len(envelope.tags),
        )
    ]
    for tag, version in envelope.tags:
        raw = tag.encode("utf-8")
        parts += [_TAG_LEN.pack(len(raw)), raw, _TAG_VERSION.pack(version)]
    parts.append(envelope.payload)
    return b"".join(parts)


def unpack_envelope(data: bytes) -> Envelope:
    """Decode bytes made by :func:`pack_envelope`.

    Raises:
        SerializationError: the bytes are not an envelope of this format
            (another writer, a corrupted or truncated entry).
    """
    try:
        magic, fmt, codec, kind, created, cost, soft, hard, count = _HEADER.unpack_from(data)
        if magic != _MAGIC or fmt != _FORMAT:
            raise SerializationError("not a scalekit cache envelope")
        offset = _HEADER.size
        if not count:  # the common case, kept short: one read per cache hit
            return _new_envelope(
                Envelope, (bytes(data[offset:]), created, cost, soft, hard, codec, _KINDS[kind], ())
            )
        tags: list[tuple[str, int]] = []
        for _ in range(count):
            (length,) = _TAG_LEN.unpack_from(data, offset)
            offset += _TAG_LEN.size
            tag = bytes(data[offset : offset + length]).decode("utf-8")
            offset += length
            (version,) = _TAG_VERSION.unpack_from(data, offset)
            offset += _TAG_VERSION.size
            tags.append((tag, version))
        if offset > len(data):
            raise SerializationError("truncated cache envelope")
        return Envelope(
            payload=bytes(data[offset:]),
            created=created,
            cost=cost,
            soft_expiry=soft,
            hard_expiry=hard,
            codec=codec,
            kind=_KINDS[kind],
            tags=tuple(tags),
        )
    except SerializationError:
        raise
    except (struct.error, ValueError, UnicodeDecodeError, TypeError, IndexError) as exc:
        raise SerializationError(f"malformed cache envelope ({type(exc).__name__})") from exc


# --------------------------------------------------------------------------- TTLs and XFetch


def jittered_ttl(ttl: float, jitter: float, rand: float) -> float:
    """``ttl`` moved by up to ``±jitter`` (a fraction) using ``rand`` uniform in [0, 1).

    >>> jittered_ttl(100.0, 0.1, 0.5)
    100.0
    >>> jittered_ttl(100.0, 0.1, 0.0)
    90.0
    """
    return ttl * (1.0 + jitter * (2.0 * rand - 1.0))


def xfetch_early(now: float, soft_expiry: float, cost: float, beta: float, rand: float) -> bool:
    """The XFetch test: recompute now, ahead of ``soft_expiry``?

    ``rand`` is uniform in (0, 1] (a zero is read as the smallest float, so the
    gap stays finite). ``beta`` > 1 favours earlier recomputation, < 1 later;
    ``beta == 0`` or ``cost == 0`` never recomputes early.
    """
    if now >= soft_expiry:
        return True
    u = rand if rand > 0.0 else 5e-324
    return now - cost * beta * math.log(u) >= soft_expiry


def readable(envelope: Envelope, now: float, tag_versions: Mapping[str, int] | None) -> bool:
    """Whether ``envelope`` may be served at all (fresh, early or stale): not a :data:`MISS`.

    The whole decision of a plain ``get``, which never recomputes.
    """
    if now >= envelope.hard_expiry:
        return False
    return tag_versions is None or not envelope.tags or envelope.tags_current(tag_versions)


def decide(
    envelope: Envelope | None,
    now: float,
    *,
    beta: float,
    rand: float,
    tag_versions: Mapping[str, int] | None = None,
) -> Action:
    """Turn what a read found into an :class:`Action` (see the module docstring).

    ``tag_versions`` are the current versions of the entry's tags (``None``
    when they were not read, which skips the check).
    """
    # readable() and xfetch_early() written out, and the fields unpacked at
    # once (each named field read is a descriptor call): this runs on every hit.
    if envelope is None:
        return MISS
    _, _, cost, soft_expiry, hard_expiry, _, _, tags = envelope
    if now >= hard_expiry:
        return MISS
    if tag_versions is not None and tags and not envelope.tags_current(tag_versions):
        return MISS
    if now >= soft_expiry:
        return STALE
    gap = cost * beta
    if gap and now - gap * math.log(rand if rand > 0.0 else 5e-324) >= soft_expiry:
        return EARLY
    return FRESH


# --------------------------------------------------------------------------- keys

_HASH_MARK: Final = "#"


def _as_object(value: object) -> object:
    return value


def _needs_hash(key: str, max_length: int) -> bool:
    # str.isprintable() is False for every whitespace character but " ".
    return (
        len(key) > max_length or key.startswith(_HASH_MARK) or not key.isprintable() or " " in key
    )


def _digest(text: str) -> str:
    return _HASH_MARK + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class KeyBuilder:
    """Builds every key a cache stores, under ``<namespace>:v<schema_version>``.

    Two builders with different namespaces or schema versions never produce
    the same key; a user key that is too long (``max_key_length``), holds
    whitespace or control characters, or starts with ``#`` is replaced by
    ``#`` + its SHA-256, so no user input can fail or overflow.

    >>> keys = KeyBuilder("app", 2)
    >>> keys.data("user:1")
    'app:v2:user:1'
    >>> keys.lease("user:1")
    'app:v2!lease:user:1'

    Raises:
        ConfigurationError: an empty namespace, one with ``:``, ``!``, ``{``,
            ``}`` or whitespace, a negative schema version, a too small
            ``max_key_length``.
    """

    __slots__ = ("_data_prefix", "_lease_prefix", "_tag_prefix", "max_key_length", "namespace")

    def __init__(self, namespace: str, schema_version: int = 1, max_key_length: int = 200) -> None:
        given: tuple[object, object, object] = (namespace, schema_version, max_key_length)
        if not isinstance(given[0], str) or not namespace:
            raise ConfigurationError("namespace must be a non-empty string", parameter="namespace")
        if len(namespace) > 64 or any(
            ch in ":!{}" or ch.isspace() or not ch.isprintable() for ch in namespace
        ):
            raise ConfigurationError(
                "namespace must be at most 64 printable characters without ':', '!', '{', '}' "
                "or whitespace",
                parameter="namespace",
            )
        if not isinstance(given[1], int) or isinstance(given[1], bool) or schema_version < 0:
            raise ConfigurationError(
                "schema_version must be an int >= 0", parameter="schema_version"
            )
        if not isinstance(given[2], int) or max_key_length < 65:
            raise ConfigurationError(
                "max_key_length must be an int >= 65 (a digest is 65 characters)",
                parameter="max_key_length",
            )
        self.namespace = namespace
        self.max_key_length = max_key_length
        base = f"{namespace}:v{schema_version}"
        self._data_prefix = base + ":"
        self._lease_prefix = base + "!lease:"
        self._tag_prefix = base + "!tag:"

    def _safe(self, key: str) -> str:
        if not isinstance(_as_object(key), str):
            raise ConfigurationError(
                f"cache keys are str, got {type(key).__name__}", parameter="key"
            )
        return _digest(key) if _needs_hash(key, self.max_key_length) else key

    def data(self, key: str) -> str:
        """The stored key of user key ``key``."""
        return self._data_prefix + self._safe(key)

    def lease(self, key: str) -> str:
        """The key of the distributed lease that guards recomputing ``key``."""
        return self._lease_prefix + self._safe(key)

    def lease_of(self, data_key: str) -> str:
        """The lease key of an already built data key."""
        return self._lease_prefix + data_key[len(self._data_prefix) :]

    def tag(self, tag: str) -> str:
        """The key of ``tag``'s version counter."""
        if not isinstance(_as_object(tag), str) or not tag:
            raise ConfigurationError("tags are non-empty strings", parameter="tags")
        return self._tag_prefix + self._safe(tag)

    def is_data_key(self, stored_key: str) -> bool:
        """Whether ``stored_key`` is a data key of this builder."""
        return stored_key.startswith(self._data_prefix)

    def function(self, name: str, args: Sequence[object], kwargs: Mapping[str, object]) -> str:
        """The user key of a call of function ``name`` (before :meth:`data` is applied)."""
        return f"{name}({canonical_args(args, kwargs)})"


def validate_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    """Tags as a sorted tuple without duplicates.

    Raises:
        ConfigurationError: a tag is not a non-empty string, or ``tags`` is a bare string.
    """
    if tags is None:
        return ()
    if isinstance(tags, str | bytes):
        raise ConfigurationError("tags must be a list of strings, not one string", parameter="tags")
    if not isinstance(tags, Iterable):
        raise ConfigurationError(
            f"tags must be a list of strings, got {type(tags).__name__}", parameter="tags"
        )
    result = set()
    for tag in tags:
        if not isinstance(_as_object(tag), str) or not tag:
            raise ConfigurationError("tags are non-empty strings", parameter="tags")
        result.add(tag)
    return tuple(sorted(result))


# --------------------------------------------------------------------------- argument keys


# What json.dumps(text) returns for a str (ASCII-only, every control and
# non-ASCII character escaped), without its dispatch: the C function itself.
_json_str: Final[Callable[[Any], str]] = json.encoder.encode_basestring_ascii


def _canon(value: object) -> str:
    # Every form is self-delimiting and type-tagged, so distinct argument
    # lists give distinct strings (1, 1.0, True and "1" all differ).
    if value is None:
        return "N"
    if value is True:
        return "T"
    if value is False:
        return "F"
    kind = type(value)
    if kind is int:
        return f"i{value}"
    if kind is str:
        return "s" + _json_str(value)
    if kind is float:
        return f"f{value!r}"
    if isinstance(value, enum.Enum):
        return f"E{type(value).__module__}.{type(value).__qualname__}:{_canon(value.value)}"
    if isinstance(value, bool | int):
        return f"i{int(value)}"
    if isinstance(value, str):
        return "s" + json.dumps(str(value))
    if isinstance(value, float):
        return f"f{float(value)!r}"
    if isinstance(value, bytes | bytearray | memoryview):
        return "b" + bytes(value).hex() + ";"
    if isinstance(value, tuple):
        return "t[" + ",".join(_canon(item) for item in value) + "]"
    if isinstance(value, list):
        return "l[" + ",".join(_canon(item) for item in value) + "]"
    if isinstance(value, dict):
        items = sorted((_canon(k), _canon(v)) for k, v in value.items())
        return "d{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, set | frozenset):
        return "S{" + ",".join(sorted(_canon(item) for item in value)) + "}"
    if isinstance(value, datetime.datetime):
        return "W" + json.dumps(value.isoformat())
    if isinstance(value, datetime.date):
        return "Y" + json.dumps(value.isoformat())
    if isinstance(value, decimal.Decimal):
        return "M" + json.dumps(str(value))
    if isinstance(value, uuid.UUID):
        return "U" + json.dumps(str(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
        return f"C{type(value).__qualname__}" + _canon(dict(fields))
    cache_key = getattr(value, "__cache_key__", None)
    if callable(cache_key):
        return f"K{type(value).__qualname__}" + _canon(cache_key())
    return f"R{type(value).__qualname__}" + json.dumps(repr(value))


def canonical_args(args: Sequence[object], kwargs: Mapping[str, object]) -> str:
    """A stable, collision-free text for a call's arguments.

    Built from values, not from ``hash()`` (which changes between processes
    for strings): ints, floats, strings, bytes, None, bools, tuples, lists,
    dicts, sets, enums, dates, decimals, UUIDs and dataclasses are encoded
    exactly; other objects by their ``__cache_key__()`` if they have one, else
    by their ``repr()`` (give such types a stable ``__repr__``).

    >>> canonical_args((1, "a"), {"flag": True})
    'i1,s"a";flag=T'
    """
    positional = ",".join(_canon(arg) for arg in args)
    named = ",".join(f"{name}={_canon(kwargs[name])}" for name in sorted(kwargs))
    return f"{positional};{named}"
