"""tenacity interop: a policy as a ``tenacity.Retrying``, and tenacity strategies in a policy.

Imported only when a user asks for tenacity (``policy.as_tenacity()``) or
passed a tenacity ``stop``/``wait`` strategy and a call failed; the policy's
own success path never touches tenacity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalekit.errors import ConfigurationError
from scalekit.retry._flow import Sleep, Withdraw, call_attempt, failures
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
    """Build the tenacity equivalent of ``policy`` (see :meth:`RetryPolicy.as_tenacity`).

    tenacity runs its own loop; its callbacks step scalekit's one retry loop
    (:func:`scalekit.retry._flow.failures`) so the decisions, the budget and
    the events are those of every other front-end.
    """
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
        flow = getattr(retry_state, "scalekit_flow", None)
        retry_state.scalekit_delay = None
        try:
            if flow is None:
                start = getattr(retry_state, "scalekit_start", None)
                state = RetryState(policy, start, retry_state.fn)
                retry_state.scalekit_state = state
                flow = failures(policy, call_attempt, exc, start, state=state)
                retry_state.scalekit_flow = flow
                op = next(flow)
            else:
                op = flow.throw(exc)  # the flow waits at the attempt (CALL)
            while type(op) is Withdraw:
                op = flow.send(op.budget.try_withdraw())
        except BaseException as error:
            # Given up, refused by the budget, or not retryable (then tenacity
            # re-raises the error as it is; else ``stop`` ends it, so tenacity's
            # ``reraise`` applies).
            state = retry_state.scalekit_state
            return not (error is exc and state.reason == "not_retryable")
        if type(op) is Sleep:
            retry_state.scalekit_delay = op.seconds
            flow.send(None)  # the wait is tenacity's; the flow moves on to the attempt
        else:
            retry_state.scalekit_delay = 0.0
        return True

    def stop(retry_state: Any) -> bool:
        return getattr(retry_state, "scalekit_delay", None) is None

    def wait(retry_state: Any) -> float:
        delay = getattr(retry_state, "scalekit_delay", None)
        return 0.0 if delay is None else float(delay)

    common: dict[str, Any] = {
        "retry": retry,
        "stop": stop,
        "wait": wait,
        "before": before,
        "reraise": policy.reraise,
    }
    if asynchronous:
        return tenacity.AsyncRetrying(sleep=clock.asleep, **common)
    return tenacity.Retrying(sleep=clock.sleep, **common)
