"""Statement building: the seek predicate and ORDER BY of each page shape.

The predicate groups consecutive non-nullable keys of one direction into
row-value runs, guarded so the leading run is an index range condition, and
gives nullable keys explicit ``IS NULL`` branches (see the theory of
operation in ``_keyset.py``). Every cursor value is its own bind parameter,
typed as its key. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scalekit.pagination._expressions import _sa
from scalekit.pagination._key_types import _is_real

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

    from scalekit.pagination._order import _Key

__all__ = ["PARAM_PREFIX", "build_shape", "row_values_supported"]

_ROW_VALUE_DIALECTS = frozenset({"postgresql", "sqlite", "mysql", "mariadb", "cockroachdb"})
PARAM_PREFIX = "scalekit_k"
"""Bind parameter names of cursor values: ``scalekit_k0``, ``scalekit_k1``..."""


def row_values_supported(dialect: Dialect | None) -> bool:
    """Whether ``dialect`` compares row values (``(a, b) > (x, y)``) as an index range."""
    return dialect is not None and dialect.name in _ROW_VALUE_DIALECTS


def build_shape(
    keys: Sequence[_Key],
    mask: tuple[bool, ...] | None,
    *,
    backwards: bool,
    inclusive: bool,
    row_values: bool,
    dialect_name: str | None,
) -> tuple[Any, tuple[Any, ...]]:
    """The seek predicate (None for the first page) and the ORDER BY clauses of one shape.

    ``mask`` says which cursor values are NULL; ``backwards`` seeks before the
    cursor in the reversed order; with ``inclusive`` the cursor's row belongs
    to the page. Values are bind parameters named ``scalekit_k<position>``.
    """
    keys = [k.flipped() for k in keys] if backwards else list(keys)
    predicate = (
        None if mask is None else _predicate(keys, mask, inclusive, row_values, dialect_name)
    )
    order = []
    for key in keys:
        clause = key.expression.desc() if key.descending else key.expression.asc()
        if key.nullable:
            clause = clause.nulls_last() if key.nulls_last else clause.nulls_first()
        order.append(clause)
    return predicate, tuple(order)


def _predicate(
    keys: list[_Key],
    mask: tuple[bool, ...],
    inclusive: bool,
    row_values: bool,
    dialect_name: str | None,
) -> Any:
    sa = _sa()
    runs: list[list[int]] = []
    for position, key in enumerate(keys):
        previous = keys[runs[-1][-1]] if runs else None
        if (
            row_values
            and previous is not None
            and not key.nullable
            and not previous.nullable
            and previous.descending == key.descending
        ):
            runs[-1].append(position)
        else:
            runs.append([position])

    def bind(position: int) -> Any:
        sql_type = keys[position].sql_type
        parameter = sa.bindparam(f"{PARAM_PREFIX}{position}", type_=sql_type)
        if dialect_name == "postgresql" and _is_real(sql_type):
            # psycopg reads a real as its shortest decimal form and sends
            # floats as double precision: compared as doubles, the cursor's
            # value differs from the row's and the row comes back forever.
            return sa.cast(parameter, sql_type)
        return parameter

    def compare(run: list[int], inclusive: bool) -> Any:
        """``run`` strictly after (or at, if inclusive) the cursor, NULLs included."""
        key = keys[run[0]]
        if len(run) > 1:
            left = sa.tuple_(*(keys[p].expression for p in run))
            right = sa.tuple_(*(bind(p) for p in run))
            if key.descending:
                return left <= right if inclusive else left < right
            return left >= right if inclusive else left > right
        column = key.expression
        position = run[0]
        if key.nullable and mask[position]:
            # The cursor sits in the NULL block.
            if key.nulls_last:
                return column.is_(None) if inclusive else sa.false()
            return sa.true() if inclusive else column.isnot(None)
        value = bind(position)
        if key.descending:
            comparison = column <= value if inclusive else column < value
        else:
            comparison = column >= value if inclusive else column > value
        if key.nullable and key.nulls_last:
            return sa.or_(comparison, column.is_(None))
        return comparison

    def after(index: int) -> Any:
        run = runs[index]
        if index == len(runs) - 1:
            return compare(run, inclusive=inclusive)
        return sa.and_(
            compare(run, inclusive=True),
            sa.or_(compare(run, inclusive=False), after(index + 1)),
        )

    return after(0)
