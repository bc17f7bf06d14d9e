"""pytest plugin: the ``fake_clock`` and ``scalekit_events`` fixtures.

Loaded through the ``pytest11`` entry point, so users get the fixtures by
installing scalekit. It imports nothing but pytest and scalekit's core.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scalekit.instrumentation import Event
from scalekit.testing import FakeClock, capture_events


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fresh :class:`~scalekit.testing.FakeClock` at monotonic time 0."""
    return FakeClock()


@pytest.fixture
def scalekit_events() -> Iterator[list[Event]]:
    """Every scalekit event emitted during the test, in order."""
    with capture_events() as events:
        yield events
