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


def test_ci_runs_every_example_right_after_the_examples_extra_alone() -> None:
    quickstart, tests = readme_commands()
    examples_step = CI.index(quickstart) + len(quickstart)
    loop = CI.index("for example in examples/*.py", examples_step)
    assert loop < CI.index(tests), "the examples must run before '.[test]' is installed"
    between = CI[examples_step:loop]
    assert "pip install" not in between, "only '.[examples]' may be installed when they run"


EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run_example(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """Run a script as a user would, with its own empty temporary folder (TMPDIR)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEKIT_")}
    env["TMPDIR"] = str(tmp)
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_without_servers_and_leaves_no_temporary_files(
    script: Path, tmp_path: Path
) -> None:
    result = run_example([str(script)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "an example should show what it does"
    assert "not installed" not in result.stdout, "the examples extra should cover every part"
    assert list(tmp_path.iterdir()) == []


# The quickstart fails half-way (the pagination step raises): its folder still goes.
_FAILING_QUICKSTART = """
import runpy, sys
module = runpy.run_path(sys.argv[1])
tour = module["tour"]
def boom(*args, **kwargs):
    raise RuntimeError("boom")
tour.__globals__["paginate"] = boom
module["main"]()
"""


def test_quickstart_removes_its_folder_when_it_fails(tmp_path: Path) -> None:
    result = run_example(
        ["-c", _FAILING_QUICKSTART, str(ROOT / "examples" / "quickstart.py")], tmp_path
    )
    assert result.returncode != 0
    assert "RuntimeError: boom" in result.stderr
    assert "batch_insert:" in result.stdout  # it did create the database first
    assert list(tmp_path.iterdir()) == []


def _examples_extra_closure() -> set[str]:
    """The distributions ``pip install -e '.[examples]'`` brings in (read from metadata)."""
    import importlib.metadata

    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    # (requirement, the extras its marker is evaluated with: those asked of its parent)
    pending = [(Requirement(r), {""}) for r in [*project["dependencies"], *extras["examples"]]]
    seen: set[str] = set()
    while pending:
        requirement, parent_extras = pending.pop()
        if requirement.marker and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in parent_extras
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name == "scalekit-blocks":
            pending += [(Requirement(r), {""}) for e in requirement.extras for r in extras[e]]
            continue
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        asked = {"", *requirement.extras}
        pending += [(Requirement(r), asked) for r in importlib.metadata.requires(name) or []]
    return {key.partition("[")[0] for key in seen}


def _third_party_modules(source: str) -> set[str]:
    """Top-level modules a script imports, or loads as a SQLAlchemy driver in the code
    (``"sqlite+aiosqlite://"``; URLs in docstrings are other set-ups, not the defaults)."""
    import ast

    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.partition(".")[0])
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            modules.update(re.findall(r"\+(\w+)://", node.value))
    return modules - set(sys.stdlib_module_names) - {"__future__", "scalekit"}


def test_examples_extra_provides_every_package_the_examples_use() -> None:
    import importlib.metadata

    from packaging.utils import canonicalize_name

    provided = _examples_extra_closure()
    distributions = importlib.metadata.packages_distributions()
    missing = [
        f"{script.name}: {module}"
        for script in EXAMPLES
        for module in sorted(_third_party_modules(script.read_text()))
        if not {canonicalize_name(d) for d in distributions.get(module, [module])} & provided
    ]
    assert missing == [], "the examples extra lacks what these need"
