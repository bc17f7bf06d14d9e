"""The Lua scripts, read from package data and composed once per process.

An algorithm's script is ``common.lua + <algorithm>.lua + driver.lua``: the
driver (the multi-limit loop of :func:`scalekit.ratelimit._core.evaluate`) is
written once and each algorithm file supplies ``rl_load``, ``rl_check``,
``rl_apply``, ``rl_describe`` and ``rl_persist``.

The commonest check, ``hit`` against one limit, has its own lean script for
the algorithms in :data:`SINGLE_LIMIT_ALGORITHMS` (``<algorithm>_single.lua``):
the same arithmetic unrolled for one key, about half the server time. The
differential tests replay single- and multi-limit scenarios through both.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = [
    "SINGLE_LIMIT_ALGORITHMS",
    "Script",
    "algorithm_script",
    "concurrency_script",
    "single_limit_script",
]

#: Algorithms with a lean script for a check against one limit
#: (``<algorithm>_single.lua``): no driver loop, and a shorter reply.
SINGLE_LIMIT_ALGORITHMS = frozenset(
    {"gcra", "token_bucket", "fixed_window", "sliding_window_counter", "sliding_window_log"}
)


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script's text and its SHA1 (what EVALSHA wants)."""

    name: str
    source: str
    sha: str
    #: ``sha`` as ASCII bytes, sent as is (no encoding per call).
    sha_bytes: bytes


def _read(name: str) -> str:
    return resources.files("scalekit.ratelimit").joinpath("_lua").joinpath(name).read_text("utf-8")


def _script(name: str, source: str) -> Script:
    sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
    return Script(name, source, sha, sha.encode("ascii"))


@functools.cache
def algorithm_script(algorithm: str) -> Script:
    """The script that runs ``algorithm`` against one or more limits."""
    source = "\n".join((_read("common.lua"), _read(f"{algorithm}.lua"), _read("driver.lua")))
    return _script(algorithm, source)


@functools.cache
def single_limit_script(algorithm: str) -> Script:
    """The lean script that runs ``algorithm`` against exactly one limit.

    Its reply is ``[remaining, reset_after]`` when the hit is allowed and
    ``[remaining, reset_after, retry_after]`` when it is denied.
    """
    return _script(f"{algorithm}_single", _read(f"{algorithm}_single.lua"))


@functools.cache
def concurrency_script(name: str) -> Script:
    """``"acquire"`` or ``"renew"`` for the concurrency limiter."""
    return _script(f"concurrency_{name}", _read(f"concurrency_{name}.lua"))
