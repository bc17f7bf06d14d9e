"""The sync and async shells: one scenario list, run through every front-end.

Each scenario is a list of steps; the same list runs through ``call``,
the decorator and ``guard()`` in sync code, and through ``acall``, the
decorator on ``async def`` and ``async with guard()`` in asyncio code.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from scalekit.breaker import (
    BreakerPolicy,
    BreakerRejected,
    BreakerStateChanged,
    CircuitBreaker,
    State,
)
from scalekit.errors import CircuitOpenError, ConfigurationError
from scalekit.instrumentation import Event
from scalekit.testing import FakeClock, capture_events


class Boom(Exception):
    pass


class NotFound(Exception):
    pass


@dataclass(frozen=True)
class Step:
    action: str  # ok | fail | slow | rejected | advance | state | raise_excluded | result
    arg: Any = None


OK, FAIL, REJECTED = Step("ok"), Step("fail"), Step("rejected")


def advance(seconds: float) -> Step:
    return Step("advance", seconds)


def state(expected: State) -> Step:
    return Step("state", expected)


SCENARIOS: dict[str, tuple[dict[str, Any], list[Step]]] = {
    "consecutive trips, waits, probes, closes": (
        {"fail_max": 2, "reset_timeout": 10.0},
        [
            OK,
            FAIL,
            OK,
            FAIL,
            state(State.CLOSED),
            FAIL,
            state(State.OPEN),
            REJECTED,
            advance(9.5),
            REJECTED,
            advance(0.5),
            OK,
            state(State.CLOSED),
            OK,
        ],
    ),
    "failed probe reopens with back-off": (
        {"fail_max": 1, "reset_timeout": 1.0, "reset_backoff": 2.0},
        [
            FAIL,
            REJECTED,
            advance(1.0),
            FAIL,
            state(State.OPEN),
            advance(1.5),
            REJECTED,
            advance(0.5),
            OK,
            state(State.CLOSED),
        ],
    ),
    "failure rate with min_calls": (
        {"failure_rate": 0.5, "window": 4, "min_calls": 4, "reset_timeout": 5.0},
        [FAIL, FAIL, FAIL, state(State.CLOSED), OK, state(State.OPEN), REJECTED],
    ),
    "time window forgets": (
        {"failure_rate": 0.5, "window_seconds": 10.0, "min_calls": 3},
        [FAIL, FAIL, advance(20.0), OK, OK, FAIL, state(State.CLOSED), FAIL, state(State.OPEN)],
    ),
    "slow calls trip": (
        {
            "failure_rate": 1.0,
            "window": 3,
            "min_calls": 3,
            "slow_call_seconds": 1.0,
            "slow_call_rate": 0.6,
        },
        [Step("slow", 2.0), OK, state(State.CLOSED), Step("slow", 1.0), state(State.OPEN)],
    ),
    "excluded errors count as nothing": (
        {"fail_max": 2, "exclude": [NotFound]},
        [
            FAIL,
            Step("raise_excluded"),
            Step("raise_excluded"),
            state(State.CLOSED),
            FAIL,
            state(State.OPEN),
        ],
    ),
    "result predicate marks failures": (
        {"fail_max": 2, "failure_result": lambda r: r == 503},
        [
            Step("result", 503),
            Step("result", 200),
            Step("result", 503),
            state(State.CLOSED),
            Step("result", 503),
            state(State.OPEN),
            REJECTED,
        ],
    ),
    "two probes needed": (
        {"fail_max": 1, "reset_timeout": 1.0, "success_threshold": 2},
        [FAIL, advance(1.0), OK, state(State.HALF_OPEN), OK, state(State.CLOSED)],
    ),
}


class Call:
    """The user's function for one step; reads the step to decide what to do."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.step = OK
        self.runs = 0

    def behave(self) -> Any:
        self.runs += 1
        action = self.step.action
        if action == "fail":
            raise Boom("boom")
        if action == "raise_excluded":
            raise NotFound
        if action == "slow":
            self.clock.advance(self.step.arg)
        if action == "result":
            return self.step.arg
        return "value"

    def sync(self, x: int) -> Any:
        return self.behave()

    async def coro(self, x: int) -> Any:
        await asyncio.sleep(0)
        return self.behave()


