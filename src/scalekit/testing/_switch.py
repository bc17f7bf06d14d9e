"""The process-wide testing switch: no waits, few attempts.

One flag for every component that waits: a retry policy (its backoff, its
attempts), the cache's wait for a lease holder, the concurrency limiter's
``acquire(timeout=...)``, a routed read waiting for a replica to catch up
(``sticky_timeout``). Each reads it only at the point it is about to sleep, so
the switch costs nothing on a hot path. Exposed to users as
:func:`scalekit.testing.set_testing` (and :func:`scalekit.retry.set_testing`).
"""

from __future__ import annotations

import threading
from types import TracebackType

from scalekit.errors import ConfigurationError

__all__ = ["TestingMode", "is_testing", "set_testing", "testing_attempts"]

_lock = threading.Lock()
# None while off; the attempt cap while on. One global read on the failure path.
_attempts_cap: int | None = None


class TestingMode:
    """What :func:`set_testing` returns: also a context manager that restores the previous mode.

    >>> from scalekit.testing import set_testing
    >>> with set_testing(True, attempts=2):
    ...     pass  # no waits anywhere; every retry policy: at most 2 attempts
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
    """Turn the testing mode on or off for the whole process: no component waits.

    While on, nothing in scalekit sleeps; each component decides at once as if
    its wait had run out:

    - every :class:`~scalekit.retry.RetryPolicy` skips all its waits (backoff,
      ``Retry-After`` hints, an open breaker's ``retry_after``) and makes at most
      ``attempts`` attempts (``attempts=1``, the default, means no retries);
      budgets still apply (batch writes retry through the same policies);
    - a cache call that finds another caller loading the key (the lease) looks
      once more for the holder's value and tries the lease once more, then gives
      up waiting as if ``lease_wait`` had passed (it loads the value itself);
    - ``ConcurrencyLimiter.acquire(key, timeout=...)`` raises
      :class:`~scalekit.errors.ConcurrencyLimitExceeded` at once when no slot
      is free, as if ``timeout`` had passed;
    - a routed read waiting for a replica to reach the session's write
      (``sticky_timeout``) stops waiting and goes where a timed-out wait goes.

    The change is immediate; the returned object is also a context manager
    that restores the previous mode on exit.

    >>> from scalekit.testing import set_testing
    >>> _ = set_testing(True, attempts=1)
    >>> _ = set_testing(False)

    Raises:
        ConfigurationError: ``attempts`` is not an int >= 1.
    """
    global _attempts_cap
    value: object = attempts  # checked as any object: users' calls are not type-checked
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"attempts must be an int >= 1, got {attempts!r}", parameter="attempts"
        )
    with _lock:
        previous = _attempts_cap
        _attempts_cap = attempts if testing else None
    return TestingMode(previous)


def is_testing() -> bool:
    """Whether the testing mode (:func:`set_testing`) is on."""
    return _attempts_cap is not None


def testing_attempts() -> int | None:
    """The attempt cap of the testing mode, or ``None`` when it is off."""
    return _attempts_cap
