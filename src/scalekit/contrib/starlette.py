"""scalekit in Starlette and FastAPI (any ASGI app): middleware, lifespan, dependencies.

::

    from fastapi import Depends, FastAPI
    from scalekit.contrib.starlette import Scalekit, get_session, health_routes, limit

    scalekit = Scalekit(database_url=..., replica_urls=[...], redis_url=...,
                        token_secret=..., default_limits="100/minute")
    app = FastAPI(lifespan=scalekit.lifespan)
    scalekit.install(app)                 # ConsistencyMiddleware + RateLimitMiddleware
    app.router.routes.extend(health_routes())

    @app.post("/orders", dependencies=[Depends(limit("10/minute"))])
    async def create(session=Depends(get_session)): ...

Both middlewares are pure ASGI (no ``BaseHTTPMiddleware``): context
variables set by scalekit (the routing context, :func:`~scalekit.contrib.current_request`)
are visible in endpoints and in background tasks, and responses are never
buffered. :class:`RateLimitMiddleware` checks the app-wide limit before the
app runs, answers 429 with ``Retry-After`` when denied, and adds one set of
``RateLimit``/``RateLimit-Policy`` headers to every response, merging the
decisions of route limits (:func:`limit`) taken during the request.
:class:`ConsistencyMiddleware` reads a signed consistency token from a header
or a cookie, scopes read-your-writes to the request, and hands a new token
back (cookie and header) when the request wrote. Imports Starlette; FastAPI
is optional (the dependencies are plain callables FastAPI understands).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any, TypeVar

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from scalekit.contrib._web import (
    DEFAULT_TOKEN_COOKIE,
    DEFAULT_TOKEN_HEADER,
    DENIED_BODY,
    RequestScope,
    RouteLimit,
    TokenSigner,
    combined_headers,
    current_request,
    enter_scope,
    known_token,
    leave_scope,
    retry_after_seconds,
)
from scalekit.errors import ConfigurationError, RateLimiterUnavailable
from scalekit.ratelimit import Decision, HeaderStyle, Limit
from scalekit.ratelimit._core import ietf_fields

__all__ = [
    "ConsistencyMiddleware",
    "RateLimitMiddleware",
    "RouteLimit",
    "Scalekit",
    "export_response",
    "get_cache",
    "get_limiter",
    "get_pool",
    "get_session",
    "health_routes",
    "limit",
]

logger = logging.getLogger("scalekit.contrib.starlette")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyFunc = Callable[[Request], str]
F = TypeVar("F", bound=Callable[..., Any])


def client_address(request: Request) -> str:
    """The default rate-limit key: the peer's address (``"unknown"`` without one)."""
    client = request.scope.get("client")
    return client[0] if client else "unknown"


def _scope_of(scope: Scope) -> tuple[RequestScope, Any]:
    # The outermost scalekit middleware makes the request scope; inner ones reuse it.
    web = current_request()
    if web is not None and web.serves(scope):
        return web, None
    client = scope.get("client")
    web = RequestScope(
        scope.get("method", "GET"),
        scope.get("path", ""),
        client[0] if client else None,
        build=Request,
        source=scope,
    )
    return web, enter_scope(web)


# The rate-limit header names as ASGI wants them (lower-case bytes), encoded once.
_NAMES = {
    name: name.lower().encode("latin-1")
    for name in (
        "RateLimit",
        "RateLimit-Policy",
        "Retry-After",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    )
}


def _rate_headers(decisions: list[Decision], style: HeaderStyle) -> list[tuple[bytes, bytes]]:
    """The rate-limit headers of ``decisions``, encoded for ASGI."""
    if style == "ietf" and len(decisions) == 1:
        # The usual case, on every response: no dict in between.
        decision = decisions[0]
        policy, rate = ietf_fields(decision)
        out = [(b"ratelimit-policy", policy.encode()), (b"ratelimit", rate.encode())]
        if not decision.allowed:
            out.append((b"retry-after", b"%d" % retry_after_seconds(decision)))
        return out
    return _encode(combined_headers(decisions, style))


