"""Django settings for the tests of ``scalekit.contrib.django`` (configured once, on import)."""

from __future__ import annotations

import os
import tempfile

import django
from django.conf import settings

# Two aliases on one SQLite file: the router's choices show in ``QuerySet.db``
# (SQLite has no replicas; the real ones are in tests/integration).
_DB = os.path.join(tempfile.mkdtemp(prefix="scalekit-django-"), "db.sqlite3")

if not settings.configured:
    settings.configure(
        SECRET_KEY="scalekit-tests-secret-key-0123456789",
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.contenttypes", "scalekit.contrib.django"],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _DB},
            "replica": {"ENGINE": "django.db.backends.sqlite3", "NAME": _DB},
        },
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        ALLOWED_HOSTS=["*"],
    )
    django.setup()

urlpatterns: list[object] = []
