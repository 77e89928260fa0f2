"""Direct tests of the pure core: windows, panes, watermarks, shards, the row book."""

from __future__ import annotations

import pickle

import orjson
import pytest

from presence.core.panes import ShardPanes
from presence.core.partition import (
    ENDED, IDLE, LIVE, NO_EVENT, PartitionMark, PartitionReader, RawMessage,
)
from presence.core.watermark import dataflow_watermark, flush_watermark, oldest_countable
from presence.core.windows import WindowSpec
from tests.constants import NOW, T0
from tests.core_sim import Core
from tests.oracle import P

pytestmark = pytest.mark.usefixtures("both_readers")  # each reader: Python, compiled

SPEC = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=3600, idle_s=10, shards=4)


def mark(partition=0, partitions=1, max_event=T0, state=LIVE, read_at=NOW) -> PartitionMark:
    return PartitionMark("t", partition, partitions, max_event, read_at, state, 0)


# --- windows -------------------------------------------------------------

def test_row_interval_is_the_n_minutes_ending_with_its_bucket() -> None:
    assert SPEC.row_start(T0) == T0 + 60 - 300 and SPEC.row_end(T0) == T0 + 60
    assert list(SPEC.panes_of_row(T0)) == [T0 - 240, T0 - 180, T0 - 120, T0 - 60, T0]
    assert list(SPEC.rows_of_pane(T0)) == [T0, T0 + 60, T0 + 120, T0 + 180, T0 + 240]
    plain = WindowSpec(bucket_s=60, window_s=60)
    assert list(plain.rows_of_pane(T0)) == [T0] and list(plain.panes_of_row(T0)) == [T0]


def test_buckets_align_to_the_epoch() -> None:
    assert SPEC.bucket_of(T0 + 59.999) == T0 and SPEC.bucket_of(T0 + 60) == T0 + 60


# --- panes ---------------------------------------------------------------

def test_panes_count_distinct_drivers_over_the_window() -> None:
    panes = ShardPanes(SPEC)
    assert panes.add(T0, {"a", "b"}, {"b"})  # b is off duty
    assert not panes.add(T0, {"a"}, set())  # nothing new
    assert not panes.add(T0, {"a"}, {"a"})  # off duty now, but was available: nothing new
    assert panes.add(T0, {"b"}, set())  # b on duty: available in the pane now
    assert panes.add(T0 + 60, {"b", "c"}, {"b"})
    assert panes.row_counts(T0 + 60) == (3, 3)
    assert panes.row_counts(T0 + 300) == (2, 1)  # T0's pane is out of this row
    assert panes.row_counts(T0 + 360) == (0, 0)


def test_dropping_and_compacting_keeps_counts_exact() -> None:
    panes = ShardPanes(SPEC)
    for i in range(40):
        panes.add(T0 + 60 * i, {f"d{i}-{k}" for k in range(100)},
                  {f"d{i}-{k}" for k in range(100) if k % 3})  # every third available
    before = panes.row_counts(T0 + 60 * 39)
    panes.drop_before(T0 + 60 * 35)
    assert len(panes.index) == 500  # renumbered: only drivers still in a pane
    assert panes.row_counts(T0 + 60 * 39) == before == (500, 170)
    again = ShardPanes.restore(SPEC, pickle.loads(pickle.dumps(panes.snapshot())))
    assert again.row_counts(T0 + 60 * 39) == before
    assert again.add(T0 + 60 * 39, {"new"}, {"new"})  # off duty
    assert again.row_counts(T0 + 60 * 39) == (501, 170)


# --- watermarks ------------------------------------------------------------

def test_watermark_is_least_live_partition_minus_lateness() -> None:
    marks = [mark(0, 3, T0 + 100), mark(1, 3, T0 + 50), mark(2, 3, T0 + 900)]
    assert dataflow_watermark(marks, SPEC) == T0 + 50 - 30
    assert flush_watermark(marks, NOW, SPEC) == T0 + 50 - 30


def test_watermark_waits_for_every_partition() -> None:
    assert dataflow_watermark([mark(0, 2, T0)], SPEC) == NO_EVENT
    assert flush_watermark([mark(0, 2, T0)], NOW, SPEC) == NO_EVENT
    assert dataflow_watermark([mark(0, 2, T0), mark(1, 2, NO_EVENT)], SPEC) == NO_EVENT


