"""Moved to ``scalekit.testing.servers._postgres``; kept for the suite's imports."""

from scalekit.testing.servers._postgres import *  # noqa: F403
from scalekit.testing.servers._postgres import __all__ as __all__
