"""``health_view`` and ``export_response``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.http import JsonResponse, StreamingHttpResponse

from scalekit.contrib.django import _router, _settings

__all__ = ["export_response", "health_view"]

_RANK = {"ok": 0, "warn": 1, "critical": 2}


def _databases() -> tuple[str, dict[str, Any]]:
    """``SELECT 1`` on every Django alias, and the router's view of them (if routing)."""
    from django.db import Error, connections

    routed = _settings.section("ROUTING")
    routing = _router.routing() if routed else None
    view = routing.health() if routing is not None else {"nodes": {}}
    primary = routing.core.primary if routing is not None else "default"
    status = "ok"
    components: dict[str, Any] = {}
    for alias in connections:
        started = time.perf_counter()
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
            up, reason = True, None
        except Error as exc:
            connections[alias].close()
            up, reason = False, type(exc).__name__
        node = view["nodes"].get(alias, {})
        lagging = bool(node.get("lagging"))
        if not up:
            level = "critical" if alias == primary else "warn"
        else:
            level = "warn" if lagging else "ok"
        status = max(status, level, key=_RANK.__getitem__)
        components[f"db:{alias}"] = {
            "kind": "django-db",
            "status": level,
            "up": up,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "reasons": [] if reason is None else [reason],
            "details": {
                key: node[key] for key in ("role", "lag_seconds", "lag_bytes") if key in node
            },
        }
    return status, components


def _scalekit_caches() -> dict[str, Any]:
    """The scalekit caches behind ``CACHES`` aliases served by :class:`ScalekitCache`."""
    from django.conf import settings
    from django.core.cache import caches

    from scalekit.contrib.django._cache import ScalekitCache

    found = {}
    for alias in settings.CACHES:
        backend = caches[alias]
        if isinstance(backend, ScalekitCache):
            found[alias] = backend._shared.sync().cache
    return found


def health_view(request: Any) -> JsonResponse:
    """A JSON health report: Django's databases (with the router's roles and lag) and Redis.

    Built on :func:`scalekit.health.check_health` (Redis, the rate limiter's and
    the caches' fallback state) plus a ``SELECT 1`` on every alias in
    ``DATABASES``. Redis counts at most as ``warn`` here: the cache and the
    limits degrade without it (their fallbacks), so it never makes an instance
    unhealthy. The status is the worst component's; HTTP 503 when ``critical``
    (the primary is down), else 200. No URL, host or secret is reported. Route
    it::

        path("health", health_view)
    """
    from scalekit.health import check_health

    redis = _settings.redis_client(False)
    try:
        report = check_health(
            redis=redis,
            limiters=[_settings.limiters.sync()] if _settings.section("RATELIMIT") else None,
            caches=_scalekit_caches() or None,
        )
    finally:
        if redis is not None:
            redis.close()
    body = report.to_dict()
    status = "ok"
    for name, component in body["components"].items():
        if name.startswith("redis:"):
            component["required"] = False
        level = (
            component["status"]
            if component["required"]
            else min(component["status"], "warn", key=_RANK.__getitem__)
        )
        status = max(status, level, key=_RANK.__getitem__)
    db_status, components = _databases()
    body["components"].update(components)
    body["status"] = max(status, db_status, key=_RANK.__getitem__)
    return JsonResponse(body, status=503 if body["status"] == "critical" else 200)


def export_response(
    target: Any,
    select: Any,
    *,
    filename: str = "export.csv",
    format: str = "csv",
    chunk_size: int | None = None,
) -> StreamingHttpResponse:
    """A streaming download of ``select`` over :func:`scalekit.batch.export` (CSV by default).

    ``target`` is a SQLAlchemy ``Engine`` (or ``AsyncEngine``: the response then
    streams an async iterator, for ASGI). Memory stays bounded; the connection
    is taken when the first chunk is sent and released when the download ends
    or the client goes away (Django closes the response, which closes the
    export).

    Raises:
        ConfigurationError: as :func:`scalekit.batch.export`, for a bad format or target.
    """
    from scalekit.batch import aexport, export

    is_async = False
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
    except ImportError:  # pragma: no cover - the batch export needs SQLAlchemy anyway
        pass
    else:
        is_async = isinstance(target, AsyncEngine | AsyncConnection | AsyncSession)
    stream: Callable[..., Any] = aexport if is_async else export
    chunks = stream(target, select, format=format, chunk_size=chunk_size)
    content_type = {
        "csv": "text/csv; charset=utf-8",
        "text": "text/plain; charset=utf-8",
        "binary": "application/octet-stream",
    }.get(format, "application/octet-stream")
    response = StreamingHttpResponse(chunks, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
