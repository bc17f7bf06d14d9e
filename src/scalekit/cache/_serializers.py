"""Serialisers: how values become bytes, safely.

JSON is the default. It round-trips ``None``, bools, ints, floats, strings,
lists and dicts with string keys as themselves, and, through explicit type
markers, tuples, dicts with other keys, sets, ``bytes``, ``datetime``,
``date``, ``time``, ``Decimal`` and ``UUID``. Anything else is refused with
:class:`~scalekit.errors.SerializationError` when written, never silently
turned into something else.

:class:`MsgpackSerializer` uses the same type markers over msgpack (install
``msgpack``). :class:`SignedPickleSerializer` stores pickles, only ever
HMAC-SHA256 signed with a key id so keys can rotate; an unsigned, unknown-key
or badly signed payload is refused *before* it is unpickled, since unpickling
attacker-controlled bytes runs code.

Every serialiser has a ``codec_id`` that is written into the envelope, so a
value written by another serialiser is read as a miss, never mis-decoded.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import hmac
import importlib
import json
import pickle
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Protocol, runtime_checkable

from scalekit.errors import ConfigurationError, SerializationError

__all__ = [
    "JsonSerializer",
    "MsgpackSerializer",
    "Serializer",
    "SignedPickleSerializer",
]

_MARK = "__sk__"


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back. ``codec_id`` (1-255) identifies the format."""

    codec_id: int

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``; raise :class:`SerializationError` when it cannot."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode bytes made by :meth:`dumps`; raise :class:`SerializationError` on bad input."""
        ...


