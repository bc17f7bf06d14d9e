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

The 64-bit key hash is the first 8 bytes of the MD5 digest of that string,
read as an unsigned big-endian integer. The logical shard is the low 63 bits
of the hash modulo the number of logical shards. MD5 is used as a mixing
function, not for security: it is in every Python (``hashlib``) and in every
PostgreSQL (``md5(bytea)``), so the server computes the very same value with
built-in functions (``int8send``, ``convert_to``, ``uuid_send``), and
:func:`shard_sql` returns that expression for a column. Python's ``hash()``
is never used: it is salted per process for ``str`` and ``bytes``.

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
    """The canonical byte encoding of ``key`` that the hash is taken over.

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
    4338413226906082451

    Raises:
        ConfigurationError: as :func:`key_bytes`.
    """
    return _from_bytes(_md5(key_bytes(key)).digest()[:8], "big")


def logical_shard(key: ShardKey, logical_shards: int = DEFAULT_LOGICAL_SHARDS) -> int:
    """The logical shard, ``0 <= shard < logical_shards``, that ``key`` belongs to.

    >>> logical_shard(42)
    147

    Raises:
        ConfigurationError: ``logical_shards`` is not a positive int, or
            ``key`` is not a valid shard key (see :func:`key_bytes`).
    """
    if type(logical_shards) is not int or logical_shards < 1:
        _check_logical_shards(logical_shards)
    return (_from_bytes(_md5(key_bytes(key)).digest()[:8], "big") & _LOW_63) % logical_shards


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
        tag, payload = _TAG_INT, sa.func.int8send(sa.cast(column_expr, sa.BigInteger))
    elif kind == "str":
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
