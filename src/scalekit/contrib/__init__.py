"""Framework integrations: ``scalekit.contrib.django``, ``scalekit.contrib.flask`` and
``scalekit.contrib.starlette`` (FastAPI and any ASGI app).

Each is imported on its own and needs its framework installed (the ``django``,
``flask`` and ``starlette`` extras); importing ``scalekit`` never imports a framework.

What they share is here, framework-free: :func:`current_request` (the
:class:`RequestScope` of the request being served, a context variable visible
in endpoints and background tasks), :class:`RouteLimit`, :class:`TokenSigner`
(signed consistency tokens) and :func:`combined_headers` (one set of
``RateLimit`` headers for several limits).
"""

from scalekit.contrib._web import (
    RequestScope,
    RouteLimit,
    TokenSigner,
    combined_headers,
    current_request,
)

__all__: list[str] = [
    "RequestScope",
    "RouteLimit",
    "TokenSigner",
    "combined_headers",
    "current_request",
]
