"""tenacity interop: a policy as a ``tenacity.Retrying``, and tenacity strategies in a policy.

Imported only when a user asks for tenacity (``policy.as_tenacity()``) or
passed a tenacity ``stop``/``wait`` strategy and a call failed; the policy's
own success path never touches tenacity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalekit.errors import ConfigurationError
from scalekit.retry._policy import RetryState

if TYPE_CHECKING:
    from scalekit.retry._policy import RetryPolicy

__all__ = ["call_state", "to_tenacity"]


def _tenacity() -> Any:
    try:
        import tenacity
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "tenacity interop needs tenacity: pip install 'scalekit-blocks[retry]'"
        ) from exc
    return tenacity


def call_state(start: float) -> Any:
    """A ``tenacity.RetryCallState`` for strategies, started at ``start`` (policy clock)."""
    state = _tenacity().RetryCallState(None, None, (), {})
    state.start_time = start
    return state


def to_tenacity(policy: RetryPolicy, *, asynchronous: bool) -> Any:
    """Build the tenacity equivalent of ``policy`` (see :meth:`RetryPolicy.as_tenacity`)."""
    tenacity = _tenacity()
    clock = policy.clock
    budget = policy.budget

    def before(retry_state: Any) -> None:
        if retry_state.attempt_number == 1:
            retry_state.scalekit_start = clock.monotonic()
            if budget is not None and budget.deposit():
                budget.flush()

    def retry(retry_state: Any) -> bool:
        outcome = retry_state.outcome
        if outcome is None or not outcome.failed:
            return False
        exc = outcome.exception()
        state: RetryState | None = getattr(retry_state, "scalekit_state", None)
        if state is None:
            start = getattr(retry_state, "scalekit_start", None)
            fn = retry_state.fn
            state = RetryState(policy, start, fn)
            retry_state.scalekit_state = state
        state.attempt = retry_state.attempt_number
        delay = state.on_failure(exc)
        retry_state.scalekit_delay = delay
        if delay is None:
            if state.reason == "not_retryable":
                return False  # tenacity re-raises the error as it is
            state.give_up(exc)
            return True  # let ``stop`` end it, so tenacity's ``reraise`` applies
        if budget is not None and not budget.try_withdraw():
            state.budget_exhausted(exc, budget)
            retry_state.scalekit_delay = None
        return True

    def stop(retry_state: Any) -> bool:
        return getattr(retry_state, "scalekit_delay", None) is None

    def wait(retry_state: Any) -> float:
        delay = getattr(retry_state, "scalekit_delay", None)
        return 0.0 if delay is None else float(delay)

    def before_sleep(retry_state: Any) -> None:
        state: RetryState = retry_state.scalekit_state
        state.scheduled(retry_state.outcome.exception(), retry_state.scalekit_delay)

    common: dict[str, Any] = {
        "retry": retry,
        "stop": stop,
        "wait": wait,
        "before": before,
        "before_sleep": before_sleep,
        "reraise": policy.reraise,
    }
    if asynchronous:
        return tenacity.AsyncRetrying(sleep=clock.asleep, **common)
    return tenacity.Retrying(sleep=clock.sleep, **common)
