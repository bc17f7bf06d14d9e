"""The stampede flow's requests: every kind it can yield is performed by both drivers.

``_flow.py`` decides; each shell's ``_perform`` does the I/O of one request.
A request kind added to the flow without a branch in ``_async.py`` (and so in
the generated ``_sync.py``) would fail here for both shells, not in production
on a slow path.
"""

from __future__ import annotations

import asyncio
import threading
import typing
from collections.abc import Generator
from typing import Any

import pytest

from scalekit.cache import AsyncCache, Cache
from scalekit.cache import _flow as flow
from scalekit.testing import FakeClock


def _finished() -> Generator[flow.Op, Any, None]:
    return None
    yield  # a generator that yields nothing


def _samples(done: Any) -> dict[type, flow.Op]:
    """One request of every kind, and what it answers on an empty memory store."""
    return {
        flow.Read: flow.Read("app:v1:k", ()),
        flow.Acquire: flow.Acquire("app:v1:k!lease", "token", 1000),
        flow.Release: flow.Release("app:v1:k!lease", "token"),
        flow.Store: flow.Store("app:v1:k", b"data", 1000, ("", "")),
        flow.Sleep: flow.Sleep(0.5),
        flow.CallLoader: flow.CallLoader(lambda: 42),
        flow.WaitFlight: flow.WaitFlight(flow.Flight(done)),
        flow.Spawn: flow.Spawn(_finished()),
    }


def _set(event: Any) -> Any:
    event.set()
    return event


def test_ops_lists_every_request_kind_of_the_flow() -> None:
    assert set(flow.OPS) == set(typing.get_args(flow.Op))
    assert set(_samples(None)) == set(flow.OPS)


def _answers(results: dict[type, Any]) -> dict[type, Any]:
    """What can be compared across shells: Read's entry is an object per call."""
    return {
        kind: (result[0], result[1] is None) if kind is flow.Read else result
        for kind, result in results.items()
    }


def test_both_drivers_perform_every_request_kind() -> None:
    clock = FakeClock()
    sync_cache = Cache(None, clock=clock)
    sync_results = {
        kind: sync_cache._perform(op) for kind, op in _samples(_set(threading.Event())).items()
    }

    async def run_async() -> dict[type, Any]:
        cache = AsyncCache(None, clock=clock)
        try:
            results = {
                kind: await cache._perform(op)
                for kind, op in _samples(_set(asyncio.Event())).items()
            }
            await asyncio.gather(*cache._tasks)  # the spawned flow ran
            return results
        finally:
            await cache.aclose()

    async_results = asyncio.run(run_async())
    assert _answers(sync_results) == _answers(async_results)
    assert async_results[flow.Acquire] == (True, True)
    assert async_results[flow.CallLoader] == 42
    assert clock.monotonic() == pytest.approx(1.0)  # both shells slept on the clock
