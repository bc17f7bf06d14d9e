"""Views and URLs for the tests of ``scalekit.contrib.django`` (ROOT_URLCONF)."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.urls import path

from scalekit.contrib.django import ratelimit

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


urlpatterns = [
    path("limited", limited),
    path("alimited", alimited),
    path("by-key", by_api_key),
    path("writes", writes_only),
    path("plain", plain),
    path("aplain", aplain),
    path("health/plain", plain),
]
