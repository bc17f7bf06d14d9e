"""Write the API reference pages (docs/reference/*.md) from every public module's ``__all__``.

One page per public module. Each name a module exports gets a mkdocstrings
directive (``::: scalekit.routing.RoutingPool``) on the page of the module
that defines it; a module that re-exports a name defined elsewhere (the
errors that ``scalekit.routing`` re-exports, everything at the top level)
lists it with a link to that page instead, so no object is rendered twice.

    python scripts/reference_pages.py          # rewrite the pages
    python scripts/reference_pages.py --check  # exit 1 if a page differs

tests/unit/testing/test_reference.py checks the committed pages against
``__all__`` without this script, so a new public name without a reference
entry fails the unit tests.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"

# (module, its page, the guide page that explains it)
MODULES = [
    ("scalekit", "scalekit.md", "index.md"),
    ("scalekit.errors", "errors.md", "errors.md"),
    ("scalekit.typing", "typing.md", "index.md"),
    ("scalekit.testing", "testing.md", "testing.md"),
    ("scalekit.testing.servers", "testing-servers.md", "testing.md"),
    ("scalekit.instrumentation", "instrumentation.md", "instrumentation.md"),
    ("scalekit.routing", "routing.md", "routing.md"),
    ("scalekit.breaker", "breaker.md", "breaker.md"),
    ("scalekit.retry", "retry.md", "retry.md"),
    ("scalekit.cache", "cache.md", "cache.md"),
    ("scalekit.ratelimit", "ratelimit.md", "ratelimit.md"),
    ("scalekit.pagination", "pagination.md", "pagination.md"),
    ("scalekit.batch", "batch.md", "batch.md"),
    ("scalekit.health", "health.md", "health.md"),
    ("scalekit.sharding", "sharding.md", "sharding.md"),
    ("scalekit.contrib", "contrib.md", "index.md"),
    ("scalekit.contrib.django", "contrib-django.md", "django.md"),
    ("scalekit.contrib.django.apps", "contrib-django-apps.md", "django.md"),
    ("scalekit.contrib.flask", "contrib-flask.md", "flask.md"),
    ("scalekit.contrib.starlette", "contrib-starlette.md", "starlette.md"),
]


def _defining_module(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str) or module == "typing":
        module = type(obj).__module__
    return module


def home(name: str, module: ModuleType, modules: dict[str, ModuleType]) -> str:
    """The public module whose page documents ``module.name``.

    The most specific public module that exports the same object and whose
    package defines it; the module itself when none does.
    """
    obj = getattr(module, name)
    defined_in = _defining_module(obj)
    owners = [
        candidate
        for candidate, public in modules.items()
        if (defined_in == candidate or defined_in.startswith(candidate + "."))
        and name in public.__all__
        and getattr(public, name) is obj
    ]
    return max(owners, key=len) if owners else module.__name__


def render(module_name: str, guide: str, modules: dict[str, ModuleType]) -> str:
    module = modules[module_name]
    summary = (module.__doc__ or "").strip().splitlines()[0]
    lines = [
        f"# `{module_name}`",
        "",
        f"{summary} Guide: [{guide.removesuffix('.md')}](../{guide}).",
        "",
        "<!-- drawn from __all__ by scripts/reference_pages.py; do not edit -->",
        "",
    ]
    here = [name for name in sorted(module.__all__) if home(name, module, modules) == module_name]
    elsewhere = {
        name: home(name, module, modules) for name in sorted(module.__all__) if name not in here
    }
    lines += [f"::: {module_name}.{name}\n" for name in here]
    if elsewhere:
        lines += ["## Re-exported here", ""]
        lines += [
            f"- [`{name}`][{owner}.{name}] (from [`{owner}`]({_page(owner)}))"
            for name, owner in elsewhere.items()
        ]
        lines.append("")
    return "\n".join(lines)


def _page(module_name: str) -> str:
    return next(page for name, page, _ in MODULES if name == module_name)


def pages() -> dict[Path, str]:
    modules = {name: importlib.import_module(name) for name, _, _ in MODULES}
    return {REFERENCE / page: render(name, guide, modules) for name, page, guide in MODULES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in pages().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        verb = "differs" if args.check else "written"
        sys.stdout.write(f"{path.relative_to(ROOT)}: {verb}\n")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