def check_outcome(step: Step, outcome: Any, runs_before: int, call: Call) -> None:
    if step.action == "rejected":
        assert isinstance(outcome, CircuitOpenError), outcome
        assert call.runs == runs_before  # never ran
    elif step.action == "fail":
        assert isinstance(outcome, Boom), outcome
    elif step.action == "raise_excluded":
        assert isinstance(outcome, NotFound), outcome
    elif step.action == "result":
        assert outcome == step.arg
    else:
        assert outcome == "value", outcome


SYNC_FRONTS = ["call", "decorator", "guard"]
ASYNC_FRONTS = ["acall", "decorator", "guard"]


def sync_runner(front: str, breaker: CircuitBreaker, call: Call) -> Callable[[], Any]:
    decorated = breaker(call.sync)

    def run() -> Any:
        try:
            if front == "call":
                return breaker.call(call.sync, 1)
            if front == "decorator":
                return decorated(1)
            with breaker.guard() as permit:
                result = call.sync(1)
                permit.record_result(result)
                return result
        except (Boom, NotFound, CircuitOpenError) as exc:
            return exc

    return run


def async_runner(front: str, breaker: CircuitBreaker, call: Call) -> Callable[[], Awaitable[Any]]:
    decorated = breaker(call.coro)

    async def run() -> Any:
        try:
            if front == "acall":
                return await breaker.acall(call.coro, 1)
            if front == "decorator":
                return await decorated(1)
            async with breaker.guard() as permit:
                result = await call.coro(1)
                await permit.arecord_result(result)
                return result
        except (Boom, NotFound, CircuitOpenError) as exc:
            return exc

    return run


