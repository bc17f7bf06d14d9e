"""Moved to ``scalekit.testing.servers._redis``; kept for the suite's imports."""

from scalekit.testing.servers._redis import *  # noqa: F403
from scalekit.testing.servers._redis import __all__ as __all__
