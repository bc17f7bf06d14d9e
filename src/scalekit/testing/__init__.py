"""Helpers for testing code that uses scalekit: a fake clock and event capture.

``scalekit.testing`` is public API for *your* test suite. It imports no
optional dependency. The pytest plugin (registered automatically when
scalekit is installed) offers the fixtures ``fake_clock`` and
``scalekit_events``.

:func:`set_testing` turns every retry policy's waits off and caps its
attempts, so failure paths in your tests never sleep::

    from scalekit.testing import set_testing

    with set_testing(True, attempts=1):  # or call it once in conftest.py
        ...
"""

from __future__ import annotations

from scalekit.instrumentation._hooks import capture_events
from scalekit.retry._testing import TestingMode, is_testing, set_testing
from scalekit.testing._clock import FakeClock

__all__ = ["FakeClock", "TestingMode", "capture_events", "is_testing", "set_testing"]
