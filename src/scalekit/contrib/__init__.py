"""Framework integrations: ``scalekit.contrib.django``, ``scalekit.contrib.flask`` and
``scalekit.contrib.starlette`` (FastAPI and any ASGI app).

Each is imported on its own and needs its framework installed (the ``django``,
``flask`` and ``starlette`` extras); importing ``scalekit`` never imports a framework.
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
