"""scalekit in Flask: routed sessions, read-your-writes, rate limits, health, export.

::

    from flask import Flask
    from scalekit.contrib.flask import Scalekit, health_blueprint, limit

    scalekit = Scalekit()

    def create_app():
        app = Flask(__name__)
        app.config.update(SCALEKIT_DATABASE_URL=..., SCALEKIT_REPLICA_URLS=[...],
                          SCALEKIT_REDIS_URL=..., SCALEKIT_DEFAULT_LIMITS="100/minute")
        scalekit.init_app(app)
        app.register_blueprint(health_blueprint())
        return app

    @app.post("/orders")
    @limit("10/minute")
    def create_order():
        scalekit.session.add(Order(...)); scalekit.session.commit()

The extension keeps its state per app in ``app.extensions["scalekit"]``
(so app factories and several apps in one process work), reads its
configuration from ``SCALEKIT_*`` keys, gives each app context one routed
``Session`` (closed in ``teardown_appcontext``), scopes read-your-writes to
each request with a signed token in a cookie or header, and adds one set of
IETF ``RateLimit``/``RateLimit-Policy`` headers to every limited response
(429 with ``Retry-After`` when denied). With Redis down the limiter follows
its ``fallback`` (``"local"`` by default; ``"raise"``: the request passes)
and the cache calls the loader: never a 500.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

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
    logger,
)
from scalekit.errors import ConfigurationError, RateLimiterUnavailable
from scalekit.ratelimit import Decision, Limit

__all__ = [
    "RouteLimit",
    "SETTINGS",
    "Scalekit",
    "ScalekitState",
    "export_response",
    "health_blueprint",
    "limit",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Every ``SCALEKIT_*`` key the extension reads, with its default.
SETTINGS: dict[str, Any] = {
    "SCALEKIT_DATABASE_URL": None,
    "SCALEKIT_REPLICA_URLS": (),
    "SCALEKIT_REDIS_URL": None,
    "SCALEKIT_ENGINE_OPTIONS": {},
    "SCALEKIT_ROUTING": {},
    "SCALEKIT_CACHE": {},
    "SCALEKIT_LIMITER": {},
    "SCALEKIT_DEFAULT_LIMITS": None,
    "SCALEKIT_HEADER_STYLE": "ietf",
    "SCALEKIT_RATELIMIT_EXEMPT": (),
    "SCALEKIT_TOKEN_SECRET": None,
    "SCALEKIT_TOKEN_COOKIE": DEFAULT_TOKEN_COOKIE,
    "SCALEKIT_TOKEN_HEADER": DEFAULT_TOKEN_HEADER,
    "SCALEKIT_TOKEN_MAX_AGE": 300.0,
    "SCALEKIT_TOKEN_SECURE": True,
}
_HEALTH_BLUEPRINT = "scalekit_health"


@dataclass(eq=False)
class ScalekitState:
    """What :meth:`Scalekit.init_app` made for one app (``app.extensions["scalekit"]``).

    ``pool`` (a :class:`~scalekit.routing.RoutingPool`, or None without a
    database), ``sessionmaker``, ``redis`` (None: in-process stores),
    ``cache`` (:class:`~scalekit.cache.Cache`), ``limiter``
    (:class:`~scalekit.ratelimit.RateLimiter`), ``signer`` (None: no tokens),
    ``default_limits`` and the settings read.
    """

    settings: dict[str, Any]
    pool: Any = None
    sessionmaker: Any = None
    redis: Any = None
    cache: Any = None
    limiter: Any = None
    signer: TokenSigner | None = None
    default_limits: RouteLimit | None = None
    owned: list[Callable[[], Any]] = field(default_factory=list)

    def close(self) -> None:
        """Close the cache and limiter, detach the pool, dispose what init_app created."""
        if self.cache is not None:
            self.cache.close()
        if self.limiter is not None:
            self.limiter.close()
        if self.pool is not None:
            self.pool.close()
        owned, self.owned = self.owned, []
        for close in reversed(owned):
            with contextlib.suppress(Exception):
                close()


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value or ())


class Scalekit:
    """The Flask extension: ``Scalekit(app)`` or ``Scalekit()`` then ``init_app(app)``.

    Keyword arguments override the app's ``SCALEKIT_*`` settings
    (``database_url=...`` for ``SCALEKIT_DATABASE_URL``, see
    :data:`SETTINGS`), and ``primary``, ``replicas``, ``redis`` hand over
    your own ``Engine`` objects and Redis client (kept open: they are yours).
    ``SCALEKIT_TOKEN_SECRET`` defaults to the app's ``SECRET_KEY``; without
    either, no consistency token is handed out.

    Raises:
        ConfigurationError: (from :meth:`init_app`) an unknown setting, a bad
            limit, header style or token secret.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        primary: Any = None,
        replicas: Sequence[Any] = (),
        redis: Any = None,
        **settings: Any,
    ) -> None:
        unknown = [name for name in settings if f"SCALEKIT_{name.upper()}" not in SETTINGS]
        if unknown:
            raise ConfigurationError(f"unknown settings: {unknown}", parameter=unknown[0])
        self._overrides = {f"SCALEKIT_{name.upper()}": value for name, value in settings.items()}
        self._primary = primary
        self._replicas = list(replicas)
        self._redis = redis
        if app is not None:
            self.init_app(app)

    def init_app(
        self,
        app: Flask,
        *,
        primary: Any = None,
        replicas: Sequence[Any] | None = None,
        redis: Any = None,
    ) -> None:
        """Read the settings, build the app's state, register the request hooks.

        Creates the engines and clients (they connect on first use).
        ``primary``, ``replicas`` and ``redis`` override the constructor's
        for this app (an app factory handing each app its own objects).

        Raises:
            ConfigurationError: a bad setting.
        """
        from scalekit.cache import Cache
        from scalekit.ratelimit import MemoryBackend, RateLimiter

        settings = {name: app.config.get(name, default) for name, default in SETTINGS.items()}
        settings.update(self._overrides)
        if settings["SCALEKIT_HEADER_STYLE"] not in ("ietf", "legacy", "both"):
            raise ConfigurationError(
                f"SCALEKIT_HEADER_STYLE must be 'ietf', 'legacy' or 'both', "
                f"got {settings['SCALEKIT_HEADER_STYLE']!r}",
                parameter="SCALEKIT_HEADER_STYLE",
            )
        state = ScalekitState(settings)
        primary = self._primary if primary is None else primary
        replicas = self._replicas if replicas is None else list(replicas)
        if settings["SCALEKIT_DATABASE_URL"] is not None:
            from sqlalchemy import create_engine

            options = dict(settings["SCALEKIT_ENGINE_OPTIONS"])
            primary = create_engine(settings["SCALEKIT_DATABASE_URL"], **options)
            urls = _list(settings["SCALEKIT_REPLICA_URLS"])
            replicas = [create_engine(url, **options) for url in urls]
            state.owned.extend(engine.dispose for engine in [primary, *replicas])
        if primary is not None:
            from scalekit.routing import RoutingPool

            state.pool = RoutingPool(
                primary=primary, replicas=replicas, **settings["SCALEKIT_ROUTING"]
            )
            state.sessionmaker = state.pool.sessionmaker(expire_on_commit=False)
        state.redis = self._redis if redis is None else redis
        if settings["SCALEKIT_REDIS_URL"] is not None:
            import redis

            state.redis = redis.Redis.from_url(settings["SCALEKIT_REDIS_URL"])
            state.owned.append(state.redis.close)
        state.cache = Cache(state.redis, **settings["SCALEKIT_CACHE"])
        store = state.redis if state.redis is not None else MemoryBackend()
        state.limiter = RateLimiter(store, **settings["SCALEKIT_LIMITER"])
        secret = settings["SCALEKIT_TOKEN_SECRET"] or app.config.get("SECRET_KEY")
        if secret and state.pool is not None:
            state.signer = TokenSigner(secret, max_age=settings["SCALEKIT_TOKEN_MAX_AGE"])
        if settings["SCALEKIT_DEFAULT_LIMITS"] is not None:
            state.default_limits = RouteLimit.of(settings["SCALEKIT_DEFAULT_LIMITS"], scope="app")
        app.extensions["scalekit"] = state
        app.before_request(_before_request)
        app.after_request(_after_request)
        app.teardown_request(_teardown_request)
        app.teardown_appcontext(_teardown_appcontext)

    @staticmethod
    def state(app: Flask | None = None) -> ScalekitState:
        """The state of ``app`` (the current app by default).

        Raises:
            RuntimeError: the app was not set up with :meth:`init_app`.
        """
        found = (app or current_app).extensions.get("scalekit")
        if not isinstance(found, ScalekitState):
            raise RuntimeError("scalekit.contrib.flask.Scalekit.init_app(app) was not called")
        return found

    @property
    def session(self) -> Any:
        """The current app context's routed ``Session`` (created on first use, closed at teardown).

        Raises:
            RuntimeError: outside an app context, or the app has no database.
        """
        if "_scalekit_session" not in g:
            state = self.state()
            if state.sessionmaker is None:
                raise RuntimeError("scalekit has no database: set SCALEKIT_DATABASE_URL")
            g._scalekit_session = state.sessionmaker()
        return g._scalekit_session

    @property
    def pool(self) -> Any:
        """The current app's :class:`~scalekit.routing.RoutingPool` (or None)."""
        return self.state().pool

    @property
    def cache(self) -> Any:
        """The current app's :class:`~scalekit.cache.Cache`."""
        return self.state().cache

    @property
    def limiter(self) -> Any:
        """The current app's :class:`~scalekit.ratelimit.RateLimiter`."""
        return self.state().limiter

    @property
    def redis(self) -> Any:
        """The current app's Redis client (None: in-process stores)."""
        return self.state().redis

    def close(self, app: Flask | None = None) -> None:
        """Release what :meth:`init_app` created for ``app`` (at process exit, in tests)."""
        self.state(app).close()