def test_idle_and_ended_partitions_are_left_out() -> None:
    marks = [mark(0, 3, T0 + 100), mark(1, 3, T0, state=IDLE), mark(2, 3, T0 - 999, state=ENDED)]
    assert dataflow_watermark(marks, SPEC) == T0 + 100 - 30


def test_quiet_run_writes_by_the_wall_clock_but_keeps_event_time() -> None:
    marks = [mark(0, 2, T0 + 100, IDLE, read_at=NOW - 12), mark(1, 2, T0 + 40, ENDED, read_at=NOW - 50)]
    # When rows may be written follows the wall clock...
    assert flush_watermark(marks, NOW, SPEC) == NOW - 30
    # ...the watermark that is kept does not: the freshest partition's.
    assert dataflow_watermark(marks, SPEC) == T0 + 100 - 30
    # Pings stamped ahead of the wall clock (within the allowed skew) carry on from there.
    ahead = [mark(0, 1, NOW + 200, IDLE, read_at=NOW - 12)]
    assert flush_watermark(ahead, NOW, SPEC) == NOW + 200 + 12 - 30


def test_oldest_countable_is_the_least_partition_watermark_minus_the_horizon() -> None:
    marks = [mark(0, 3, T0 + 100), mark(1, 3, T0, state=IDLE), mark(2, 3, T0 + 50, state=ENDED)]
    assert oldest_countable(marks, SPEC) == T0 - 30 - 3600
    # A partition without any ping yet never holds clean-up back once idle or ended
    # (SPEC "Time"); live (at most `idle` seconds), it holds it like the watermark.
    for state in (IDLE, ENDED):
        assert oldest_countable(marks[:2] + [mark(2, 3, NO_EVENT, state=state)], SPEC) == T0 - 30 - 3600
    assert oldest_countable(marks[:2] + [mark(2, 3, NO_EVENT, state=LIVE)], SPEC) == NO_EVENT
    # ...but until every partition has been heard from, nothing may go.
    assert oldest_countable(marks[:2], SPEC) == NO_EVENT
    assert oldest_countable([mark(0, 1, NO_EVENT)], SPEC) == NO_EVENT


# --- partitions ---------------------------------------------------------------

def values(*pings: P) -> list[RawMessage]:
    return [RawMessage(i, orjson.dumps(p.value())) for i, p in enumerate(pings)]


def test_too_late_is_judged_against_its_own_partition() -> None:
    reader = PartitionReader("t", 0, 2, SPEC, NOW)
    batch = reader.read(values(P(1, T0 + 7200, True), P(2, T0 + 7200 - 30 - 3600 - 1, True),
                               P(3, T0 + 7200 - 30 - 3600 + 1, True)), NOW)
    assert [(d.offset, d.reason) for d in batch.dead_letters] == [(1, "too_late")]
    assert (reader.valid, reader.too_late, reader.next_offset) == (2, 1, 3)
    # The same ping on another partition that has not run ahead counts.
    other = PartitionReader("t", 1, 2, SPEC, NOW)
    assert not other.read(values(P(2, T0 + 7200 - 30 - 3600 - 1, True)), NOW).dead_letters


def test_dead_letter_ids_make_replays_idempotent() -> None:
    reader = PartitionReader("pings", 2, 3, SPEC, NOW, {"next_offset": 40})
    batch = reader.read([RawMessage(40, b"nope"), RawMessage(41, b'{"a": 1}')], NOW)
    assert [(d.id, d.reason) for d in batch.dead_letters] == [
        ("pings:2:40", "invalid_json"), ("pings:2:41", "missing_field")]
    assert batch.dead_letters[0].raw == "nope"


def test_partition_state_survives_a_snapshot() -> None:
    reader = PartitionReader("t", 0, 1, SPEC, NOW)
    reader.read(values(P(1, T0, True)), NOW)
    reader.note_gap(5, 9)
    again = PartitionReader("t", 0, 1, SPEC, NOW, pickle.loads(pickle.dumps(reader.snapshot())))
    assert again.snapshot() == reader.snapshot()
    assert again.mark(NOW).gaps == ((5, 9),)


def test_partition_goes_idle_without_valid_pings() -> None:
    reader = PartitionReader("t", 0, 1, SPEC, NOW)
    assert reader.mark(NOW + 9).state == LIVE
    assert reader.mark(NOW + 10).state == IDLE
    assert reader.mark(NOW, ended=True).state == ENDED


# --- shards and the row book -----------------------------------------------------

