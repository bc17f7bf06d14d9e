"""``EXPLAIN (FORMAT JSON)`` as a SQLAlchemy statement, for ``total="estimate"``.

The statement class is built on first use, so importing pagination does not
import SQLAlchemy's compiler extension.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Explain", "estimated_rows"]


def _explain_class() -> Any:
    from sqlalchemy.ext.compiler import compiles
    from sqlalchemy.sql.base import Executable
    from sqlalchemy.sql.elements import ClauseElement

    class Explain(Executable, ClauseElement):
        """``EXPLAIN (FORMAT JSON) <select>``, for row estimates on PostgreSQL."""

        inherit_cache = False

        def __init__(self, statement: Any) -> None:
            self.statement = statement

    @compiles(Explain)
    def _compile(element: Any, compiler: Any, **kw: Any) -> str:
        return "EXPLAIN (FORMAT JSON) " + str(compiler.process(element.statement, **kw))

    return Explain


_EXPLAIN_CLASS: Any = None


def Explain(statement: Any) -> Any:
    """``EXPLAIN (FORMAT JSON) <statement>``, executable on PostgreSQL."""
    global _EXPLAIN_CLASS
    if _EXPLAIN_CLASS is None:
        _EXPLAIN_CLASS = _explain_class()
    return _EXPLAIN_CLASS(statement)


def estimated_rows(explain_output: Any) -> int:
    """The planner's row estimate from ``EXPLAIN (FORMAT JSON)`` output."""
    import json

    if isinstance(explain_output, (str, bytes)):
        explain_output = json.loads(explain_output)
    return int(explain_output[0]["Plan"]["Plan Rows"])
