"""Time in the pure core (SPEC "Input" step 5 and "Time"): what is stored never
depends on the wall clock, a partition without a watermark never holds state
back, state stays bounded, old recovery snapshots still restore."""

from __future__ import annotations

import pickle
import random
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from presence.core.partition import STATE_FORMAT, PartitionReader, RawMessage
from presence.core.pings import Rejection
from presence.core.windows import WindowSpec
from tests.constants import BUCKET, LATENESS, NOW, T0, WINDOW
from tests.core_sim import Core
from tests.oracle import P, oracle

pytestmark = pytest.mark.usefixtures("both_readers")  # each reader: Python, compiled


def ping(driver, time, on_duty=True) -> bytes:
    return orjson.dumps({"driver_id": driver, "timestamp": time, "on_duty": int(on_duty)})


# --- future_timestamp: against the message's Kafka timestamp -----------------------

def test_future_timestamp_is_judged_against_the_kafka_timestamp_not_the_clock() -> None:
    """A replay a day later (or a clock that stepped) judges every message as the first read."""
    spec = WindowSpec(max_future_skew_s=300, shards=2)
    sent = NOW * 1000  # the messages' create time, ms
    messages = [
        RawMessage(0, ping(1, NOW + 299), int(sent)),        # within the skew of its timestamp
        RawMessage(1, ping(2, NOW + 301), int(sent)),        # beyond it
        RawMessage(2, ping(3, NOW + 3000), int(sent) + 2_800_000),  # sent later: within
        RawMessage(3, ping(4, NOW + 301), None),              # no timestamp: the clock at read
    ]
    outcomes = []
    for read_at in (NOW, NOW + 86_400, NOW - 3600):
        reader = PartitionReader("t", 0, 1, spec, read_at)
        batch = reader.read(messages, read_at)
        outcomes.append({d.offset: d.reason for d in batch.dead_letters})
    assert outcomes[0] == {1: "future_timestamp", 3: "future_timestamp"}
    assert outcomes[1] == {1: "future_timestamp"}  # read a day later: only the stampless one moves
    assert outcomes[2] == {1: "future_timestamp", 3: "future_timestamp"}
    letter = PartitionReader("t", 0, 1, spec, NOW).read(messages[1:2], NOW).dead_letters[0]
    assert "Kafka timestamp" in letter.detail


def test_each_message_is_judged_by_its_own_timestamp_in_a_batch() -> None:
    """The batch's earliest timestamp is only a first bound: the later ones are judged exactly."""
    spec = WindowSpec(max_future_skew_s=300, shards=2)
    early, late = int(NOW * 1000), int((NOW + 5000) * 1000)
    messages = [RawMessage(0, ping(1, NOW), early), RawMessage(1, ping(2, NOW + 4900), late),
                RawMessage(2, ping(3, NOW + 5301), late), RawMessage(3, ping(4, NOW + 310), early)]
    reader = PartitionReader("t", 0, 1, spec, NOW)
    batch = reader.read(messages, NOW)
    assert [(d.offset, d.reason) for d in batch.dead_letters] == [
        (2, "future_timestamp"), (3, "future_timestamp")]
    assert reader.valid == 2


# --- a clock step cannot change what is stored -------------------------------------------

SPEC_LIVE = WindowSpec(bucket_s=60, window_s=120, lateness_s=5, horizon_s=600, idle_s=10, shards=2)


