"""Circuit breaker: fail fast while a dependency is down, probe it back carefully.

::

    from scalekit.breaker import CircuitBreaker

    breaker = CircuitBreaker("billing", failure_rate=0.5, window=20, min_calls=10,
                             reset_timeout=30.0, exclude=(NotFound,))

    @breaker
    def charge(order_id: int) -> Receipt: ...      # also on async def

How the parts fit: :class:`BreakerPolicy` (``_config.py``) is the frozen,
validated configuration; ``_core.py`` is the pure state machine (a table of
transitions, a count or time window, half-open probe slots) driven by an
injected clock; :class:`CircuitBreaker` (``_breaker.py``) locks the core
briefly and never around the user's call, with the sync and asyncio drivers
in ``_sync.py`` and ``_async.py``. :class:`RedisStorage` (``_redis.py`` and
``_lua/breaker.lua``) shares the state across processes; ``_pybreaker.py``
eases migration from pybreaker.

Rejected calls raise :class:`scalekit.errors.CircuitOpenError` (``.name``,
``.retry_after``); state changes and rejections are emitted as
:class:`BreakerStateChanged` and :class:`BreakerRejected` events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalekit.breaker._breaker import BreakerMetrics, CircuitBreaker, Guard, Permit
from scalekit.breaker._config import BreakerPolicy
from scalekit.breaker._core import State
from scalekit.breaker._events import BreakerRejected, BreakerStateChanged
from scalekit.breaker._pybreaker import ListenerBridge, PybreakerState, from_pybreaker
from scalekit.errors import CircuitOpenError

if TYPE_CHECKING:
    from scalekit.breaker._redis import RedisStorage

__all__ = [
    "BreakerMetrics",
    "BreakerPolicy",
    "BreakerRejected",
    "BreakerStateChanged",
    "CircuitBreaker",
    "CircuitOpenError",
    "Guard",
    "ListenerBridge",
    "Permit",
    "PybreakerState",
    "RedisStorage",
    "State",
    "from_pybreaker",
]


def __getattr__(name: str) -> Any:
    # RedisStorage is loaded on first use so that importing the breaker never
    # imports redis-py.
    if name == "RedisStorage":
        from scalekit.breaker._redis import RedisStorage

        return RedisStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