@pytest.mark.parametrize("front", SYNC_FRONTS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenarios_sync(scenario: str, front: str) -> None:
    options, steps = SCENARIOS[scenario]
    clock = FakeClock()
    breaker = CircuitBreaker("svc", clock=clock, **options)
    call = Call(clock)
    run = sync_runner(front, breaker, call)
    for index, step in enumerate(steps):
        if step.action == "advance":
            clock.advance(step.arg)
        elif step.action == "state":
            assert breaker.state is step.arg, f"step {index}"
        else:
            call.step = step
            runs = call.runs
            check_outcome(step, run(), runs, call)


@pytest.mark.parametrize("front", ASYNC_FRONTS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_scenarios_async(scenario: str, front: str) -> None:
    options, steps = SCENARIOS[scenario]
    clock = FakeClock()
    breaker = CircuitBreaker("svc", clock=clock, **options)
    call = Call(clock)
    run = async_runner(front, breaker, call)
    for index, step in enumerate(steps):
        if step.action == "advance":
            clock.advance(step.arg)
        elif step.action == "state":
            assert breaker.state is step.arg, f"step {index}"
        else:
            call.step = step
            runs = call.runs
            check_outcome(step, await run(), runs, call)


# -- front-end details ----------------------------------------------------------------


def test_decorator_keeps_signature_and_metadata() -> None:
    breaker = CircuitBreaker("svc")

    def original(user_id: int, *, verbose: bool = False) -> str:
        """Fetch a user."""
        return f"user {user_id}"

    fetch = breaker(original)

    @breaker
    async def afetch(user_id: int) -> str:
        return f"user {user_id}"

    assert fetch.__name__ == "original"
    assert fetch.__doc__ == "Fetch a user."
    assert inspect.signature(fetch) == inspect.signature(original)
    assert fetch.__wrapped__ is original  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(afetch)
    assert typing.get_type_hints(afetch) == {"user_id": int, "return": str}
    assert fetch(3) == "user 3"
    assert asyncio.run(afetch(4)) == "user 4"


def test_generator_functions_are_refused() -> None:
    breaker = CircuitBreaker("svc")

    def gen() -> Any:
        yield 1

    with pytest.raises(ConfigurationError) as error:
        breaker(gen)
    assert error.value.parameter == "func"


def test_circuit_open_error_carries_name_and_retry_after() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("billing", fail_max=1, reset_timeout=30.0, clock=clock)
    with pytest.raises(Boom):
        breaker.call(_raise, Boom())
    clock.advance(10.0)
    with pytest.raises(CircuitOpenError) as error:
        breaker.call(_raise, Boom())
    assert error.value.name == "billing"
    assert error.value.retry_after == pytest.approx(20.0)
    breaker.force_open()
    with pytest.raises(CircuitOpenError) as forced:
        breaker.call(len, "x")
    assert forced.value.retry_after is None


def _raise(exc: BaseException) -> None:
    raise exc


def test_fallback_receives_the_arguments_sync_and_async() -> None:
    breaker = CircuitBreaker("svc", fallback=lambda x: f"cached {x}")
    breaker.force_open()
    assert breaker.call(lambda x: f"live {x}", 7) == "cached 7"

    async def live(x: int) -> str:
        return f"live {x}"

    async def afallback(x: int) -> str:
        return f"async cached {x}"

    assert asyncio.run(breaker.acall(live, 8)) == "cached 8"
    async_breaker = CircuitBreaker("svc2", fallback=afallback)
    async_breaker.force_open()
    assert asyncio.run(async_breaker(live)(9)) == "async cached 9"


def test_fallback_is_not_used_for_the_calls_own_errors() -> None:
    breaker = CircuitBreaker("svc", fallback=lambda: "fallback")
    with pytest.raises(Boom):
        breaker.call(_raise, Boom())


def test_permit_records_once_and_context_manager_classifies() -> None:
    breaker = CircuitBreaker("svc", fail_max=2, exclude=[NotFound])
    permit = breaker.acquire()
    permit.record_failure()
    permit.record_failure()  # ignored: one outcome per permit
    assert breaker.fail_counter == 1
    with pytest.raises(NotFound), breaker.acquire():
        raise NotFound
    assert breaker.fail_counter == 1
    with pytest.raises(Boom), breaker.guard():
        raise Boom
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError), breaker.guard():
        pytest.fail("the block must not run")


def test_released_probe_frees_its_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("svc", fail_max=1, reset_timeout=1.0, clock=clock)
    breaker.open()
    clock.advance(1.0)
    probe = breaker.acquire()
    assert probe.is_probe
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    probe.release()
    breaker.acquire().record_success()
    assert breaker.state is State.CLOSED


def test_cancellation_is_never_counted() -> None:
    breaker = CircuitBreaker("svc", fail_max=1)

    async def main() -> None:
        started = asyncio.Event()

        @breaker
        async def hang() -> None:
            started.set()
            await asyncio.sleep(3600)

        task = asyncio.create_task(hang())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert breaker.state is State.CLOSED
    assert breaker.metrics().ignored == 1
    with pytest.raises(KeyboardInterrupt):
        breaker.call(_raise, KeyboardInterrupt())
    assert breaker.state is State.CLOSED


def test_manual_controls_and_events() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("svc", reset_timeout=5.0, clock=clock)
    with capture_events() as events:
        breaker.open()
        with pytest.raises(CircuitOpenError):
            breaker.call(len, "x")
        breaker.close()
        breaker.disable()
        breaker.force_open()
        breaker.close()
    changes = [e for e in events if isinstance(e, BreakerStateChanged)]
    assert [(e.old_state, e.new_state, e.trigger) for e in changes] == [
        ("closed", "open", "manual_open"),
        ("open", "closed", "manual_close"),
        ("closed", "disabled", "disable"),
        ("disabled", "forced_open", "force_open"),
        ("forced_open", "closed", "manual_close"),
    ]
    assert changes[0].retry_after == 5.0
    [rejection] = [e for e in events if isinstance(e, BreakerRejected)]
    assert (rejection.name, rejection.state, rejection.retry_after) == ("svc", "open", 5.0)
    assert rejection.kind == "breaker.rejected"
    assert changes[0].kind == "breaker.state_change"


def test_trip_event_says_why() -> None:
    breaker = CircuitBreaker("svc", fail_max=2)
    with capture_events() as events:
        for _ in range(2):
            with pytest.raises(Boom):
                breaker.call(_raise, Boom())
    [change] = [e for e in events if isinstance(e, BreakerStateChanged)]
    assert (change.trigger, change.reason) == ("trip", "2 consecutive failures")


def test_metrics_snapshot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "svc",
        failure_rate=0.5,
        window=10,
        min_calls=5,
        clock=clock,
        exclude=[NotFound],
        reset_timeout=7.0,
    )
    breaker.call(len, "x")
    for exc in (Boom(), NotFound()):
        with pytest.raises(type(exc)):
            breaker.call(_raise, exc)
    metrics = breaker.metrics()
    assert (metrics.successes, metrics.failures, metrics.ignored) == (1, 1, 1)
    assert (metrics.window_calls, metrics.window_failures) == (2, 1)
    assert metrics.failure_rate == 0.5
    assert metrics.state is State.CLOSED and metrics.retry_after is None
    breaker.open()
    clock.advance(2.0)
    with pytest.raises(CircuitOpenError):
        breaker.call(len, "x")
    metrics = breaker.metrics()
    assert metrics.rejected == 1
    assert metrics.retry_after == pytest.approx(5.0)
    assert metrics.consecutive_openings == 1


