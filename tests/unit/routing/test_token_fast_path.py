"""A read holding an LSN token every replica has replayed takes the O(1) fast path;
one a replica has not reached (or no longer may serve) takes the full path (issue 20)."""

from __future__ import annotations

import random
from typing import Any

from scalekit.routing import ConsistencyToken, RoutingConfig
from scalekit.routing._core import EMPTY_CONTEXT, ContextState, RoutingCore
from scalekit.testing import FakeClock

REPLICAS = ("r1", "r2")


def make(**options: Any) -> RoutingCore:
    options.setdefault("check_interval", None)
    core = RoutingCore(
        ["p"], list(REPLICAS), RoutingConfig(**options), FakeClock(), rng=random.Random(1)
    )
    core.observe_position("p", in_recovery=False, lsn=1000)
    for name in REPLICAS:
        core.observe_position(name, in_recovery=True, lsn=1000)
    core.choose_read(EMPTY_CONTEXT)  # one full plan builds the fast path
    return core


def holding(lsn: int | None) -> ContextState:
    return ContextState(token=ConsistencyToken(lsn=lsn, written_at=0.0))


def test_a_token_every_replica_reached_takes_the_fast_path() -> None:
    core = make()
    attempts = core.fast_read(holding(900))
    assert attempts is not None and attempts[0] in REPLICAS
    assert core.choose_read(holding(900)).reason == "caught_up"
    assert core.fast_read(holding(1000)) is not None  # exactly reached


def test_a_token_ahead_of_the_cached_position_takes_the_full_path() -> None:
    core = make()
    assert core.fast_read(holding(1001)) is None
    # Positions just checked: the full path sends the read to the primary.
    assert core.choose_read(holding(1001)).reason == "token_ahead"


def test_the_cached_position_follows_the_replicas() -> None:
    core = make()
    assert core.fast_read(holding(1500)) is None
    core.observe_position("p", in_recovery=False, lsn=2000)
    core.observe_replay("r1", 2000)
    assert core.fast_read(holding(1500)) is None  # r2 has not been seen past 1000
    core.observe_position("r2", in_recovery=True, lsn=1600)
    assert core.fast_read(holding(1500)) is not None
    assert core.fast_read(holding(1601)) is None


def test_a_replica_that_falls_behind_after_the_position_was_cached() -> None:
    core = make(max_lag_bytes=100)
    assert core.fast_read(holding(1000)) is not None
    # The primary moves on and r2 stays behind: it lags, the fast plans go, and a
    # token r2 had reached is served by r1 alone through the full path.
    core.observe_position("p", in_recovery=False, lsn=5000)
    core.observe_position("r1", in_recovery=True, lsn=5000)
    core.observe_position("r2", in_recovery=True, lsn=1000)
    assert core.fast_read(holding(1000)) is None
    plan = core.choose_read(holding(4000))
    assert plan.attempts[0] == "r1" and "r2" not in plan.attempts
    # A failure takes a replica out as well.
    core = make()
    core.record_failure("r1")
    assert core.fast_read(holding(900)) is None
    assert "r1" not in core.choose_read(holding(900)).attempts


def test_an_lsn_less_token_and_time_mode_never_take_the_fast_path() -> None:
    core = make()
    assert core.fast_read(holding(None)) is None
    core = make(consistency="time")
    assert core.fast_read(holding(10)) is None


def test_consistency_none_ignores_tokens_on_the_fast_path() -> None:
    core = make(consistency="none")
    assert core.fast_read(holding(10**9)) is not None


def test_an_unknown_replica_position_declines() -> None:
    core = RoutingCore(["p"], list(REPLICAS), RoutingConfig(check_interval=None), FakeClock())
    core.choose_read(EMPTY_CONTEXT)
    assert core.fast_read(EMPTY_CONTEXT) is not None
    assert core.fast_read(holding(0)) is None  # no replica position known yet
