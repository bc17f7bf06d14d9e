"""``examples/django_app``: its one command runs every endpoint through Django's test client.

In a subprocess (the example has its own settings). On SQLite and fakeredis
here; on the harness's PostgreSQL and Redis in
``tests/integration/test_django_example_pg.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MANAGE = ROOT / "examples" / "django_app" / "manage.py"


def run_demo(tmp_path: Path, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, str(MANAGE), "demo"],
        env={**os.environ, "ORDERS_SQLITE": str(tmp_path / "orders.sqlite3"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_on_sqlite_and_fakeredis(tmp_path: Path) -> None:
    out = run_demo(tmp_path)
    assert "create: 201" in out
    assert "import: 201 {'inserted': 50}" in out
    assert 'RateLimit-Policy: "100-per-1s";q=100;w=1, "5-per-60s";q=5;w=60' in out
    assert "pages: [51, 50, 49, 48, 47, 46, 45, 44, 43, 42] then [41, " in out
    assert "stats (async view): {'orders': 51}" in out
    assert "health: 200 ok" in out