# ---------------------------------------------------------------------------
# Request hooks
# ---------------------------------------------------------------------------


def _hit(limiter: Any, key: str, route_limit: RouteLimit) -> Decision | None:
    try:
        if len(route_limit.limits) == 1:
            decision: Decision = limiter.hit(key, route_limit.limits[0], route_limit.cost)
        else:
            decision = limiter.hit_all(key, route_limit.limits, route_limit.cost)
    except RateLimiterUnavailable:
        # fallback="raise": the request passes (never a 500); the limiter logged the outage.
        return None
    return decision


def _client(req: Any) -> str:
    return str(req.remote_addr or "unknown")


def _too_many() -> Response:
    return Response(DENIED_BODY, status=429, mimetype="application/json")


def _before_request() -> Response | None:
    state = Scalekit.state()
    web = RequestScope(
        request.method,
        request.path,
        request.remote_addr,
        request._get_current_object(),  # type: ignore[attr-defined]
    )
    web.limiter = state.limiter
    g._scalekit_scope = (web, enter_scope(web))
    if state.pool is not None:
        # A worker thread serves request after request: nothing routes by the last one's writes.
        state.pool.reset_context()
    if state.signer is not None:
        settings = state.settings
        signed = request.headers.get(settings["SCALEKIT_TOKEN_HEADER"]) or request.cookies.get(
            settings["SCALEKIT_TOKEN_COOKIE"]
        )
        web.token_in = state.signer.verify(signed)
        state.pool.import_token(web.token_in)
    route_limit = state.default_limits
    if (
        route_limit is None
        or request.blueprint == _HEALTH_BLUEPRINT
        or request.path in state.settings["SCALEKIT_RATELIMIT_EXEMPT"]
    ):
        return None
    key = (route_limit.key or _client)(request)
    decision = _hit(state.limiter, f"app|{key}", route_limit)
    if decision is None:
        return None
    web.decisions.append(decision)
    return None if decision.allowed else _too_many()