def test_policy_object_is_accepted() -> None:
    policy = BreakerPolicy(fail_max=1)
    first, second = CircuitBreaker("a", policy=policy), CircuitBreaker("b", policy=policy)
    with pytest.raises(Boom):
        first.call(_raise, Boom())
    assert first.state is State.OPEN and second.state is State.CLOSED
    assert first.policy is policy


# -- concurrency ------------------------------------------------------------------------


def test_threads_never_run_the_call_under_the_lock() -> None:
    breaker = CircuitBreaker("svc", fail_max=1000)
    inside = threading.Barrier(8, timeout=10)

    @breaker
    def rendezvous() -> bool:
        # All 8 threads must be inside the call at once: impossible if it ran locked.
        inside.wait()
        return True

    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(rendezvous())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert results == [True] * 8
    assert breaker.metrics().successes == 8


def test_threads_count_every_outcome() -> None:
    breaker = CircuitBreaker("svc", failure_rate=0.9, window=100_000, min_calls=100_000)
    per_thread = 500

    def work(fail: bool) -> None:
        for _ in range(per_thread):
            try:
                breaker.call(_raise if fail else len, Boom() if fail else "x")
            except Boom:
                pass

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    metrics = breaker.metrics()
    assert (metrics.successes, metrics.failures) == (4 * per_thread, 4 * per_thread)
    assert metrics.window_calls == 8 * per_thread


def test_threads_half_open_admits_at_most_the_probe_limit() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "svc",
        fail_max=1,
        reset_timeout=1.0,
        half_open_max_calls=3,
        success_threshold=100,
        clock=clock,
    )
    breaker.open()
    clock.advance(1.0)
    gate = threading.Barrier(16, timeout=10)
    admitted: list[int] = []
    lock = threading.Lock()

    def try_probe() -> None:
        gate.wait()
        try:
            breaker.acquire()
        except CircuitOpenError:
            return
        with lock:
            admitted.append(1)

    threads = [threading.Thread(target=try_probe) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert len(admitted) == 3


async def test_tasks_half_open_admits_at_most_the_probe_limit() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "svc", fail_max=1, reset_timeout=1.0, half_open_max_calls=2, clock=clock
    )
    breaker.open()
    clock.advance(1.0)
    release = asyncio.Event()
    running = 0
    most = 0

    @breaker
    async def probe() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    tasks = [asyncio.create_task(probe()) for _ in range(20)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert most == 2
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 18
    assert breaker.state is State.CLOSED


async def test_tasks_run_concurrently_through_a_closed_breaker() -> None:
    breaker = CircuitBreaker("svc")
    inside = 0
    most = 0

    @breaker
    async def work() -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.001)
        inside -= 1

    await asyncio.gather(*(work() for _ in range(50)))
    assert most == 50


