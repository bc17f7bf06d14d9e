"""Cursor codec: sort-key values <-> compact, URL-safe, optionally signed tokens.

Theory of operation
-------------------

A cursor names a position in an ordered result: the sort-key values of one
row. :class:`CursorCodec` turns a tuple of such values into a short string a
client can carry in a URL, and back. It is pure (no I/O); it reads time only
from the injected clock, and only when cursors expire.

Binary layout (before URL-safe base64 without padding)::

    version:u8  flags:u8  fingerprint:6 bytes  [expires_at:uvarint]
    count:uvarint  value*count  [signature:16 bytes]

``flags`` bit 0 says the cursor is signed, bit 1 that it carries an expiry,
bit 2 that the position includes the row it names (used for the way back
from an empty page past the end).
The fingerprint binds the cursor to the order (and optionally the filters) it
was made for. The signature is a truncated HMAC-SHA256 over everything before
it, made with the codec's current secret and checked against the current and
the previous secrets (key rotation).

Each value is a one-byte tag and a payload: ``None``, ``bool``, ``int``
(zig-zag varint), ``str`` and ``bytes`` (length-prefixed), ``float``
(IEEE 754 double), ``Decimal`` (its string form), ``datetime`` naive or aware
(microseconds since the epoch, plus the UTC offset for aware values),
``date``, ``time``, ``timedelta`` and ``UUID``.

Decoding validates everything and raises only
:class:`~scalekit.errors.InvalidCursor`, whatever the input: the checks run in
the order structure, signature, query fingerprint, expiry, so a forged
cursor is reported as ``"tampered"`` before anything it claims is believed.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import functools
import hashlib
import hmac
import math
import re
import struct
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, TypeAlias, cast

from scalekit._clock import SYSTEM_CLOCK
from scalekit.errors import ConfigurationError, InvalidCursor

if TYPE_CHECKING:
    from scalekit.typing import Clock

__all__ = ["CursorCodec", "CursorValue"]

CursorValue: TypeAlias = (
    "bool | int | float | str | bytes | decimal.Decimal | dt.datetime | dt.date"
    " | dt.time | dt.timedelta | uuid.UUID | None"
)
"""The Python types a cursor can carry."""

VERSION: Final = 1
FINGERPRINT_BYTES: Final = 6
SIGNATURE_BYTES: Final = 16
MIN_SECRET_BYTES: Final = 16
MAX_VALUES: Final = 64
_FLAG_SIGNED: Final = 0x01
_FLAG_EXPIRES: Final = 0x02
_FLAG_INCLUSIVE: Final = 0x04
_KNOWN_FLAGS: Final = _FLAG_SIGNED | _FLAG_EXPIRES | _FLAG_INCLUSIVE
_HMAC_CONTEXT: Final = b"scalekit.pagination.cursor.v1\x00"
_MAX_VARINT_BYTES: Final = 20  # ints up to ~140 bits; more is never a sort key
_MAX_DECIMAL_CHARS: Final = 200
_TOKEN_CHARS: Final = re.compile(r"[A-Za-z0-9_-]*")

_T_NONE: Final = 0x00
_T_FALSE: Final = 0x01
_T_TRUE: Final = 0x02
_T_INT: Final = 0x03
_T_STR: Final = 0x04
_T_BYTES: Final = 0x05
_T_FLOAT: Final = 0x06
_T_DECIMAL: Final = 0x07
_T_DATETIME: Final = 0x08
_T_DATETIME_TZ: Final = 0x09
_T_DATE: Final = 0x0A
_T_UUID: Final = 0x0B
_T_TIME: Final = 0x0C
_T_TIMEDELTA: Final = 0x0D

_EPOCH: Final = dt.datetime(1970, 1, 1)
_EPOCH_UTC: Final = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_EPOCH_ORDINAL: Final = _EPOCH.toordinal()
_ONE_MICROSECOND: Final = dt.timedelta(microseconds=1)
_DOUBLE: Final = struct.Struct(">d")
_DECIMAL_SYNTAX: Final = re.compile(r"-?(\d+(\.\d*)?|\.\d+)(E[-+]?\d+)?|-?(NaN|Infinity)")


class _Malformed(Exception):
    """Internal: the bytes are not a well-formed cursor (turned into InvalidCursor)."""


def _uvarint(value: int, out: bytearray) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value >> 1 if not value & 1 else -((value + 1) >> 1)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise _Malformed("truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Malformed("truncated")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uvarint(self) -> int:
        data, pos = self.data, self.pos
        end = min(len(data), pos + _MAX_VARINT_BYTES)
        result = 0
        shift = 0
        while pos < end:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise _Malformed("non-canonical varint")
                self.pos = pos
                return result
            shift += 7
        if pos >= len(data):
            raise _Malformed("truncated")
        raise _Malformed("varint too long")

    def svarint(self) -> int:
        return _unzigzag(self.uvarint())

    def sized(self, limit: int) -> bytes:
        size = self.uvarint()
        if size > limit:
            raise _Malformed("field too long")
        return self.take(size)


def _encode_value(value: object, out: bytearray, position: int) -> None:
    kind = value.__class__
    # The common sort keys first, by exact type (subclasses take the general path).
    if kind is int:
        out.append(_T_INT)
        _uvarint(_zigzag(cast(int, value)), out)
        return
    if kind is dt.datetime:
        _encode_datetime(cast(dt.datetime, value), out)
        return
    if kind is str:
        raw = cast(str, value).encode("utf-8", "surrogatepass")
        out.append(_T_STR)
        _uvarint(len(raw), out)
        out += raw
        return
    # bool before int (bool is an int); datetime before date (same reason).
    if value is None:
        out.append(_T_NONE)
    elif value is True:
        out.append(_T_TRUE)
    elif value is False:
        out.append(_T_FALSE)
    elif isinstance(value, int):
        out.append(_T_INT)
        _uvarint(_zigzag(value), out)
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        out.append(_T_STR)
        _uvarint(len(raw), out)
        out += raw
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out.append(_T_BYTES)
        _uvarint(len(raw), out)
        out += raw
    elif isinstance(value, float):
        out.append(_T_FLOAT)
        out += _DOUBLE.pack(value)
    elif isinstance(value, decimal.Decimal):
        text = str(value).encode("ascii")
        out.append(_T_DECIMAL)
        _uvarint(len(text), out)
        out += text
    elif isinstance(value, dt.datetime):
        _encode_datetime(value, out)
    elif isinstance(value, dt.date):
        out.append(_T_DATE)
        _uvarint(_zigzag(value.toordinal() - _EPOCH_ORDINAL), out)
    elif isinstance(value, dt.time):
        if value.utcoffset() is not None:
            raise ConfigurationError(
                f"sort key {position}: time values with a timezone cannot be carried in a cursor",
                parameter="order_by",
            )
        micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000
        out.append(_T_TIME)
        _uvarint(micros + value.microsecond, out)
    elif isinstance(value, dt.timedelta):
        out.append(_T_TIMEDELTA)
        _uvarint(_zigzag(value // _ONE_MICROSECOND), out)
    elif isinstance(value, uuid.UUID):
        out.append(_T_UUID)
        out += value.bytes
    else:
        raise ConfigurationError(
            f"sort key {position}: values of type {type(value).__name__} cannot be carried"
            " in a cursor (supported: None, bool, int, float, str, bytes, Decimal, datetime,"
            " date, time, timedelta, UUID)",
            parameter="order_by",
        )


def _encode_datetime(value: dt.datetime, out: bytearray) -> None:
    offset = value.utcoffset()
    if offset is None:
        out.append(_T_DATETIME)
        _uvarint(_zigzag((value - _EPOCH) // _ONE_MICROSECOND), out)
    else:
        out.append(_T_DATETIME_TZ)
        _uvarint(_zigzag((value - _EPOCH_UTC) // _ONE_MICROSECOND), out)
        _uvarint(_zigzag(offset // _ONE_MICROSECOND), out)


@functools.lru_cache(maxsize=64)
def _zone(offset_micros: int) -> dt.timezone:
    """The fixed-offset zone of a decoded datetime (few distinct ones: cached)."""
    if offset_micros == 0:
        return dt.timezone.utc
    return dt.timezone(dt.timedelta(microseconds=offset_micros))


def _decode_value(reader: _Reader, max_length: int) -> CursorValue:
    tag = reader.byte()
    if tag == _T_NONE:
        return None
    if tag == _T_FALSE:
        return False
    if tag == _T_TRUE:
        return True
    if tag == _T_INT:
        return reader.svarint()
    if tag == _T_STR:
        try:
            return reader.sized(max_length).decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed("bad utf-8") from None
    if tag == _T_BYTES:
        return reader.sized(max_length)
    if tag == _T_FLOAT:
        (number,) = _DOUBLE.unpack(reader.take(8))
        return float(number)
    if tag == _T_DECIMAL:
        text = reader.sized(_MAX_DECIMAL_CHARS).decode("ascii", "replace")
        if not _DECIMAL_SYNTAX.fullmatch(text):
            raise _Malformed("bad decimal")
        number = decimal.Decimal(text)
        # PostgreSQL's numeric has one NaN and refuses "-NaN": a forged sign is dropped.
        return decimal.Decimal("NaN") if number.is_nan() else number
    try:
        if tag == _T_DATETIME:
            return _EPOCH + dt.timedelta(microseconds=reader.svarint())
        if tag == _T_DATETIME_TZ:
            instant = _EPOCH_UTC + dt.timedelta(microseconds=reader.svarint())
            return instant.astimezone(_zone(reader.svarint()))
        if tag == _T_DATE:
            return dt.date.fromordinal(reader.svarint() + _EPOCH_ORDINAL)
        if tag == _T_TIME:
            micros = reader.uvarint()
            seconds, micro = divmod(micros, 1_000_000)
            minutes, second = divmod(seconds, 60)
            hour, minute = divmod(minutes, 60)
            return dt.time(hour, minute, second, micro)
        if tag == _T_TIMEDELTA:
            return dt.timedelta(microseconds=reader.svarint())
    except (OverflowError, ValueError):
        raise _Malformed("date or time out of range") from None
    if tag == _T_UUID:
        return uuid.UUID(bytes=reader.take(16))
    raise _Malformed("unknown value tag")


def _secret_bytes(secret: str | bytes, parameter: str) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes):
        raise ConfigurationError(f"{parameter} must be str or bytes", parameter=parameter)
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"{parameter} must be at least {MIN_SECRET_BYTES} bytes long", parameter=parameter
        )
    return secret


class CursorCodec:
    """Encode sort-key values into opaque cursor strings and decode them back.

    Without a ``secret`` cursors are only encoded, so a client can read and
    edit them (which lets it jump to any position, and nothing more: the
    paginator still checks every value's type). With a ``secret`` every
    cursor carries an HMAC-SHA256 signature, and unsigned or altered cursors
    are rejected. To rotate keys, pass the new key as ``secret`` and the old
    ones as ``previous_secrets``: new cursors are signed with the new key,
    cursors signed with any of them still decode.

    ``ttl`` (seconds) stamps an expiry into each cursor; expired cursors are
    rejected with ``reason="expired"``. Without a secret the expiry is
    advisory (a client could edit it).

    Raises:
        ConfigurationError: a secret shorter than 16 bytes, a negative ``ttl``,
            a ``max_length`` below 64.

    Example::

        codec = CursorCodec(secret=os.environ["CURSOR_KEY"], ttl=3600)
        token = codec.encode((datetime.now(timezone.utc), 42))
        codec.decode(token)  # -> (datetime(...), 42)
    """

    __slots__ = ("_clock", "_keys", "_max_length", "_ttl")

    def __init__(
        self,
        secret: str | bytes | None = None,
        *,
        previous_secrets: Sequence[str | bytes] = (),
        ttl: float | None = None,
        max_length: int = 2048,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if secret is None and previous_secrets:
            raise ConfigurationError(
                "previous_secrets needs a current secret", parameter="previous_secrets"
            )
        keys: list[bytes] = []
        if secret is not None:
            keys.append(_secret_bytes(secret, "secret"))
        keys.extend(_secret_bytes(old, "previous_secrets") for old in previous_secrets)
        raw_ttl: object = ttl
        if raw_ttl is not None and (
            isinstance(raw_ttl, bool) or not isinstance(raw_ttl, (int, float)) or not raw_ttl > 0
        ):
            raise ConfigurationError("ttl must be a positive number of seconds", parameter="ttl")
        if not _is_int(max_length) or max_length < 64:
            raise ConfigurationError("max_length must be an int >= 64", parameter="max_length")
        self._keys = tuple(keys)
        self._ttl = None if ttl is None else float(ttl)
        self._max_length = max_length
        self._clock = clock

    @property
    def signed(self) -> bool:
        """Whether this codec signs cursors and requires signatures."""
        return bool(self._keys)

    def __repr__(self) -> str:
        # Never show the secrets.
        return f"CursorCodec(signed={self.signed}, ttl={self._ttl!r})"

    def encode(
        self, values: Sequence[object], *, fingerprint: bytes = b"", inclusive: bool = False
    ) -> str:
        """Encode ``values`` (one per sort key) into a URL-safe cursor string.

        ``fingerprint`` binds the cursor to a query; :meth:`decode` must be
        given the same one. ``inclusive`` marks a position that includes the
        row it names (see :meth:`decode_position`). Raises
        :class:`ConfigurationError` for a value of a type cursors cannot carry.
        """
        if len(values) > MAX_VALUES:
            raise ConfigurationError(
                f"a cursor carries at most {MAX_VALUES} sort keys", parameter="order_by"
            )
        out = bytearray((VERSION, 0))
        flags = _FLAG_INCLUSIVE if inclusive else 0
        out += _fingerprint_prefix(fingerprint)
        if self._ttl is not None:
            flags |= _FLAG_EXPIRES
            _uvarint(math.ceil(self._clock.time() + self._ttl), out)
        _uvarint(len(values), out)
        for position, value in enumerate(values):
            _encode_value(value, out, position)
        if self._keys:
            flags |= _FLAG_SIGNED
            out[1] = flags
            out += _sign(self._keys[0], out)
        else:
            out[1] = flags
        token = base64.urlsafe_b64encode(bytes(out)).rstrip(b"=").decode("ascii")
        if len(token) > self._max_length:
            raise ConfigurationError(
                f"cursor of {len(token)} characters exceeds max_length={self._max_length};"
                " sort on shorter keys or raise max_length",
                parameter="max_length",
            )
        return token

    def decode(self, token: object, *, fingerprint: bytes = b"") -> tuple[CursorValue, ...]:
        """Decode a cursor made by :meth:`encode` back into its values.

        Raises:
            InvalidCursor: for anything that is not a valid cursor for this
                codec and ``fingerprint``, with ``reason`` one of
                ``"malformed"``, ``"tampered"``, ``"wrong_query"``, ``"expired"``.
                No other exception escapes, whatever ``token`` is.
        """
        return self.decode_position(token, fingerprint=fingerprint)[0]

    def decode_position(
        self, token: object, *, fingerprint: bytes = b""
    ) -> tuple[tuple[CursorValue, ...], bool]:
        """Like :meth:`decode`, and also whether the position is inclusive."""
        try:
            return self._decode(token, fingerprint)
        except InvalidCursor:
            raise
        except Exception:  # a bug in a check must never become a 500
            raise InvalidCursor("cursor is malformed", reason="malformed") from None

    def _decode(self, token: object, fingerprint: bytes) -> tuple[tuple[CursorValue, ...], bool]:
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidCursor("cursor is not ASCII", reason="malformed") from None
        if not isinstance(token, str):
            raise InvalidCursor("cursor must be a string", reason="malformed")
        if len(token) > self._max_length:
            raise InvalidCursor("cursor is too long", reason="malformed")
        if not _TOKEN_CHARS.fullmatch(token) or len(token) % 4 == 1:
            raise InvalidCursor("cursor is not URL-safe base64", reason="malformed")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidCursor("cursor is not URL-safe base64", reason="malformed") from None
        if len(raw) < 2 + FINGERPRINT_BYTES + 1:
            raise InvalidCursor("cursor is truncated", reason="malformed")
        if raw[0] != VERSION:
            raise InvalidCursor(f"unsupported cursor version {raw[0]}", reason="malformed")
        flags = raw[1]
        if flags & ~_KNOWN_FLAGS:
            raise InvalidCursor("unknown cursor flags", reason="malformed")
        if flags & _FLAG_SIGNED:
            if len(raw) < 2 + FINGERPRINT_BYTES + 1 + SIGNATURE_BYTES:
                raise InvalidCursor("cursor is truncated", reason="malformed")
            if not self._keys:
                raise InvalidCursor(
                    "cursor is signed but this codec has no secret", reason="tampered"
                )
            body, signature = raw[:-SIGNATURE_BYTES], raw[-SIGNATURE_BYTES:]
            # Check every key without stopping early, so timing says nothing.
            matches = [hmac.compare_digest(_sign(key, body), signature) for key in self._keys]
            if not any(matches):
                raise InvalidCursor("cursor signature does not match", reason="tampered")
        elif self._keys:
            raise InvalidCursor("cursor is not signed", reason="tampered")
        else:
            body = raw
        reader = _Reader(body)
        reader.pos = 2
        try:
            stamp = reader.take(FINGERPRINT_BYTES)
            expires_at = reader.uvarint() if flags & _FLAG_EXPIRES else None
            count = reader.uvarint()
            if count > MAX_VALUES:
                raise _Malformed("too many values")
            values = tuple(_decode_value(reader, self._max_length) for _ in range(count))
        except _Malformed as exc:
            raise InvalidCursor(f"cursor is malformed ({exc})", reason="malformed") from None
        if reader.pos != len(body):
            raise InvalidCursor("cursor has trailing bytes", reason="malformed")
        if not hmac.compare_digest(stamp, _fingerprint_prefix(fingerprint)):
            raise InvalidCursor("cursor was made for another query", reason="wrong_query")
        if expires_at is not None and self._clock.time() >= expires_at:
            raise InvalidCursor("cursor has expired", reason="expired")
        return values, bool(flags & _FLAG_INCLUSIVE)


def _is_int(value: object) -> bool:
    """An int that is not a bool (validation of user-supplied sizes)."""
    return isinstance(value, int) and not isinstance(value, bool)


@functools.lru_cache(maxsize=1024)
def _fingerprint_prefix(fingerprint: bytes) -> bytes:
    return hashlib.blake2b(fingerprint, digest_size=FINGERPRINT_BYTES).digest()


def _sign(key: bytes, body: bytes | bytearray) -> bytes:
    mac = hmac.new(key, _HMAC_CONTEXT, hashlib.sha256)
    mac.update(body)
    return mac.digest()[:SIGNATURE_BYTES]
