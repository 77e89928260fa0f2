"""Segments wired through the pure core: reader -> shards -> row book (SPEC "Segments").

The reader's fast and checked paths, unlocated counting, the shard and book
state as versioned data (and the dicts of the previous format still restored),
and a property test over random streams with segments, crashes and
incremental runs against the brute-force oracle (tests/segment_oracle.py).
"""

from __future__ import annotations

import dataclasses
import pickle
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence.core.model import PartitionMark, SegmentRow, ShardReport, segment_doc_id
from presence.core.partition import PartitionReader, RawMessage
from presence.core.rows import BOOK_SNAPSHOT_VERSION, BookSnapshot, RowBook
from presence.core.segment_panes import pack_partial, unpack_partial
from presence.core.segment_records import decode_records, dimension_kinds
from presence.core.segment_tally import (
    SegmentTally, decode_row, key_fields, pack_partials, partial_key, split_partial_key, tally_class,
)
from presence.core.segments import parse_segments
from presence.core.shard import SHARD_SNAPSHOT_VERSION, ShardSnapshot, ShardState
from presence.core.windows import WindowSpec
from tests.constants import NOW, T0, oracle_rules
from tests.core_sim import Core
from tests.segment_oracle import SP, expected
from tests.streams import segment_stream

SEGMENTS = "city;city,vehicle_type;h3:8"
DEFS = parse_segments(SEGMENTS)
NAMES = [d.name for d in DEFS]
SPEC = WindowSpec(bucket_s=60, window_s=180, lateness_s=10, horizon_s=300, idle_s=10, shards=3,
                  segments=DEFS)
PLAIN = WindowSpec(bucket_s=60, window_s=180, lateness_s=10, horizon_s=300, idle_s=10, shards=3)


def _msg(offset: int, obj: object) -> RawMessage:
    data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return RawMessage(offset, data, int(NOW * 1000))


def _values(batch) -> list:
    """Each counted ping's values, whichever form the reader sent them in
    (``(driver, on_duty, values)`` lists, or the compiled reader's packed records)."""
    kinds = dimension_kinds(DEFS)
    return [v for shard in batch.segments for pings in shard.values()
            for (_, _, v) in (decode_records(pings, kinds) if type(pings) is bytes else pings)]


def test_reader_takes_optional_fields_on_both_paths() -> None:
    base = {"driver_id": "d1", "timestamp": T0 + 5, "on_duty": 1}
    messages = [
        _msg(0, {**base, "city": "Hong Kong", "vehicle_type": "van", "lat": 22.3, "lng": 114.17}),
        # a bad optional field neither rejects the ping nor changes its other values
        _msg(1, {**base, "city": 7, "vehicle_type": ["van"], "lat": "22.3", "lng": 114.17}),
        # ISO timestamp: the checked path
        _msg(2, {**base, "timestamp": "2018-01-01T04:00:07Z", "city": "London", "lat": 51.5,
                 "lng": -0.12}),
        # long value (padding): beyond the short fast path, still read
        _msg(3, {**base, "pad": "x" * 300, "city": "Lagos", "vehicle_type": "car"}),
        # non-ASCII city (raw UTF-8): the checked path
        _msg(4, ('{"driver_id": "d2", "timestamp": %d, "on_duty": 0, "city": "São Paulo", '
                 '"lat": -23.55, "lng": -46.63}' % (T0 + 9)).encode()),
        _msg(5, b'{"driver_id": "d3", "timestamp": 1514779209, "on_duty": 1, "lat": 1e400, "lng": 0}'),
    ]
    reader = PartitionReader("t", 0, 1, SPEC, NOW)
    batch = reader.read(messages, NOW)
    assert not batch.dead_letters
    values = _values(batch)
    hk = (("Hong Kong",), ("Hong Kong", "van"))
    assert [v[:2] for v in values].count(hk) == 1
    assert (("unknown",), ("unknown", "unknown"), None) in values
    assert any(v[0] == ("London",) and v[2] is not None for v in values)
    assert (("Lagos",), ("Lagos", "car"), None) in values
    assert any(v[0] == ("São Paulo",) and v[2] is not None for v in values)
    assert (("unknown",), ("unknown", "unknown"), None) in values
    assert reader.unlocated == 3 and batch.mark.unlocated == 3
    assert reader.snapshot()["unlocated"] == 3
    again = PartitionReader("t", 0, 1, SPEC, NOW, pickle.loads(pickle.dumps(reader.snapshot())))
    assert again.unlocated == 3


