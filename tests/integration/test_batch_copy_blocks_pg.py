"""The binary COPY path writes rows in blocks through psycopg's own row encoder
(issue 20), and falls back to ``Copy.write_row`` where psycopg does not expose
it: both load the same rows, and a value that cannot be encoded after several
blocks were sent still aborts the whole COPY naming its row and column."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from scalekit.batch import _async, _sync
from scalekit.errors import InvalidBatchRow
from tests.integration.test_batch_pg import Pg, row

pytestmark = pytest.mark.integration

COUNT = 6_000  # about 600 kB of binary COPY data: many 32 kB blocks


def wide_rows(count: int = COUNT) -> list[dict[str, Any]]:
    return [{**row(i), "sku": f"sku-{i}-" + "x" * 80} for i in range(count)]


@pytest.fixture(params=["encoder", "write_row"])
async def db(
    request: pytest.FixtureRequest, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Pg]:
    if request.param == "write_row":
        for module in (_sync, _async):
            monkeypatch.setattr(module, "binary_row_encoder", lambda: None)
    instance = Pg("sync", pg_url)  # each test sets the shell it drives
    yield instance
    await instance.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_blocks_load_every_row(db: Pg, mode: str) -> None:
    db.mode = mode
    rows = wide_rows()
    result = await db.load(rows, method="copy", chunk_size=COUNT)
    assert (result.method, result.inserted, result.chunks) == ("copy", COUNT, 1)
    assert result.bytes > 32 * 1024 * 10
    contents = db.contents()
    assert contents == {r["id"]: r for r in rows}


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_bad_value_after_sent_blocks_aborts_the_copy(db: Pg, mode: str) -> None:
    db.mode = mode
    rows = wide_rows()
    rows[5_000] = {**rows[5_000], "qty": "many"}
    with pytest.raises(InvalidBatchRow) as info:
        await db.load(rows, method="copy", chunk_size=COUNT)
    assert info.value.position == 5_000 and info.value.column == "qty"
    assert db.contents() == {}  # the blocks already sent were not committed


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_upsert_through_the_staging_copy(db: Pg, mode: str) -> None:
    from scalekit.batch import Upsert

    db.mode = mode
    await db.load(wide_rows(3_000), method="copy")
    updated = [{**r, "qty": 99} for r in wide_rows()]
    result = await db.load(updated, on_conflict=Upsert(index=["id"]), method="copy_staging")
    assert result.method == "copy_staging"
    assert db.contents() == {r["id"]: r for r in updated}