def live_run(jump: float) -> Core:
    """A live run with pings following the clock, a quiet spell, more pings (some late).

    During the quiet spell the clock jumps ``jump`` seconds forward, then back."""
    start = 60 * int(NOW // 60)
    first = [P(d, start + 5 * i, d % 3 != 0) for i, d in enumerate(range(12))]
    second = [P(d % 7, start + 400 + 5 * i, d % 2 == 0) for i, d in enumerate(range(40))]
    second[20:20] = [P(100 + k, start + 430 - 50, True) for k in range(3)]  # late
    core = Core(SPEC_LIVE, [first + second], start)
    for i in range(0, len(first), 3):
        core.now = start + 5 * i + 1
        core.read(0, 3, bounded=False)
    for quiet in (start + 200, start + 200 + jump, start + 210):  # heartbeats while idle
        core.now = quiet
        core.read(0, 0, bounded=False)
    for i in range(0, len(second) + 3, 4):
        core.now = start + 400 + 5 * i + 1
        core.read(0, 4, bounded=False)
    core.finish()
    return core


def test_a_clock_step_while_idle_changes_nothing_stored() -> None:
    """The old code kept a +1 day clock in the shards' watermark: every later batch
    then rewrote its rows (revision and correctedLate climbing)."""
    steady, forward, backward = live_run(0), live_run(86_400), live_run(-86_400)
    for stepped in (forward, backward):
        assert stepped.store.rows == steady.store.rows  # counts and revisions
        assert [(r.bucket, r.revision) for r in stepped.store.history] == [
            (r.bucket, r.revision) for r in steady.store.history]
        assert stepped.book.totals() == steady.book.totals()
        assert [s.watermark for s in stepped.shards.values()] == [
            s.watermark for s in steady.shards.values()]
        assert stepped.book.snapshot()["watermarks"] == steady.book.snapshot()["watermarks"]
    assert max(d["revision"] for d in steady.store.rows.values()) == 2  # the late pings
    assert steady.book.totals().late == 3


def test_the_stored_watermark_is_event_time_even_when_rows_follow_the_clock() -> None:
    spec = WindowSpec(bucket_s=60, window_s=60, lateness_s=5, horizon_s=600, idle_s=10, shards=1)
    core = Core(spec, [[P(1, T0 + 10, True)]], NOW)
    core.read(0, 1, bounded=False)
    core.now = NOW + 60  # quiet: the row is written by the clock
    core.read(0, 0, bounded=False)
    assert core.store.counts() == {T0: (1, 1)}
    shard = next(iter(core.shards.values()))
    assert shard.watermark == T0 + 10 - 5 == core.book.watermark
    assert shard.snapshot()["watermark"] == T0 + 5


# --- a partition without a watermark ---------------------------------------------------------

def churn(hours: int, drivers_per_hour: int = 200, per_minute: int = 20) -> list[P]:
    """Drivers work for an hour, new ones every hour (9,600 in two days)."""
    rng = random.Random(hours)
    out = []
    for minute in range(hours * 60):
        shift = minute // 60
        for _ in range(per_minute):
            driver = shift * drivers_per_hour + rng.randrange(drivers_per_hour)
            out.append(P(driver, T0 + 60 * minute + rng.uniform(0, 59), rng.random() < 0.8))
    return out


def test_state_levels_off_with_a_partition_that_never_gets_a_valid_ping() -> None:
    """Two days of driver churn; partition 1 only ever carries garbage. The old code
    kept every pane (two days: 2,880 per shard), the snapshot grew without end."""
    spec = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=3600, idle_s=10, shards=4)
    pings = churn(48)
    core = Core(spec, [pings, [b"{oops"] * 50], NOW)
    sizes, panes = [], []
    batch = 500
    for i in range(0, len(pings), batch):
        core.now = NOW + i / 10  # a live run: partition 1 goes idle after 10 s
        core.read(0, batch, bounded=False)
        if i // batch % 3 == 0 and not core.done(1):
            core.read(1, 1, bounded=False)
        if (i // batch) % 6 == 5:  # every 2.5 simulated hours
            sizes.append(len(core.snapshot()))
            panes.append(max(len(s.panes.online) for s in core.shards.values()))
    # horizon + lateness + window over the bucket, plus a batch: ~70 panes, not 2,880.
    assert max(panes) <= (3600 + 30 + 300) // 60 + 10, panes
    first_day, second_day = sizes[len(sizes) // 4: len(sizes) // 2], sizes[len(sizes) // 2:]
    assert max(second_day) <= 1.2 * max(first_day), sizes  # levels off
    assert len(core.book.written) <= (3600 + 30) // 60 + 10
    print(f"churn: {len(pings):,} pings of 9,600 drivers over 48 h; at most {max(panes)} panes "
          f"per shard; snapshot {sizes[0]:,} bytes at 2.5 h, at most {max(first_day):,} on "
          f"hours 12-24, {max(second_day):,} on day 2 ({sizes})")


def test_a_partition_without_watermark_brings_pings_older_than_the_state_kept() -> None:
    """It judges against the dataflow's state: older pings are too late (counted in
    tooLate, not in rows), recent ones count as any other."""
    spec = WindowSpec(bucket_s=60, window_s=120, lateness_s=0, horizon_s=300, idle_s=10, shards=2)
    steady = [P(i % 3, T0 + 60 * i, True) for i in range(20)]
    core = Core(spec, [steady, [P("old", T0 + 30, True), P("new", T0 + 60 * 18 + 5, True),
                                P("old2", T0 + 90, True)]], NOW)
    core.now = NOW + 20
    core.read(1, 0, bounded=False)  # partition 1 heard from, idle, without a watermark
    core.read(0, 20, bounded=False)
    core.read(0, 0, bounded=False)
    assert min(len(s.panes.online) for s in core.shards.values()) < 20  # state was dropped
    core.read(1, 3, bounded=False)
    core.finish()
    rows, _, _ = oracle([steady, [P("new", T0 + 60 * 18 + 5, True)]], 60, 120, 0, 300)
    assert core.store.counts() == rows
    totals = core.book.totals()
    # "old" was judged by the shards (no offsets there: no dead letter); "old2" came
    # after "new" gave the partition its watermark, so its reader judged it.
    assert (totals.too_late, totals.not_counted, totals.valid) == (2, 1, 21)
    assert totals.dead_letters == 1 and core.store.dead == {"t:1:2": "too_late"}


# --- recovery snapshots -----------------------------------------------------------------------

def test_reader_snapshot_carries_its_format_and_fingerprint() -> None:
    spec = WindowSpec(shards=2)
    reader = PartitionReader("t", 0, 1, spec, NOW, fingerprint={"topic": "t", "window": 300})
    reader.read([RawMessage(0, ping(1, T0)), RawMessage(1, b"nope")], NOW)
    snap = pickle.loads(pickle.dumps(reader.snapshot()))
    assert snap["format"] == STATE_FORMAT == 2
    assert snap["fingerprint"] == {"topic": "t", "window": 300}
    again = PartitionReader("t", 0, 1, spec, NOW, snap, fingerprint={"topic": "t", "window": 60})
    assert again.resumed_format == 2 and again.resumed_fingerprint == {"topic": "t", "window": 300}
    assert again.snapshot()["fingerprint"] == {"topic": "t", "window": 60}
    assert (again.valid, again.invalid, again.rejected) == (1, 1, {"invalid_json": 1})
    fresh = PartitionReader("t", 0, 1, spec, NOW)
    assert fresh.resumed_format is None and fresh.resumed_fingerprint is None


def old_stream() -> list[list[object]]:
    """The input tests/data/state_format1.pickle was made from (with the code of
    commit 8dcc496: Core(spec, old_stream(), NOW), reads (0, 50), (1, 40), (0, 10))."""
    rng = random.Random(5)
    parts = []
    for p in range(2):
        msgs: list[object] = []
        for i in range(120):
            t = T0 + 10 * i + p * 3
            if i % 17 == 5:
                msgs.append(b"{oops")
            elif i % 13 == 7:
                msgs.append(P(rng.randrange(30), t - 200, True))
            else:
                msgs.append(P(rng.randrange(30), t, rng.random() < 0.7))
        parts.append(msgs)
    return parts


def test_a_snapshot_of_the_previous_format_still_restores() -> None:
    """State written before this version (no format, no fingerprint, no late or
    per-reason counts, marks with fewer fields) resumes and finishes exactly."""
    spec = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=600, shards=4)
    saved = pickle.loads((Path(__file__).parent / "data" / "state_format1.pickle").read_bytes())
    partitions = old_stream()
    core = Core(spec, partitions, NOW)
    core.restore(saved["core"])
    assert [r.resumed_format for r in core.readers] == [1, 1]
    assert [r.resumed_fingerprint for r in core.readers] == [None, None]
    assert [r.next_offset for r in core.readers] == [60, 40]
    for doc in saved["rows"].values():
        doc.setdefault("revision", 1)
    core.store.rows = saved["rows"]
    for p in (0, 1):
        while not core.done(p):
            core.read(p, 9)
    core.finish()
    rows, too_late, invalid = oracle(partitions, BUCKET, WINDOW, LATENESS, 600)
    assert core.store.counts() == rows
    totals = core.book.totals()
    assert totals.invalid == len(invalid) and totals.too_late == len(too_late)
    assert totals.valid == sum(isinstance(m, P) for p in partitions for m in p) - len(too_late)
    assert core.snapshot()  # and it is written in the new format
    assert all(r.snapshot()["format"] == STATE_FORMAT for r in core.readers)


def test_an_unjudgeable_message_is_a_rejection_with_its_error() -> None:
    class Odd:
        def offset(self) -> int:
            return 0

        def value(self) -> bytes:
            return ping(1, T0)

        def timestamp(self):
            raise RuntimeError("no timestamp today")

    reader = PartitionReader("t", 0, 1, WindowSpec(shards=2), NOW)
    batch = reader.read([Odd()], NOW)
    (letter,) = batch.dead_letters
    assert letter.reason == "invalid_json" and "RuntimeError" in letter.detail
    assert isinstance(Rejection(letter.reason, letter.detail), Rejection)


def test_a_clock_stepping_back_never_holds_heartbeats_or_writes_back() -> None:
    """Scheduling by the wall clock: a step back of a day must not silence a day."""
    from presence.flow import BookLogic
    from presence.io.memory import MemoryTopic
    from presence.io.source import PingSource

    clock = [NOW]
    spec = WindowSpec(bucket_s=60, window_s=60, lateness_s=5, idle_s=10, shards=1)
    topic = MemoryTopic("t", 1)
    part = PingSource("t", 1, topic.feed, spec, bounded=False, clock=lambda: clock[0]).build_part(
        "pings", "0", None)
    assert part.next_batch()  # the first heartbeat
    clock[0] = NOW - 86_400
    assert part.next_batch(), "a heartbeat right after the clock stepped back"

    book = BookLogic(spec, None, lambda: clock[0], progress_seconds=10)
    clock[0] = NOW
    assert book.on_notify()[0]  # status due
    clock[0] = NOW - 86_400
    out, _ = book.on_notify()
    assert out, "status still written after the clock stepped back"
    assert (book.notify_at() - datetime.now(timezone.utc)).total_seconds() <= 1.5



def test_a_mark_pickles_its_state_as_plain_text_and_old_module_paths_restore() -> None:
    """Snapshots hold marks: their state stays the string it always was (no enum
    class named in the snapshot), and a mark stored under its old module path
    (``presence.partition``, before ``presence.core``) still loads."""
    from presence.core.model import PartitionMark, PartitionState

    mark = PartitionMark("t", 0, 2, 10.0, 11.0, PartitionState.IDLE, 5, valid=3)
    blob = pickle.dumps(mark)
    assert b"PartitionState" not in blob and b"idle" in blob
    again = pickle.loads(blob)
    assert again == mark and again.state is PartitionState.IDLE
    # Protocol 0 spells the class's module path out as text: name the old one.
    text = pickle.dumps(mark, protocol=0)
    assert b"presence.core.model\nPartitionMark" in text
    old = pickle.loads(text.replace(b"presence.core.model", b"presence.partition"))
    assert old == mark and old.state is PartitionState.IDLE
