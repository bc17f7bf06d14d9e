"""The shard key hash: stable everywhere, and computable by PostgreSQL itself.

Theory of operation. A key is first turned into a canonical byte string,
one type-tag byte followed by the key's bytes:

=========== ===== ====================================================
key type    tag   payload
=========== ===== ====================================================
``int``     0x01  signed 8-byte big-endian (``-2**63 <= key < 2**63``)
``str``     0x02  UTF-8
``bytes``   0x03  the bytes as they are
``UUID``    0x04  its 16 bytes (``uuid.bytes``)
=========== ===== ====================================================

The 64-bit key hash and the logical shard then depend on the type:

========================== ========================================= ===========================
key type                   64-bit hash ``h`` (unsigned)              logical shard, of ``n``
========================== ========================================= ===========================
``int``                    ``key * 0x4F1BBCDC3FA53E0B mod 2**64``    ``(h * n) >> 64``
``str``/``bytes``/``UUID`` first 8 bytes of the tagged string's MD5  ``(h & (2**63 - 1)) % n``
========================== ========================================= ===========================

An int is hashed by multiplication (Fibonacci hashing; ``key`` is its signed
value or, the same thing modulo ``2**64``, its 64-bit two's complement) and
the logical shard is taken from the product's high bits, which every bit of
the key reaches. The multiplier is about ``2**64 / (2 * golden ratio)``, odd,
with bit 31 cleared so that both its 32-bit halves are below ``2**31`` (see
the SQL below). The hash is a bijection on 64-bit keys, it spreads
consecutive keys and keys with a common stride (multiples of 1024, of a
power of two) evenly, and it costs a few integer operations instead of an
MD5. Other keys go through MD5, used as a mixing function, not for
security: it is in every Python (``hashlib``) and in every PostgreSQL
(``md5(bytea)``). No stable string hash cheaper in Python than MD5 is
computable by PostgreSQL 15 with built-in functions alone (``hashtext`` is
internal and byte-order dependent, ``crc32`` arrived in PostgreSQL 18, a
polynomial hash needs a loop over the bytes).

The server computes the very same values with built-in functions:
:func:`shard_sql` returns that expression for a column. For an int it is
``bigint`` arithmetic on the key's 32-bit halves (a 64-bit product would
overflow a ``bigint``; no partial product with these halves does), about a
tenth of the per-row cost of an MD5; for the others ``md5`` of
``convert_to``, ``uuid_send`` or the bytes. Python's ``hash()`` is never
used: it is salted per process for ``str`` and ``bytes``.

The type tag keeps ``1``, ``"1"`` and ``b"1"`` apart; it also means a key
must be hashed with the type it is stored with (an ``int`` id and its
decimal string land on different shards).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any, Literal

from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = [
    "DEFAULT_LOGICAL_SHARDS",
    "KeyType",
    "ShardKey",
    "key_bytes",
    "key_hash",
    "logical_shard",
    "shard_sql",
]

DEFAULT_LOGICAL_SHARDS = 1024

ShardKey = int | str | bytes | uuid.UUID
KeyType = Literal["int", "str", "bytes", "uuid"]

_TAG_INT = b"\x01"
_TAG_STR = b"\x02"
_TAG_BYTES = b"\x03"
_TAG_UUID = b"\x04"
_LOW_63 = (1 << 63) - 1
# The int hash: key * _INT_MULTIPLIER mod 2**64 (see the module docstring).
# The hot paths spell these constants as literals (a literal is a constant
# load, a module global a dict look-up).
_INT_MULTIPLIER = 0x4F1BBCDC3FA53E0B
_MASK_64 = (1 << 64) - 1
_MASK_32 = (1 << 32) - 1
_TWO_64 = 1 << 64


def _fast_md5() -> Any:
    """CPython's own MD5 (``_md5``) where present: the same digest as ``hashlib.md5``.

    OpenSSL's, behind ``hashlib.md5``, costs more per call on short inputs.
    """
    import importlib

    try:
        md5: Any = importlib.import_module("_md5").md5
    except ImportError:  # pragma: no cover - Python built without its own MD5
        md5 = hashlib.md5
    return md5


_md5 = _fast_md5()
_from_bytes = int.from_bytes


def key_bytes(key: ShardKey) -> bytes:
    """The canonical byte encoding of ``key``: MD5 is taken over it (str, bytes, UUID).

    An int is not hashed with MD5 but multiplied: its 8 bytes here are the
    signed value the multiplication takes (see the module docstring).

    Raises:
        ConfigurationError: ``key`` is not an int, str, bytes or UUID (a bool
            is refused too), or is an int outside the signed 64-bit range.
    """
    key_type = type(key)
    if key_type is int:
        try:
            return _TAG_INT + key.to_bytes(8, "big", signed=True)  # type: ignore[union-attr]
        except OverflowError:
            raise ConfigurationError(
                f"shard key {key!r} is outside the signed 64-bit range", parameter="key"
            ) from None
    if key_type is str:
        try:
            return _TAG_STR + key.encode()  # type: ignore[union-attr]
        except UnicodeEncodeError:
            raise ConfigurationError(
                f"shard key {key!r} cannot be encoded as UTF-8", parameter="key"
            ) from None
    if key_type is bytes:
        return _TAG_BYTES + key  # type: ignore[operator]
    if key_type is uuid.UUID:
        return _TAG_UUID + key.bytes  # type: ignore[union-attr]
    return _key_bytes_slow(key)


def _key_bytes_slow(key: object) -> bytes:
    # Subclasses (IntEnum, str enums, UUID subclasses) hash as their base value;
    # bool is refused: True and 1 would share a shard by accident.
    if isinstance(key, bool):
        raise ConfigurationError("a bool is not a shard key", parameter="key")
    if isinstance(key, int):
        return key_bytes(int(key))
    if isinstance(key, str):
        return key_bytes(str(key))
    if isinstance(key, bytes | bytearray | memoryview):
        return _TAG_BYTES + bytes(key)
    if isinstance(key, uuid.UUID):
        return _TAG_UUID + key.bytes
    raise ConfigurationError(
        f"shard keys are int, str, bytes or UUID, not {type(key).__name__}", parameter="key"
    )


def key_hash(key: ShardKey) -> int:
    """The stable unsigned 64-bit hash of ``key`` (see the module docstring).

    >>> key_hash(42)
    18054082231078235598
    >>> key_hash("user-42")
    5904975736813605264

    Raises:
        ConfigurationError: as :func:`key_bytes`.
    """
    if type(key) is int and -0x8000000000000000 <= key < 0x8000000000000000:
        return key * 0x4F1BBCDC3FA53E0B & 0xFFFFFFFFFFFFFFFF
    data = key_bytes(key)  # raises for a bad key
    if data[:1] == _TAG_INT:  # an int subclass (IntEnum): its int value
        return _from_bytes(data[1:], "big", signed=True) * _INT_MULTIPLIER & _MASK_64
    return _from_bytes(_md5(data).digest()[:8], "big")


def logical_shard(key: ShardKey, logical_shards: int = DEFAULT_LOGICAL_SHARDS) -> int:
    """The logical shard, ``0 <= shard < logical_shards``, that ``key`` belongs to.

    >>> logical_shard(42)
    1002
    >>> logical_shard("user-42")
    400

    Raises:
        ConfigurationError: ``logical_shards`` is not a positive int, or
            ``key`` is not a valid shard key (see :func:`key_bytes`).
    """
    if type(logical_shards) is not int or logical_shards < 1:
        _check_logical_shards(logical_shards)
    if type(key) is int and -0x8000000000000000 <= key < 0x8000000000000000:
        # The high bits of the 64-bit product: (h * n) >> 64.
        return (key * 0x4F1BBCDC3FA53E0B & 0xFFFFFFFFFFFFFFFF) * logical_shards >> 64
    data = key_bytes(key)  # raises for a bad key
    if data[:1] == _TAG_INT:  # an int subclass (IntEnum): its int value
        value = _from_bytes(data[1:], "big", signed=True)
        return (value * _INT_MULTIPLIER & _MASK_64) * logical_shards >> 64
    return (_from_bytes(_md5(data).digest()[:8], "big") & _LOW_63) % logical_shards


def _check_logical_shards(logical_shards: object) -> int:
    if (
        isinstance(logical_shards, bool)
        or not isinstance(logical_shards, int)
        or logical_shards < 1
    ):
        raise ConfigurationError(
            f"logical_shards must be a positive int, got {logical_shards!r}",
            parameter="logical_shards",
        )
    return logical_shards


def _infer_key_type(column_expr: sa.ColumnElement[object]) -> KeyType:
    import sqlalchemy as sa

    column_type = column_expr.type
    if isinstance(column_type, sa.Integer):
        return "int"
    if isinstance(column_type, sa.String):
        return "str"
    if isinstance(column_type, sa.LargeBinary):
        return "bytes"
    if isinstance(column_type, sa.Uuid):
        return "uuid"
    raise ConfigurationError(
        f"cannot tell the shard key type of {column_expr!r} (type {column_type!r}); "
        "pass key_type='int', 'str', 'bytes' or 'uuid'",
        parameter="key_type",
    )


def shard_sql(
    column_expr: sa.ColumnElement[object],
    logical_shards: int = DEFAULT_LOGICAL_SHARDS,
    *,
    key_type: KeyType | None = None,
) -> sa.ColumnElement[int]:
    """A PostgreSQL expression computing :func:`logical_shard` of ``column_expr``.

    The key type comes from the column's SQLAlchemy type (``Integer`` family,
    ``String``/``Text``, ``LargeBinary``, ``Uuid``) unless ``key_type`` says.
    Select the rows of logical shard 7 with
    ``select(users).where(shard_sql(users.c.id) == 7)``. The expression is
    PostgreSQL only (``md5``, ``int8send``, ``convert_to``, ``uuid_send``).

    Raises:
        ConfigurationError: ``logical_shards`` is not a positive int, or the
            key type is unknown and cannot be inferred.
    """
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    _check_logical_shards(logical_shards)
    kind = key_type if key_type is not None else _infer_key_type(column_expr)
    payload: sa.ColumnElement[Any]
    if kind == "int":
        return _int_shard_sql(column_expr, logical_shards)
    if kind == "str":
        tag, payload = _TAG_STR, sa.func.convert_to(column_expr, sa.literal_column("'UTF8'"))
    elif kind == "bytes":
        tag, payload = _TAG_BYTES, column_expr
    elif kind == "uuid":
        tag, payload = _TAG_UUID, sa.func.uuid_send(column_expr)
    else:
        raise ConfigurationError(
            f"key_type must be 'int', 'str', 'bytes' or 'uuid', not {kind!r}",
            parameter="key_type",
        )
    # Constants are inlined (no bind parameters) so the expression also works
    # in an index or a generated column.
    start: sa.ColumnElement[int] = sa.literal_column("1", sa.Integer)
    length: sa.ColumnElement[int] = sa.literal_column("16", sa.Integer)
    tag_sql = sa.literal_column(f"'\\x{tag.hex()}'::bytea", sa.LargeBinary)
    encoded = tag_sql.op("||", return_type=sa.LargeBinary)(payload)
    first_16_hex = sa.func.substr(sa.func.md5(encoded, type_=sa.Text), start, length, type_=sa.Text)
    hex_literal = sa.literal_column("'x'", sa.Text).op("||", return_type=sa.Text)(first_16_hex)
    signed_hash = sa.cast(sa.cast(hex_literal, postgresql.BIT(64)), sa.BigInteger)
    low_63 = signed_hash.op("&", return_type=sa.BigInteger)(sa.literal_column(str(_LOW_63)))
    return low_63.op("%", return_type=sa.Integer)(sa.literal_column(str(logical_shards)))


def _int_shard_sql(
    column_expr: sa.ColumnElement[object], logical_shards: int
) -> sa.ColumnElement[int]:
    """``(key * multiplier mod 2**64) * n >> 64`` in ``bigint`` arithmetic, 32 bits at a time.

    A ``bigint`` product raises on overflow, and ``numeric`` arithmetic on
    128-bit products is slow, so the multiplication is done on 32-bit halves:
    with ``key = a * 2**32 + b`` (``b = key & (2**32 - 1)``, ``a = key >> 32``,
    signed) and the multiplier ``c * 2**32 + d`` (both halves below ``2**31``,
    so that no partial product overflows), the hash's halves are
    ``L = (b * d) & M32`` and ``H = ((b * d) >> 32 + (a * d) & M32 + (b * c)
    & M32) & M32`` (``M32 = 2**32 - 1``), and ``(h * n) >> 64`` is
    ``(H * n + (L * n) >> 32) >> 32``, exact while ``n < 2**31``. A larger
    logical count (no real map has one) takes ``numeric`` arithmetic.
    """
    import sqlalchemy as sa

    def constant(value: int) -> sa.ColumnElement[int]:
        return sa.literal_column(str(value), sa.BigInteger)

    def op(left: sa.ColumnElement[Any], operator: str, right: sa.ColumnElement[Any]) -> Any:
        return sa.Grouping(left.op(operator, return_type=sa.BigInteger)(right))

    key = sa.cast(column_expr, sa.BigInteger)
    if logical_shards >= 1 << 31:
        two_64 = sa.literal_column(str(_TWO_64), sa.Numeric)
        product = op(op(sa.cast(key, sa.Numeric), "+", two_64), "*", constant(_INT_MULTIPLIER))
        hash64 = sa.func.mod(product, two_64, type_=sa.Numeric)
        high = sa.func.div(op(hash64, "*", constant(logical_shards)), two_64, type_=sa.Numeric)
        return sa.cast(high, sa.BigInteger)
    m32 = constant(_MASK_32)
    c, d = constant(_INT_MULTIPLIER >> 32), constant(_INT_MULTIPLIER & _MASK_32)
    n = constant(logical_shards)
    low, high = op(key, "&", m32), op(key, ">>", constant(32))
    low_product = op(low, "*", d)
    middle = op(
        op(op(low_product, ">>", constant(32)), "+", op(op(high, "*", d), "&", m32)),
        "+",
        op(op(low, "*", c), "&", m32),
    )
    hash_high, hash_low = op(middle, "&", m32), op(low_product, "&", m32)
    shard = op(
        op(op(hash_high, "*", n), "+", op(op(hash_low, "*", n), ">>", constant(32))),
        ">>",
        constant(32),
    )
    return sa.cast(shard, sa.Integer)
