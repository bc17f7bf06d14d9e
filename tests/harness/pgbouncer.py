"""Moved to ``scalekit.testing.servers._pgbouncer``; kept for the suite's imports."""

from scalekit.testing.servers._pgbouncer import *  # noqa: F403
from scalekit.testing.servers._pgbouncer import __all__ as __all__
