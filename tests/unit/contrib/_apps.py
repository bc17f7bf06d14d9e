"""Helpers shared by the framework tests: the example apps, header parsing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import http_sf

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (not a package) as a module."""
    module_name = f"scalekit_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def rate_limit_fields(headers: Any) -> dict[str, Any]:
    """The RateLimit fields of a response, parsed as RFC 8941 lists; each field once.

    Raises AssertionError when a field appears twice or does not parse.
    """
    fields: dict[str, Any] = {}
    items = headers.items() if not hasattr(headers, "multi_items") else headers.multi_items()
    for name, value in items:
        lowered = name.lower()
        if lowered in ("ratelimit", "ratelimit-policy", "retry-after"):
            assert lowered not in fields, f"{name} appears twice"
            if lowered == "retry-after":
                fields[lowered] = int(value)
            else:
                fields[lowered] = http_sf.parse(value.encode(), tltype="list")
    return fields