def test_reader_without_segments_sends_none_and_counts_no_unlocated() -> None:
    reader = PartitionReader("t", 0, 1, PLAIN, NOW)
    batch = reader.read([_msg(0, {"driver_id": 1, "timestamp": T0, "on_duty": 1})], NOW)
    assert batch.segments is None and batch.mark.unlocated == 0
    assert all(part.segments is None for _, part in batch.shard_parts())
    # Without an h3 definition, no ping is unlocated.
    spec = WindowSpec(bucket_s=60, window_s=180, shards=3, segments=parse_segments("city"))
    reader = PartitionReader("t", 0, 1, spec, NOW)
    reader.read([_msg(0, {"driver_id": 1, "timestamp": T0, "on_duty": 1})], NOW)
    assert reader.unlocated == 0


def test_too_late_pings_are_in_no_segment_and_not_unlocated() -> None:
    reader = PartitionReader("t", 0, 1, SPEC, NOW)
    batch = reader.read([_msg(0, {"driver_id": 1, "timestamp": T0 + 1000, "on_duty": 1}),
                         _msg(1, {"driver_id": 2, "timestamp": T0, "on_duty": 1})], NOW)
    assert [d.reason for d in batch.dead_letters] == ["too_late"]
    assert len(_values(batch)) == 1 and reader.unlocated == 1


def test_doc_id_is_deterministic_and_escapes_the_separator() -> None:
    assert segment_doc_id("city,vehicle_type", ["Hong Kong", "van"], "2018-01-01 04:00:00") == \
        "city,vehicle_type|Hong Kong|van|2018-01-01 04:00:00"
    assert segment_doc_id("city,vehicle_type", ["a|b", "c"], "T") != \
        segment_doc_id("city,vehicle_type", ["a", "b|c"], "T")
    row = SegmentRow("h3:8", {"h3": "88411c8d27fffff"}, T0, T0 - 120, T0 + 60, 3, 2, 1)
    assert row.doc_id == "h3:8|88411c8d27fffff|2018-01-01 04:00:00"


def _run(core: Core, rng: random.Random, crash_every: int = 0) -> None:
    steps = 0
    snapshot = core.snapshot()
    while not all(core.done(p) for p in range(len(core.values))):
        p = rng.randrange(len(core.values))
        if core.done(p):
            continue
        core.read(p, rng.randint(1, 40))
        steps += 1
        if rng.random() < 0.3:
            snapshot = core.snapshot()
        if crash_every and steps % crash_every == 0:
            core.restore(snapshot)
    core.finish()


def _check(core: Core, partitions, spec: WindowSpec) -> None:
    rows, too_late, invalid, seg_rows, unlocated = expected(
        partitions, [d.name for d in spec.segments], *oracle_rules(spec))
    assert core.store.counts() == rows
    assert core.store.segment_counts() == seg_rows
    assert len(seg_rows) > len(rows), "the stream must give segment rows"
    totals = core.book.totals()
    assert totals.unlocated == unlocated
    assert [s.segment for s in totals.segments] == [d.name for d in spec.segments]
    assert all(s.other_pings == 0 and s.overflow_rows == 0 for s in totals.segments)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), crash_every=st.sampled_from([0, 3, 7]),
       segments=st.sampled_from([SEGMENTS, "h3:9;vehicle_type", "vehicle_type,h3:7,city;h3:0"]))
def test_core_with_segments_equals_oracle(seed: int, crash_every: int, segments: str) -> None:
    spec = WindowSpec(bucket_s=60, window_s=180, lateness_s=10, horizon_s=300, idle_s=10,
                      shards=3, segments=parse_segments(segments))
    partitions = segment_stream(seed, partitions=2, per_partition=120, drivers=40,
                                horizon=300, pace=2.0)
    core = Core(spec, partitions, NOW)
    _run(core, random.Random(seed), crash_every)
    _check(core, partitions, spec)
    written = {}
    for row in core.store.segment_history:  # revisions go up by one per rewrite
        written.setdefault(row.doc_id, []).append(row.revision)
    assert all(r == sorted(r) for r in written.values())


