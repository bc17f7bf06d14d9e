"""``ConsistencyMiddleware``: read-your-writes per request, carried to the next request.

A request starts with the consistency token its client sent (a header or a
cookie; a malformed one is ignored) and the router's context scoped to it.
When the request wrote, the response carries the new token (the primary's WAL
position after the write) in the same header and cookie, so the user's next
request, on any instance, reads from a replica that has replayed the write or
from the primary: never from one that is behind it. A request that did not
write leaves the cookie alone; a token that replicas have passed costs nothing
(any replica serves). Hybrid: a coroutine under ASGI, a plain call under WSGI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async

from scalekit.contrib.django import _router, _settings
from scalekit.contrib.django._middleware import HybridMiddleware
from scalekit.errors import ConfigurationError
from scalekit.routing import ConsistencyToken
from scalekit.routing._core import ContextState

__all__ = ["ConsistencyMiddleware"]


class ConsistencyMiddleware(HybridMiddleware):
    """Scope read-your-writes to a request; carry the token in a header and a cookie.

    ``SCALEKIT['CONSISTENCY']``: ``HEADER`` (default ``X-Scalekit-Consistency``,
    read and written), ``COOKIE`` (default ``scalekit_consistency``; ``None`` to
    use the header only), ``MAX_AGE`` (the cookie's seconds, default 60: longer
    than a replica may lag). Needs :class:`~scalekit.contrib.django.ScalekitRouter`
    in ``DATABASE_ROUTERS``.
    """

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        super().__init__(get_response)
        options = _settings.section("CONSISTENCY")
        self.header: str = options.get("HEADER", "X-Scalekit-Consistency")
        self.cookie: str | None = options.get("COOKIE", "scalekit_consistency")
        self.max_age: int = int(options.get("MAX_AGE", 60))

    def _incoming(self, request: Any) -> ContextState:
        text = request.headers.get(self.header)
        if not text and self.cookie:
            text = request.COOKIES.get(self.cookie)
        token = None
        if text:
            try:
                token = ConsistencyToken.decode(text)
            except ConfigurationError:
                token = None  # a stale or forged value: route as if none was sent
        return ContextState(token=token)

    def _outgoing(self, request: Any, response: Any) -> Any:
        """Resolve this request's write into a token and put it on ``response``."""
        if _router.current_state().pending_write_at is None or response is None:
            return response
        token = _router.routing().resolve().token
        if token is None:
            return response
        value = token.encode()
        response[self.header] = value
        if self.cookie:
            response.set_cookie(
                self.cookie,
                value,
                max_age=self.max_age,
                httponly=True,
                samesite="Lax",
                secure=request.is_secure(),
            )
        return response

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        scope = _router._context.set(self._incoming(request))
        try:
            response = self.get_response(request)
            return self._outgoing(request, response)
        finally:
            _router._context.reset(scope)

    async def __acall__(self, request: Any) -> Any:
        scope = _router._context.set(self._incoming(request))
        try:
            response = await self.get_response(request)
            if _router.current_state().pending_write_at is None:
                return response
            # One query on the primary, on Django's connection thread.
            return await sync_to_async(self._outgoing)(request, response)
        finally:
            _router._context.reset(scope)
