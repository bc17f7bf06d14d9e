"""``export_response``: a streaming CSV download over ``scalekit.batch.export`` (SQLite)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from django.http import StreamingHttpResponse
from django.test import Client, override_settings
from django.urls import path

from scalekit.contrib.django import export_response
from tests.unit.django import _django  # noqa: F401  (configures Django)

engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
metadata = sa.MetaData()
items = sa.Table("items", metadata, sa.Column("id", sa.Integer), sa.Column("name", sa.Text))
metadata.create_all(engine)
with engine.begin() as conn:
    conn.execute(items.insert(), [{"id": i, "name": f"item {i}"} for i in range(5000)])


def download(request: Any) -> StreamingHttpResponse:
    return export_response(engine, sa.select(items).order_by(items.c.id), filename="items.csv")


urlpatterns = [path("items.csv", download)]


@override_settings(ROOT_URLCONF=__name__)
def test_download_streams_csv() -> None:
    response = Client().get("/items.csv")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="items.csv"'
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines[0] == "id,name"
    assert lines[1] == "0,item 0"
    assert len(lines) == 5001


def test_an_early_close_releases_the_connection() -> None:
    pooled = sa.create_engine("sqlite://", poolclass=sa.pool.QueuePool)
    response = export_response(
        pooled,
        sa.text(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL "
            "SELECT x + 1 FROM n WHERE x < 100000) "
            "SELECT x FROM n"
        ),
        chunk_size=100,
    )
    chunks = iter(response)
    next(chunks)
    assert pooled.pool.checkedout() == 1
    response.close()  # what Django does when the client goes away
    assert pooled.pool.checkedout() == 0


async def test_an_async_engine_streams_an_async_iterator() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        response = export_response(
            engine, sa.text("SELECT 1 AS one UNION ALL SELECT 2"), filename="one.csv"
        )
        assert response.is_async
        body = b"".join([chunk async for chunk in response])
        assert body.decode().splitlines() == ["one", "1", "2"]
    finally:
        await engine.dispose()
