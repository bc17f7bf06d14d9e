"""Development sessions: ``nox -s tests lint typecheck docs bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.10", "3.11", "3.12", "3.13"]


@nox.session(python=False, name="tests")
def tests(session: nox.Session) -> None:
    """Unit and integration tests in the current environment (servers started by the harness)."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON, name="tests-matrix")
def tests_matrix(session: nox.Session) -> None:
    """The test suite in a fresh virtualenv per supported Python that is installed."""
    session.install("-e", ".[all,test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff: lint (incl. import sorting, pyupgrade) and formatting check; generated sync twins."""
    paths = ["src", "tests", "examples", "benchmarks", "scripts", "noxfile.py"]
    session.run("python", "-m", "ruff", "check", *paths)
    session.run("python", "-m", "ruff", "format", "--check", *paths)
    # Every _sync.py generated from an _async.py matches what the script makes now.
    session.run("python", "scripts/unasync.py", "--check")


@nox.session(python=False)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.run("python", "-m", "mypy", "--strict", "src/scalekit")


@nox.session(python=False)
def docs(session: nox.Session) -> None:
    """Build the docs with MkDocs; warnings are errors."""
    session.run("python", "-m", "mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Run every benchmark in benchmarks/ and print their tables."""
    import pathlib

    for script in sorted(pathlib.Path("benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)
