"""The ``SCALEKIT`` settings dict: its schema, its system checks, and what it builds.

::

    SCALEKIT = {
        "REDIS_URL": "redis://localhost:6379/0",      # limits and tokens; unset: per process
        "RATELIMIT": {"DEFAULT": "100/minute", "KEY": "ip", "EXEMPT": ["/health"]},
        "ROUTING": {"PRIMARY": "default", "REPLICAS": ["replica1"], "MAX_LAG_SECONDS": 5.0},
        "CONSISTENCY": {"COOKIE": "scalekit-lsn", "HEADER": "X-Scalekit-Lsn"},
    }

Checks (``manage.py check``, and every start-up) report a bad value with an
id: ``scalekit.E001`` ``SCALEKIT`` is not a dict, ``E002`` an unknown key,
``E003`` a bad rate, ``E004`` a bad key function, ``E005`` a bad Redis URL or
client factory, ``E006`` a routing alias that is not in ``DATABASES``, ``E007``
a bad number; ``scalekit.W001`` warns that without ``REDIS_URL`` the limits
are counted per process.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

from scalekit.contrib.django._loops import PerLoop
from scalekit.errors import ConfigurationError
from scalekit.ratelimit import AsyncRateLimiter, Limit, MemoryBackend, RateLimiter

__all__ = [
    "KeyFunction",
    "check_settings",
    "config",
    "key_function",
    "limiters",
    "parse_rates",
    "reset",
]

KeyFunction = Callable[[Any], str]

_SCHEMA: dict[str, frozenset[str]] = {
    "": frozenset(
        {"REDIS_URL", "REDIS_CLIENT", "ASYNC_REDIS_CLIENT", "RATELIMIT", "ROUTING", "CONSISTENCY"}
    ),
    "RATELIMIT": frozenset(
        {"DEFAULT", "KEY", "EXEMPT", "ALGORITHM", "FALLBACK", "NAMESPACE", "INSTANCES"}
    ),
    "ROUTING": frozenset(
        {
            "PRIMARY",
            "REPLICAS",
            "MAX_LAG_SECONDS",
            "STICKY_SECONDS",
            "BLACKLIST_SECONDS",
            "CHECK_INTERVAL",
            "APPS_ON_PRIMARY",
        }
    ),
    "CONSISTENCY": frozenset({"COOKIE", "HEADER", "MAX_AGE", "WAIT_SECONDS"}),
}


def config() -> dict[str, Any]:
    """``settings.SCALEKIT`` (an empty dict when unset)."""
    value = getattr(settings, "SCALEKIT", None)
    return {} if value is None else value


def section(name: str) -> dict[str, Any]:
    """One section of ``SCALEKIT`` (``RATELIMIT``, ``ROUTING``, ...), empty when unset."""
    value: dict[str, Any] = config().get(name) or {}
    return value


def _ip(request: Any) -> str:
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def _user(request: Any) -> str:
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return f"user:{user.pk}"
    return f"ip:{_ip(request)}"


def key_function(spec: str | KeyFunction) -> KeyFunction:
    """The request-to-key function named by ``spec``.

    ``"ip"`` (``REMOTE_ADDR``; behind a proxy, set it from the forwarded header in
    your own middleware first), ``"user"`` (the user's pk, else the IP),
    ``"header:<Name>"`` (a request header, e.g. an API key), a callable taking the
    request, or the dotted path of one.

    Raises:
        ConfigurationError: anything else.
    """
    if callable(spec):
        return spec
    given: object = spec
    if not isinstance(given, str):
        raise ConfigurationError(
            f"a rate-limit key is a string or a callable, got {type(given).__name__}",
            parameter="KEY",
        )
    if spec == "ip":
        return _ip
    if spec == "user":
        return _user
    if spec.startswith("header:") and len(spec) > 7:
        header = spec[7:]

        def from_header(request: Any) -> str:
            return str(request.headers.get(header) or f"ip:{_ip(request)}")

        return from_header
    if "." in spec:
        try:
            found = import_string(spec)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import key function {spec!r}: {exc}") from exc
        if callable(found):
            return found  # type: ignore[no-any-return]
    raise ConfigurationError(
        f"a rate-limit key is 'ip', 'user', 'header:<Name>', a callable or its dotted path; "
        f"got {spec!r}",
        parameter="KEY",
    )


def _factory(name: str) -> Callable[[], Any] | None:
    given = config().get(name)
    if given is None:
        return None
    found = import_string(given) if isinstance(given, str) else given
    if not callable(found):
        raise ConfigurationError(f"SCALEKIT[{name!r}] must be callable", parameter=name)
    return found  # type: ignore[no-any-return]


def redis_client(is_async: bool) -> Any:
    """A client from ``REDIS_CLIENT``/``ASYNC_REDIS_CLIENT``, else ``REDIS_URL``, else ``None``."""
    factory = _factory("ASYNC_REDIS_CLIENT" if is_async else "REDIS_CLIENT")
    if factory is not None:
        return factory()
    url = config().get("REDIS_URL")
    if not url:
        return None
    if is_async:
        import redis.asyncio as aredis

        return aredis.Redis.from_url(url)
    import redis

    return redis.Redis.from_url(url)


class _Limiters:
    """The process's limiters: one blocking, one per event loop, on one store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sync: RateLimiter | None = None
        self._memory: MemoryBackend | None = None
        self._loops: PerLoop[AsyncRateLimiter] = PerLoop()

    def _options(self) -> dict[str, Any]:
        options = section("RATELIMIT")
        return {
            "algorithm": options.get("ALGORITHM", "gcra"),
            "fallback": options.get("FALLBACK", "local"),
            "namespace": options.get("NAMESPACE", "scalekit:rl:django"),
            "instances": options.get("INSTANCES", 1),
        }

    def _store(self, is_async: bool) -> Any:
        client = redis_client(is_async)
        if client is not None:
            return client
        if self._memory is None:
            self._memory = MemoryBackend()
        return self._memory

    def sync(self) -> RateLimiter:
        limiter = self._sync
        if limiter is None:
            with self._lock:
                if self._sync is None:
                    self._sync = RateLimiter(self._store(False), **self._options())
                limiter = self._sync
        return limiter

    def for_loop(self) -> AsyncRateLimiter:
        return self._loops.get(self._build_async)

    def _build_async(self) -> tuple[AsyncRateLimiter, Callable[[], Awaitable[None]]]:
        with self._lock:
            store = self._store(True)
        limiter = AsyncRateLimiter(store, **self._options())

        async def close() -> None:
            await limiter.aclose()
            if not isinstance(store, MemoryBackend):
                await store.aclose()

        return limiter, close


limiters = _Limiters()


def reset() -> None:
    """Forget the limiters built from the settings (tests change settings; call this)."""
    global limiters
    limiters = _Limiters()


# --------------------------------------------------------------------------- system checks


def _error(message: str, number: int, hint: str | None = None) -> checks.CheckMessage:
    return checks.Error(message, hint=hint, obj="settings.SCALEKIT", id=f"scalekit.E{number:03d}")


def _unknown(where: str, given: Mapping[str, Any]) -> list[checks.CheckMessage]:
    unknown = sorted(set(given) - _SCHEMA[where])
    if not unknown:
        return []
    place = f"SCALEKIT[{where!r}]" if where else "SCALEKIT"
    return [_error(f"unknown key(s) in {place}: {unknown}", 2, f"known: {sorted(_SCHEMA[where])}")]


def check_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """Django system check of ``settings.SCALEKIT`` (registered by the app config)."""
    value = getattr(settings, "SCALEKIT", None)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        return [_error(f"SCALEKIT must be a dict, got {type(value).__name__}", 1)]
    errors = _unknown("", value)
    for name in ("RATELIMIT", "ROUTING", "CONSISTENCY"):
        part = value.get(name)
        if part is None:
            continue
        if not isinstance(part, dict):
            errors.append(_error(f"SCALEKIT[{name!r}] must be a dict", 1))
            continue
        errors += _unknown(name, part)
    errors += _check_redis(value)
    errors += _check_ratelimit(value.get("RATELIMIT") or {})
    errors += _check_routing(value.get("ROUTING") or {})
    return errors


def _check_redis(value: dict[str, Any]) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    url = value.get("REDIS_URL")
    if url is not None and not (
        isinstance(url, str) and url.split("://", 1)[0] in ("redis", "rediss", "unix")
    ):
        errors.append(
            _error("SCALEKIT['REDIS_URL'] must be a redis://, rediss:// or unix:// URL", 5)
        )
    for name in ("REDIS_CLIENT", "ASYNC_REDIS_CLIENT"):
        try:
            _factory(name)
        except (ImportError, ConfigurationError) as exc:
            errors.append(_error(f"SCALEKIT[{name!r}]: {exc}", 5))
    if not url and value.get("REDIS_CLIENT") is None and value.get("RATELIMIT") is not None:
        errors.append(
            checks.Warning(
                "SCALEKIT has no REDIS_URL: rate limits are counted in each process, "
                "not shared by the instances",
                obj="settings.SCALEKIT",
                id="scalekit.W001",
            )
        )
    return errors


def _check_ratelimit(options: dict[str, Any]) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    default = options.get("DEFAULT")
    if default is not None:
        try:
            parse_rates(default)
        except ConfigurationError as exc:
            errors.append(_error(f"SCALEKIT['RATELIMIT']['DEFAULT']: {exc}", 3))
    try:
        key_function(options.get("KEY", "ip"))
    except ConfigurationError as exc:
        errors.append(_error(f"SCALEKIT['RATELIMIT']['KEY']: {exc}", 4))
    try:
        RateLimiter(MemoryBackend(), **_Limiters()._options())
    except ConfigurationError as exc:
        errors.append(_error(f"SCALEKIT['RATELIMIT']: {exc}", 7))
    return errors


def _check_routing(options: dict[str, Any]) -> list[checks.CheckMessage]:
    if not options:
        return []
    errors: list[checks.CheckMessage] = []
    databases = set(settings.DATABASES)
    primary = options.get("PRIMARY", "default")
    replicas = options.get("REPLICAS", [])
    if isinstance(replicas, str) or not isinstance(replicas, list | tuple):
        return [_error("SCALEKIT['ROUTING']['REPLICAS'] must be a list of aliases", 6)]
    errors += [
        _error(
            f"SCALEKIT['ROUTING'] names database {alias!r}, not in DATABASES",
            6,
            f"DATABASES has {sorted(databases)}",
        )
        for alias in [primary, *replicas]
        if alias not in databases
    ]
    for name in ("MAX_LAG_SECONDS", "STICKY_SECONDS", "BLACKLIST_SECONDS", "CHECK_INTERVAL"):
        number = options.get(name)
        if number is not None and (
            isinstance(number, bool) or not isinstance(number, int | float) or number < 0
        ):
            errors.append(_error(f"SCALEKIT['ROUTING'][{name!r}] must be a number >= 0", 7))
    return errors


def parse_rates(value: Any) -> list[Limit]:
    """``"100/minute"``, ``"10/second; 1000/hour"``, a Limit, or a list of them."""
    if isinstance(value, Limit):
        return [value]
    if isinstance(value, str):
        return Limit.parse_many(value)
    if isinstance(value, list | tuple) and value:
        return [item if isinstance(item, Limit) else Limit.parse(item) for item in value]
    raise ConfigurationError(f"a rate is a string like '100/minute' or a Limit, got {value!r}")
