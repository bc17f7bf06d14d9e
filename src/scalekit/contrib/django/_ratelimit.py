"""Rate limits for Django views: the ``@ratelimit`` decorator and ``RateLimitMiddleware``.

Both work on sync and async views (an async view is checked by
:class:`~scalekit.ratelimit.AsyncRateLimiter` on ``redis.asyncio``, never in a
thread), answer a denied request with 429 and ``Retry-After``, and give every
checked response one set of IETF ``RateLimit``/``RateLimit-Policy`` headers
covering every limit the request met (``_headers.py``). The decisions are kept
on the request; whichever runs last (the middleware, around the view) writes
the merged set, so a header is never duplicated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction
from django.http import HttpResponse

from scalekit.contrib.django import _settings
from scalekit.contrib.django._headers import merged_headers
from scalekit.contrib.django._middleware import HybridMiddleware
from scalekit.contrib.django._settings import KeyFunction, key_function, parse_rates
from scalekit.ratelimit import Decision, Limit

__all__ = ["RateLimitMiddleware", "ratelimit"]

F = TypeVar("F", bound=Callable[..., Any])

_DECISIONS = "_scalekit_ratelimit"


def _record(request: Any, decision: Decision) -> None:
    decisions = getattr(request, _DECISIONS, None)
    if decisions is None:
        decisions = []
        setattr(request, _DECISIONS, decisions)
    decisions.append(decision)


def _write(request: Any, response: Any) -> Any:
    decisions = getattr(request, _DECISIONS, None)
    if decisions and response is not None:
        for name, value in merged_headers(decisions).items():
            response[name] = value
    return response


def _too_many(request: Any) -> HttpResponse:
    response = HttpResponse(
        "Too Many Requests\n", status=429, content_type="text/plain; charset=utf-8"
    )
    return _write(request, response)


def ratelimit(
    rate: str | Limit | Sequence[str | Limit],
    *,
    key: str | KeyFunction = "ip",
    name: str | None = None,
    methods: Sequence[str] | None = None,
    cost: int = 1,
) -> Callable[[F], F]:
    """Limit a view (a function, sync or ``async def``) to ``rate`` per ``key``.

    ``rate`` is ``"100/minute"``, several (``"10/second; 1000/hour"``, all must
    allow), a :class:`~scalekit.ratelimit.Limit` or a list. ``key`` is ``"ip"``,
    ``"user"``, ``"header:<Name>"`` or a callable taking the request (see
    ``SCALEKIT['RATELIMIT']['KEY']``). Each view counts on its own unless views
    share a ``name``; ``methods`` limits only those HTTP methods. A denied request
    gets 429 with ``Retry-After`` and the view does not run; every checked
    response gets the ``RateLimit``/``RateLimit-Policy`` headers. The limiter is
    built from ``SCALEKIT`` (``REDIS_URL``; its ``FALLBACK`` when Redis is down,
    ``"local"`` by default, so an outage never turns a request into a 500).

    >>> @ratelimit("5/minute", key="user")
    ... def export(request): ...

    Raises:
        ConfigurationError: at decoration, for a bad rate or key.
    """
    limits = parse_rates(rate)
    keyer = key_function(key)
    wanted = None if methods is None else frozenset(method.upper() for method in methods)

    def decorate(view: F) -> F:
        scope = name or f"{view.__module__}.{view.__qualname__}"

        def applies(request: Any) -> bool:
            return wanted is None or request.method in wanted

        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
                if applies(request):
                    limiter = _settings.limiters.for_loop()
                    decision = await limiter.hit_all(f"{scope}:{keyer(request)}", limits, cost)
                    _record(request, decision)
                    if not decision.allowed:
                        return _too_many(request)
                return _write(request, await view(request, *args, **kwargs))

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(view)
        def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
            if applies(request):
                limiter = _settings.limiters.sync()
                decision = limiter.hit_all(f"{scope}:{keyer(request)}", limits, cost)
                _record(request, decision)
                if not decision.allowed:
                    return _too_many(request)
            return _write(request, view(request, *args, **kwargs))

        return wrapper  # type: ignore[return-value]

    return decorate


class RateLimitMiddleware(HybridMiddleware):
    """An app-wide limit from ``SCALEKIT['RATELIMIT']``, sync and async.

    ``DEFAULT`` is the rate every request is held to, per ``KEY`` (``"ip"`` by
    default); paths starting with one of ``EXEMPT`` are not counted. With no
    ``DEFAULT`` it only merges the headers of the views' ``@ratelimit``. Put it
    early in ``MIDDLEWARE``. Hybrid: under ASGI it runs as a coroutine, with no
    thread hop; under WSGI as a plain call.
    """

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        super().__init__(get_response)
        options = _settings.section("RATELIMIT")
        default = options.get("DEFAULT")
        self.limits: list[Limit] | None = None if default is None else parse_rates(default)
        self.key = key_function(options.get("KEY", "ip"))
        self.exempt: tuple[str, ...] = tuple(options.get("EXEMPT", ()))

    def _applies(self, request: Any) -> bool:
        return self.limits is not None and not request.path.startswith(self.exempt)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        if self._applies(request):
            assert self.limits is not None
            limiter = _settings.limiters.sync()
            decision = limiter.hit_all(f"default:{self.key(request)}", self.limits)
            _record(request, decision)
            if not decision.allowed:
                return _too_many(request)
        return _write(request, self.get_response(request))

    async def __acall__(self, request: Any) -> Any:
        if self._applies(request):
            assert self.limits is not None
            limiter = _settings.limiters.for_loop()
            decision = await limiter.hit_all(f"default:{self.key(request)}", self.limits)
            _record(request, decision)
            if not decision.allowed:
                return _too_many(request)
        return _write(request, await self.get_response(request))
