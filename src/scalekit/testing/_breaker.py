"""Put a circuit breaker in the state a test needs, through its public controls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from scalekit.errors import CircuitOpenError, ConfigurationError

if TYPE_CHECKING:
    from scalekit.breaker import CircuitBreaker
    from scalekit.testing._clock import FakeClock

__all__ = ["BreakerTarget", "force_breaker"]

BreakerTarget = Literal["closed", "open", "half_open", "forced_open", "disabled"]
_TARGETS = ("closed", "open", "half_open", "forced_open", "disabled")


def force_breaker(
    breaker: CircuitBreaker, state: BreakerTarget, *, clock: FakeClock | None = None
) -> None:
    """Move ``breaker`` to ``state`` now, as a test's starting point.

    - ``"closed"``: closed with its counts reset (:meth:`CircuitBreaker.close`);
    - ``"open"``: open for its open duration, after which it probes
      (:meth:`CircuitBreaker.open`);
    - ``"half_open"``: open, then ``clock`` moved past the open duration and
      the state taken to half-open, every probe slot free: the next call is
      a probe. Needs the :class:`~scalekit.testing.FakeClock` the breaker was
      built with;
    - ``"forced_open"``: rejecting every call until closed
      (:meth:`CircuitBreaker.force_open`);
    - ``"disabled"``: admitting every call, never tripping
      (:meth:`CircuitBreaker.disable`).

    For a breaker that keeps its state in process or in Redis through a sync
    client; with an asyncio Redis storage use the breaker's async controls.

    Raises:
        ConfigurationError: an unknown ``state``; ``"half_open"`` without
            ``clock``, or with a clock the breaker does not run on.
    """
    if state not in _TARGETS:
        raise ConfigurationError(
            f"state must be one of {', '.join(_TARGETS)}, got {state!r}", parameter="state"
        )
    if state == "closed":
        breaker.close()
    elif state == "forced_open":
        breaker.force_open()
    elif state == "disabled":
        breaker.disable()
    else:
        if state == "half_open" and clock is None:
            raise ConfigurationError(
                "half_open needs the FakeClock the breaker was built with (clock=...)",
                parameter="clock",
            )
        breaker.open()
        if state == "half_open":
            assert clock is not None
            retry_after = breaker.metrics().retry_after
            clock.advance(retry_after or 0.0)
            try:
                permit = breaker.acquire()  # the open duration is over: OPEN -> HALF_OPEN
            except CircuitOpenError:
                raise ConfigurationError(
                    f"breaker {breaker.name!r} did not reach half-open: it does not run on "
                    "this clock",
                    parameter="clock",
                ) from None
            permit.release()  # give the probe slot back
