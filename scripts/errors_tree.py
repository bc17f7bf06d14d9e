"""Draw scalekit's error tree from the code, into the errors module's docstring and docs/errors.md.

The shape of the tree (which errors exist, their parents, their order, the
builtins they refine) comes from ``scalekit.errors``' class hierarchy. The
one-line description of each error is prose kept in the tree itself, in the
module's docstring; a new error gets an empty one, which ``--check`` refuses.

    python scripts/errors_tree.py          # rewrite both trees
    python scripts/errors_tree.py --check  # exit 1 if either differs (CI and the unit tests)
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
ERRORS_PY = ROOT / "src" / "scalekit" / "errors.py"
ERRORS_MD = ROOT / "docs" / "errors.md"
BEGIN = "<!-- errors-tree: drawn from scalekit.errors by scripts/errors_tree.py; do not edit -->"
END = "<!-- /errors-tree -->"
RUN = "run: python scripts/errors_tree.py"
_LINE = re.compile(r"^[│├└─ ]*(?P<name>\w+)(?: \([\w, ]+\))?(?: {2,}(?P<text>.*))?$")
_ATTRIBUTE = re.compile(r"(?<![\w.])\.(\w+)")


def _errors() -> ModuleType:
    sys.path.insert(0, str(ROOT / "src"))
    import scalekit.errors

    return scalekit.errors


def error_classes(module: ModuleType) -> list[type[BaseException]]:
    """The module's exception classes, in the order they are defined."""
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    ]


def docstring_tree(docstring: str) -> list[str]:
    """The tree drawn in the docstring: the indented block after its ``::`` line."""
    lines = docstring.splitlines()
    start = lines.index("::") + 2
    end = lines.index("", start)
    return [line[4:] for line in lines[start:end]]


def descriptions(tree: list[str]) -> dict[str, str]:
    """Each error's description, read from a drawn tree."""
    found = {}
    for line in tree:
        match = _LINE.match(line)
        if match is None:
            raise SystemExit(f"cannot read this line of the error tree: {line!r}")
        found[match["name"]] = (match["text"] or "").strip()
    return found


def draw(module: ModuleType, described: dict[str, str]) -> list[str]:
    """The tree of ``module``'s errors, with the descriptions given (by class name)."""
    classes = error_classes(module)
    root = module.ScalekitError
    children: dict[type[BaseException], list[type[BaseException]]] = {cls: [] for cls in classes}
    for cls in classes:
        if cls is root:
            continue
        parents = [base for base in cls.__bases__ if base in children]
        if len(parents) != 1:
            raise SystemExit(f"{cls.__name__} needs exactly one parent in scalekit.errors")
        children[parents[0]].append(cls)

    labels: list[tuple[str, str]] = []

    def walk(cls: type[BaseException], prefix: str, branch: str) -> None:
        builtins = [base.__name__ for base in cls.__bases__ if base not in children]
        if cls is root:
            builtins = []
        suffix = f" ({', '.join(builtins)})" if builtins else ""
        labels.append((f"{prefix}{branch}{cls.__name__}{suffix}", cls.__name__))
        below = prefix + ("" if cls is root else ("    " if branch == "└── " else "│   "))
        for index, child in enumerate(children[cls]):
            walk(child, below, "└── " if index == len(children[cls]) - 1 else "├── ")

    walk(root, "", "")
    column = max(len(label) for label, _ in labels) + 2
    return [f"{label:<{column}}{described.get(name, '')}".rstrip() for label, name in labels]


def problems(module: ModuleType, tree: list[str]) -> list[str]:
    """What the tree's prose gets wrong: errors not described, attributes that do not exist."""
    found = []
    classes = error_classes(module)
    described = descriptions(tree)
    for cls in classes:
        text = described.get(cls.__name__, "")
        grouping = any(cls in other.__bases__ for other in classes)  # a heading may stay bare
        if not text and not grouping:
            found.append(f"{cls.__name__} has no description in the errors module's tree")
        # ``self.name = ...`` in an __init__ of the class or its parents stores "name".
        stored = {
            name
            for c in cls.__mro__
            if "__init__" in vars(c) and hasattr(vars(c)["__init__"], "__code__")
            for name in vars(c)["__init__"].__code__.co_names
        }
        found += [
            f"{cls.__name__} has no attribute .{attribute}"
            for attribute in _ATTRIBUTE.findall(text)
            if attribute not in stored
        ]
    return found


def rewrite_docstring(source: str, docstring: str, tree: list[str]) -> str:
    old = "\n".join(f"    {line}" if line else "" for line in docstring_tree(docstring))
    new = "\n".join(f"    {line}" for line in tree)
    if source.count(old) != 1:
        raise SystemExit("cannot find the error tree in src/scalekit/errors.py")
    return source.replace(old, new)


def rewrite_page(page: str, tree: list[str]) -> str:
    if page.count(BEGIN) != 1 or page.count(END) != 1:
        raise SystemExit(f"docs/errors.md needs the markers {BEGIN} and {END}")
    head, rest = page.split(BEGIN)
    _, tail = rest.split(END)
    block = "\n".join([BEGIN, "```text", *tree, "```", END])
    return head + block + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 on a difference"
    )
    args = parser.parse_args(argv)

    module = _errors()
    assert module.__doc__ is not None
    tree = draw(module, descriptions(docstring_tree(module.__doc__)))
    source, page = ERRORS_PY.read_text(), ERRORS_MD.read_text()
    wanted = {
        ERRORS_PY: rewrite_docstring(source, module.__doc__, tree),
        ERRORS_MD: rewrite_page(page, tree),
    }
    stale = [path for path, text in wanted.items() if path.read_text() != text]
    wrong = problems(module, tree)
    if args.check:
        messages = [
            f"{path.relative_to(ROOT)}: the error tree differs from the code" for path in stale
        ]
        if stale or wrong:
            sys.stderr.write("".join(f"{m}\n" for m in [*messages, *wrong, RUN]))
        return 1 if stale or wrong else 0
    for path in stale:
        path.write_text(wanted[path])
        sys.stdout.write(f"rewrote the error tree in {path.relative_to(ROOT)}\n")
    sys.stderr.write("".join(f"to do: {problem}\n" for problem in wrong))
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
