"""The binary COPY path's pure parts (issue 20): rows encoded a block at a time in
one C-level loop, and a staging table without the ordinal when nothing is returned."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg.adapt import Transformer
from psycopg.pq import Format

from scalekit.batch import Upsert
from scalekit.batch._base import (
    COPY_BINARY_HEADER,
    COPY_BINARY_TRAILER,
    COPY_FLUSH_BYTES,
    binary_row_encoder,
    copy_blocks,
)
from scalekit.batch._core import resolve_conflict, table_shape
from scalekit.batch._sql import ORD, PgStatements
from tests.unit.batch.test_upsert_increment import COLUMNS, stats

INT8, TEXT = 20, 25


class Failed(Exception):
    def __init__(self, index: int, row: Any, error: Exception) -> None:
        super().__init__(index)
        self.index, self.row, self.error = index, row, error


def _encoder() -> tuple[Any, Any]:
    encode = binary_row_encoder()
    assert encode is not None
    transformer = Transformer()
    transformer.set_dumper_types([INT8, TEXT], Format.BINARY)
    return encode, transformer


def _one_by_one(encode: Any, transformer: Any, rows: list[tuple[Any, ...]]) -> bytes:
    buffer = bytearray(COPY_BINARY_HEADER)
    for row in rows:
        encode(row, transformer, buffer)
    return bytes(buffer + COPY_BINARY_TRAILER)


@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 5_000])
def test_blocks_hold_the_rows_encoded_one_by_one_in_flush_sized_blocks(count: int) -> None:
    encode, transformer = _encoder()
    rows = [(i, f"sku-{i}-" + "x" * (i % 50)) for i in range(count)]
    blocks = list(copy_blocks(encode, rows, transformer, Failed))
    assert b"".join(blocks) == _one_by_one(encode, transformer, rows)
    assert blocks[0].startswith(COPY_BINARY_HEADER) and blocks[-1].endswith(COPY_BINARY_TRAILER)
    # Sized from the bytes per row seen so far: near psycopg's own flush size.
    assert all(len(block) < 2 * COPY_FLUSH_BYTES for block in blocks)
    if count == 5_000:
        assert len(blocks) > 5 and all(len(b) > COPY_FLUSH_BYTES // 2 for b in blocks[1:-1])


def test_a_row_that_cannot_be_encoded_is_named_by_its_index() -> None:
    encode, transformer = _encoder()
    rows: list[tuple[Any, ...]] = [(i, "ok") for i in range(3_000)]
    rows[2_500] = ("not a number", "bad")
    blocks = copy_blocks(encode, rows, transformer, Failed)
    assert next(blocks).startswith(COPY_BINARY_HEADER)  # sent before the bad row is met
    with pytest.raises(Failed) as info:
        list(blocks)
    assert info.value.index == 2_500 and info.value.row == ("not a number", "bad")


@pytest.mark.parametrize("returning", [None, ["id"]])
@pytest.mark.parametrize("upsert", [None, Upsert(index=["id"])])
def test_the_stage_has_the_ordinal_only_to_match_returned_rows(
    returning: list[str] | None, upsert: Upsert | None
) -> None:
    shape = table_shape(stats)
    plan = resolve_conflict(upsert, shape, COLUMNS)
    pg = PgStatements.build(shape, COLUMNS, ["int4", "text", "int4"], plan, returning, ())
    assert pg.stage_ordinal is bool(returning)
    assert (ORD in pg.create_stage) is bool(returning)
    assert (ORD in pg.copy_stage) is bool(returning)
    assert (ORD in pg.copy_stage_text) is bool(returning)
    if not returning:
        assert ORD not in pg.from_stage


@pytest.mark.parametrize(
    ("upsert", "kind", "returns"),
    [
        ("nothing", "inserted", False),
        (Upsert(index=["id"], update=[]), "inserted", False),
        (Upsert(index=["id"]), "counts", True),
        (Upsert(index=["id"], update=[], increment=["hits"]), "counts", True),
    ],
)
def test_a_do_nothing_is_counted_by_its_row_count(upsert: Any, kind: str, returns: bool) -> None:
    """DO NOTHING writes only inserted rows: no RETURNING (~2.5% of the server's work)."""
    shape = table_shape(stats)
    plan = resolve_conflict(upsert, shape, COLUMNS)
    pg = PgStatements.build(shape, COLUMNS, ["int4", "text", "int4"], plan, None, ())
    assert pg.kind == kind
    for sql in (pg.from_stage, pg.from_unnest):
        assert ("RETURNING" in sql) is returns
        assert "ON CONFLICT" in sql
