"""Check a built wheel and sdist: every file the package needs at run time is in them.

``python -m build`` packs what hatchling selects; a data file left out (a Lua
script, ``py.typed``) only shows when a user imports the installed package.
This compares the archives with the source tree:

- the wheel holds every ``.py``, ``.lua`` and ``py.typed`` file under
  ``src/scalekit`` (at ``scalekit/...``), its metadata names the distribution
  ``scalekit-blocks`` and it registers the pytest plugin;
- the sdist holds the same files under ``src/scalekit``.

    python scripts/check_dist.py dist/      # exit 1, listing what is missing

.ci/run calls it after ``python -m build``.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "scalekit"
DISTRIBUTION = "scalekit-blocks"
RUNTIME_SUFFIXES = (".py", ".lua")


def needed_files(package: Path = PACKAGE) -> list[str]:
    """Paths (relative to ``src/``) of every file the installed package needs."""
    found = [
        path
        for path in package.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and (path.suffix in RUNTIME_SUFFIXES or path.name == "py.typed")
    ]
    return sorted(path.relative_to(package.parent).as_posix() for path in found)


def check_wheel(wheel: Path, needed: list[str]) -> list[str]:
    """What is wrong with ``wheel`` (empty when nothing is)."""
    problems: list[str] = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        problems += [f"{wheel.name}: missing {name}" for name in needed if name not in names]
        metadata = [n for n in names if n.endswith(".dist-info/METADATA")]
        entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        if not metadata:
            problems.append(f"{wheel.name}: no METADATA")
        else:
            text = archive.read(metadata[0]).decode()
            if f"Name: {DISTRIBUTION}\n" not in text:
                problems.append(f"{wheel.name}: METADATA does not name {DISTRIBUTION}")
        if not entry_points or "[pytest11]" not in archive.read(entry_points[0]).decode():
            problems.append(f"{wheel.name}: the pytest11 entry point is not registered")
    return problems


def check_sdist(sdist: Path, needed: list[str]) -> list[str]:
    """What is wrong with ``sdist`` (empty when nothing is)."""
    with tarfile.open(sdist) as archive:
        # Members are "<name>-<version>/src/scalekit/...".
        names = {member.name.partition("/")[2] for member in archive.getmembers()}
    return [f"{sdist.name}: missing src/{name}" for name in needed if f"src/{name}" not in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist", type=Path, help="the folder python -m build wrote to")
    args = parser.parse_args(argv)
    wheels = sorted(args.dist.glob("*.whl"))
    sdists = sorted(args.dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        sys.stdout.write(
            f"expected one wheel and one sdist in {args.dist}, found {wheels + sdists}\n"
        )
        return 1
    needed = needed_files()
    if not any(name.endswith(".lua") for name in needed) or "scalekit/py.typed" not in needed:
        sys.stdout.write("the source tree has no Lua files or no py.typed: wrong folder?\n")
        return 1
    problems = check_wheel(wheels[0], needed) + check_sdist(sdists[0], needed)
    for problem in problems:
        sys.stdout.write(problem + "\n")
    if not problems:
        sys.stdout.write(
            f"{wheels[0].name} and {sdists[0].name}: all {len(needed)} package files present\n"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
