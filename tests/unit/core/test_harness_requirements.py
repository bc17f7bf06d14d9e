"""Missing server binaries skip integration tests, or fail them under SCALEKIT_REQUIRE_SERVICES."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import pytest
pytestmark = pytest.mark.integration

def test_needs_postgres(pg_cluster):
    pass
"""


def run_probe(tmp_path: Path, require: bool) -> subprocess.CompletedProcess[str]:
    probe_dir = ROOT / "tests" / "integration" / f"_probe_{os.getpid()}_{tmp_path.name}"
    probe_dir.mkdir()
    try:
        (probe_dir / "__init__.py").write_text("")
        (probe_dir / "test_probe.py").write_text(PROBE)
        env = {**os.environ, "SCALEKIT_PG_BINDIR": str(tmp_path / "nowhere")}
        env.pop("SCALEKIT_REQUIRE_SERVICES", None)
        if require:
            env["SCALEKIT_REQUIRE_SERVICES"] = "1"
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-rs",
                str(probe_dir / "test_probe.py"),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)


def test_missing_binaries_skip_with_a_reason(tmp_path: Path) -> None:
    result = run_probe(tmp_path, require=False)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "no PostgreSQL binaries" in result.stdout


def test_missing_binaries_fail_when_services_are_required(tmp_path: Path) -> None:
    result = run_probe(tmp_path, require=True)
    assert result.returncode == 1, result.stdout
    assert "SCALEKIT_REQUIRE_SERVICES=1" in result.stdout
    assert "skipped" not in result.stdout
