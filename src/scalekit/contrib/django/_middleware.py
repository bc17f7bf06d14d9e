"""What scalekit's Django middleware share: one class runs sync under WSGI, async under ASGI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

__all__ = ["HybridMiddleware"]


class HybridMiddleware:
    """A middleware Django runs in the chain's own colour, with no thread hop.

    When ``get_response`` is a coroutine function (ASGI), the instance is
    marked as one and ``is_async`` is true; a subclass's ``__call__`` then
    returns its ``__acall__`` coroutine.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError
