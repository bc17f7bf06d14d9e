"""Moved to ``scalekit.testing.servers._process``; kept for the suite's imports."""

from scalekit.testing.servers._process import *  # noqa: F403
from scalekit.testing.servers._process import __all__ as __all__
