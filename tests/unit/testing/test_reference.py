"""The API reference (docs/reference/*.md) lists every public name, and nothing else.

Read from the pages' mkdocstrings directives (``::: scalekit.routing.RoutingPool``)
and their "Re-exported here" links (``[`NoHealthyNode`][scalekit.errors.NoHealthyNode]``),
without building the docs. A public name added to an ``__all__`` without a
reference entry fails here: ``python scripts/reference_pages.py`` adds it.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import scalekit

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / "docs" / "reference"
PUBLIC_MODULES = [
    "scalekit",
    *sorted(
        name
        for _, name, _ in pkgutil.walk_packages(scalekit.__path__, "scalekit.")
        if not any(part.startswith("_") for part in name.split("."))
    ),
]
_TITLE = re.compile(r"^# `(?P<module>[\w.]+)`$", re.M)
_DIRECTIVE = re.compile(r"^::: (?P<path>[\w.]+)$", re.M)
_REEXPORT = re.compile(r"^- \[`(?P<name>\w+)`\]\[(?P<target>[\w.]+)\]", re.M)


def _pages() -> dict[str, str]:
    pages = {}
    for page in sorted(REFERENCE.glob("*.md")):
        text = page.read_text()
        title = _TITLE.search(text)
        assert title, f"{page.name} has no '# `module`' title"
        pages[title["module"]] = text
    return pages


PAGES = _pages()
DIRECTIVES = {match["path"] for text in PAGES.values() for match in _DIRECTIVE.finditer(text)}


def _resolve(path: str) -> object:
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def test_every_public_module_has_a_page_and_every_page_a_module() -> None:
    public = [m for m in PUBLIC_MODULES if hasattr(importlib.import_module(m), "__all__")]
    assert sorted(PAGES) == sorted(public)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_name_in_all_is_in_the_reference(module_name: str) -> None:
    module = importlib.import_module(module_name)
    text = PAGES.get(module_name, "")
    rendered = {
        m["path"].rpartition(".")[2]
        for m in _DIRECTIVE.finditer(text)
        if m["path"].rpartition(".")[0] == module_name
    }
    linked = {m["name"]: m["target"] for m in _REEXPORT.finditer(text)}
    for name in module.__all__:
        if name in rendered:
            continue
        assert name in linked, (
            f"{module_name}.{name} is public but not in docs/reference: "
            "run python scripts/reference_pages.py"
        )
        target = linked[name]
        assert target in DIRECTIVES, f"{module_name}.{name} links to {target}, rendered nowhere"
        assert _resolve(target) is getattr(module, name), f"{target} is not {module_name}.{name}"


@pytest.mark.parametrize("module_name", sorted(PAGES))
def test_the_reference_lists_nothing_that_is_not_public(module_name: str) -> None:
    module = importlib.import_module(module_name)
    text = PAGES[module_name]
    listed = [m["path"] for m in _DIRECTIVE.finditer(text)]
    listed += [f"{module_name}.{m['name']}" for m in _REEXPORT.finditer(text)]
    for path in listed:
        owner, _, name = path.rpartition(".")
        assert owner == module_name, f"{path} is on the page of {module_name}"
        assert name in module.__all__, f"{path} is in the reference but not in __all__"


def test_no_object_is_rendered_twice() -> None:
    objects = [id(_resolve(path)) for path in DIRECTIVES]
    assert len(objects) == len(set(objects))


def test_the_nav_has_every_reference_page() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in REFERENCE.glob("*.md"):
        assert f"reference/{page.name}" in nav


def test_every_guide_page_links_to_its_reference() -> None:
    for page in ROOT.glob("docs/*.md"):
        if page.name in {"contributing.md"}:
            continue
        assert "](reference/" in page.read_text(), f"{page.name} has no link to the reference"
