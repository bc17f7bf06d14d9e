"""The pure routing core: node choice, health state, lag, stickiness, spill cap, roles.

Everything runs on a FakeClock; the hypothesis tests drive the core through
random sequences of events and check the invariants its docstring promises.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError, NoHealthyNode, ReadOnlyViolation
from scalekit.routing import (
    Classification,
    ConsistencyToken,
    RoutingConfig,
    Target,
    format_lsn,
    parse_lsn,
)
from scalekit.routing._core import (
    EMPTY_CONTEXT,
    ContextState,
    RoutingCore,
    commit_position,
    decide,
)
from scalekit.testing import FakeClock

REPLICAS = ("r1", "r2", "r3")
WRITE = Classification(writes=True, reason="insert")
READ = Classification(writes=False, reason="select")


def make(clock: FakeClock | None = None, **options: Any) -> tuple[RoutingCore, FakeClock]:
    clock = clock or FakeClock()
    options.setdefault("check_interval", None)
    core = RoutingCore(["p"], list(REPLICAS), RoutingConfig(**options), clock, rng=random.Random(7))
    return core, clock


# -- LSNs and tokens ----------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_lsn_round_trip(position: int) -> None:
    assert parse_lsn(format_lsn(position)) == position


@given(
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
    st.integers(min_value=0, max_value=4_000_000_000_000),
)
def test_token_round_trip(lsn: int | None, ms: int) -> None:
    token = ConsistencyToken(lsn=lsn, written_at=ms / 1000)
    assert ConsistencyToken.decode(token.encode()) == token


@given(st.text(max_size=80))
def test_token_decode_only_raises_configuration_error(text: str) -> None:
    parameter = "token"
    try:
        ConsistencyToken.decode(text)
    except ConfigurationError as exc:
        parameter = str(exc.parameter)
    assert parameter == "token"


@pytest.mark.parametrize("bad", ["", "x", "0/1", "@", "0/1@", "zz/1@5", "0/1@-5", "1/2/3@4"])
def test_token_decode_rejects(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        ConsistencyToken.decode(bad)


def test_token_merge_keeps_the_later_point() -> None:
    a = ConsistencyToken(lsn=10, written_at=5.0)
    b = ConsistencyToken(lsn=7, written_at=9.0)
    assert a.merge(b) == ConsistencyToken(lsn=10, written_at=9.0)
    assert a.merge(None) is a
    assert ConsistencyToken(lsn=None, written_at=1.0).merge(b).lsn == 7


# -- decide -------------------------------------------------------------------------------------


@given(
    st.sampled_from([None, Target.PRIMARY, Target.REPLICA]),
    st.booleans(),
    st.booleans(),
)
def test_a_write_never_targets_a_replica(force: Target | None, writes: bool, wrote: bool) -> None:
    classification = WRITE if writes else READ
    state = ContextState(force=force)
    try:
        target = decide(classification, state, wrote=wrote)
    except ReadOnlyViolation:
        assert writes and force is Target.REPLICA
        return
    if writes or wrote or force is Target.PRIMARY:
        assert target is Target.PRIMARY
    else:
        assert target is Target.REPLICA


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("blacklist_seconds", -1),
        ("blacklist_seconds", float("nan")),
        ("max_lag_seconds", -0.5),
        ("sticky_seconds", "2"),
        ("sticky_timeout", float("inf")),
        ("max_lag_bytes", -1),
        ("max_lag_bytes", 1.5),
        ("balancer", "fastest"),
        ("consistency", "strong"),
        ("max_primary_read_share", 1.5),
        ("lag_readmit_ratio", 0),
        ("spill_window_seconds", 0),
        ("check_interval", -1),
    ],
)
def test_bad_configuration_names_the_parameter(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        RoutingConfig(**{option: value})  # type: ignore[arg-type]
    assert info.value.parameter == option


def test_bad_core_construction() -> None:
    clock = FakeClock()
    with pytest.raises(ConfigurationError):
        RoutingCore([], ["r1"], RoutingConfig(), clock)
    with pytest.raises(ConfigurationError):
        RoutingCore(["p"], ["p"], RoutingConfig(), clock)
    with pytest.raises(ConfigurationError):
        RoutingCore(["p"], ["r1"], RoutingConfig(weights={"nope": 1.0}), clock)
    with pytest.raises(ConfigurationError):
        RoutingConfig(blacklist_seconds=10, max_blacklist_seconds=5)


# -- balancers ----------------------------------------------------------------------------------


def test_round_robin_spreads_evenly_then_falls_back_to_primary() -> None:
    core, _ = make()
    firsts = Counter(core.choose_read(EMPTY_CONTEXT).attempts[0] for _ in range(300))
    assert firsts == {"r1": 100, "r2": 100, "r3": 100}
    assert core.choose_read(EMPTY_CONTEXT).attempts[-1] == "p"


def test_weights_give_exact_proportions() -> None:
    core, _ = make(weights={"r1": 3.0, "r2": 1.0, "r3": 1.0})
    firsts = Counter(core.choose_read(EMPTY_CONTEXT).attempts[0] for _ in range(500))
    assert firsts == {"r1": 300, "r2": 100, "r3": 100}


def test_random_balancer_uses_every_replica_and_weights() -> None:
    core, _ = make(balancer="random", weights={"r1": 8.0, "r2": 1.0, "r3": 1.0})
    firsts = Counter(core.choose_read(EMPTY_CONTEXT).attempts[0] for _ in range(2000))
    assert set(firsts) == set(REPLICAS)
    assert firsts["r1"] > 1400


def test_least_in_use_picks_the_idlest_replica() -> None:
    core, _ = make(balancer="least_in_use")
    plan = core.choose_read(EMPTY_CONTEXT, in_use={"r1": 5, "r2": 0, "r3": 2})
    assert plan.attempts == ("r2", "r3", "r1", "p")


def test_no_replicas_reads_go_to_primary() -> None:
    core = RoutingCore(["p"], [], RoutingConfig(), FakeClock())
    assert core.choose_read(EMPTY_CONTEXT).attempts == ("p",)
    off = RoutingCore(["p"], [], RoutingConfig(fallback_to_primary=False), FakeClock())
    with pytest.raises(NoHealthyNode):
        off.choose_read(EMPTY_CONTEXT)


# -- health: blacklist with back-off ------------------------------------------------------------


def test_blacklist_back_off_and_probation() -> None:
    core, clock = make(blacklist_seconds=1.0, max_blacklist_seconds=3.0)
    assert core.record_failure("r1") == 1.0
    assert core.record_failure("r1") is None  # same incident
    assert "r1" not in core.choose_read(EMPTY_CONTEXT).attempts
    clock.advance(1.0)
    assert "r1" in core.choose_read(EMPTY_CONTEXT).attempts  # on probation
    assert core.record_failure("r1") == 2.0  # failed again: twice as long
    clock.advance(2.0)
    assert core.record_failure("r1") == 3.0  # capped
    clock.advance(3.0)
    assert core.record_success("r1") == pytest.approx(6.0)
    assert core.record_failure("r1") == 1.0  # readmitted for good: back to the start


def test_every_replica_down_falls_back_to_primary_or_raises() -> None:
    core, _ = make()
    for name in REPLICAS:
        core.record_failure(name)
    plan = core.choose_read(EMPTY_CONTEXT)
    assert plan.attempts == ("p",)
    assert plan.reason == "no_replica"
    with pytest.raises(NoHealthyNode) as info:
        core.choose_read(EMPTY_CONTEXT, exclude=frozenset({"p"}))
    assert info.value.role == "replica"
    strict, _ = make(fallback_to_primary=False)
    for name in REPLICAS:
        strict.record_failure(name)
    with pytest.raises(NoHealthyNode):
        strict.choose_read(EMPTY_CONTEXT)


# -- lag ----------------------------------------------------------------------------------------


def test_lag_seconds_from_lsn_history_is_zero_on_an_idle_primary() -> None:
    core, clock = make(max_lag_seconds=5.0)
    core.observe_position("p", in_recovery=False, lsn=1000)
    core.observe_position("r1", in_recovery=True, lsn=1000)
    clock.advance(60)  # idle for a minute: no lag
    core.observe_position("p", in_recovery=False, lsn=1000)
    core.observe_position("r1", in_recovery=True, lsn=1000)
    state = core.snapshot()["r1"]
    assert (state.lag_seconds, state.lag_bytes, state.lagging) == (0.0, 0, False)


def test_lagging_replica_leaves_and_returns_with_a_margin() -> None:
    core, clock = make(max_lag_seconds=5.0, lag_readmit_ratio=0.5)
    core.observe_position("p", in_recovery=False, lsn=100)
    clock.advance(1)
    core.observe_position("p", in_recovery=False, lsn=200)
    clock.advance(6)  # r1 stuck at 100: the primary wrote past it 6 s ago
    assert core.observe_position("r1", in_recovery=True, lsn=100) is True
    assert core.snapshot()["r1"].lagging
    assert "r1" not in core.choose_read(EMPTY_CONTEXT).attempts
    # Catching up to 3 s of lag (> 0.5 * 5 s) is not enough to return.
    core.observe_position("p", in_recovery=False, lsn=300)
    clock.advance(3)
    assert core.observe_position("r1", in_recovery=True, lsn=200) is False
    assert core.snapshot()["r1"].lagging
    assert core.observe_position("r1", in_recovery=True, lsn=300) is True
    assert not core.snapshot()["r1"].lagging


def test_lag_bytes_limit() -> None:
    core, _ = make(max_lag_seconds=None, max_lag_bytes=1000)
    core.observe_position("p", in_recovery=False, lsn=5000)
    assert core.observe_position("r2", in_recovery=True, lsn=3000)
    assert core.snapshot()["r2"].lag_bytes == 2000
    assert "r2" not in core.choose_read(EMPTY_CONTEXT).attempts


def test_lag_is_right_from_the_first_check_whoever_wrote() -> None:
    # A pool that has never sampled the primary before: its own history says nothing, the
    # commit time of the replica's last replayed transaction does.
    core, clock = make(max_lag_seconds=1.0)
    core.observe_position("p", in_recovery=False, lsn=5000, server_time=1000.0)
    clock.advance(0.01)
    assert core.observe_position(
        "r1", in_recovery=True, lsn=3000, server_time=1000.01, replay_time=997.0
    )
    state = core.snapshot()["r1"]
    assert state.lagging and state.lag_seconds == pytest.approx(3.01)
    assert "r1" not in core.choose_read(EMPTY_CONTEXT).attempts


def test_commit_age_means_nothing_when_the_replica_has_everything() -> None:
    core, _ = make(max_lag_seconds=1.0)
    core.observe_position("p", in_recovery=False, lsn=5000, server_time=1000.0)
    core.observe_position("r1", in_recovery=True, lsn=5000, replay_time=10.0)  # idle for ages
    state = core.snapshot()["r1"]
    assert (state.lag_seconds, state.lagging) == (0.0, False)


def test_commit_age_is_kept_within_what_the_samples_prove() -> None:
    # The primary was idle at 1000 for a minute (seen at every check), then wrote: the
    # replica, a few ms behind, lags at most since the last check, not since its last commit.
    core, clock = make(max_lag_seconds=5.0)
    for _ in range(60):
        core.observe_position("p", in_recovery=False, lsn=1000, server_time=clock.time())
        clock.advance(1)
    core.observe_position("p", in_recovery=False, lsn=2000, server_time=clock.time())
    core.observe_position("r1", in_recovery=True, lsn=1000, replay_time=clock.time() - 60)
    state = core.snapshot()["r1"]
    assert state.lag_seconds == pytest.approx(1.0)
    assert not state.lagging


def test_commit_position_covers_an_asynchronous_commit() -> None:
    kw = {"block_size": 8192, "segment_size": 16 << 20}
    # Async commit: the flush position is behind the commit, the insert position is not.
    assert commit_position(0x30012E0, 0x3001278, **kw) == 0x30012E0
    # The last record ended on a page boundary: the insert position is past the next
    # page's header, which no replica reports until more WAL comes.
    assert commit_position(0x3002018, 0x3002000, **kw) == 0x3002000
    assert commit_position((3 << 24) + 40, 3 << 24, **kw) == 3 << 24  # a segment's long header
    assert commit_position(0x5000, 0x6000, **kw) == 0x6000  # never below the flush position


def _all_lagging(core: RoutingCore, clock: FakeClock) -> None:
    core.observe_position("p", in_recovery=False, lsn=100)
    clock.advance(1)
    core.observe_position("p", in_recovery=False, lsn=200)
    clock.advance(10)
    for name in REPLICAS:
        core.observe_position(name, in_recovery=True, lsn=100)


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_spill_to_primary_is_capped(share: float) -> None:
    core, clock = make(max_lag_seconds=5.0, max_primary_read_share=share)
    _all_lagging(core, clock)
    plans = [core.choose_read(EMPTY_CONTEXT) for _ in range(400)]
    spilled = sum(plan.spill for plan in plans)
    assert spilled <= share * 400 + 1
    assert spilled >= share * 400 - 2
    for plan in plans:
        if plan.spill:
            assert plan.attempts == ("p",) and plan.reason == "all_lagging"
        else:
            assert plan.reason == "spill_capped" and plan.attempts[0] in REPLICAS


# -- read-your-writes ---------------------------------------------------------------------------


def test_lsn_token_probe_then_caught_up_replica_then_primary() -> None:
    core, _ = make()
    state = ContextState(token=ConsistencyToken(lsn=500, written_at=0.0))
    plan = core.choose_read(state)
    assert plan.attempts == () and set(plan.probe) == set(REPLICAS)
    core.observe_replay("r1", 400)
    core.observe_replay("r2", 600)
    core.observe_replay("r3", 100)
    plan = core.choose_read(state, probed=True)
    assert plan.attempts[0] == "r2" and plan.reason == "caught_up"
    assert "r1" not in plan.attempts and "r3" not in plan.attempts
    # Nobody caught up: after a probe, the primary.
    late = ContextState(token=ConsistencyToken(lsn=10_000, written_at=0.0))
    assert core.choose_read(late, probed=True).attempts == ("p",)
    assert core.choose_read(late, probed=True).reason == "token_ahead"


def test_time_stickiness() -> None:
    core, clock = make(consistency="time", sticky_seconds=2.0)
    state = ContextState(token=ConsistencyToken(lsn=None, written_at=clock.time()))
    assert core.choose_read(state).reason == "sticky"
    clock.advance(2.5)
    assert core.choose_read(state).attempts[0] in REPLICAS
    forced = ContextState(token=state.token, force=Target.REPLICA)
    assert core.choose_read(forced).attempts[0] in REPLICAS


def test_token_without_lsn_is_time_based_in_auto_mode() -> None:
    core, clock = make(sticky_seconds=1.0)
    state = ContextState(token=ConsistencyToken(lsn=None, written_at=clock.time()))
    assert core.choose_read(state).attempts == ("p",)
    clock.advance(1.0)
    assert core.choose_read(state).attempts[0] in REPLICAS


# -- roles and failover -------------------------------------------------------------------------


def test_roles_promotion_no_primary_and_split_brain() -> None:
    core, _ = make()
    change = core.apply_roles({"p": None, "r1": Target.PRIMARY, "r2": Target.REPLICA})
    assert (change.old_primary, change.new_primary, change.changed) == ("p", "r1", True)
    assert core.choose_write() == "r1"
    assert "r1" not in core.choose_read(EMPTY_CONTEXT).attempts[:-1]
    core.apply_roles({"p": None, "r1": None})
    with pytest.raises(NoHealthyNode) as info:
        core.choose_write()
    assert info.value.role == "primary"
    core.apply_roles({"p": Target.PRIMARY, "r1": Target.PRIMARY})
    assert core.split_brain
    with pytest.raises(NoHealthyNode, match="more than one"):
        core.choose_write()
    assert core.choose_read(EMPTY_CONTEXT).attempts  # reads carry on


def test_nodes_that_reach_one_server_count_once() -> None:
    core, _ = make()
    same = ("sysid", "started")
    change = core.apply_roles(
        {"p": Target.PRIMARY, "r1": Target.PRIMARY, "r2": Target.REPLICA},
        {"p": same, "r1": same},
    )
    assert (change.new_primary, change.split_brain) == ("p", False)
    assert core.choose_write() == "p"
    assert core.snapshot()["r1"].same_server_as == "p"
    # It serves reads and is never behind a token.
    token = ConsistencyToken(lsn=10**12, written_at=0.0)
    plan = core.choose_read(ContextState(token=token))
    assert plan.attempts[0] == "r1" and not plan.probe
    core.observe_position("r1", in_recovery=False, lsn=5)
    assert core.snapshot()["r1"].lag_seconds == 0.0
    # A real split brain: different servers (or unknown identities) are refused.
    core.apply_roles({"p": Target.PRIMARY, "r1": Target.PRIMARY}, {"p": same, "r1": ("x", "y")})
    assert core.split_brain
    core.apply_roles({"p": Target.PRIMARY, "r1": Target.PRIMARY})
    assert core.split_brain
    assert core.snapshot()["r1"].same_server_as is None


def test_primary_failure_asks_for_a_role_check() -> None:
    core, clock = make(role_check_interval=0.5)
    assert not core.role_check_due()
    core.record_failure("p")
    assert core.role_check_due()
    core.apply_roles({"p": None, "r1": None, "r2": None, "r3": None})
    assert not core.role_check_due()  # throttled
    clock.advance(0.5)
    assert core.role_check_due()


# -- invariants under random event sequences ----------------------------------------------------

_names = st.sampled_from(REPLICAS)
_events = st.lists(
    st.one_of(
        st.tuples(st.just("fail"), _names),
        st.tuples(st.just("ok"), _names),
        st.tuples(st.just("advance"), st.floats(min_value=0, max_value=30)),
        st.tuples(st.just("primary_lsn"), st.integers(min_value=0, max_value=10_000)),
        st.tuples(st.just("replay"), st.tuples(_names, st.integers(min_value=0, max_value=10_000))),
        st.tuples(st.just("read"), st.one_of(st.none(), st.integers(0, 10_000))),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    _events,
    st.sampled_from(["round_robin", "random", "least_in_use"]),
    st.floats(min_value=0, max_value=1),
)
def test_read_plans_respect_health_lag_and_tokens(
    events: list[tuple[str, Any]], balancer: str, share: float
) -> None:
    core, clock = make(
        balancer=balancer,
        max_lag_seconds=5.0,
        max_lag_bytes=2000,
        max_primary_read_share=share,
        blacklist_seconds=1.0,
        max_blacklist_seconds=8.0,
    )
    primary_lsn = 0
    for kind, arg in events:
        if kind == "fail":
            core.record_failure(arg)
        elif kind == "ok":
            core.record_success(arg)
        elif kind == "advance":
            clock.advance(arg)
        elif kind == "primary_lsn":
            primary_lsn = max(primary_lsn, arg)
            core.observe_position("p", in_recovery=False, lsn=primary_lsn)
        elif kind == "replay":
            name, lsn = arg
            core.observe_position(name, in_recovery=True, lsn=min(lsn, primary_lsn))
        else:
            token = None if arg is None else ConsistencyToken(lsn=arg, written_at=0.0)
            state = ContextState(token=token)
            plan = core.choose_read(state, in_use={"r1": 1, "r2": 0, "r3": 2}, probed=True)
            snapshot = core.snapshot()
            now = clock.monotonic()
            assert plan.attempts, "a plan always names a node"
            assert len(set(plan.attempts)) == len(plan.attempts)
            for name in plan.attempts:
                node = snapshot[name]
                if name == "p":
                    continue
                assert node.down_until is None or now >= node.down_until, "blacklisted node"
                if plan.reason != "spill_capped":
                    assert not node.lagging, "lagging node outside the capped spill"
                if token is not None and token.lsn is not None:
                    assert node.replay_lsn is not None and node.replay_lsn >= token.lsn
            if plan.reason == "spill_capped":
                assert token is None
