"""The process-wide testing switch: no waits, few attempts.

Read only on the failure path of a retry policy, so the switch costs nothing
while calls succeed. Exposed to users as :func:`scalekit.testing.set_testing`.
"""

from __future__ import annotations

import threading
from types import TracebackType

from scalekit.retry._validate import check_int

__all__ = ["TestingMode", "is_testing", "set_testing", "testing_attempts"]

_lock = threading.Lock()
# None while off; the attempt cap while on. One global read on the failure path.
_attempts_cap: int | None = None


class TestingMode:
    """What :func:`set_testing` returns: also a context manager that restores the previous mode.

    >>> from scalekit.testing import set_testing
    >>> with set_testing(True, attempts=2):
    ...     pass  # every retry policy: no sleeps, at most 2 attempts
    """

    __slots__ = ("_previous",)

    def __init__(self, previous: int | None) -> None:
        self._previous = previous

    def __enter__(self) -> TestingMode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        global _attempts_cap
        with _lock:
            _attempts_cap = self._previous


def set_testing(testing: bool, *, attempts: int = 1) -> TestingMode:
    """Turn the retry testing mode on or off for the whole process.

    While on, every :class:`~scalekit.retry.RetryPolicy` skips all its waits
    (backoff, ``Retry-After`` hints, an open breaker's ``retry_after``) and makes
    at most ``attempts`` attempts (``attempts=1``, the default, means no retries),
    so a test suite exercising failure paths never sleeps. Budgets still apply.

    The change is immediate; the returned object is also a context manager
    that restores the previous mode on exit.

    >>> from scalekit.testing import set_testing
    >>> _ = set_testing(True, attempts=1)
    >>> _ = set_testing(False)

    Raises:
        ConfigurationError: ``attempts`` is not an int >= 1.
    """
    global _attempts_cap
    check_int(attempts, "attempts")
    with _lock:
        previous = _attempts_cap
        _attempts_cap = attempts if testing else None
    return TestingMode(previous)


def is_testing() -> bool:
    """Whether the retry testing mode is on."""
    return _attempts_cap is not None


def testing_attempts() -> int | None:
    """The attempt cap of the testing mode, or ``None`` when it is off."""
    return _attempts_cap
