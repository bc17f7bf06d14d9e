"""The testing switch, as the retry package exports it (defined in ``scalekit.testing``)."""

from __future__ import annotations

from scalekit.testing._switch import TestingMode, is_testing, set_testing, testing_attempts

__all__ = ["TestingMode", "is_testing", "set_testing", "testing_attempts"]
