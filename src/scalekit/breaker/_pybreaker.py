"""pybreaker compatibility: its state names, its listeners, its breakers.

pybreaker users switch with a small diff (see ``docs/breaker.md``):
:class:`~scalekit.breaker.CircuitBreaker` takes pybreaker's parameter names
for the consecutive-failure mode (``fail_max``, ``reset_timeout``,
``success_threshold``, ``exclude``, ``listeners``, ``name``) and exposes
``current_state`` and ``fail_counter``. :class:`ListenerBridge` forwards our
outcomes and state changes to pybreaker-style listeners (any object with
some of ``before_call``, ``success``, ``failure``, ``state_change``), and
:func:`from_pybreaker` converts a configured ``pybreaker.CircuitBreaker``.

pybreaker itself is never imported here, except by :func:`from_pybreaker`'s
caller who already has one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from scalekit.breaker._config import FAILURE, IGNORED
from scalekit.breaker._core import State
from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from scalekit.breaker._breaker import CircuitBreaker

__all__ = ["ListenerBridge", "PybreakerState", "from_pybreaker", "pybreaker_state_name"]

_NAMES = {
    State.CLOSED: "closed",
    State.OPEN: "open",
    State.HALF_OPEN: "half-open",
    State.FORCED_OPEN: "open",
    State.DISABLED: "closed",
}


def pybreaker_state_name(state: State) -> str:
    """pybreaker's word for ``state``: forced-open reads ``"open"``, disabled ``"closed"``."""
    return _NAMES[state]


class PybreakerState:
    """What a pybreaker listener's ``state_change`` receives: an object with ``.name``.

    ``.state`` is scalekit's finer :class:`State`.
    """

    __slots__ = ("name", "state")

    def __init__(self, state: State) -> None:
        self.state = state
        self.name = _NAMES[state]

    def __repr__(self) -> str:
        return f"PybreakerState({self.name!r})"


class ListenerBridge:
    """Forwards a breaker's calls, outcomes and state changes to pybreaker listeners.

    Listeners are called with the scalekit breaker as ``cb``. A listener that
    raises is not shielded, as in pybreaker. Excluded exceptions (outcome
    "ignored") call ``success``, as pybreaker does for its excluded errors.

    Raises:
        ConfigurationError: a listener has none of the four methods.
    """

    __slots__ = ("_before", "_failure", "_state_change", "_success", "listeners")

    def __init__(self, listeners: Iterable[Any]) -> None:
        self.listeners = tuple(listeners)
        methods = ("before_call", "success", "failure", "state_change")
        for listener in self.listeners:
            if not any(callable(getattr(listener, m, None)) for m in methods):
                raise ConfigurationError(
                    f"listener {listener!r} has none of {', '.join(methods)}",
                    parameter="listeners",
                )

        def bound(method: str) -> tuple[Callable[..., Any], ...]:
            return tuple(
                getattr(listener, method)
                for listener in self.listeners
                if callable(getattr(listener, method, None))
            )

        self._before = bound("before_call")
        self._success = bound("success")
        self._failure = bound("failure")
        self._state_change = bound("state_change")

    def before_call(
        self,
        cb: CircuitBreaker,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        for before in self._before:
            before(cb, func, *args, **kwargs)

    def outcome(self, cb: CircuitBreaker, outcome: int, exc: BaseException | None) -> None:
        if outcome == FAILURE:
            for failure in self._failure:
                failure(cb, exc)
        elif outcome != IGNORED or exc is not None:
            for success in self._success:
                success(cb)

    def state_change(self, cb: CircuitBreaker, old: State, new: State) -> None:
        old_state, new_state = PybreakerState(old), PybreakerState(new)
        for state_change in self._state_change:
            state_change(cb, old_state, new_state)


def from_pybreaker(pybreaker_breaker: Any, **overrides: Any) -> CircuitBreaker:
    """Build a scalekit breaker with the settings of a ``pybreaker.CircuitBreaker``.

    Keeps ``fail_max``, ``reset_timeout``, ``success_threshold``, listeners
    and name, and pybreaker's meaning of ``exclude`` (excluded errors count as
    *successes*, where scalekit's own ``exclude`` counts them as neither).
    ``overrides`` are passed to :class:`CircuitBreaker` (e.g. ``storage=``,
    ``half_open_max_calls=``).

    >>> import pybreaker
    >>> breaker = from_pybreaker(pybreaker.CircuitBreaker(fail_max=3, name="db"))
    >>> breaker.name, breaker.fail_max
    ('db', 3)

    Raises:
        ConfigurationError: the object is not a pybreaker breaker.
    """
    from scalekit.breaker._breaker import CircuitBreaker

    try:
        fail_max = pybreaker_breaker.fail_max
        reset_timeout = pybreaker_breaker.reset_timeout
        success_threshold = pybreaker_breaker.success_threshold
        excluded = tuple(pybreaker_breaker.excluded_exceptions)
        listeners = tuple(pybreaker_breaker.listeners)
        name = pybreaker_breaker.name
    except AttributeError:
        raise ConfigurationError(
            f"{pybreaker_breaker!r} is not a pybreaker.CircuitBreaker",
            parameter="pybreaker_breaker",
        ) from None
    options: dict[str, Any] = {
        "fail_max": fail_max,
        "reset_timeout": float(reset_timeout),
        "success_threshold": success_threshold,
        "listeners": listeners,
    }
    if excluded:
        types = tuple(e for e in excluded if isinstance(e, type))
        predicates = tuple(e for e in excluded if not isinstance(e, type))

        def is_failure(exc: BaseException) -> bool:
            # pybreaker: an excluded error is a success; anything else a failure.
            return not (isinstance(exc, types) or any(p(exc) for p in predicates))

        options["include"] = (is_failure,)
    options.update(overrides)
    return CircuitBreaker(name or "pybreaker", **options)
