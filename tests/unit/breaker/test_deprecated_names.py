"""Issue 14's naming scheme: each old ``_async`` name still works for one release, and warns."""

from __future__ import annotations

import pytest

from scalekit.breaker import CircuitBreaker, State


async def ok() -> str:
    return "ran"


async def test_call_and_acquire_aliases_warn_and_work() -> None:
    breaker = CircuitBreaker("deprecated-call")
    with pytest.warns(
        DeprecationWarning, match=r"CircuitBreaker\.call_async .* use CircuitBreaker\.acall"
    ):
        assert await breaker.call_async(ok) == "ran"
    with pytest.warns(DeprecationWarning, match=r"acquire_async .* use CircuitBreaker\.aacquire"):
        permit = await breaker.acquire_async()
    await permit.arelease()


@pytest.mark.parametrize(
    ("old", "new", "state"),
    [
        ("open_async", "aopen_circuit", State.OPEN),
        ("force_open_async", "aforce_open", State.FORCED_OPEN),
        ("disable_async", "adisable", State.DISABLED),
        ("close_async", "aclose_circuit", State.CLOSED),
    ],
)
async def test_circuit_control_aliases_warn_and_work(old: str, new: str, state: State) -> None:
    breaker = CircuitBreaker("deprecated-control")
    if state is State.CLOSED:
        breaker.open_circuit()
    with pytest.warns(
        DeprecationWarning, match=rf"CircuitBreaker\.{old} .* use CircuitBreaker\.{new}"
    ):
        await getattr(breaker, old)()
    assert breaker.state is state


@pytest.mark.parametrize(
    ("old", "new", "args", "counter"),
    [
        ("record_success_async", "arecord_success", (), "successes"),
        ("record_failure_async", "arecord_failure", (), "failures"),
        ("record_exception_async", "arecord_exception", (ValueError("x"),), "failures"),
        ("record_result_async", "arecord_result", ("r",), "successes"),
        ("release_async", "arelease", (), "ignored"),
    ],
)
async def test_permit_aliases_warn_and_record(
    old: str, new: str, args: tuple[object, ...], counter: str
) -> None:
    breaker = CircuitBreaker("deprecated-permit", fail_max=10)
    permit = await breaker.aacquire()
    with pytest.warns(DeprecationWarning, match=rf"Permit\.{old} .* use Permit\.{new}"):
        await getattr(permit, old)(*args)
    assert getattr(breaker.metrics(), counter) == 1


def test_open_circuit_and_close_circuit_sit_beside_pybreakers_open_and_close() -> None:
    breaker = CircuitBreaker("controls")
    breaker.open_circuit()
    assert breaker.state is State.OPEN
    breaker.close_circuit()
    assert breaker.state is State.CLOSED
    breaker.open()
    assert breaker.current_state == "open"
    breaker.close()
    assert breaker.current_state == "closed"
