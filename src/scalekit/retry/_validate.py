"""Parameter checks for the retry modules; each raises ConfigurationError naming the parameter.

They take ``object`` on purpose: they check values at runtime whatever the
annotations promised.
"""

from __future__ import annotations

import math

from scalekit.errors import ConfigurationError

__all__ = ["check_int", "check_number", "check_str"]


def check_int(value: object, parameter: str, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(
            f"{parameter} must be an int >= {minimum}, got {value!r}", parameter=parameter
        )
    return value


def check_number(
    value: object, parameter: str, *, minimum: float = 0.0, strict: bool = False
) -> float:
    """``value`` as a finite float >= ``minimum`` (> when ``strict``; bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(
            f"{parameter} must be a finite number, got {value!r}", parameter=parameter
        )
    if value < minimum or (strict and value == minimum):
        bound = ">" if strict else ">="
        raise ConfigurationError(
            f"{parameter} must be {bound} {minimum:g}, got {value!r}", parameter=parameter
        )
    return float(value)


def check_str(value: object, parameter: str) -> str:
    """``value`` as a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"{parameter} must be a non-empty string, got {value!r}", parameter=parameter
        )
    return value
