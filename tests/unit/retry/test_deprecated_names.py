"""Issue 14's naming scheme: the old ``_async`` name still works for one release, and warns."""

from __future__ import annotations

import asyncio

import pytest

from scalekit.retry import RetryPolicy


def test_call_async_is_a_deprecated_alias_of_acall() -> None:
    async def work(x: int) -> int:
        return x * 2

    policy = RetryPolicy(attempts=2)
    with pytest.warns(
        DeprecationWarning, match=r"RetryPolicy\.call_async .* use RetryPolicy\.acall"
    ):
        assert asyncio.run(policy.call_async(work, 21)) == 42
