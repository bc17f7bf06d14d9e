"""The pure core: its state table, windows, half-open probes, generations.

Every test drives :class:`BreakerCore` by hand with explicit ``now`` values;
nothing sleeps and nothing reads a real clock.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scalekit.breaker import BreakerPolicy, State
from scalekit.breaker._config import FAILURE, IGNORED, SUCCESS
from scalekit.breaker._core import TRANSITIONS, BreakerCore, CountWindow, TimeWindow, Trigger
from scalekit.errors import ConfigurationError


def run(core: BreakerCore, outcome: int, now: float, duration: float | None = None) -> bool:
    """Acquire and record one call at ``now``; False when rejected."""
    ticket = core.acquire(now)
    if ticket is None:
        return False
    core.record(ticket, outcome, duration, now)
    return True


# -- the table -------------------------------------------------------------------------

AUTOMATIC = [
    (State.CLOSED, Trigger.TRIP, State.OPEN),
    (State.OPEN, Trigger.OPEN_ELAPSED, State.HALF_OPEN),
    (State.HALF_OPEN, Trigger.PROBES_PASSED, State.CLOSED),
    (State.HALF_OPEN, Trigger.PROBE_FAILED, State.OPEN),
]
MANUAL = {
    Trigger.MANUAL_OPEN: State.OPEN,
    Trigger.MANUAL_CLOSE: State.CLOSED,
    Trigger.FORCE_OPEN: State.FORCED_OPEN,
    Trigger.DISABLE: State.DISABLED,
}


def test_table_is_exactly_the_documented_machine() -> None:
    expected = {(s, t): n for s, t, n in AUTOMATIC}
    expected.update({(s, t): n for s in State for t, n in MANUAL.items()})
    assert expected == TRANSITIONS


def core_in(state: State, now: float = 0.0) -> BreakerCore:
    core = BreakerCore(BreakerPolicy(fail_max=1, reset_timeout=10.0), now)
    if state is State.OPEN:
        core.fire(Trigger.TRIP, now, "test")
    elif state is State.HALF_OPEN:
        core.fire(Trigger.TRIP, now, "test")
        core.fire(Trigger.OPEN_ELAPSED, now, "test")
    elif state is State.FORCED_OPEN:
        core.fire(Trigger.FORCE_OPEN, now, "test")
    elif state is State.DISABLED:
        core.fire(Trigger.DISABLE, now, "test")
    core.take_transitions()
    return core


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("trigger", list(Trigger))
def test_every_pair_follows_the_table_or_is_refused(state: State, trigger: Trigger) -> None:
    core = core_in(state)
    generation = core.generation
    if (state, trigger) not in TRANSITIONS:
        with pytest.raises(LookupError):
            core.fire(trigger, 1.0, "x")
        assert core.state is state
        return
    core.fire(trigger, 1.0, "why")
    target = TRANSITIONS[(state, trigger)]
    assert core.state is target
    assert core.generation == generation + 1
    transitions = core.take_transitions()
    if target is state:
        assert transitions == []
    else:
        [transition] = transitions
        assert (transition.old, transition.new, transition.trigger) == (state, target, trigger)
        assert transition.reason == "why"
        assert transition.at == 1.0
    # Admission without a decision exactly in the states that admit everything.
    assert (core.free_ticket is not None) == (target in (State.CLOSED, State.DISABLED))


@pytest.mark.parametrize(
    ("state", "admits", "retry_after"),
    [
        (State.CLOSED, True, 0.0),
        (State.OPEN, False, 10.0),
        (State.HALF_OPEN, True, 0.0),
        (State.FORCED_OPEN, False, None),
        (State.DISABLED, True, 0.0),
    ],
)
def test_admission_by_state(state: State, admits: bool, retry_after: float | None) -> None:
    core = core_in(state)
    assert core.retry_after(0.0) == retry_after
    assert (core.acquire(0.0) is not None) == admits


# -- consecutive mode ----------------------------------------------------------------


def test_consecutive_failures_trip_and_success_resets() -> None:
    core = BreakerCore(BreakerPolicy(fail_max=3, reset_timeout=5.0))
    for outcome in (FAILURE, FAILURE, SUCCESS, FAILURE, FAILURE):
        assert run(core, outcome, 0.0)
    assert core.state is State.CLOSED
    assert core.consecutive_failures == 2
    assert run(core, FAILURE, 1.0)
    assert core.state is State.OPEN
    assert core.retry_after(2.0) == pytest.approx(4.0)
    [transition] = core.take_transitions()
    assert transition.reason == "3 consecutive failures"
    assert transition.open_for == 5.0


def test_ignored_outcomes_count_as_nothing() -> None:
    core = BreakerCore(BreakerPolicy(fail_max=2))
    for outcome in (FAILURE, IGNORED, IGNORED, FAILURE):
        run(core, outcome, 0.0)
    assert core.state is State.OPEN  # IGNORED did not reset the streak
    assert core.ignored == 2


def test_open_then_half_open_then_closed() -> None:
    core = BreakerCore(BreakerPolicy(fail_max=1, reset_timeout=10.0, success_threshold=2))
    run(core, FAILURE, 0.0)
    assert core.acquire(9.999) is None
    probe = core.acquire(10.0)
    assert probe is not None and probe < 0
    assert core.state is State.HALF_OPEN
    core.record(probe, SUCCESS, None, 10.1)
    assert core.state is State.HALF_OPEN  # one of two
    assert run(core, SUCCESS, 10.2)
    assert core.state is State.CLOSED
    assert [t.new for t in core.take_transitions()] == [
        State.OPEN,
        State.HALF_OPEN,
        State.CLOSED,
    ]


def test_failed_probe_reopens_with_backoff() -> None:
    core = BreakerCore(BreakerPolicy(fail_max=1, reset_timeout=1.0, reset_backoff=3.0))
    run(core, FAILURE, 0.0)
    assert core.retry_after(0.0) == 1.0
    run(core, FAILURE, 1.0)  # the probe fails
    assert core.state is State.OPEN
    assert core.retry_after(1.0) == 3.0
    run(core, FAILURE, 4.0)
    assert core.retry_after(4.0) == 9.0
    run(core, SUCCESS, 13.0)
    assert core.state is State.CLOSED
    assert core.consecutive_openings == 0
    run(core, FAILURE, 14.0)
    assert core.retry_after(14.0) == 1.0  # back-off starts over after a close


def test_slow_probe_reopens() -> None:
    policy = BreakerPolicy(
        failure_rate=1.0, window=10, min_calls=10, slow_call_seconds=1.0, slow_call_rate=1.0
    )
    core = BreakerCore(policy)
    core.fire(Trigger.MANUAL_OPEN, 0.0, "test")
    probe = core.acquire(policy.open_duration(1))
    assert probe is not None
    core.record(probe, SUCCESS, 2.5, 61.0)
    assert core.state is State.OPEN
    assert core.take_transitions()[-1].reason == "slow probe"


def test_half_open_limits_concurrent_probes() -> None:
    core = BreakerCore(
        BreakerPolicy(
            fail_max=1,
            reset_timeout=1.0,
            half_open_max_calls=2,
            success_threshold=3,
            probe_timeout=5.0,
        )
    )
    run(core, FAILURE, 0.0)
    first, second = core.acquire(1.0), core.acquire(1.0)
    assert first is not None and second is not None
    assert core.acquire(1.0) is None
    assert core.retry_after(2.0) == pytest.approx(4.0)  # until the oldest probe times out
    core.record(first, SUCCESS, None, 2.0)
    third = core.acquire(2.0)
    assert third is not None
    assert core.probes_in_flight() == 2


def test_stale_probe_is_released_after_probe_timeout() -> None:
    core = BreakerCore(BreakerPolicy(fail_max=1, reset_timeout=1.0, probe_timeout=5.0))
    run(core, FAILURE, 0.0)
    lost = core.acquire(1.0)
    assert lost is not None
    assert core.acquire(5.9) is None
    replacement = core.acquire(6.0)
    assert replacement is not None
    core.record(lost, FAILURE, None, 6.5)  # too late: ignored
    assert core.state is State.HALF_OPEN
    core.record(replacement, SUCCESS, None, 7.0)
    assert core.state is State.CLOSED


def test_calls_admitted_before_a_trip_cannot_sway_later_states() -> None:
    core = BreakerCore(BreakerPolicy(fail_max=2, reset_timeout=1.0))
    slow_call = core.acquire(0.0)
    assert slow_call is not None
    run(core, FAILURE, 0.0)
    run(core, FAILURE, 0.0)
    assert core.state is State.OPEN
    probe = core.acquire(1.0)
    assert probe is not None
    core.record(slow_call, SUCCESS, None, 1.1)  # from the old generation
    assert core.state is State.HALF_OPEN
    core.record(probe, FAILURE, None, 1.2)
    assert core.state is State.OPEN
    late = slow_call
    core.record(late, FAILURE, None, 1.3)
    assert core.failures == 4  # counted in metrics, not in decisions


def test_forced_open_and_disabled() -> None:
    core = BreakerCore(BreakerPolicy(fail_max=1))
    core.fire(Trigger.FORCE_OPEN, 0.0, "ops")
    assert core.acquire(1e9) is None
    assert core.retry_after(0.0) is None
    core.fire(Trigger.DISABLE, 0.0, "ops")
    for _ in range(10):
        assert run(core, FAILURE, 0.0)
    assert core.state is State.DISABLED
    core.fire(Trigger.MANUAL_CLOSE, 0.0, "ops")
    assert run(core, FAILURE, 0.0)
    assert core.state is State.OPEN


# -- rate windows --------------------------------------------------------------------


def test_failure_rate_needs_min_calls() -> None:
    core = BreakerCore(BreakerPolicy(failure_rate=0.5, window=10, min_calls=4))
    for _ in range(3):
        run(core, FAILURE, 0.0)
    assert core.state is State.CLOSED  # 3/3 failed, but only 3 calls
    run(core, SUCCESS, 0.0)
    assert core.state is State.OPEN  # 3/4 >= 0.5: even a success can complete the window


def test_count_window_forgets_old_calls() -> None:
    core = BreakerCore(BreakerPolicy(failure_rate=0.5, window=4, min_calls=4))
    for outcome in (FAILURE, SUCCESS, SUCCESS, SUCCESS, SUCCESS, SUCCESS, FAILURE):
        run(core, outcome, 0.0)
    assert core.window_totals(0.0) == (4, 1, 0)
    assert core.state is State.CLOSED
    run(core, FAILURE, 0.0)
    assert core.state is State.OPEN


def test_time_window_forgets_old_buckets() -> None:
    policy = BreakerPolicy(failure_rate=0.5, window_seconds=10.0, window_buckets=10, min_calls=3)
    core = BreakerCore(policy)
    run(core, FAILURE, 0.5)
    run(core, FAILURE, 1.5)
    assert core.window_totals(2.0) == (2, 2, 0)
    # At 10.9 the window holds buckets [1, 10]: the 0.5 call has left it, 1.5 has not.
    assert core.window_totals(10.9) == (1, 1, 0)
    run(core, SUCCESS, 10.9)
    run(core, SUCCESS, 10.9)
    assert core.state is State.CLOSED  # 1 of 3 failed
    assert core.window_totals(100.0) == (0, 0, 0)


def test_slow_call_rate_trips() -> None:
    policy = BreakerPolicy(
        failure_rate=1.0, window=4, min_calls=4, slow_call_seconds=0.5, slow_call_rate=0.5
    )
    core = BreakerCore(policy)
    for duration in (0.1, 0.9, 0.1):
        run(core, SUCCESS, 0.0, duration)
    assert core.state is State.CLOSED
    run(core, SUCCESS, 0.0, 2.0)
    assert core.state is State.OPEN
    assert core.slow_calls == 2
    assert "slow-call rate" in core.take_transitions()[0].reason


def test_closing_clears_the_window() -> None:
    core = BreakerCore(BreakerPolicy(failure_rate=0.5, window=4, min_calls=2, reset_timeout=1.0))
    run(core, FAILURE, 0.0)
    run(core, FAILURE, 0.0)
    assert core.state is State.OPEN
    run(core, SUCCESS, 1.0)
    assert core.state is State.CLOSED
    assert core.window_totals(1.0) == (0, 0, 0)


# -- property tests ------------------------------------------------------------------

codes = st.integers(min_value=0, max_value=3)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 20), cells=st.lists(codes, max_size=80))
def test_count_window_totals_match_the_last_calls(size: int, cells: list[int]) -> None:
    window = CountWindow(size)
    for code in cells:
        window.add(code, 0.0)
    last = cells[-size:] if cells else []
    assert window.totals(0.0) == (
        len(last),
        sum(c & 1 for c in last),
        sum(c >> 1 for c in last),
    )


@settings(max_examples=60, deadline=None)
@given(
    buckets=st.integers(1, 8),
    events=st.lists(st.tuples(st.floats(0, 5, allow_nan=False), codes), max_size=60),
    probe_at=st.floats(0, 40, allow_nan=False),
)
def test_time_window_totals_match_the_buckets_in_the_window(
    buckets: int, events: list[tuple[float, int]], probe_at: float
) -> None:
    seconds = 4.0
    window = TimeWindow(seconds, buckets)
    now = 0.0
    kept: list[tuple[int, int]] = []  # (epoch, code) of every add, at the time it counted
    for step, code in events:
        now += step
        window.add(code, now)
        kept.append((int(now // (seconds / buckets)), code))
    read_at = now + probe_at
    epoch = int(read_at // (seconds / buckets))
    inside = [code for e, code in kept if e > epoch - buckets]
    assert window.totals(read_at) == (
        len(inside),
        sum(c & 1 for c in inside),
        sum(c >> 1 for c in inside),
    )


@settings(max_examples=80, deadline=None)
@given(
    window=st.integers(1, 30),
    data=st.data(),
)
def test_rate_window_never_trips_below_min_calls(window: int, data: st.DataObject) -> None:
    min_calls = data.draw(st.integers(1, window))
    outcomes = data.draw(st.lists(st.sampled_from([SUCCESS, FAILURE, IGNORED]), max_size=60))
    core = BreakerCore(BreakerPolicy(failure_rate=0.01, window=window, min_calls=min_calls))
    counted = 0
    for outcome in outcomes:
        run(core, outcome, 0.0)
        if outcome != IGNORED:
            counted += 1
        if counted < min_calls:
            assert core.state is State.CLOSED
    if counted >= min_calls and FAILURE in outcomes:
        assert core.state is State.OPEN  # 1% of anything with a failure trips


class BreakerMachine(RuleBasedStateMachine):
    """Random acquires, outcomes, clock steps and manual commands against the core."""

    def __init__(self) -> None:
        super().__init__()
        self.max_probes = 2
        self.core = BreakerCore(
            BreakerPolicy(
                failure_rate=0.5,
                window=6,
                min_calls=3,
                fail_max=3,
                reset_timeout=2.0,
                reset_backoff=2.0,
                reset_timeout_max=10.0,
                half_open_max_calls=self.max_probes,
                success_threshold=2,
                probe_timeout=3.0,
            )
        )
        self.now = 0.0
        self.outstanding: list[int] = []
        self.seen_state = State.CLOSED

    @rule(seconds=st.floats(0, 4, allow_nan=False))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def acquire(self) -> None:
        state_before = self.core.state
        ticket = self.core.acquire(self.now)
        if ticket is None:
            assert state_before in (State.OPEN, State.HALF_OPEN, State.FORCED_OPEN)
            retry_after = self.core.retry_after(self.now)
            if self.core.state is State.FORCED_OPEN:
                assert retry_after is None
            else:
                assert retry_after is not None and retry_after > 0
        else:
            self.outstanding.append(ticket)

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data(), outcome=st.sampled_from([SUCCESS, FAILURE, IGNORED]))
    def finish(self, data: st.DataObject, outcome: int) -> None:
        ticket = self.outstanding.pop(data.draw(st.integers(0, len(self.outstanding) - 1)))
        self.core.record(ticket, outcome, None, self.now)

    @rule(trigger=st.sampled_from(list(MANUAL)))
    def manual(self, trigger: Trigger) -> None:
        self.core.fire(trigger, self.now, "manual")

    @invariant()
    def never_more_probes_than_allowed(self) -> None:
        assert self.core.probes_in_flight() <= self.max_probes
        if self.core.state is not State.HALF_OPEN:
            assert self.core.probes_in_flight() == 0

    @invariant()
    def every_change_is_in_the_table(self) -> None:
        for transition in self.core.take_transitions():
            assert transition.old is self.seen_state
            assert TRANSITIONS[(transition.old, transition.trigger)] is transition.new
            self.seen_state = transition.new
        assert self.core.state is self.seen_state

    @invariant()
    def open_means_a_deadline(self) -> None:
        if self.core.state is State.OPEN:
            # reset_timeout_max=10 caps the open duration (float addition may round up).
            assert self.core.open_until - (self.core.opened_at or 0.0) <= 10.0 + 1e-9
        assert (self.core.free_ticket is None) == (
            self.core.state not in (State.CLOSED, State.DISABLED)
        )


BreakerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestBreakerMachine = BreakerMachine.TestCase


@settings(max_examples=60, deadline=None)
@given(starts=st.lists(st.integers(0, 1), min_size=1, max_size=40))
def test_probes_admitted_at_once_never_exceed_the_limit(starts: list[int]) -> None:
    core = BreakerCore(
        BreakerPolicy(fail_max=1, reset_timeout=1.0, half_open_max_calls=3, success_threshold=100)
    )
    run(core, FAILURE, 0.0)
    out: list[int] = []
    for start in starts:
        if start:
            ticket = core.acquire(1.0)
            if ticket is not None:
                out.append(ticket)
        elif out:
            core.record(out.pop(0), SUCCESS, None, 1.0)
        assert len(out) <= 3


def test_a_broken_reset_timeout_function_leaves_the_core_unchanged() -> None:
    core = BreakerCore(BreakerPolicy(fail_max=1, reset_timeout=lambda n: float("nan")))
    with pytest.raises(ConfigurationError):
        run(core, FAILURE, 0.0)
    assert core.state is State.CLOSED
    assert core.free_ticket == core.generation
    assert core.take_transitions() == []


@settings(max_examples=150, deadline=None)
@given(
    window=st.integers(1, 12),
    data=st.data(),
    rate=st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0]),
    outcomes=st.lists(st.sampled_from([SUCCESS, FAILURE, IGNORED]), max_size=60),
)
def test_count_window_trips_exactly_when_the_last_calls_say_so(
    window: int, data: st.DataObject, rate: float, outcomes: list[int]
) -> None:
    """Against a brute-force model: the circuit opens at the first call after which
    the last ``window`` counted calls are at least ``min_calls`` and fail at ``rate``."""
    min_calls = data.draw(st.integers(1, window))
    core = BreakerCore(BreakerPolicy(failure_rate=rate, window=window, min_calls=min_calls))
    counted: list[int] = []
    for outcome in outcomes:
        assert core.state is State.CLOSED
        run(core, outcome, 0.0)
        if outcome != IGNORED:
            counted.append(outcome)
        last = counted[-window:]
        expected_open = len(last) >= min_calls and last.count(FAILURE) >= rate * len(last)
        assert (core.state is State.OPEN) == expected_open
        if expected_open:
            break
