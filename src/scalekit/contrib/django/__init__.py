"""Django integration: a cache backend, rate limits, a database router, health.

Needs the ``django`` extra (``pip install 'scalekit-blocks[django]'``). See
``docs/django.md``.
"""

from __future__ import annotations

from scalekit.contrib.django._cache import ScalekitCache

__all__ = ["ScalekitCache"]
