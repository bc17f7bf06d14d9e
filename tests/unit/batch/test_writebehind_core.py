"""Write-behind's pure buffer: coalescing, restore after a failed flush, back-pressure, metrics."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.batch._writebehind import (
    StreamLayout,
    WriteBehindBuffer,
    decode_row,
    encode_row,
    plan_entries,
    stream_id,
    validate_settings,
)
from scalekit.errors import BufferFull, ConfigurationError
from scalekit.testing import FakeClock


def buffer(**options: Any) -> WriteBehindBuffer:
    options.setdefault("clock", FakeClock())
    return WriteBehindBuffer(
        key=("id",), columns=("id", "name", "hits"), increment=("hits",), **options
    )


def test_last_wins_and_increments_add() -> None:
    b = buffer()
    assert b.put({"id": 1, "name": "a", "hits": 1}) is True
    assert b.put({"id": 2, "name": "x", "hits": 5}) is True
    assert b.put({"id": 1, "name": "b", "hits": 2}) is False
    batch = b.take()
    assert batch is not None
    assert batch.rows == [{"id": 1, "name": "b", "hits": 3}, {"id": 2, "name": "x", "hits": 5}]
    assert b.pending == 2 and b.waiting == 0
    b.done(batch, written=2, rejected=0)
    m = b.metrics()
    assert (m.pending, m.puts, m.coalesced, m.flushed_rows, m.flushes) == (0, 3, 1, 2, 1)
    assert b.take() is None


def test_a_merge_function_decides_but_keeps_the_key() -> None:
    b = WriteBehindBuffer(
        key=("id",),
        columns=("id", "price"),
        merge=lambda old, new: {"id": -1, "price": max(old["price"], new["price"])},
    )
    b.put({"id": 1, "price": 5})
    b.put({"id": 1, "price": 3})
    batch = b.take()
    assert batch is not None and batch.rows == [{"id": 1, "price": 5}]


def test_composite_keys() -> None:
    b = WriteBehindBuffer(key=("a", "b"), columns=("a", "b", "v"))
    b.put({"a": 1, "b": 2, "v": 1})
    b.put({"b": 2, "a": 1, "v": 2})
    b.put({"a": 2, "b": 1, "v": 3})
    batch = b.take()
    assert batch is not None and [r["v"] for r in batch.rows] == [2, 3]


def test_restore_puts_a_failed_batch_back_under_newer_rows() -> None:
    clock = FakeClock()
    b = buffer(clock=clock)
    b.put({"id": 1, "name": "a", "hits": 1})
    clock.advance(1.0)
    b.put({"id": 2, "name": "b", "hits": 1})
    batch = b.take()
    assert batch is not None
    clock.advance(1.0)
    b.put({"id": 3, "name": "c", "hits": 1})
    b.put({"id": 1, "name": "newer", "hits": 10})
    assert b.oldest_pending_seconds() == 2.0  # the batch in flight is the oldest
    b.restore(batch)
    assert b.metrics().failed_flushes == 1
    again = b.take()
    assert again is not None
    assert again.rows == [
        {"id": 1, "name": "newer", "hits": 11},
        {"id": 2, "name": "b", "hits": 1},
        {"id": 3, "name": "c", "hits": 1},
    ]
    assert again.since == [0.0, 1.0, 2.0]


def test_raise_refuses_a_new_key_when_full_but_coalesces_a_pending_one() -> None:
    b = buffer(max_pending=2, overflow="raise")
    b.put({"id": 1, "name": "a", "hits": 1})
    b.put({"id": 2, "name": "a", "hits": 1})
    with pytest.raises(BufferFull) as info:
        b.put({"id": 3, "name": "a", "hits": 1})
    assert info.value.pending == 2
    b.put({"id": 2, "name": "b", "hits": 1})
    assert b.metrics().refused == 1
    # keys of a flush in progress still count
    batch = b.take()
    assert batch is not None and not b.has_room({"id": 3, "name": "a", "hits": 1})
    b.done(batch, written=2, rejected=0)
    assert b.has_room({"id": 3, "name": "a", "hits": 1})


def test_drop_oldest_drops_the_first_pending_key() -> None:
    b = buffer(max_pending=2, overflow="drop_oldest")
    for i in (1, 2, 3):
        b.put({"id": i, "name": "a", "hits": 1})
    batch = b.take()
    assert batch is not None and [r["id"] for r in batch.rows] == [2, 3]
    assert b.metrics().dropped == 1


def test_oldest_pending_lag_follows_the_clock() -> None:
    clock = FakeClock()
    b = buffer(clock=clock)
    assert b.oldest_pending_seconds() == 0.0
    b.put({"id": 1, "name": "a", "hits": 1})
    clock.advance(3.0)
    b.put({"id": 1, "name": "b", "hits": 1})  # coalescing keeps the first put's age
    assert b.metrics().oldest_pending_seconds == 3.0


@pytest.mark.parametrize(
    "row",
    [{"name": "a", "hits": 1}, {"id": 1, "name": "a"}, {"id": 1, "name": "a", "hits": 1, "x": 2}],
)
def test_rows_that_do_not_fit_are_refused(row: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        buffer().put(row)


def test_a_row_must_be_a_mapping() -> None:
    with pytest.raises(ConfigurationError, match="mappings"):
        buffer().put((1, "a", 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "parameter"),
    [
        (((), ("v",), (), 10, "block", 1.0), "key"),
        ((("id",), (), (), 10, "block", 1.0), "update"),
        ((("id",), ("id",), (), 10, "block", 1.0), "update"),
        ((("id",), "v", (), 10, "block", 1.0), "update"),
        ((("id",), ("v",), (), 0, "block", 1.0), "max_pending"),
        ((("id",), ("v",), (), True, "block", 1.0), "max_pending"),
        ((("id",), ("v",), (), 10, "wait", 1.0), "overflow"),
        ((("id",), ("v",), (), 10, "block", 0.0), "flush_interval"),
    ],
)
def test_settings_are_checked(args: tuple[Any, ...], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_settings(*args)
    assert info.value.parameter == parameter


# -- properties ---------------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 6), st.integers(-5, 5), st.integers(0, 100)),
        st.tuples(st.just("take"), st.booleans(), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, max_pending=st.integers(1, 8), overflow=st.sampled_from(["raise", "drop_oldest"]))
def test_flushed_state_matches_the_updates_accepted(
    ops: list[tuple[Any, ...]], max_pending: int, overflow: Any
) -> None:
    """Whatever flushes fail and succeed, the database ends with each key's last value and
    the sum of its accepted increments, and the buffer never holds more than max_pending keys."""
    b = WriteBehindBuffer(
        key=("id",),
        columns=("id", "name", "hits"),
        increment=("hits",),
        max_pending=max_pending,
        overflow=overflow,
        clock=FakeClock(),
    )
    db: dict[int, tuple[int, int]] = {}
    last: dict[int, int] = {}
    total: dict[int, int] = {}
    lost: set[int] = set()

    def apply(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            _, hits = db.get(row["id"], (0, 0))
            db[row["id"]] = (row["name"], hits + row["hits"])

    for op, a, delta, name in ops:
        if op == "put":
            before = b.dropped
            try:
                b.put({"id": a, "name": name, "hits": delta})
            except BufferFull:
                assert overflow == "raise"
                continue
            if b.dropped > before:
                lost.add(-1)  # something was dropped: only the bound is checked below
            last[a] = name
            total[a] = total.get(a, 0) + delta
        else:
            batch = b.take()
            if batch is None:
                continue
            if a:
                apply(batch.rows)
                b.done(batch, written=len(batch.rows), rejected=0)
            else:
                b.restore(batch)
        assert b.pending <= max_pending
    batch = b.take()
    if batch is not None:
        apply(batch.rows)
    if not lost:
        assert {k: (last[k], total[k]) for k in last} == db


# -- durable mode's pure parts --------------------------------------------------------------

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.datetimes(),
    st.dates(),
    st.uuids(),
    st.binary(),
)


@given(st.dictionaries(st.text(min_size=1), values))
def test_rows_survive_the_stream_encoding(row: dict[str, Any]) -> None:
    assert decode_row(encode_row(row)) == row


def test_a_value_without_an_encoding_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="set"):
        encode_row({"id": 1, "tags": {"a"}})


def test_stream_layout_uses_one_hash_tag_per_partition() -> None:
    layout = StreamLayout(prefix="wb:prices", partitions=4, group="g")
    assert layout.stream(3) == "wb:prices:{3}" and layout.lease(3) == "wb:prices:{3}:lease"
    assert {layout.partition_of(k) for k in range(100)} == {0, 1, 2, 3}
    assert layout.partition_of((1, "a")) == layout.partition_of((1, "a"))
    assert StreamLayout(prefix="p", partitions=1, group="g").partition_of("x") == 0


def make_coalescer() -> WriteBehindBuffer:
    return WriteBehindBuffer(
        key=("id",), columns=("id", "name", "hits"), increment=("hits",), max_pending=1 << 30
    )


def test_plan_skips_what_an_earlier_flusher_committed() -> None:
    entries = [
        ("5-0", encode_row({"id": 1, "name": "a", "hits": 1})),
        ("5-1", encode_row({"id": 1, "name": "b", "hits": 1})),
        ("6-0", None),  # deleted from the stream
        ("7-0", encode_row({"id": 1, "name": "c", "hits": 1})),
        ("7-1", encode_row({"id": 2, "name": "d", "hits": 1})),
    ]
    plan = plan_entries(entries, "5-1", make_coalescer)
    assert plan.rows == [{"id": 1, "name": "c", "hits": 1}, {"id": 2, "name": "d", "hits": 1}]
    assert plan.last_id == "7-1" and plan.skipped == 3
    assert plan.ack == ["5-0", "5-1", "6-0", "7-0", "7-1"]
    nothing = plan_entries(entries[:2], "9-0", make_coalescer)
    assert nothing.rows == [] and nothing.last_id == "9-0"


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(-3, 3)), max_size=40), st.data())
def test_replaying_from_any_offset_applies_each_entry_once(
    updates: list[tuple[int, int]], data: st.DataObject
) -> None:
    """A flusher that dies after committing a prefix and a successor that rereads everything
    end with the same counters as one flusher: offsets make the replay exactly-once."""
    entries = [
        (f"{i + 1}-0", encode_row({"id": k, "name": str(i), "hits": d}))
        for i, (k, d) in enumerate(updates)
    ]
    cut = data.draw(st.integers(0, len(entries)))
    db: dict[int, int] = {}

    def apply(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            db[row["id"]] = db.get(row["id"], 0) + row["hits"]

    first = plan_entries(entries[:cut], "0-0", make_coalescer)
    apply(first.rows)
    second = plan_entries(entries, first.last_id, make_coalescer)
    apply(second.rows)
    expected: dict[int, int] = {}
    for k, d in updates:
        expected[k] = expected.get(k, 0) + d
    assert db == expected
    assert stream_id(second.last_id) == (len(entries), 0) or not entries
