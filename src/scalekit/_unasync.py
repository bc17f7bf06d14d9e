"""The colour marker for shells written once, in async, and generated in sync.

``scripts/unasync.py`` turns an ``_async.py`` that declares ``__unasync__``
into its ``_sync.py`` twin. Code that differs between the colours is written
as ``if IS_ASYNC: ... else: ...``: the async module runs the first branch, and
the generator keeps only the ``else`` body in the sync module, so the sync
twin never looks at this constant. mypy is configured with
``always_true = ["IS_ASYNC"]``: it checks the async branch here and the sync
branch in the generated file, where it runs. See "Sync and async from one
source" in docs/contributing.md.
"""

from __future__ import annotations

from typing import Final

__all__ = ["IS_ASYNC"]

IS_ASYNC: Final = True
