"""Cancellation: never retried, and a cancelled task stops waiting at once."""

from __future__ import annotations

import asyncio

import pytest

from scalekit.retry import Backoff, RetryPolicy
from scalekit.testing import capture_events


async def test_cancellation_during_the_backoff_sleep_stops_at_once() -> None:
    # The real clock and an hour-long backoff: only cancellation can end this test quickly.
    policy = RetryPolicy(attempts=5, backoff=Backoff.constant(3600.0))
    calls = 0
    failed = asyncio.Event()

    @policy
    async def work() -> None:
        nonlocal calls
        calls += 1
        failed.set()
        raise ConnectionError("down")

    task = asyncio.create_task(work())
    await failed.wait()
    await asyncio.sleep(0)  # let the policy start sleeping
    task.cancel()
    with capture_events() as events, pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=60)
    assert calls == 1
    assert [e.kind for e in events if e.component == "retry"] == []


async def test_cancelled_error_from_the_call_is_not_retried() -> None:
    calls = 0

    @RetryPolicy(attempts=5, retry_on=BaseException, backoff=Backoff.none())
    async def work() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await work()
    assert calls == 1


async def test_cancellation_inside_an_async_for_block_propagates() -> None:
    policy = RetryPolicy(attempts=5, backoff=Backoff.constant(3600.0))
    started = asyncio.Event()
    numbers: list[int] = []

    async def block() -> None:
        async for attempt in policy:
            with attempt:
                numbers.append(attempt.number)
                started.set()
                raise ConnectionError

    task = asyncio.create_task(block())
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=60)
    assert numbers == [1]
