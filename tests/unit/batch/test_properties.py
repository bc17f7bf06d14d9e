"""Property: random rows, chunk sizes and duplicates; the table ends equal to the expected dict."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.pool import StaticPool

from scalekit.batch import Upsert, batch_insert
from tests.unit.batch.conftest import items, metadata

row = st.fixed_dictionaries({"id": st.integers(0, 30), "qty": st.integers(-5, 5) | st.none()})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    existing=st.lists(row, max_size=15, unique_by=lambda r: r["id"]),
    rows=st.lists(row, max_size=60),
    chunk_size=st.integers(1, 25),
    dedupe=st.sampled_from(["first", "last"]),
    action=st.sampled_from(["update", "nothing"]),
    transaction=st.sampled_from(["all_or_nothing", "per_chunk", "savepoint"]),
)
def test_upsert_ends_with_the_expected_table(
    existing: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    chunk_size: int,
    dedupe: str,
    action: str,
    transaction: str,
) -> None:
    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    metadata.create_all(engine)
    with_sku = [{"id": r["id"], "sku": f"s{r['id']}", "qty": r["qty"]} for r in existing]
    if with_sku:
        batch_insert(engine, items, with_sku)
    expected = {r["id"]: r["qty"] for r in existing}
    inserted = updated = skipped = duplicates = 0
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        winners: dict[int, Any] = {}
        for r in chunk:
            if dedupe == "last" or r["id"] not in winners:
                winners[r["id"]] = r["qty"]
        duplicates += len(chunk) - len(winners)
        for key, qty in winners.items():
            if key not in expected:
                inserted += 1
                expected[key] = qty
            elif action == "update":
                updated += 1
                expected[key] = qty
            else:
                skipped += 1
    on_conflict = Upsert(index=["id"], update=["qty"] if action == "update" else [])
    result = batch_insert(
        engine,
        items,
        ({"id": r["id"], "sku": f"s{r['id']}", "qty": r["qty"]} for r in rows),
        chunk_size=chunk_size,
        on_conflict=on_conflict,
        dedupe=dedupe,  # type: ignore[arg-type]
        transaction=transaction,  # type: ignore[arg-type]
    )
    with engine.connect() as connection:
        table = {r.id: r.qty for r in connection.execute(sa.select(items))}
    engine.dispose()
    assert table == expected
    assert (result.inserted, result.updated, result.skipped, result.duplicates) == (
        inserted,
        updated,
        skipped,
        duplicates,
    )
    assert result.rows == len(rows)
