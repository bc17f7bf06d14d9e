"""One object per running event loop, closed on that loop before it closes.

An asyncio Redis connection belongs to the loop that opened it, so the async
cache and limiters are built per loop. A long-lived ASGI server has one loop;
an async view under WSGI runs in a fresh loop per request (``async_to_sync``,
which ends with ``asyncio.run``'s ``shutdown_asyncgens``). So each object is
paired with a started async generator: when its loop shuts its generators down,
the generator's ``finally`` closes the object there, and no connection is left
open on a dead loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


async def _close_at_shutdown(close: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await close()


class PerLoop(Generic[T]):
    """``get(build)``: the running loop's object, built by ``build()`` the first time.

    ``build`` returns the object and a coroutine function that closes it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: weakref.WeakKeyDictionary[Any, tuple[T, Any]] = weakref.WeakKeyDictionary()

    def get(self, build: Callable[[], tuple[T, Callable[[], Awaitable[None]]]]) -> T:
        loop = asyncio.get_running_loop()
        found = self._items.get(loop)
        if found is not None:
            return found[0]
        item, close = build()
        closer = _close_at_shutdown(close)
        # Start it now: the loop's first-iteration hook registers it for shutdown.
        step = closer.__anext__()
        try:
            step.send(None)
        except StopIteration:
            pass
        with self._lock:
            self._items[loop] = (item, closer)  # the loop holds only a weak reference
        return item