def _after_request(response: Response) -> Response:
    state = Scalekit.state()
    web = current_request()
    if web is None:
        return response
    if web.decisions:
        response.headers.update(
            combined_headers(web.decisions, state.settings["SCALEKIT_HEADER_STYLE"])
        )
    if state.signer is not None:
        token = _export_token(state.pool)
        if token is not None and token != web.token_in:
            web.token_out = token
            settings = state.settings
            signed = state.signer.sign(token)
            response.headers[settings["SCALEKIT_TOKEN_HEADER"]] = signed
            response.set_cookie(
                settings["SCALEKIT_TOKEN_COOKIE"],
                signed,
                max_age=round(state.signer.max_age),
                httponly=True,
                samesite="Lax",
                secure=bool(settings["SCALEKIT_TOKEN_SECURE"]),
            )
    return response


def _export_token(pool: Any) -> str | None:
    """The pool's token for the response; None (logged) if resolving it fails.

    The write is committed by then: a failure to read its position must not
    turn the response into a 500 (the client reads its write a little later).
    """
    known, token = known_token(pool)
    try:
        if not known:
            token = pool.export_token()
    except Exception:
        logger.warning("scalekit: no consistency token for this response", exc_info=True)
        return None
    return token


def _teardown_request(error: BaseException | None) -> None:
    scope = g.pop("_scalekit_scope", None)
    if scope is not None:
        with contextlib.suppress(ValueError):
            leave_scope(scope[1])
    state = current_app.extensions.get("scalekit")
    if isinstance(state, ScalekitState) and state.pool is not None:
        state.pool.reset_context()