def _encode(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    # A plain loop (no comprehension frame) and ASCII values (sf-strings and numbers:
    # str.encode()'s default codec gives the same bytes, with no codec lookup).
    names = _NAMES
    out = []
    for name, value in headers.items():
        out.append((names.get(name) or name.lower().encode("latin-1"), value.encode()))
    return out


# ---------------------------------------------------------------------------
# The lifespan helper
# ---------------------------------------------------------------------------


class Scalekit:
    """Opens scalekit's pools and clients with the app and disposes them after.

    Pass URLs (scalekit creates the engines and the Redis client and disposes
    them at shutdown) or your own objects (``primary``, ``replicas``,
    ``redis``: kept open, they are yours). Use :meth:`lifespan` as the app's
    lifespan (or call :meth:`startup`/:meth:`shutdown` from yours); it sets
    ``app.state.scalekit`` so the dependencies (:func:`get_session`,
    :func:`get_cache`, :func:`get_limiter`, :func:`get_pool`) and the
    middleware find it: several apps in one process each have their own.

    After startup: ``pool`` (an :class:`~scalekit.routing.AsyncRoutingPool`,
    or None without a database), ``sessionmaker``, ``redis`` (None: the
    in-memory stores), ``cache`` (an :class:`~scalekit.cache.AsyncCache`),
    ``limiter`` (an :class:`~scalekit.ratelimit.AsyncRateLimiter`).

    Args:
        database_url: the primary's SQLAlchemy URL (asyncio driver).
        replica_urls: the replicas' URLs.
        redis_url: ``redis://...``; None uses in-process stores.
        primary, replicas, redis: your own ``AsyncEngine``s and client instead.
        engine_options: keyword arguments of ``create_async_engine``.
        routing, cache, limiter: keyword arguments of ``AsyncRoutingPool``,
            ``AsyncCache`` and ``AsyncRateLimiter``.
        token_secret: the secret that signs consistency tokens (16+ bytes;
            the same on every instance). None disables :meth:`install`'s
            consistency middleware.
        default_limits: the app-wide limit of :meth:`install`'s rate-limit
            middleware (None: route limits only).
        secure_cookies: mark the token cookie ``Secure`` (HTTPS only); False
            for plain-HTTP development and test clients.

    Raises:
        ConfigurationError: both a URL and an object for the same thing, or
            a bad ``token_secret``/``default_limits`` (at construction).
    """

    def __init__(
        self,
        *,
        database_url: str | None = None,
        replica_urls: Sequence[str] = (),
        redis_url: str | None = None,
        primary: Any = None,
        replicas: Sequence[Any] = (),
        redis: Any = None,
        engine_options: dict[str, Any] | None = None,
        routing: dict[str, Any] | None = None,
        cache: dict[str, Any] | None = None,
        limiter: dict[str, Any] | None = None,
        token_secret: str | bytes | None = None,
        default_limits: str | Limit | Sequence[str | Limit] | None = None,
        secure_cookies: bool = True,
    ) -> None:
        if database_url is not None and primary is not None:
            raise ConfigurationError("pass database_url or primary, not both", parameter="primary")
        if redis_url is not None and redis is not None:
            raise ConfigurationError("pass redis_url or redis, not both", parameter="redis")
        self._database_url = database_url
        self._replica_urls = list(replica_urls)
        self._redis_url = redis_url
        self._primary = primary
        self._replicas = list(replicas)
        self.redis: Any = redis
        self._engine_options = dict(engine_options or {})
        self._routing = dict(routing or {})
        self._cache_options = dict(cache or {})
        self._limiter_options = dict(limiter or {})
        self.signer = None if token_secret is None else TokenSigner(token_secret)
        self.default_limits = (
            None if default_limits is None else RouteLimit.of(default_limits, scope="app")
        )
        self.secure_cookies = secure_cookies
        self.pool: Any = None
        self.sessionmaker: Any = None
        self.cache: Any = None
        self.limiter: Any = None
        self._owned: list[Callable[[], Awaitable[Any]]] = []

    async def startup(self) -> None:
        """Create the engines, the pool, the Redis client, the cache and the limiter.

        Connects nothing yet: engines and clients connect on first use.
        """
        from scalekit.cache import AsyncCache
        from scalekit.ratelimit import AsyncRateLimiter, MemoryBackend

        primary, replicas = self._primary, self._replicas
        if self._database_url is not None:
            from sqlalchemy.ext.asyncio import create_async_engine

            primary = create_async_engine(self._database_url, **self._engine_options)
            replicas = [
                create_async_engine(url, **self._engine_options) for url in self._replica_urls
            ]
            self._owned.extend(engine.dispose for engine in [primary, *replicas])
        if primary is not None:
            from scalekit.routing import AsyncRoutingPool

            self.pool = AsyncRoutingPool(primary=primary, replicas=replicas, **self._routing)
            self.sessionmaker = self.pool.sessionmaker(expire_on_commit=False)
        if self._redis_url is not None:
            import redis.asyncio

            self.redis = redis.asyncio.Redis.from_url(self._redis_url)
            self._owned.append(self.redis.aclose)
        self.cache = AsyncCache(self.redis, **self._cache_options)
        store = self.redis if self.redis is not None else MemoryBackend()
        self.limiter = AsyncRateLimiter(store, **self._limiter_options)

    async def shutdown(self) -> None:
        """Close the cache and limiter, detach the pool, dispose what :meth:`startup` created."""
        if self.cache is not None:
            await self.cache.aclose()
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.pool is not None:
            self.pool.close()
        owned, self._owned = self._owned, []
        for close in reversed(owned):
            with contextlib.suppress(Exception):
                await close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[dict[str, Any]]:
        """The app's lifespan: ``FastAPI(lifespan=scalekit.lifespan)``.

        Sets ``app.state.scalekit`` and the lifespan state ``"scalekit"``.
        """
        app.state.scalekit = self
        await self.startup()
        try:
            yield {"scalekit": self}
        finally:
            await self.shutdown()

    def install(
        self,
        app: Any,
        *,
        header_style: HeaderStyle = "ietf",
        exempt: Sequence[str] = ("/healthz", "/readyz"),
    ) -> None:
        """Add :class:`ConsistencyMiddleware` (when a ``token_secret`` was given)
        and :class:`RateLimitMiddleware` (the ``default_limits``; ``exempt``
        paths, the health routes by default, are not limited) to ``app``."""
        app.state.scalekit = self
        app.add_middleware(
            RateLimitMiddleware, scalekit=self, header_style=header_style, exempt=exempt
        )
        if self.signer is not None:
            app.add_middleware(ConsistencyMiddleware, scalekit=self, secure=self.secure_cookies)


def _scalekit_of(request: Request) -> Scalekit:
    found = getattr(request.app.state, "scalekit", None) if "app" in request.scope else None
    if found is None:
        state = request.scope.get("state") or {}
        found = state.get("scalekit")
    if not isinstance(found, Scalekit):
        raise RuntimeError(
            "no scalekit.contrib.starlette.Scalekit on this app: "
            "use FastAPI(lifespan=scalekit.lifespan) or scalekit.install(app)"
        )
    return found


async def get_session(request: Request) -> AsyncIterator[Any]:
    """Dependency: a routed ``AsyncSession`` for the request, closed after it.

    Reads go to replicas that have caught up with this client's token;
    writes to the primary. ``session: AsyncSession = Depends(get_session)``.

    Raises:
        RuntimeError: the app has no :class:`Scalekit` or it has no database.
    """
    scalekit = _scalekit_of(request)
    if scalekit.sessionmaker is None:
        raise RuntimeError("this Scalekit has no database (database_url or primary)")
    async with scalekit.sessionmaker() as session:
        yield session


def get_cache(request: Request) -> Any:
    """Dependency: the app's :class:`~scalekit.cache.AsyncCache`."""
    return _scalekit_of(request).cache


def get_limiter(request: Request) -> Any:
    """Dependency: the app's :class:`~scalekit.ratelimit.AsyncRateLimiter`."""
    return _scalekit_of(request).limiter


def get_pool(request: Request) -> Any:
    """Dependency: the app's :class:`~scalekit.routing.AsyncRoutingPool` (or None)."""
    return _scalekit_of(request).pool


# ---------------------------------------------------------------------------
# Rate limiting
# ---------------------------------------------------------------------------


def _hit(limiter: Any, key: str, route_limit: RouteLimit) -> Awaitable[Decision]:
    """The limiter's check of ``route_limit`` for ``key``, to await.

    Awaiting it raises ``RateLimiterUnavailable`` under ``fallback="raise"``:
    the callers let the request pass (never a 500; the limiter logged the
    outage). Not a coroutine of its own: one frame less on every request.
    """
    if len(route_limit.limits) == 1:
        hit: Awaitable[Decision] = limiter.hit(key, route_limit.limits[0], route_limit.cost)
        return hit
    every: Awaitable[Decision] = limiter.hit_all(key, route_limit.limits, route_limit.cost)
    return every


class RateLimitMiddleware:
    """Pure ASGI rate limiting: 429 with ``Retry-After``, headers on every response.

    The app-wide limit (``limits``, keyed by ``key(request)``, the client
    address by default) is checked before the app runs; a denial answers 429
    at once. Route limits (:func:`limit`) taken during the request are merged
    into the same headers: ``RateLimit-Policy`` and ``RateLimit``
    (draft-ietf-httpapi-ratelimit-headers-11), legacy ``X-RateLimit-*`` with
    ``header_style="legacy"``/``"both"``: one set, never duplicated. With
    Redis down the limiter follows its ``fallback`` (``"raise"``: the request
    passes).

    Give a ``limiter`` and ``limits``, or a :class:`Scalekit` (its limiter and
    ``default_limits``, read at the first request). ``exempt`` paths (exact)
    are neither limited nor given headers.

    Raises:
        ConfigurationError: neither a limiter nor a Scalekit, bad limits or key.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: Any = None,
        limits: str | Limit | Sequence[str | Limit] | RouteLimit | None = None,
        key: KeyFunc | None = None,
        scalekit: Scalekit | None = None,
        header_style: HeaderStyle = "ietf",
        exempt: Sequence[str] = (),
    ) -> None:
        if limiter is None and scalekit is None:
            raise ConfigurationError("pass a limiter or a Scalekit", parameter="limiter")
        if header_style not in ("ietf", "legacy", "both"):
            raise ConfigurationError(f"bad header_style {header_style!r}", parameter="header_style")
        self.app = app
        self._limiter = limiter
        self._scalekit = scalekit
        if isinstance(limits, RouteLimit):
            self._limits: RouteLimit | None = limits
        elif limits is not None:
            self._limits = RouteLimit.of(limits, key=key, scope="app")
        else:
            self._limits = None if scalekit is None else scalekit.default_limits
        self._key = key or (self._limits.key if self._limits is not None else None)
        self._style = header_style
        self._exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._exempt:
            await self.app(scope, receive, send)
            return
        web, reset = _scope_of(scope)
        limiter = self._limiter
        if limiter is None and self._scalekit is not None:
            # Read at each request: a lifespan that restarts (one app, several test
            # clients) makes a new limiter.
            limiter = self._scalekit.limiter
        web.limiter = limiter
        try:
            route_limit = self._limits
            if route_limit is not None:
                if self._key is None:
                    client = scope.get("client")
                    key = client[0] if client else "unknown"
                else:
                    key = self._key(web.request)
                try:
                    decision = await _hit(web.limiter, f"app|{key}", route_limit)
                except RateLimiterUnavailable:
                    pass
                else:
                    web.decisions.append(decision)
                    if not decision.allowed:
                        await self._deny(web, send)
                        return
            await self.app(scope, receive, self._sender(web, send))
        finally:
            if reset is not None:
                leave_scope(reset)

    def _sender(self, web: RequestScope, send: Send) -> Send:
        style = self._style

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and web.decisions:
                headers = list(message.get("headers", ()))
                headers.extend(_rate_headers(web.decisions, style))
                message["headers"] = headers
            await send(message)

        return send_with_headers

    async def _deny(self, web: RequestScope, send: Send) -> None:
        headers = _rate_headers(web.decisions, self._style)
        headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(DENIED_BODY)).encode()))
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": DENIED_BODY})


class _Limit:
    """A route's limit, as a FastAPI dependency or an endpoint decorator (see :func:`limit`)."""

    def __init__(self, route_limit: RouteLimit) -> None:
        self.route_limit = route_limit
        # FastAPI reads a dependency's parameters from its signature: one Request.
        self.__signature__ = inspect.Signature(
            [
                inspect.Parameter(
                    "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
                )
            ]
        )

    async def __call__(self, request: Request, route: str | None = None) -> None:
        """The dependency: ``Depends(limit("10/minute"))``; counts per ``route``.

        ``route`` defaults to the matched route's path template (else the URL's
        path). One frame on every limited request: the request scope, the key,
        one hit.
        """
        if route is None:
            # getattr's default would build the URL on every call: dearer than the rest.
            route = getattr(request.scope.get("route"), "path", None) or request.url.path
        web = current_request()
        limiter = None if web is None else web.limiter
        if limiter is None:
            limiter = _scalekit_of(request).limiter
        route_limit = self.route_limit
        key = route_limit.counter_key((route_limit.key or client_address)(request), route)
        try:
            decision = await _hit(limiter, key, route_limit)
        except RateLimiterUnavailable:
            return
        if web is not None:
            web.decisions.append(decision)
        if not decision.allowed:
            # The middleware adds the headers (Retry-After included) to this 429.
            headers = None if web is not None else combined_headers([decision])
            raise HTTPException(status_code=429, detail="rate limit exceeded", headers=headers)

    def decorate(self, endpoint: F) -> F:
        """The decorator: ``@limit("10/minute").decorate`` on an ``async def`` endpoint.

        Raises:
            ConfigurationError: ``endpoint`` is not an ``async def``.
        """
        if not inspect.iscoroutinefunction(endpoint):
            raise ConfigurationError("@limit decorates async endpoints", parameter="endpoint")
        name = f"{endpoint.__module__}.{endpoint.__qualname__}"

        @functools.wraps(endpoint)
        async def limited(*args: Any, **kwargs: Any) -> Any:
            request = next((a for a in (*args, *kwargs.values()) if isinstance(a, Request)), None)
            if request is None:
                web = current_request()
                request = None if web is None else web.request
            if request is None:
                raise RuntimeError("@limit needs the request: add RateLimitMiddleware")
            try:
                await self(request, name)
            except HTTPException as denied:
                if "fastapi" in type(request.app).__module__:
                    raise
                return JSONResponse({"detail": denied.detail}, 429, headers=denied.headers)
            return await endpoint(*args, **kwargs)

        return limited  # type: ignore[return-value]


def limit(
    limits: str | Limit | Sequence[str | Limit],
    *,
    key: KeyFunc | None = None,
    scope: str = "",
    cost: int = 1,
) -> _Limit:
    """A route's own limit: ``Depends(limit("10/minute"))`` or ``@limit("10/minute").decorate``.

    Counted per route (or per ``scope``, to share a counter between routes)
    and per ``key(request)`` (the client address by default). A denial raises
    ``HTTPException(429)`` (a decorated plain Starlette endpoint returns the
    429); :class:`RateLimitMiddleware` adds the headers, merged with the
    app-wide limit's.

    >>> dependency = limit("10/minute", key=lambda request: request.headers["x-api-key"])

    Raises:
        ConfigurationError: a bad limit, key or cost; decorating a sync function.
    """
    return _Limit(RouteLimit.of(limits, key=key, scope=scope, cost=cost))


# ---------------------------------------------------------------------------
# Read-your-writes
# ---------------------------------------------------------------------------


class ConsistencyMiddleware:
    """Pure ASGI read-your-writes across requests: a signed token in a cookie or header.

    On each request: the routing context is reset, and the token the client
    brought (``header`` first, then ``cookie``) is verified with the
    :class:`~scalekit.contrib.TokenSigner` and imported, so this request's
    reads see that client's earlier writes, on any instance. When the request
    wrote, the response carries the new token: ``Set-Cookie`` (HttpOnly,
    SameSite=Lax, ``Secure`` unless ``secure=False``) and the ``header``.
    A forged, tampered or expired token is ignored.

    Give a ``pool`` and a ``secret``, or a :class:`Scalekit` (its pool and
    ``token_secret``, read at the first request).

    Raises:
        ConfigurationError: no pool or Scalekit, no secret, a bad ``max_age``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        pool: Any = None,
        secret: str | bytes | None = None,
        scalekit: Scalekit | None = None,
        cookie: str = DEFAULT_TOKEN_COOKIE,
        header: str = DEFAULT_TOKEN_HEADER,
        max_age: float = 300.0,
        secure: bool = True,
    ) -> None:
        if pool is None and scalekit is None:
            raise ConfigurationError("pass a pool or a Scalekit", parameter="pool")
        if secret is not None:
            self._signer = TokenSigner(secret, max_age=max_age)
        elif scalekit is not None and scalekit.signer is not None:
            self._signer = scalekit.signer
        else:
            raise ConfigurationError("a token secret is required", parameter="secret")
        self.app = app
        self._pool = pool
        self._scalekit = scalekit
        self._cookie = cookie
        self._header = header.lower()
        self._header_bytes = self._header.encode("latin-1")
        attributes = f"Path=/; Max-Age={round(max_age)}; HttpOnly; SameSite=Lax"
        self._cookie_attributes = attributes + ("; Secure" if secure else "")

    def _token_in(self, request: Request) -> str | None:
        signed = request.headers.get(self._header) or request.cookies.get(self._cookie)
        return self._signer.verify(signed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pool = self._pool
        if pool is None and self._scalekit is not None:
            pool = self._scalekit.pool  # read at each request: the lifespan may restart
        if pool is None:
            await self.app(scope, receive, send)
            return
        web, reset = _scope_of(scope)
        pool.reset_context()
        web.token_in = self._token_in(web.request)
        pool.import_token(web.token_in)

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start":
                known, token = known_token(pool)
                try:
                    if not known:
                        token = await pool.export_token()
                except Exception:
                    # The write is committed: never a 500 for want of its position.
                    logger.warning(
                        "scalekit: no consistency token for this response", exc_info=True
                    )
                    token = None
                if token is not None and token != web.token_in:
                    web.token_out = token
                    signed = self._signer.sign(token).encode("latin-1")
                    headers = list(message.get("headers", ()))
                    headers.append((self._header_bytes, signed))
                    cookie = f"{self._cookie}={signed.decode()}; {self._cookie_attributes}"
                    headers.append((b"set-cookie", cookie.encode("latin-1")))
                    message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_token)
        finally:
            pool.reset_context()
            if reset is not None:
                leave_scope(reset)


# ---------------------------------------------------------------------------
# Health and export
# ---------------------------------------------------------------------------


def health_routes(
    scalekit: Scalekit | None = None, *, live: str = "/healthz", ready: str = "/readyz"
) -> list[Route]:
    """Two routes: ``live`` (no I/O, always 200) and ``ready`` (200, or 503 when critical).

    ``ready`` probes the app's pool, Redis, limiter and cache concurrently
    (:func:`scalekit.health.areadiness`) and answers the report's JSON; URLs
    are masked and no secret is shown. ``app.router.routes.extend(health_routes())``.
    """

    async def liveness_endpoint(request: Request) -> Response:
        from scalekit.health import liveness

        return JSONResponse(liveness().to_dict())

    async def readiness_endpoint(request: Request) -> Response:
        from scalekit.health import areadiness

        found = scalekit or _scalekit_of(request)
        report = await areadiness(
            pool=found.pool, redis=found.redis, limiters=found.limiter, caches=found.cache
        )
        return JSONResponse(report.to_dict(), 503 if report.status == "critical" else 200)

    return [
        Route(live, liveness_endpoint, methods=["GET"], name="scalekit_liveness"),
        Route(ready, readiness_endpoint, methods=["GET"], name="scalekit_readiness"),
    ]


def export_response(
    target: Any,
    select: Any,
    *,
    filename: str | None = None,
    format: str = "csv",
    chunk_size: int | None = None,
) -> StreamingResponse:
    """A ``StreamingResponse`` of :func:`scalekit.batch.aexport` (CSV by default).

    The rows stream as the database sends them, in bounded memory; the
    connection goes back to the pool when the download ends or the client
    disconnects. ``filename`` sets ``Content-Disposition: attachment``.

    Raises:
        ConfigurationError: as :func:`~scalekit.batch.aexport` (bad format,
            target or select), at once.
    """
    from scalekit.batch import aexport

    chunks = aexport(target, select, format=format, chunk_size=chunk_size)  # type: ignore[arg-type]

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            # A disconnect cancels the response task: close the export shielded,
            # so its connection is returned to the pool.
            with anyio.CancelScope(shield=True):
                await chunks.aclose()

    media = (
        "text/csv"
        if format == "csv"
        else "application/octet-stream"
        if format == "binary"
        else "text/plain"
    )
    headers = (
        {} if filename is None else {"Content-Disposition": f'attachment; filename="{filename}"'}
    )
    return StreamingResponse(body(), media_type=media, headers=headers)
