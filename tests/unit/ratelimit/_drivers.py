"""One scenario list, run through the sync and the asyncio limiters alike.

A driver exposes the limiter's methods as plain calls; the async driver runs
each coroutine to completion on one private event loop, so a scenario reads
the same for both shells.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from scalekit.ratelimit import AsyncRateLimiter, RateLimiter

T = TypeVar("T")


class SyncDriver:
    kind = "sync"

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def __getattr__(self, name: str) -> Any:
        return getattr(self.limiter, name)


class AsyncDriver:
    kind = "async"

    def __init__(self, limiter: AsyncRateLimiter, loop: asyncio.AbstractEventLoop) -> None:
        self.limiter = limiter
        self.loop = loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.limiter, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.run(attribute(*args, **kwargs))

        return call