def _teardown_appcontext(error: BaseException | None) -> None:
    session = g.pop("_scalekit_session", None)
    if session is not None:
        session.close()


# ---------------------------------------------------------------------------
# Route limits
# ---------------------------------------------------------------------------


def limit(
    limits: str | Limit | Sequence[str | Limit],
    *,
    key: Callable[[Any], str] | None = None,
    scope: str = "",
    cost: int = 1,
) -> Callable[[F], F]:
    """A view's own limit: ``@limit("100/hour", key=lambda request: ...)``.

    Counted per view (or per ``scope``, to share a counter between views)
    and per ``key(request)`` (the client address by default). A denial
    answers 429; the headers (merged with the app-wide limit's, one set) and
    ``Retry-After`` are added to the response. Works on sync and ``async``
    views (the check itself is a sync call on the app's limiter).

    Raises:
        ConfigurationError: a bad limit, key or cost.
    """
    route_limit = RouteLimit.of(limits, key=key, scope=scope, cost=cost)

    def check() -> Response | None:
        state = Scalekit.state()
        request_key = (route_limit.key or _client)(request)
        counter = route_limit.counter_key(request_key, request.endpoint or request.path)
        decision = _hit(state.limiter, counter, route_limit)
        if decision is None:
            return None
        web = current_request()
        if web is not None:
            web.decisions.append(decision)
        if decision.allowed:
            return None
        denied = _too_many()
        if web is None:
            denied.headers.update(combined_headers([decision]))
        return denied

    def decorate(view: F) -> F:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def limited_async(*args: Any, **kwargs: Any) -> Any:
                return check() or await view(*args, **kwargs)

            return limited_async  # type: ignore[return-value]

        @functools.wraps(view)
        def limited(*args: Any, **kwargs: Any) -> Any:
            return check() or view(*args, **kwargs)

        return limited  # type: ignore[return-value]

    return decorate


# ---------------------------------------------------------------------------
# Health and export
# ---------------------------------------------------------------------------


def health_blueprint(
    *, live: str = "/healthz", ready: str = "/readyz", url_prefix: str | None = None
) -> Blueprint:
    """A blueprint with ``live`` (no I/O, always 200) and ``ready`` (200, or 503 when critical).

    ``ready`` probes the app's pool, Redis, limiter and cache
    (:func:`scalekit.health.readiness`) and answers the report's JSON (URLs
    masked, no secret). Its routes are exempt from the app-wide limit.
    """
    blueprint = Blueprint(_HEALTH_BLUEPRINT, __name__, url_prefix=url_prefix)

    @blueprint.get(live)
    def liveness_view() -> Response:
        from scalekit.health import liveness

        return jsonify(liveness().to_dict())

    @blueprint.get(ready)
    def readiness_view() -> tuple[Response, int]:
        from scalekit.health import readiness

        state = Scalekit.state()
        report = readiness(
            pool=state.pool, redis=state.redis, limiters=state.limiter, caches=state.cache
        )
        return jsonify(report.to_dict()), 503 if report.status == "critical" else 200

    return blueprint


def export_response(
    target: Any,
    select: Any,
    *,
    filename: str | None = None,
    format: str = "csv",
    chunk_size: int | None = None,
) -> Response:
    """A streamed ``Response`` of :func:`scalekit.batch.export` (CSV by default).

    Rows stream as the database sends them, in bounded memory; the WSGI
    server closes the response when the download ends or the client goes
    away, which closes the export and returns its connection to the pool.
    ``filename`` sets ``Content-Disposition: attachment``.

    Raises:
        ConfigurationError: as :func:`~scalekit.batch.export`, at once.
    """
    from scalekit.batch import export

    chunks: Iterable[bytes] = export(target, select, format=format, chunk_size=chunk_size)  # type: ignore[arg-type]
    mimetype = {"csv": "text/csv", "binary": "application/octet-stream"}.get(format, "text/plain")
    headers = (
        {} if filename is None else {"Content-Disposition": f'attachment; filename="{filename}"'}
    )
    return Response(chunks, mimetype=mimetype, headers=headers)
