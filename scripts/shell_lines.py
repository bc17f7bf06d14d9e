"""Count the hand-written lines of each package's shells, before and after.

Run: ``python scripts/shell_lines.py [--before REV] [--after REV]``.

A package's shells are its colour files, ``_async.py`` and ``_sync.py`` (the
pair issue 14 measured); a file that starts with the generator's do-not-edit
header (``scripts/unasync.py``) is generated and not counted. ``_base.py``, the
colourless helpers the shells share, is shown beside them, so that lines moved
there rather than removed stay visible, and so is the whole package (every
hand-written ``.py``, cores included), where lines that only moved cancel out
(it also grows with every feature added since). Two measures for the shells:
all physical lines (``wc -l``), and code lines (neither blank, nor a comment,
nor a docstring).

``--before`` defaults to the commit before the issue-14 work (the parent of the
commit that added ``scripts/unasync.py``); a package that did not exist there is
measured at the parent of the commit that first generated its ``_sync.py``.
``--after`` defaults to the working tree.
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import sys
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("breaker", "routing", "health", "cache", "retry", "ratelimit", "pagination", "batch")
SHELLS = ("_async.py", "_sync.py")
HEADER_PREFIX = "# This file is generated from "


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout


def read(rev: str | None, path: str) -> str | None:
    """``path`` at ``rev`` (None: the working tree), or None when it does not exist."""
    if rev is None:
        file = REPO / path
        return file.read_text() if file.exists() else None
    try:
        return git("show", f"{rev}:{path}")
    except subprocess.CalledProcessError:
        return None


def code_lines(text: str) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docstring_lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in skip or token.type == tokenize.ENDMARKER:
            continue
        for line in range(token.start[0], token.end[0] + 1):
            if line not in docstring_lines:
                lines.add(line)
    return len(lines)


def measure(rev: str | None, package: str, name: str) -> tuple[int, int] | None:
    """(physical, code) lines of a hand-written file; (0, 0) if generated; None if absent."""
    text = read(rev, f"src/scalekit/{package}/{name}")
    if text is None:
        return None
    if text.startswith(HEADER_PREFIX):
        return (0, 0)
    return (len(text.splitlines()), code_lines(text))


def package_lines(rev: str | None, package: str) -> int:
    """Hand-written lines of every ``.py`` file of ``package`` (cores included)."""
    root = f"src/scalekit/{package}"
    if rev is None:
        paths = [str(p.relative_to(REPO)) for p in sorted((REPO / root).rglob("*.py"))]
    else:
        paths = [
            p for p in git("ls-tree", "-r", "--name-only", rev, root).split() if p.endswith(".py")
        ]
    total = 0
    for path in paths:
        text = read(rev, path) or ""
        if not text.startswith(HEADER_PREFIX):
            total += len(text.splitlines())
    return total


def default_before() -> str:
    first = git("log", "--diff-filter=A", "--format=%H", "--", "scripts/unasync.py").split()[-1]
    return git("rev-parse", "--short", f"{first}^").strip()


def first_generated(package: str) -> str:
    """The parent of the first commit whose ``_sync.py`` of ``package`` is generated."""
    path = f"src/scalekit/{package}/_sync.py"
    for commit in reversed(git("log", "--format=%h", "--", path).split()):
        text = read(commit, path)
        if text is not None and text.startswith(HEADER_PREFIX):
            return git("rev-parse", "--short", f"{commit}^").strip()
    raise SystemExit(f"{package}: no generated _sync.py in the history")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", help="the commit to compare with")
    parser.add_argument("--after", help="the commit to measure (default: the working tree)")
    args = parser.parse_args()
    before = args.before or default_before()
    say(f"before: {before}; after: {args.after or 'working tree'}")
    say("shells = hand-written _async.py + _sync.py; lines / code lines")
    header = (
        f"{'package':<11} {'at':<8} {'before':>11} {'after':>11} {'change':>14}"
        f" {'_base.py after':>15} {'package before/after':>21}"
    )
    say(header)
    say("-" * len(header))
    for package in PACKAGES:
        rev = before
        if measure(rev, package, "_sync.py") is None:
            rev = first_generated(package)
        old = [m for m in (measure(rev, package, n) for n in SHELLS) if m]
        new = [m for m in (measure(args.after, package, n) for n in SHELLS) if m]
        old_lines, old_code = sum(m[0] for m in old), sum(m[1] for m in old)
        new_lines, new_code = sum(m[0] for m in new), sum(m[1] for m in new)
        base = measure(args.after, package, "_base.py") or (0, 0)
        change = (
            f"{100 * (new_lines - old_lines) / old_lines:+.0f}% / "
            f"{100 * (new_code - old_code) / old_code:+.0f}%"
        )
        say(
            f"{package:<11} {rev:<8} {f'{old_lines}/{old_code}':>11} "
            f"{f'{new_lines}/{new_code}':>11} {change:>14} {f'{base[0]}/{base[1]}':>15}"
            f" {f'{package_lines(rev, package)}/{package_lines(args.after, package)}':>21}"
        )


if __name__ == "__main__":
    main()
