"""The Lua scripts, read from package data and composed once per process.

An algorithm's script is ``common.lua + <algorithm>.lua + driver.lua``: the
driver (the multi-limit loop of :func:`scalekit.ratelimit._core.evaluate`) is
written once and each algorithm file supplies ``rl_load``, ``rl_check``,
``rl_apply``, ``rl_describe`` and ``rl_persist``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["Script", "algorithm_script", "concurrency_script"]


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script's text and its SHA1 (what EVALSHA wants)."""

    name: str
    source: str
    sha: str


def _read(name: str) -> str:
    return resources.files("scalekit.ratelimit").joinpath("_lua").joinpath(name).read_text("utf-8")


def _script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


@functools.cache
def algorithm_script(algorithm: str) -> Script:
    """The script that runs ``algorithm`` against one or more limits."""
    source = "\n".join((_read("common.lua"), _read(f"{algorithm}.lua"), _read("driver.lua")))
    return _script(algorithm, source)


@functools.cache
def concurrency_script(name: str) -> Script:
    """``"acquire"`` or ``"renew"`` for the concurrency limiter."""
    return _script(f"concurrency_{name}", _read(f"concurrency_{name}.lua"))
