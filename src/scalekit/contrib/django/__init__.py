"""Django integration: a cache backend, rate limits, a database router, health.

Needs the ``django`` extra (``pip install 'scalekit-blocks[django]'``). See
``docs/django.md``.
"""

from __future__ import annotations

from scalekit.contrib.django._cache import ScalekitCache
from scalekit.contrib.django._consistency import ConsistencyMiddleware
from scalekit.contrib.django._ratelimit import RateLimitMiddleware, ratelimit
from scalekit.contrib.django._router import ScalekitRouter, use_primary
from scalekit.contrib.django._views import export_response, health_view

__all__ = [
    "ConsistencyMiddleware",
    "RateLimitMiddleware",
    "ScalekitCache",
    "ScalekitRouter",
    "export_response",
    "health_view",
    "ratelimit",
    "use_primary",
]
