"""The pure shard map: balanced assignment, minimal rebalancing, versions, validation."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError, UnknownShard
from scalekit.sharding import (
    ShardAssignment,
    ShardMove,
    assign_balanced,
    logical_shard,
    plan_rebalance,
    rebalance,
)

names = st.lists(
    st.text(alphabet="abcdefgh", min_size=1, max_size=3), min_size=1, max_size=12, unique=True
)
logical_counts = st.integers(min_value=1, max_value=2048)


def is_balanced(assignment: ShardAssignment) -> bool:
    counts = assignment.counts().values()
    return max(counts) - min(counts) <= 1


def test_round_robin_and_lookups() -> None:
    shards = assign_balanced(["a", "b", "c"], 8)
    assert shards.owners == ("a", "b", "c", "a", "b", "c", "a", "b")
    assert shards.version == 1
    assert shards.logical_shards == 8
    assert shards.counts() == {"a": 3, "b": 3, "c": 2}
    assert shards.shards_of("c") == (2, 5)
    assert shards.owner_of(7) == "b"
    assert shards.shard_for("user-42") == logical_shard("user-42", 8)
    assert shards.name_for("user-42") == shards.owners[logical_shard("user-42", 8)]


def test_default_is_1024_logical_shards() -> None:
    assert assign_balanced(["a"]).logical_shards == 1024


@given(names, logical_counts)
def test_assign_balanced_is_balanced(targets: list[str], logical_shards: int) -> None:
    shards = assign_balanced(targets, logical_shards)
    assert is_balanced(shards)
    assert set(shards.counts()) == set(targets)


@pytest.mark.parametrize("grown_to", range(2, 17))
def test_growing_n_to_n_plus_1_moves_only_the_new_share(grown_to: int) -> None:
    before = assign_balanced([f"db{i}" for i in range(grown_to - 1)])
    after = rebalance(before, [f"db{i}" for i in range(grown_to)])
    moves = plan_rebalance(before, after)
    assert is_balanced(after)
    assert {move.target for move in moves} == {f"db{grown_to - 1}"}
    assert len(moves) == after.counts()[f"db{grown_to - 1}"] == 1024 // grown_to
    assert after.version == before.version + 1


@given(names, names, logical_counts)
def test_rebalance_is_balanced_and_moves_the_minimum(
    old_targets: list[str], new_targets: list[str], logical_shards: int
) -> None:
    before = assign_balanced(old_targets, logical_shards)
    after = rebalance(before, new_targets)
    moves = plan_rebalance(before, after)
    assert is_balanced(after)
    assert after.logical_shards == logical_shards
    # Lower bound of any balanced result: every shard of a removed target
    # moves, and each kept target above the ceiling share gives up the rest.
    base, extra = divmod(logical_shards, len(new_targets))
    held = Counter(before.owners)
    removed = sum(count for name, count in held.items() if name not in new_targets)
    surplus = sorted((held[name] - base for name in new_targets if held[name] > base), reverse=True)
    minimum = removed + sum(max(0, s - 1) if rank < extra else s for rank, s in enumerate(surplus))
    assert len(moves) == minimum
    # Only the moved shards changed owner; each appears once.
    moved = {move.logical for move in moves}
    assert len(moved) == len(moves)
    for logical, (old, new) in enumerate(zip(before.owners, after.owners, strict=True)):
        assert (old != new) == (logical in moved)


@given(names, logical_counts)
def test_rebalancing_a_balanced_map_onto_the_same_targets_moves_nothing(
    targets: list[str], logical_shards: int
) -> None:
    before = assign_balanced(targets, logical_shards)
    assert plan_rebalance(before, targets) == ()
    assert rebalance(before, targets).version == 2


def test_plan_names_each_move() -> None:
    before = assign_balanced(["a", "b"], 4)
    assert plan_rebalance(before, ["a", "b", "c"]) == (ShardMove(3, "b", "c"),)
    assert plan_rebalance(before, ["b"]) == (ShardMove(0, "a", "b"), ShardMove(2, "a", "b"))


def test_with_owners_bumps_the_version() -> None:
    before = assign_balanced(["a", "b"], 4, version=7)
    after = before.with_owners({0: "b"})
    assert after.owners == ("b", "b", "a", "b")
    assert after.version == 8
    assert before.owners == ("a", "b", "a", "b")


def test_empty_and_duplicate_targets_are_refused_with_the_names() -> None:
    with pytest.raises(ConfigurationError, match="at least one target") as info:
        assign_balanced([])
    assert info.value.parameter == "targets"
    with pytest.raises(ConfigurationError, match="duplicate shard targets: a, c"):
        assign_balanced(["a", "b", "a", "c", "c"])
    with pytest.raises(ConfigurationError, match="non-empty strings"):
        assign_balanced(["a", ""])
    with pytest.raises(ConfigurationError, match="duplicate shard targets: b"):
        rebalance(assign_balanced(["a"]), ["b", "b"])
    with pytest.raises(ConfigurationError, match="at least one target"):
        plan_rebalance(assign_balanced(["a"]), [])


def test_bad_assignments_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown targets: 'z'") as info:
        ShardAssignment(("a", "b"), ("a", "z"))
    assert info.value.parameter == "owners"
    with pytest.raises(ConfigurationError, match="at least one logical shard"):
        ShardAssignment(("a",), ())
    with pytest.raises(ConfigurationError, match="version"):
        ShardAssignment(("a",), ("a",), version=0)
    with pytest.raises(ConfigurationError, match="logical_shards"):
        assign_balanced(["a"], 0)


def test_unknown_shards_and_targets_raise_unknown_shard() -> None:
    shards = assign_balanced(["a", "b"], 16)
    for logical in (-1, 16, True):
        with pytest.raises(UnknownShard, match="does not exist") as info:
            shards.owner_of(logical)
        assert info.value.shard == logical
    with pytest.raises(UnknownShard, match=r"'c'.*targets are a, b") as named:
        shards.shards_of("c")
    assert named.value.shard == "c"
    assert isinstance(named.value, LookupError)
    with pytest.raises(UnknownShard, match="'c'"):
        shards.with_owners({0: "c"})
    with pytest.raises(UnknownShard, match="99"):
        shards.with_owners({99: "a"})


def test_a_changed_logical_count_is_refused() -> None:
    with pytest.raises(
        ConfigurationError, match=r"from 1024 \(version 1\) to 512 \(version 3\)"
    ) as info:
        plan_rebalance(assign_balanced(["a"]), assign_balanced(["a"], 512, version=3))
    assert info.value.parameter == "logical_shards"
