"""The testing switch as the retry package exposes it (the one switch: ``scalekit._testmode``)."""

from __future__ import annotations

from scalekit._testmode import TestingMode, is_testing, set_testing, testing_attempts

__all__ = ["TestingMode", "is_testing", "set_testing", "testing_attempts"]
