"""The README's set-up commands, .ci/run and the examples stay true together."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    return [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip().startswith("python -m pip install")
    ]


def test_readme_gives_exactly_two_setup_commands_and_ci_runs_both() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    quickstart, tests = commands
    assert "examples/quickstart.py" in quickstart
    assert "pytest" in tests
    for command in commands:
        assert command in CI, f".ci/run does not run the README command: {command}"
    assert "SCALEKIT_REQUIRE_SERVICES=1" in CI


EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_without_servers(script: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEKIT_")}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "an example should show what it does"
