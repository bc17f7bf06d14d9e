"""Framework integrations: ``scalekit.contrib.django``, ``scalekit.contrib.flask`` and
``scalekit.contrib.starlette`` (FastAPI and any ASGI app).

Each is imported on its own and needs its framework installed (the ``django``,
``flask`` and ``starlette`` extras); importing ``scalekit`` never imports a framework.
"""

__all__: list[str] = []