def test_one_breaker_serves_sync_and_async_callers() -> None:
    breaker = CircuitBreaker("svc", fail_max=2)
    with pytest.raises(Boom):
        breaker.call(_raise, Boom())

    async def fail() -> None:
        raise Boom

    with pytest.raises(Boom):
        asyncio.run(breaker.acall(fail))
    assert breaker.state is State.OPEN


def test_event_hook_failures_never_break_calls() -> None:
    from scalekit.instrumentation import get_hooks, set_hooks

    def broken(event: Event) -> None:
        raise RuntimeError("hook")

    previous = get_hooks()
    set_hooks([broken])
    try:
        breaker = CircuitBreaker("svc", fail_max=1)
        with pytest.raises(Boom):
            breaker.call(_raise, Boom())
        with pytest.raises(CircuitOpenError):
            breaker.call(len, "x")
    finally:
        set_hooks(previous)


def test_threads_lockless_success_path_counts_exactly() -> None:
    """The consecutive-mode hot path counts successes without the lock; none is lost."""
    breaker = CircuitBreaker("svc", fail_max=1_000_000)
    assert not breaker.needs_every_outcome  # the lockless hot path applies
    wrapped = breaker(len)
    per_thread = 2000

    def work(index: int) -> None:
        for step in range(per_thread):
            if index == 0 and step % 10 == 0:
                with pytest.raises(Boom):
                    breaker.call(_raise, Boom())
            else:
                wrapped("x")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    metrics = breaker.metrics()
    failures = per_thread // 10
    assert metrics.failures == failures
    assert metrics.successes == 8 * per_thread - failures
    assert breaker.state is State.CLOSED


async def test_an_object_with_an_async_call_is_guarded_as_async() -> None:
    breaker = CircuitBreaker("svc", fail_max=1, clock=FakeClock())

    class Client:
        async def __call__(self, fail: bool) -> str:
            if fail:
                raise Boom
            return "ok"

    guarded = breaker(Client())
    assert await guarded(False) == "ok"
    with pytest.raises(Boom):
        await guarded(True)  # counted when awaited, not when the coroutine was made
    assert breaker.state is State.OPEN


def test_needs_every_outcome_says_when_successes_may_go_unreported() -> None:
    assert not CircuitBreaker("svc", fail_max=3).needs_every_outcome
    assert CircuitBreaker("svc", failure_rate=0.5, window=10, min_calls=5).needs_every_outcome

    class Listener:
        def success(self, breaker: object) -> None: ...

    assert CircuitBreaker("svc", fail_max=3, listeners=[Listener()]).needs_every_outcome


HOT_PATHS = {
    "fail_max": {"fail_max": 3},
    "count window": {"failure_rate": 0.5, "window": 8},
    "time window": {"failure_rate": 0.5, "window_seconds": 4.0},
    "slow calls, count window": {"slow_call_seconds": 1.0, "slow_call_rate": 0.5, "window": 8},
    "slow calls, time window": {
        "slow_call_seconds": 1.0,
        "slow_call_rate": 0.5,
        "window_seconds": 4.0,
    },
}


@pytest.mark.parametrize("policy", list(HOT_PATHS))
def test_every_hot_path_passes_arguments_and_results(policy: str) -> None:
    breaker = CircuitBreaker("args", clock=FakeClock(), **HOT_PATHS[policy])

    def work(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return args, kwargs

    async def awork(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return args, kwargs

    async def fronts_async() -> list[Any]:
        return [
            await breaker.acall(awork),
            await breaker.acall(awork, 1, key=2),
            await breaker(awork)(),
            await breaker(awork)(1, key=2),
        ]

    results = [
        breaker.call(work),
        breaker.call(work, 1, key=2),
        breaker(work)(),
        breaker(work)(1, key=2),
        *asyncio.run(fronts_async()),
    ]
    assert results == [((), {}), ((1,), {"key": 2})] * 4
    assert breaker.metrics().successes == 8
