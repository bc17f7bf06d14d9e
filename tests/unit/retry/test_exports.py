"""The public surface: __all__ honest and sorted, the testing switch exported."""

from __future__ import annotations

import scalekit.retry
import scalekit.testing


def test_all_is_sorted_and_complete() -> None:
    names = scalekit.retry.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(scalekit.retry, name) is not None
    public = {n for n in dir(scalekit.retry) if n[0] not in "_@" and n != "annotations"}
    assert public - set(names) == set()


def test_testing_exports_keep_the_old_names() -> None:
    assert scalekit.testing.__all__ == sorted(scalekit.testing.__all__)
    for name in ("FakeClock", "capture_events", "set_testing", "is_testing"):
        assert name in scalekit.testing.__all__
