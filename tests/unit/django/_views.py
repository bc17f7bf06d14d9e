"""Views and URLs for the tests of ``scalekit.contrib.django`` (ROOT_URLCONF)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpResponse, JsonResponse
from django.urls import path

from scalekit.contrib.django import health_view, ratelimit
from tests.unit.django._models import Order

calls: list[str] = []


@ratelimit("2/minute")
def limited(request: Any) -> HttpResponse:
    calls.append("limited")
    return HttpResponse("ok")


@ratelimit("2/minute")
async def alimited(request: Any) -> HttpResponse:
    calls.append("alimited")
    return HttpResponse("ok")


@ratelimit("3/minute; 100/hour", key=lambda request: request.headers.get("X-Api-Key", "none"))
def by_api_key(request: Any) -> HttpResponse:
    return HttpResponse("ok")


@ratelimit("1/minute", methods=["POST"], name="writes")
def writes_only(request: Any) -> HttpResponse:
    return HttpResponse("ok")


def plain(request: Any) -> HttpResponse:
    return HttpResponse("ok")


async def aplain(request: Any) -> HttpResponse:
    return HttpResponse("ok")


def create_order(request: Any) -> JsonResponse:
    order = Order.objects.create(customer=request.POST.get("customer", "c"), amount=1)
    return JsonResponse({"id": order.pk}, status=201)


def read_order(request: Any, order_id: int) -> JsonResponse:
    query = Order.objects.filter(pk=order_id)
    return JsonResponse({"found": query.exists(), "db": query.db})


async def acreate_order(request: Any) -> JsonResponse:
    order = await Order.objects.acreate(customer="c", amount=1)
    return JsonResponse({"id": order.pk}, status=201)


async def aread_order(request: Any, order_id: int) -> JsonResponse:
    query = Order.objects.filter(pk=order_id)
    found = await query.aexists()
    return JsonResponse({"found": found, "db": await sync_to_async(lambda: query.db)()})


urlpatterns = [
    path("orders", create_order),
    path("orders/<int:order_id>", read_order),
    path("aorders", acreate_order),
    path("aorders/<int:order_id>", aread_order),
    path("health", health_view),
    path("limited", limited),
    path("alimited", alimited),
    path("by-key", by_api_key),
    path("writes", writes_only),
    path("plain", plain),
    path("aplain", aplain),
    path("health/plain", plain),
]
