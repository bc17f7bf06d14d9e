from __future__ import annotations

import asyncio
import threading
import time
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit import SYSTEM_CLOCK, Clock, ConfigurationError
from scalekit.testing import FakeClock


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(SYSTEM_CLOCK, Clock)
    assert isinstance(FakeClock(), Clock)


def test_system_clock_reads_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    before = time.monotonic()
    assert before <= SYSTEM_CLOCK.monotonic() <= time.monotonic()
    # What it reads and sleeps, seen through the time module it calls (no wall-clock bounds).
    slept: list[float] = []
    fake_time = types.SimpleNamespace(
        monotonic=lambda: 12.5, time=lambda: 1_700_000_000.25, sleep=slept.append
    )
    monkeypatch.setattr("scalekit._clock.time", fake_time)
    assert (SYSTEM_CLOCK.monotonic(), SYSTEM_CLOCK.time()) == (12.5, 1_700_000_000.25)
    SYSTEM_CLOCK.sleep(0)
    SYSTEM_CLOCK.sleep(-1)  # negative sleeps return at once instead of raising
    SYSTEM_CLOCK.sleep(0.25)
    assert slept == [0.25]


async def test_system_clock_async_sleep_is_cancellable() -> None:
    task = asyncio.ensure_future(SYSTEM_CLOCK.asleep(60))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start=10.0, wall=1_000.0)
    assert (clock.monotonic(), clock.time()) == (10.0, 1_000.0)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.time()) == (12.5, 1_002.5)
    clock.sleep(1)
    assert clock.monotonic() == 13.5 and clock.sleeps == [1]
    clock.set_wall(0.0)  # an NTP step moves wall time only
    assert (clock.monotonic(), clock.time()) == (13.5, 0.0)


def test_fake_clock_refuses_to_go_back() -> None:
    with pytest.raises(ConfigurationError) as info:
        FakeClock().advance(-1)
    assert info.value.parameter == "seconds"


async def test_fake_clock_async_sleep_advances_and_yields() -> None:
    clock = FakeClock()
    order: list[str] = []

    async def sleeper() -> None:
        await clock.asleep(30)
        order.append("slept")

    async def other() -> None:
        order.append("other ran")

    await asyncio.gather(sleeper(), other())
    assert order == ["other ran", "slept"]
    assert clock.monotonic() == 30 and clock.sleeps == [30]


def test_fake_clock_is_thread_safe() -> None:
    clock = FakeClock()

    def work() -> None:
        for _ in range(1000):
            clock.sleep(0.001)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(clock.sleeps) == 4000
    assert clock.monotonic() == pytest.approx(4.0)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=50))
def test_fake_clock_never_goes_back(steps: list[float]) -> None:
    clock = FakeClock()
    last = clock.monotonic()
    for step in steps:
        clock.advance(step)
        now = clock.monotonic()
        assert now >= last
        assert clock.time() - now == pytest.approx(1_700_000_000.0)
        last = now
