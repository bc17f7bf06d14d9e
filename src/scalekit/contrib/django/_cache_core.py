"""What the Django cache backend decides without I/O: timeouts, the value codec, scripts.

Values are stored in scalekit's cache envelope (so :class:`~scalekit.cache.Cache`
reads them, with its local tier and stampede protection) with a codec of its
own: an ``int`` as its decimal digits (so ``incr`` is one atomic script on
Redis, as Django's contract wants, and a planted digit string is only ever
parsed by ``int()``), anything else as scalekit's HMAC-signed pickle, keyed
from ``SECRET_KEY`` (a payload whose signature does not match is never
unpickled).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from scalekit.cache import SignedPickleSerializer
from scalekit.cache._base import MAX_SECONDS
from scalekit.errors import ConfigurationError, SerializationError

__all__ = ["FOREVER", "DjangoCodec", "expiry_patch", "signing_keys", "ttl_of"]

#: The envelope lifetime of a value stored with ``timeout=None`` (Redis holds it
#: with no expiry; the envelope still needs a date): the longest TTL the cache
#: takes, about 31 years.
FOREVER: Final = MAX_SECONDS

# Envelope bytes the scripts check (see scalekit.cache._core._HEADER): magic
# and format (1-4, ENVELOPE_PREFIX), codec (5), kind (6), created, cost (7-22), soft and hard
# expiry (23-38), tag count (39-40), payload (41-). The backend stores no tags.
_EXPIRIES: Final = struct.Struct(">dd")
# 2**53: beyond it a Lua number (a double) loses integer precision.
INCR_LIMIT: Final = 2**53

INCR_LUA: Final = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
if string.sub(raw, 1, 4) ~= ARGV[2] or string.byte(raw, 5) ~= tonumber(ARGV[3])
   or string.byte(raw, 6) ~= 0 or string.sub(raw, 39, 41) ~= '\\0\\0i' then
  return 0
end
local value = tonumber(string.sub(raw, 42))
if value == nil then return 0 end
local result = value + tonumber(ARGV[1])
if math.abs(result) >= 9007199254740992 then return 1 end
local text = string.format('%.0f', result)
redis.call('SET', KEYS[1], string.sub(raw, 1, 40) .. 'i' .. text, 'KEEPTTL')
return text
"""

TOUCH_LUA: Final = """
local raw = redis.call('GET', KEYS[1])
if not raw or string.sub(raw, 1, 4) ~= ARGV[1] or string.len(raw) < 40 then return 0 end
local patched = string.sub(raw, 1, 22) .. ARGV[2] .. string.sub(raw, 39)
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], patched)
else
  redis.call('SET', KEYS[1], patched, 'PX', ARGV[3])
end
return 1
"""


def ttl_of(timeout: Any, default: float | None, missing: object) -> float | None:
    """Django's timeout to seconds: ``None`` is forever, ``<= 0`` expires at once (0.0).

    ``missing`` is Django's ``DEFAULT_TIMEOUT`` sentinel, which means ``default``.

    Raises:
        ConfigurationError: ``timeout`` is not a number or ``None``.
    """
    if timeout is missing:
        timeout = default
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError(
            f"a cache timeout is a number of seconds or None, got {type(timeout).__name__}",
            parameter="timeout",
        )
    return float(timeout) if timeout > 0 else 0.0


def store_ms(ttl: float) -> str:
    """The ``PX`` argument of a timed write (``""`` for a value kept forever)."""
    return "" if ttl == FOREVER else str(max(int(ttl * 1000), 1))


def expiry_patch(now: float, ttl: float) -> bytes:
    """The envelope's soft and hard expiry for a value touched at ``now`` to live ``ttl``."""
    return _EXPIRIES.pack(now + ttl, now + ttl)


def signing_keys(
    secret_key: str | bytes, fallbacks: Sequence[str | bytes] = ()
) -> tuple[dict[str, bytes], str]:
    """The signed pickle's keys derived from Django's ``SECRET_KEY`` (and its fallbacks).

    Each key is an HMAC of a fixed label under the secret, so the cache never holds
    ``SECRET_KEY`` itself and a leaked cache key says nothing about it. Returns the
    keys by id and the id of the current one (``SECRET_KEY_FALLBACKS`` stay readable,
    so values survive a rotation until they expire).

    Raises:
        ConfigurationError: ``SECRET_KEY`` is empty.
    """
    if not secret_key:
        raise ConfigurationError(
            "the cache signs its pickles with a key derived from SECRET_KEY, which is empty: "
            "set SECRET_KEY or OPTIONS['SIGNING_KEYS']",
            parameter="SECRET_KEY",
        )
    keys: dict[str, bytes] = {}
    for secret in [secret_key, *fallbacks]:
        raw = secret.encode() if isinstance(secret, str) else secret
        derived = hmac.new(raw, b"scalekit.contrib.django.cache", hashlib.sha256).digest()
        # The id names the key, not its place: after a rotation the old key keeps its id.
        keys.setdefault("dj" + hashlib.sha256(derived).hexdigest()[:8], derived)
    return keys, next(iter(keys))


class DjangoCodec:
    """The values' codec: ``int`` as digits (``b"i42"``), anything else signed pickle.

    ``codec_id`` 16, so a :class:`~scalekit.cache.Cache` with another codec on the
    same keys reads them as misses instead of misreading them.

    Raises:
        SerializationError: on ``loads`` of a payload neither form accepts.
    """

    codec_id: ClassVar[int] = 16

    __slots__ = ("_pickle",)

    def __init__(self, keys: Mapping[str, bytes], current_key_id: str) -> None:
        self._pickle = SignedPickleSerializer(keys, current_key_id=current_key_id)

    def dumps(self, value: Any) -> bytes:
        if type(value) is int and -INCR_LIMIT < value < INCR_LIMIT:
            return b"i%d" % value
        return b"p" + self._pickle.dumps(value)

    def loads(self, data: bytes) -> Any:
        mark = data[:1]
        if mark == b"i":
            try:
                return int(data[1:])
            except ValueError as exc:
                raise SerializationError("bad integer in cache") from exc
        if mark == b"p":
            return self._pickle.loads(data[1:])
        raise SerializationError("not a value of the Django cache backend")

    def __repr__(self) -> str:
        return "DjangoCodec()"
