"""Assert what a rate limiter would decide for a key, without counting a hit."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from scalekit.ratelimit import AsyncRateLimiter, Decision, Limit, RateLimiter

__all__ = ["aassert_allowed", "aassert_limited", "assert_allowed", "assert_limited"]


def assert_allowed(
    limiter: RateLimiter,
    key: str | bytes,
    limit: Limit | str | Sequence[Limit | str],
    *,
    remaining: int | None = None,
) -> Decision:
    """Assert that ``limiter`` would allow a hit on ``key`` now; return its decision.

    Asks with :meth:`~scalekit.ratelimit.RateLimiter.peek`, so nothing is
    counted: the assertion does not change what the code under test sees.
    ``remaining`` also checks the capacity left now (before any further hit).

    >>> from scalekit.ratelimit import MemoryBackend, RateLimiter
    >>> limiter = RateLimiter(MemoryBackend())
    >>> _ = limiter.hit("user:1", "2/minute")
    >>> assert_allowed(limiter, "user:1", "2/minute", remaining=1).allowed
    True

    Raises:
        AssertionError: the hit would be denied, or ``remaining`` differs.
        ConfigurationError: a bad limit or key (from ``peek``).
    """
    return _check(limiter.peek(key, limit), key, allowed=True, remaining=remaining)


def assert_limited(
    limiter: RateLimiter, key: str | bytes, limit: Limit | str | Sequence[Limit | str]
) -> Decision:
    """Assert that ``limiter`` would deny a hit on ``key`` now; return its decision.

    Asks with :meth:`~scalekit.ratelimit.RateLimiter.peek`, so nothing is
    counted. The decision's ``retry_after`` says how long until the key is
    allowed again.

    >>> from scalekit.ratelimit import MemoryBackend, RateLimiter
    >>> limiter = RateLimiter(MemoryBackend())
    >>> _ = limiter.hit("user:1", "1/minute")
    >>> assert_limited(limiter, "user:1", "1/minute").retry_after > 0
    True

    Raises:
        AssertionError: the hit would be allowed.
        ConfigurationError: a bad limit or key (from ``peek``).
    """
    return _check(limiter.peek(key, limit), key, allowed=False, remaining=None)


async def aassert_allowed(
    limiter: AsyncRateLimiter,
    key: str | bytes,
    limit: Limit | str | Sequence[Limit | str],
    *,
    remaining: int | None = None,
) -> Decision:
    """:func:`assert_allowed` for an :class:`~scalekit.ratelimit.AsyncRateLimiter`.

    Raises:
        AssertionError: the hit would be denied, or ``remaining`` differs.
        ConfigurationError: a bad limit or key (from ``peek``).
    """
    return _check(await limiter.peek(key, limit), key, allowed=True, remaining=remaining)


async def aassert_limited(
    limiter: AsyncRateLimiter, key: str | bytes, limit: Limit | str | Sequence[Limit | str]
) -> Decision:
    """:func:`assert_limited` for an :class:`~scalekit.ratelimit.AsyncRateLimiter`.

    Raises:
        AssertionError: the hit would be allowed.
        ConfigurationError: a bad limit or key (from ``peek``).
    """
    return _check(await limiter.peek(key, limit), key, allowed=False, remaining=None)


def _check(
    decision: Decision, key: str | bytes, *, allowed: bool, remaining: int | None
) -> Decision:
    if decision.allowed is not allowed:
        verdict = "denied" if allowed else "allowed"
        raise AssertionError(
            f"expected {key!r} to be {'allowed' if allowed else 'limited'} by {decision.limit}, "
            f"but a hit would be {verdict} (remaining={decision.remaining}, "
            f"retry_after={decision.retry_after:.3f}s, fallback={decision.fallback})"
        )
    if remaining is not None and decision.remaining != remaining:
        raise AssertionError(
            f"expected {key!r} to have {remaining} remaining under {decision.limit}, "
            f"got {decision.remaining}"
        )
    return decision
