"""Django integration: a cache backend, rate limits, a database router, health.

Needs the ``django`` extra (``pip install 'scalekit-blocks[django]'``). See
``docs/django.md``.
"""

from __future__ import annotations

from scalekit.contrib.django._cache import ScalekitCache
from scalekit.contrib.django._ratelimit import RateLimitMiddleware, ratelimit

__all__ = ["RateLimitMiddleware", "ScalekitCache", "ratelimit"]
