"""Helpers for testing code that uses scalekit: a fake clock and event capture.

``scalekit.testing`` is public API for *your* test suite. It imports no
optional dependency. The pytest plugin (registered automatically when
scalekit is installed) offers the fixtures ``fake_clock`` and
``scalekit_events``.
"""

from __future__ import annotations

from scalekit.instrumentation._hooks import capture_events
from scalekit.testing._clock import FakeClock

__all__ = ["FakeClock", "capture_events"]
