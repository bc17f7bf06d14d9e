"""The decorator and front-ends keep the wrapped function's types (checked by mypy)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api as mypy_api

SNIPPET = textwrap.dedent(
    """
    from scalekit.breaker import CircuitBreaker

    breaker = CircuitBreaker("x")

    @breaker
    def charge(amount: int, *, currency: str = "EUR") -> float:
        return 1.0

    @breaker
    async def acharge(amount: int) -> str:
        return ""

    reveal_type(charge)
    reveal_type(acharge)
    reveal_type(breaker.call(charge, 1, currency="USD"))
    charge("ten")

    async def main() -> None:
        reveal_type(await acharge(1))
        reveal_type(await breaker.acall(acharge, 1))
        async with breaker.guard() as permit:
            reveal_type(permit)
    """
)


def test_types_survive_the_breaker(tmp_path: Path) -> None:
    module = tmp_path / "breaker_types.py"
    module.write_text(SNIPPET)
    stdout, _, _ = mypy_api.run(["--strict", "--no-error-summary", str(module)])
    # Older mypy versions spell builtins out ("builtins.int"); newer ones do not.
    lines = [
        line.split(": ", 1)[1].replace("builtins.", "")
        for line in stdout.splitlines()
        if ": " in line
    ]
    assert lines == [
        'note: Revealed type is "def (amount: int, *, currency: str =) -> float"',
        'note: Revealed type is "def (amount: int) -> typing.Coroutine[Any, Any, str]"',
        'note: Revealed type is "float"',
        'error: Argument 1 to "charge" has incompatible type "str"; expected "int"  [arg-type]',
        'note: Revealed type is "str"',
        'note: Revealed type is "str"',
        'note: Revealed type is "scalekit.breaker._breaker.Permit"',
    ], stdout