def test_incremental_bounded_runs_with_segments() -> None:
    """Two bounded runs over a growing topic: the second goes on from the state."""
    partitions = segment_stream(11, partitions=2, per_partition=200, drivers=40, horizon=300)
    first = [p[: len(p) // 2] for p in partitions]
    core = Core(SPEC, first, NOW)
    _run(core, random.Random(1))
    _check(core, first, SPEC)
    blob = core.snapshot()
    grown = Core(SPEC, partitions, NOW)
    grown.store = core.store
    grown.restore(blob)
    _run(grown, random.Random(2))
    _check(grown, partitions, SPEC)
    assert max(d["revision"] for d in grown.store.segments.values()) > 1, \
        "late pings must correct segment rows"


def test_overflow_valve_counts_other_and_marks_rows() -> None:
    spec = WindowSpec(bucket_s=60, window_s=60, lateness_s=0, horizon_s=300, shards=1,
                      segments=parse_segments("city"), max_segment_values=2)
    pings = [SP(d, T0 + d, True, (("city", f"c{d}"),)) for d in range(5)]
    core = Core(spec, [pings], NOW)
    _run(core, random.Random(0))
    docs = core.store.segments
    keys = sorted(d["key"] for d in docs.values())
    assert keys == [("c0",), ("c1",), ("other",)]
    assert [r for r in core.store.segment_history if r.key == {"city": "other"}][0].overflow
    (totals,) = core.book.totals().segments
    assert totals.other_pings == 3 and totals.overflow_rows >= 1 and totals.rows_written == 3


# -- state as data: versioned snapshots, and the previous format ---------------------

MARK = PartitionMark("t", 0, 1, T0 + 200.0, NOW, "live", 12, 12, 0, 0, (), 0, ())

# ShardState.snapshot() and RowBook.snapshot() as the previous main wrote them
# (plain dicts, STATE_FORMAT 2, no segments), hard-coded.
OLD_SHARD = {
    "panes": {"ids": ("7", "9"), "online": {T0: 0b11, T0 + 60: 0b01}, "available": {T0: 0b10}},
    "marks": {"t:0": MARK},
    "watermark": T0 + 190.0,
    "oldest": T0 - 110.0,
    "dirty": (T0 + 60, T0 + 120),
    "not_counted": 4,
}
OLD_BOOK = {
    "watermarks": {"shard-00": T0 + 190.0},
    "oldest": {"shard-00": T0 - 110.0},
    "not_counted": {"shard-00": 4},
    "partials": {T0: {"shard-00": (2, 1)}},
    "written": {T0: (2, 1, 1)},
    "pending": (),
    "marks": {"t:0": MARK},
    "rows_written": 1,
    "row_rewrites": 0,
}


def test_previous_format_shard_state_restores() -> None:
    spec = WindowSpec(bucket_s=60, window_s=180, lateness_s=10, horizon_s=300, shards=1)
    shard = ShardState(spec, pickle.loads(pickle.dumps(OLD_SHARD)))
    assert shard.panes.row_counts(T0) == (2, 1)
    assert shard.dirty == {T0 + 60, T0 + 120} and shard.not_counted == 4
    report = shard.report(NOW, final=True)
    assert report.partials == {T0 + 60: (2, 1), T0 + 120: (2, 1)}
    snap = shard.snapshot()
    assert type(snap) is ShardSnapshot and snap.version == SHARD_SNAPSHOT_VERSION
    again = ShardState(spec, pickle.loads(pickle.dumps(snap)))
    assert again.panes.row_counts(T0) == (2, 1) and again.not_counted == 4
    # A run with segments cannot go on from state made without them.
    with pytest.raises(ValueError, match="without segments"):
        ShardState(SPEC, OLD_SHARD)


def test_previous_format_book_restores() -> None:
    spec = WindowSpec(bucket_s=60, window_s=180, lateness_s=10, horizon_s=300, shards=1)
    book = RowBook(spec, pickle.loads(pickle.dumps(OLD_BOOK)))
    assert book.written == {T0: (2, 1, 1)} and book.rows_written == 1
    book.add_report("shard-00", ShardReport(T0 + 250.0, T0 - 50.0, {T0: (3, 1)}))
    (row,) = book.take_rows()
    assert (row.online, row.available, row.revision) == (3, 1, 2)
    snap = book.snapshot()
    assert type(snap) is BookSnapshot and snap.version == BOOK_SNAPSHOT_VERSION
    assert RowBook(spec, pickle.loads(pickle.dumps(snap))).written[T0] == (3, 1, 2)


def test_unknown_snapshot_versions_are_refused() -> None:
    snap = ShardState(SPEC).snapshot()
    with pytest.raises(ValueError, match="version 9"):
        ShardState(SPEC, ShardSnapshot(**{**snap.__dict__, "version": 9}))
    with pytest.raises(ValueError, match="not a book snapshot"):
        RowBook(SPEC, ["nonsense"])
    book = RowBook(SPEC).snapshot()
    with pytest.raises(ValueError, match="segment layout 7 is not known"):
        RowBook(SPEC, dataclasses.replace(book, segment_parts_layout=7))


def test_book_segment_state_is_compact() -> None:
    """Per row and shard the shard's partials (added whole, values named by their
    partial keys); per value and row what was written."""
    kinds = dimension_kinds(SPEC.segments)
    book = RowBook(SPEC)
    keys = [partial_key(2, (600000000000000000 + i,), kinds) for i in range(1000)]
    partials = {T0: {k: pack_partial(1, 1, False) for k in keys}}
    for s in range(3):
        book.add_report(f"shard-0{s}", ShardReport(T0 + 500.0, T0, {}, 0, T0 + 500.0,
                                                   partials if s == 0 else {}, (0, 0, 0)))
    assert decode_row(book.tally.snapshot()[T0]) == sorted(
        (k, None, True, ((0, pack_partial(1, 1, False)),)) for k in keys)  # shard-00's only
    rows = book.take_segment_rows()
    assert len(rows) == 1000 and all(r.online == 1 for r in rows)
    assert decode_row(book.tally.snapshot()[T0]) == sorted(
        (k, (1, 1, 1), False, ((0, pack_partial(1, 1, False)),)) for k in keys)


@pytest.mark.parametrize("packed", [False, True], ids=["dict", "packed-bytes"])
def test_book_sums_partials_of_many_shards_and_restores_the_earlier_layout(packed) -> None:
    """Partials of several shards add up field by field (overflow from any); a later
    report of a shard replaces its earlier partial; reports as dicts or packed bytes
    count the same; a snapshot of the earlier layout (``(definition number, value)``
    keys, ``(shard number, packed, ...)`` tuples of ``online << 33 | available << 1
    | overflow``) restores to the same state."""
    kinds = dimension_kinds(SPEC.segments)
    value_a, value_b = ("Hong Kong",), ("Jakarta",)
    key_a, key_b = partial_key(0, value_a, kinds), partial_key(0, value_b, kinds)
    n = SPEC.shards
    assert n >= 2

    def report(partials):
        blob = pack_partials(partials) if packed else partials
        return ShardReport(T0 + 500.0, T0, {}, 0, T0 + 500.0, blob, (0, 0, 0))

    book = RowBook(SPEC)
    for s in range(n):
        book.add_report(f"shard-{s:02d}", report(
            {T0: {key_a: pack_partial(s + 1, s, s == n - 1), key_b: pack_partial(2, 2, False)}}))
    book.add_report("shard-01", report({T0: {key_a: pack_partial(100, 0, False)}}))
    expected = {value_a: (sum(range(1, n + 1)) - 2 + 100, sum(range(n)) - 1, True),
                value_b: (2 * n, 2 * n, False)}

    def counts(rows):
        return {tuple(r.key.values()): (r.online, r.available, r.overflow) for r in rows}

    snap = book.snapshot()
    assert counts(book.take_segment_rows(final=True)) == expected
    old_parts = {T0: {}}
    for key, _, _, parts in decode_row(snap.segment_parts[T0]):
        for slot, p in parts:
            online, available, overflow = unpack_partial(p)
            value_key = (0, split_partial_key(key, kinds)[1])
            old_parts[T0][value_key] = old_parts[T0].get(value_key, ()) + (
                slot, online << 33 | available << 1 | overflow)
    earlier = dataclasses.replace(snap, segment_parts=old_parts, segment_parts_layout=1,
                                  segment_written={}, segment_pending={T0: ((0, value_a), (0, value_b))})
    again = RowBook(SPEC, pickle.loads(pickle.dumps(earlier)))
    assert counts(again.take_segment_rows(final=True)) == expected
    # and the snapshot of today's layout, through either tally
    for tally in {SegmentTally, tally_class()}:
        restored = RowBook(SPEC, pickle.loads(pickle.dumps(snap)))
        restored.tally = tally.restore(key_fields(SPEC.segments), RowBook(SPEC, snap).tally.snapshot())
        assert counts(restored.take_segment_rows(final=True)) == expected


# -- the documents ------------------------------------------------------------------

def test_segment_documents_and_status_fields() -> None:
    from datetime import datetime, timezone

    from presence.core.model import SegmentTotals, Totals
    from presence.io.memory import MemoryStore
    from presence.io.mongo import merge_segment_docs, segment_doc, segment_row_update, status_updates

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = SegmentRow("city,vehicle_type", {"city": "Hong Kong", "vehicle_type": "van"},
                     T0, T0 - 240, T0 + 60, 5, 3, 2, overflow=True)
    update = segment_row_update(row, now)
    assert update._filter == {"_id": "city,vehicle_type|Hong Kong|van|2018-01-01 04:00:00"}
    assert update._doc["$set"]["key"] == {"city": "Hong Kong", "vehicle_type": "van"}
    assert update._doc["$set"]["overflow"] is True
    assert update._doc["$max"]["driversOnlineCount"] == 5 and update._doc["$max"]["revision"] == 2
    doc = segment_doc(row, now)
    assert doc["_id"] == update._filter["_id"] and doc["overflow"] is True
    lower = segment_doc(replace_row(row, online=4, available=4, revision=1, overflow=False), now)
    merged = merge_segment_docs(doc, lower)
    assert (merged["driversOnlineCount"], merged["driversAvailableCount"], merged["revision"],
            merged["overflow"]) == (5, 4, 2, True)
    assert "overflow" not in segment_row_update(replace_row(row, overflow=False), now)._doc["$set"]

    totals = Totals(valid=10, invalid=0, late=0, too_late=0, watermark=float(T0), not_counted=0,
                    rows_written=3, unlocated=2,
                    segments=(SegmentTotals("city", 1, 7, 1), SegmentTotals("h3:8", 0, 9, 0)))
    fields = status_updates([], totals, now)[-1]._doc["$max"]
    assert fields["unlocated"] == 2
    assert fields["segments.city.otherPings"] == 1 and fields["segments.city.rowsWritten"] == 7
    assert fields["segments.city.overflowRows"] == 1 and fields["segments.h3:8.rowsWritten"] == 9
    plain = status_updates([], replace_row(totals, unlocated=0, segments=()), now)[-1]._doc["$max"]
    assert "unlocated" not in plain and not any(k.startswith("segments") for k in plain)

    store = MemoryStore()
    store.write([row, replace_row(row, online=4, revision=1, overflow=False)])
    (kept,) = store.segments.values()
    assert (kept["driversOnlineCount"], kept["revision"], kept["overflow"]) == (5, 2, True)


def replace_row(obj, **changes):
    from dataclasses import replace

    return replace(obj, **changes)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_segments_change_no_judgement_of_adversarial_input(data) -> None:
    """With segments the reader judges every value exactly as without (the fuzzer's values)."""
    from tests.test_input_fuzz import SPEC as FUZZ, STAMPS, adversarial_json

    items = data.draw(st.lists(st.tuples(st.one_of(adversarial_json(), st.none()), STAMPS),
                               min_size=1, max_size=8))
    cut = data.draw(st.integers(0, len(items)))
    messages = [RawMessage(i, v, s) for i, (v, s) in enumerate(items)]
    outcomes = []
    for spec in (FUZZ, replace_row(FUZZ, segments=DEFS)):
        reader = PartitionReader("t", 0, 1, spec, NOW)
        batches = [reader.read(messages[:cut], NOW), reader.read(messages[cut:], NOW)]
        outcomes.append((
            [(d.offset, d.reason, d.detail) for b in batches for d in b.dead_letters],
            [b.shards for b in batches], reader.valid, reader.invalid, reader.too_late, reader.late,
        ))
        if spec.segments:  # every counted ping has its values, in its shard and bucket
            for b in batches:
                for sets, segs in zip(b.shards, b.segments):
                    assert sets.keys() == segs.keys()
                    for pane, (online, _, pings) in sets.items():
                        listed = segs[pane]
                        if type(listed) is bytes:  # the compiled reader's packed records
                            listed = decode_records(listed, dimension_kinds(DEFS))
                        assert len(listed) == pings and {p[0] for p in listed} == online
    assert outcomes[0] == outcomes[1]
