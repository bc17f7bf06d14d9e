"""The endpoints: list (cursor pagination), create, detail (cached), import (batch), stats
(async, rate limited), health."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connections, router
from django.http import HttpRequest, HttpResponse, JsonResponse

from orders_service.models import Order
from scalekit.contrib.django import ratelimit
from scalekit.errors import InvalidCursor
from scalekit.pagination import CursorCodec

codec = CursorCodec(secret=settings.CURSOR_SECRET, ttl=3600)


def orders(request: HttpRequest) -> HttpResponse:
    """GET: a page of orders, newest first, by signed cursor; POST: create one."""
    if request.method == "POST":
        body = json.loads(request.body or b"{}")
        order = Order.objects.create(
            customer=str(body.get("customer", "anonymous")),
            amount_cents=int(body.get("amount_cents", 0)),
        )
        return JsonResponse(order.as_dict(), status=201)
    query = Order.objects.order_by("-id")
    after = request.GET.get("after")
    if after:
        try:
            (last_id,) = codec.decode(after, fingerprint=b"orders")
        except InvalidCursor as exc:
            return JsonResponse({"error": f"bad cursor ({exc.reason})"}, status=400)
        query = query.filter(id__lt=last_id)
    limit = min(int(request.GET.get("limit", 20)), 100)
    page = list(query[: limit + 1])
    items, more = page[:limit], len(page) > limit
    next_cursor = codec.encode((items[-1].pk,), fingerprint=b"orders") if more else None
    return JsonResponse({"items": [o.as_dict() for o in items], "next": next_cursor})


def order(request: HttpRequest, order_id: int) -> JsonResponse:
    """One order, through the cache (one load per key across instances when it expires)."""

    def load() -> dict[str, Any] | None:
        found = Order.objects.filter(pk=order_id).first()
        return None if found is None else found.as_dict()

    data = cache.get_or_set(f"order:{order_id}", load, timeout=30)
    if data is None:
        return JsonResponse({"error": "not found"}, status=404)
    return JsonResponse(data)


@ratelimit("5/minute", key="ip")
def import_orders(request: HttpRequest) -> JsonResponse:
    """POST a JSON list of orders: written in one batch by ``scalekit.batch``."""
    import sqlalchemy as sa

    from scalekit.batch import batch_insert

    rows = [
        {"customer": str(row["customer"]), "amount_cents": int(row["amount_cents"])}
        for row in json.loads(request.body or b"[]")
    ]
    alias = router.db_for_write(Order)
    engine = sa.create_engine(_sqlalchemy_url(alias), poolclass=sa.pool.NullPool)
    table = sa.Table(Order._meta.db_table, sa.MetaData(), autoload_with=engine)
    from django.utils import timezone

    now = timezone.now()
    result = batch_insert(engine, table, [{**row, "created": now} for row in rows])
    engine.dispose()
    return JsonResponse({"inserted": result.inserted}, status=201)


@ratelimit("30/minute", key="ip")
async def stats(request: HttpRequest) -> JsonResponse:
    """An async view: the count, cached for 5 seconds (the cache's real coroutines)."""
    count = await cache.aget("orders:count")
    if count is None:
        count = await Order.objects.acount()
        await cache.aset("orders:count", count, 5)
    return JsonResponse({"orders": count})


def _sqlalchemy_url(alias: str) -> str:
    db = connections[alias].settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql+psycopg://{db['USER']}{password}@{db['HOST']}{port}/{db['NAME']}"
