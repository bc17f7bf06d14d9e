"""Settings: SQLite and fakeredis by default; ``DATABASE_URL``, ``REPLICA_URLS`` and
``REDIS_URL`` switch to real servers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SECRET_KEY = os.environ.get("SECRET_KEY", "example-only-secret-key-change-me-0123456789")
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "orders_service.urls"
USE_TZ = True
INSTALLED_APPS = ["scalekit.contrib.django", "orders_service"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

MIDDLEWARE = [
    "scalekit.contrib.django.RateLimitMiddleware",
    "scalekit.contrib.django.ConsistencyMiddleware",
]


def _database(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "",
        "PORT": parts.port or "",
    }


_sqlite = os.environ.get(
    "ORDERS_SQLITE", str(Path(tempfile.gettempdir()) / "scalekit-orders.sqlite3")
)
if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": _database(os.environ["DATABASE_URL"])}
    for index, url in enumerate(filter(None, os.environ.get("REPLICA_URLS", "").split(",")), 1):
        DATABASES[f"replica{index}"] = _database(url.strip())
else:  # one SQLite file; the "replica" alias reads it too, so routing shows
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _sqlite},
        "replica1": {"ENGINE": "django.db.backends.sqlite3", "NAME": _sqlite},
    }
DATABASE_ROUTERS = ["scalekit.contrib.django.ScalekitRouter"]

REDIS_URL = os.environ.get("REDIS_URL")
_fake: dict[str, Any] = {}


def fake_redis() -> Any:
    """A fakeredis client on one in-process server (the default without ``REDIS_URL``)."""
    import fakeredis

    return fakeredis.FakeRedis(server=_fake.setdefault("server", fakeredis.FakeServer()))


def fake_async_redis() -> Any:
    import fakeredis

    return fakeredis.FakeAsyncRedis(server=_fake.setdefault("server", fakeredis.FakeServer()))


_redis: dict[str, Any] = (
    {"REDIS_URL": REDIS_URL}
    if REDIS_URL
    else {
        "REDIS_CLIENT": "orders_service.settings.fake_redis",
        "ASYNC_REDIS_CLIENT": "orders_service.settings.fake_async_redis",
    }
)
CACHES = {
    "default": {
        "BACKEND": "scalekit.contrib.django.ScalekitCache",
        "LOCATION": REDIS_URL or "",
        "TIMEOUT": 60,
        "OPTIONS": {}
        if REDIS_URL
        else {
            "CLIENT": "orders_service.settings.fake_redis",
            "ASYNC_CLIENT": "orders_service.settings.fake_async_redis",
        },
    }
}
SCALEKIT = {
    **_redis,
    "RATELIMIT": {"DEFAULT": "100/second", "KEY": "ip", "EXEMPT": ["/health"]},
    "ROUTING": {
        "PRIMARY": "default",
        "REPLICAS": [alias for alias in DATABASES if alias != "default"],
        "MAX_LAG_SECONDS": 5.0,
    },
    "CONSISTENCY": {"COOKIE": "orders_consistency"},
}
# A cursor's signing key (pagination).
CURSOR_SECRET = os.environ.get("CURSOR_SECRET", "example-only-cursor-secret-0123")