def _to_plain(value: Any, binary: bool) -> Any:
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is float or kind is str:
        return value
    if kind is list:
        return [_to_plain(item, binary) for item in value]
    if kind is dict:
        if _MARK not in value and all(type(k) is str for k in value):
            return {k: _to_plain(v, binary) for k, v in value.items()}
        return {
            _MARK: "map",
            "v": [[_to_plain(k, binary), _to_plain(v, binary)] for k, v in value.items()],
        }
    if kind is tuple:
        return {_MARK: "tuple", "v": [_to_plain(item, binary) for item in value]}
    if isinstance(value, bytes | bytearray):
        if binary:
            return bytes(value)
        return {_MARK: "bytes", "v": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime.datetime):
        return {_MARK: "datetime", "v": value.isoformat()}
    if isinstance(value, datetime.date):
        return {_MARK: "date", "v": value.isoformat()}
    if isinstance(value, datetime.time):
        return {_MARK: "time", "v": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {_MARK: "decimal", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {_MARK: "uuid", "v": str(value)}
    if isinstance(value, set | frozenset):
        mark = "frozenset" if isinstance(value, frozenset) else "set"
        return {_MARK: mark, "v": [_to_plain(item, binary) for item in value]}
    # Subclasses of the plain types (IntEnum, str enums...) are refused on
    # purpose: they would come back as their base type.
    raise SerializationError(
        f"cannot serialise {type(value).__qualname__}; convert it to plain data "
        "or use SignedPickleSerializer"
    )


def _from_marked(obj: dict[Any, Any]) -> Any:
    mark = obj.get(_MARK)
    if mark is None:
        return obj
    data: Any = obj.get("v")
    try:
        if mark == "tuple":
            return tuple(data)
        if mark == "map":
            return {_hashable(k): v for k, v in data}
        if mark == "bytes":
            return base64.b64decode(data)
        if mark == "datetime":
            return datetime.datetime.fromisoformat(data)
        if mark == "date":
            return datetime.date.fromisoformat(data)
        if mark == "time":
            return datetime.time.fromisoformat(data)
        if mark == "decimal":
            return decimal.Decimal(data)
        if mark == "uuid":
            return uuid.UUID(data)
        if mark == "set":
            return {_hashable(item) for item in data}
        if mark == "frozenset":
            return frozenset(_hashable(item) for item in data)
    except (TypeError, ValueError, decimal.InvalidOperation) as exc:
        raise SerializationError(f"bad {mark} value in cached data") from exc
    raise SerializationError(f"unknown type marker {mark!r} in cached data")


def _hashable(value: Any) -> Any:
    if isinstance(value, list):  # msgpack gives lists where JSON markers gave tuples
        return tuple(_hashable(item) for item in value)
    return value


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# Built once: json.loads(..., object_hook=...) would build a decoder per call.
_DECODER: Final = json.JSONDecoder(object_hook=_from_marked)
# Without a hook: for text that cannot hold a marker, where the hook would
# hand every object back unchanged (one Python call per object saved).
_PLAIN_DECODER: Final = json.JSONDecoder()
# Its C scanner, called directly: decode() adds two Python calls and two
# regex matches for surrounding whitespace, which dumps() never writes.
_PLAIN_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _PLAIN_DECODER.scan_once  # type: ignore[attr-defined]


class JsonSerializer:
    """JSON with explicit type markers (the default; ``codec_id`` 1).

    >>> codec = JsonSerializer()
    >>> codec.loads(codec.dumps({"when": datetime.date(2024, 5, 1), "ids": (1, 2)}))
    {'when': datetime.date(2024, 5, 1), 'ids': (1, 2)}

    Raises:
        SerializationError: on :meth:`dumps` of an unsupported type; on
            :meth:`loads` of bytes that are not this format.
    """

    codec_id: ClassVar[int] = 1

    __slots__ = ()

    def dumps(self, value: Any) -> bytes:
        plain = _to_plain(value, False)
        try:
            return _ENCODER.encode(plain).encode("utf-8")
        except (TypeError, ValueError) as exc:  # pragma: no cover - _to_plain filters
            raise SerializationError(str(exc)) from exc

    def loads(self, data: bytes) -> Any:
        try:
            text = data.decode("utf-8")
            # A marker key is spelt out in the text unless escaped (dumps never
            # escapes it, but any \u escape is read the careful way). Searched
            # in the str: `bytes in bytes` first tries its needle as an int and
            # builds a TypeError, which costs more than the search itself.
            if _MARK not in text and "\\u" not in text:
                try:
                    value, end = _PLAIN_SCAN(text, 0)
                except StopIteration:
                    pass  # no JSON value at the start: decode() below says why
                else:
                    if end == len(text):
                        return value
            return _DECODER.decode(text)
        except SerializationError:
            raise
        except (ValueError, TypeError, RecursionError, AttributeError) as exc:
            raise SerializationError(f"bad JSON in cache ({type(exc).__name__})") from exc

    def __repr__(self) -> str:
        return "JsonSerializer()"


class MsgpackSerializer:
    """msgpack with the same type markers as :class:`JsonSerializer` (``codec_id`` 2).

    Smaller and faster for bytes-heavy values. Needs the ``msgpack`` package.

    Raises:
        ConfigurationError: when ``msgpack`` is not installed.
        SerializationError: as :class:`JsonSerializer`.
    """

    codec_id: ClassVar[int] = 2

    __slots__ = ("_msgpack",)

    def __init__(self) -> None:
        try:
            msgpack = importlib.import_module("msgpack")
        except ImportError as exc:
            raise ConfigurationError(
                "MsgpackSerializer needs the msgpack package (pip install msgpack)",
                parameter="serializer",
            ) from exc
        self._msgpack: Any = msgpack

    def dumps(self, value: Any) -> bytes:
        result: bytes = self._msgpack.packb(_to_plain(value, True), use_bin_type=True)
        return result

    def loads(self, data: bytes) -> Any:
        try:
            return self._msgpack.unpackb(
                data, raw=False, object_hook=_from_marked, strict_map_key=False
            )
        except SerializationError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types
            raise SerializationError(f"bad msgpack in cache ({type(exc).__name__})") from exc

    def __repr__(self) -> str:
        return "MsgpackSerializer()"


class SignedPickleSerializer:
    """Pickle, HMAC-SHA256 signed with a key id (``codec_id`` 3).

    ``keys`` maps key ids to secrets (at least 16 bytes); new values are
    signed with ``current_key_id``; values signed with any listed key are
    accepted, so a key rotates by adding the new one as current and removing
    the old one after the longest TTL. Payloads that are unsigned, signed
    with an unknown key or whose signature does not match are refused before
    unpickling.

    >>> codec = SignedPickleSerializer({"k1": b"0123456789abcdef0123"}, current_key_id="k1")
    >>> codec.loads(codec.dumps({1, 2}))
    {1, 2}

    Raises:
        ConfigurationError: no keys, a short secret, an unknown ``current_key_id``.
        SerializationError: on :meth:`loads` of a payload that fails verification.
    """

    codec_id: ClassVar[int] = 3

    __slots__ = ("_current", "_current_id", "_keys")

    def __init__(self, keys: Mapping[str, bytes], *, current_key_id: str) -> None:
        if not keys:
            raise ConfigurationError("give at least one signing key", parameter="keys")
        checked: dict[bytes, bytes] = {}
        for key_id, secret in keys.items():
            kid: object = key_id
            secret_value: object = secret
            if not isinstance(kid, str) or not 0 < len(key_id.encode()) < 256:
                raise ConfigurationError("key ids are 1-255 byte strings", parameter="keys")
            if not isinstance(secret_value, bytes) or len(secret) < 16:
                raise ConfigurationError(
                    f"secret of key {key_id!r} must be bytes of length >= 16", parameter="keys"
                )
            checked[key_id.encode()] = secret
        if current_key_id not in keys:
            raise ConfigurationError(
                f"current_key_id {current_key_id!r} is not in keys", parameter="current_key_id"
            )
        self._keys = checked
        self._current_id = current_key_id.encode()
        self._current = checked[self._current_id]

    def dumps(self, value: Any) -> bytes:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {type(value).__qualname__}") from exc
        kid = self._current_id
        mac = hmac.new(self._current, kid + data, hashlib.sha256).digest()
        return bytes([len(kid)]) + kid + mac + data

    def loads(self, data: bytes) -> Any:
        if len(data) < 1 + 1 + 32:
            raise SerializationError("pickle payload is not signed")
        kid_len = data[0]
        kid = bytes(data[1 : 1 + kid_len])
        secret = self._keys.get(kid)
        if secret is None:
            raise SerializationError("pickle payload signed with an unknown key id")
        mac = data[1 + kid_len : 1 + kid_len + 32]
        body = bytes(data[1 + kid_len + 32 :])
        expected = hmac.new(secret, kid + body, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise SerializationError("pickle payload signature does not match; refused")
        try:
            return pickle.loads(body)
        except Exception as exc:
            raise SerializationError(f"cannot unpickle ({type(exc).__name__})") from exc

    def __repr__(self) -> str:  # never show secrets
        return f"SignedPickleSerializer(current_key_id={self._current_id.decode()!r})"
