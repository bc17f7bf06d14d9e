"""A small orders service on Django with scalekit: routing, cache, rate limits, pagination,
batch import and health.

Run it (SQLite and fakeredis, no servers)::

    python examples/django_app/manage.py demo          # drive every endpoint once, print
    python examples/django_app/manage.py runserver     # then: curl localhost:8000/orders

Against real servers, set ``DATABASE_URL`` (the PostgreSQL primary),
``REPLICA_URLS`` (comma-separated replica URLs) and ``REDIS_URL`` first; the
tables are made by ``python examples/django_app/manage.py migrate``.
Needs ``pip install 'scalekit-blocks[examples]'``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_service.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv if len(sys.argv) > 1 else [sys.argv[0], "demo"])