def test_rows_are_written_once_the_watermark_passes_and_corrected_when_late() -> None:
    spec = WindowSpec(bucket_s=60, window_s=120, lateness_s=0, horizon_s=3600, shards=2)
    msgs = [P(1, T0 + 10, True), P(2, T0 + 20, False), P(1, T0 + 70, True), P(3, T0 + 200, True)]
    core = Core(spec, [msgs + [P(4, T0 + 30, True), P(4, T0 + 31, True)]], NOW)
    core.read(0, 2, bounded=False)
    assert core.store.rows == {}  # T0's interval has not ended in event time
    core.read(0, 2, bounded=False)  # watermark T0 + 200: rows up to T0 + 120 close
    assert core.store.rows == {
        T0: {"online": 2, "available": 1, "revision": 1},
        T0 + 60: {"online": 2, "available": 1, "revision": 1},
        T0 + 120: {"online": 1, "available": 1, "revision": 1},
    }
    core.read(0, 1, bounded=False)  # a late ping of a new driver at T0 + 30
    assert core.store.rows[T0] == {"online": 3, "available": 2, "revision": 2}
    assert core.store.rows[T0 + 60] == {"online": 3, "available": 2, "revision": 2}
    assert core.store.rows[T0 + 120]["revision"] == 1  # driver 4 is not in its interval
    core.read(0, 1, bounded=False)  # the same driver again: nothing changes
    assert core.store.rows[T0]["revision"] == 2
    # Both pings of driver 4 were late (older than the partition's watermark when read).
    totals = core.book.totals()
    assert totals.late == totals.corrected_late == 2
    assert (totals.rows_written, totals.row_rewrites) == (5, 2)
    core.finish()
    assert core.store.rows[T0 + 180] == {"online": 1, "available": 1, "revision": 1}


def test_state_older_than_the_horizon_is_dropped() -> None:
    spec = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=600, shards=2)
    hours = [P(d, T0 + 20 * i, True) for i in range(3 * 180) for d in (i % 7, 100 + i % 11)]
    core = Core(spec, [hours], NOW)
    while not core.done(0):
        core.read(0, 50, bounded=False)
    kept = [len(s.panes.online) for s in core.shards.values()]
    # horizon + lateness + window + one batch: about 20 panes, not 180.
    assert max(kept) <= (600 + 30 + 300) // 60 + 3, kept
    assert len(core.book.written) <= (600 + 30) // 60 + 3


def test_a_row_never_exists_without_a_ping_in_its_interval() -> None:
    core = Core(SPEC, [[P(1, T0 + 5, True), P(1, T0 + 3600, True)]], NOW)
    core.read(0, 2)
    core.finish()
    assert sorted(core.store.rows) == [T0 + 60 * i for i in range(5)] + [T0 + 3600 + 60 * i for i in range(5)]


def test_a_ping_at_the_horizon_still_sees_every_pane_of_its_rows() -> None:
    """Dropped state stops one window short of the oldest countable time."""
    spec = WindowSpec(bucket_s=60, window_s=300, lateness_s=0, horizon_s=600, shards=1)
    msgs = [P("d", T0 + 420, True), P("far", T0 + 1200, True), P("c", T0 + 600, True)]
    core = Core(spec, [msgs], NOW)
    core.read(0, 2, bounded=False)  # state before T0 + 600 may go now
    core.read(0, 1, bounded=False)  # exactly at the horizon: counts
    core.finish()
    assert core.store.counts()[T0 + 600] == (2, 2)  # "d" (pane T0 + 420) and "c"


def test_pings_older_than_dropped_state_are_reported_not_miscounted() -> None:
    """A partition added to the topic after state was dropped brings an old ping:
    it is not counted (its rows' panes are gone) and it is reported, not lost silently."""
    spec = WindowSpec(bucket_s=60, window_s=120, lateness_s=0, horizon_s=300, shards=1)
    core = Core(spec, [[P(i % 3, T0 + 60 * i, True) for i in range(20)]], NOW)
    core.read(0, 20, bounded=False)
    before = core.store.counts()
    # The topic grows a partition, whose first ping is older than everything kept.
    grown = Core(spec, [[P(i % 3, T0 + 60 * i, True) for i in range(20)],
                        [P("old", T0, True)]], NOW)
    grown.restore(core.snapshot())
    grown.store = core.store
    grown.read(1, 1, bounded=False)
    grown.finish()
    after = grown.store.counts()
    assert before and all(after[b] == counts for b, counts in before.items())
    totals = grown.book.totals()
    assert totals.not_counted == 1 and totals.too_late == 1 and totals.valid == 20
